//! Entry points for the fuzz targets under fuzz/: each feeds arbitrary bytes
//! to one parser of stored bytes. They must return (Ok or Err), never panic.
//! The unit tests below run them on mutations of valid inputs in every test
//! run, so the guarantee is checked even where cargo-fuzz is not installed.

use std::path::Path;

use crate::chunking::digest::Digest;
use crate::format::chunk::RecordHeader;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::fixed_index;
use crate::format::snapshot::Manifest;
use crate::store::index::IndexEntry;

/// A chunk record as read from a pack: header, then full decode.
pub fn chunk_record(data: &[u8]) {
    if let Ok(h) = RecordHeader::decode(data) {
        if let Ok(mut dec) = ChunkDecoder::new() {
            let _ = dec.decode(data, &h.digest);
        }
    }
    let _ = IndexEntry::decode(data);
}

/// A sealed chunk record of an encrypted store (format-spec/encryption.md):
/// opened with a fixed key, checked with it and without it (keyless verify).
pub fn sealed_record(data: &[u8]) {
    use std::sync::{Arc, OnceLock};
    static KEYS: OnceLock<Arc<crate::crypto::StoreKeys>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Arc::new(fuzz_keys()));
    let Ok(h) = RecordHeader::decode(data) else { return };
    let mut scratch = Vec::new();
    for k in [Some(keys), None] {
        if let Ok(mut dec) = ChunkDecoder::for_store(crate::crypto::Protection::Encrypt, k) {
            let _ = dec.decode(data, &h.digest);
            let _ = dec.check(data, &h.digest, &mut scratch);
        }
    }
}

/// The key [`sealed_record`] opens records with.
pub fn fuzz_keys() -> crate::crypto::StoreKeys {
    let master = crate::crypto::master_key::MasterKey::from_secret([7; 32]);
    crate::crypto::StoreKeys::derive(&master, crate::crypto::Protection::Encrypt)
}

/// A `.fidx` file.
pub fn fixed_index(data: &[u8]) {
    let _ = fixed_index::parse(Path::new("fuzz.fidx"), data);
}

/// A `manifest.json`.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::from_bytes(Path::new("manifest.json"), data);
    let (_, text) = crate::format::snapshot::split_mac(data);
    let _ = Manifest::from_bytes(Path::new("manifest.json"), &text);
    let _ = Digest::from_hex(&String::from_utf8_lossy(data));
}

/// A tree archive's metadata stream, read to its end.
pub fn tree_metadata(data: &[u8]) {
    if let Ok(mut r) = crate::archive::EntryReader::new(data) {
        while let Ok(Some(_)) = r.next_entry() {}
    }
    let _ = crate::archive::decode_entry(data, 0);
}

/// A `.didx` file.
pub fn dynamic_index(data: &[u8]) {
    let _ = crate::format::dynamic_index::parse(Path::new("fuzz.didx"), data);
}

/// Bytes an NBD server sends: the handshake (asking for two meta contexts),
/// then reply chunks for reads and block status requests. Writes go nowhere.
pub fn nbd_server(data: &[u8]) {
    use crate::source::nbd::{handshake, read_reply, Expect};
    let mut s = Replay::new(data);
    let contexts = ["base:allocation", "qemu:dirty-bitmap:b"];
    if handshake(&mut s, "fuzz", "e", &contexts).is_err() {
        return;
    }
    // Odd cookies are reads of 1 MiB at 4 MiB, even ones block status.
    let expect = |cookie: u64| {
        (cookie < 1 << 20).then_some(Expect {
            offset: 4 << 20,
            len: 1 << 20,
            is_read: cookie % 2 == 1,
        })
    };
    while read_reply(&mut s, expect).is_ok() {}
}

/// Bytes an NBD client sends to `hoard export`: a whole session (handshake,
/// requests, write payloads) against a small writable device in memory.
pub fn nbd_export(data: &[u8]) {
    let _ = serve_in_memory(data, &mut Vec::new());
    // The same bytes against a server that requires TLS first.
    use crate::serve::export::proto::{greet, negotiate, Tls};
    let device = crate::serve::export::device::MemoryDevice::new(vec![0u8; 4096]);
    let offer = crate::serve::export::connection::offer_for(&device, "e", 4096);
    let mut s = Replay::new(data);
    if let Ok(no_zeroes) = greet(&mut s) {
        let _ = negotiate(&mut s, &offer, no_zeroes, Tls::Required);
    }
}

/// Serves one client session read from `input` (replies into `out`) on a
/// 256 KiB device whose first 8 KiB are 0x5a; returns the device, the
/// counters and how the session ended.
fn serve_in_memory(
    input: &[u8],
    out: &mut Vec<u8>,
) -> (
    crate::serve::export::device::MemoryDevice,
    crate::serve::export::connection::Counters,
    Result<(), crate::serve::export::proto::ProtoError>,
) {
    use crate::serve::export::connection::{connection, offer_for, Client, Counters, Dispatch};
    let mut image = vec![0u8; 256 << 10];
    image[..8192].fill(0x5a);
    let device = crate::serve::export::device::MemoryDevice::new(image);
    let counters = Counters::default();
    let offer = offer_for(&device, "e", 65536);
    let client = Client {
        peer: "fuzz".into(),
        device: &device,
        offer: &offer,
        dispatch: Dispatch::Inline,
        counters: &counters,
        log: &|_| {},
    };
    let end = connection(input, out, client);
    (device, counters, end)
}

/// Bytes a QEMU guest agent sends: a sync, then replies to commands.
pub fn qga_agent(data: &[u8]) {
    use crate::source::qga::Qga;
    use std::time::Duration;
    let mut q = Qga::new(Replay::new(data), Path::new("fuzz.sock"));
    if q.sync(Duration::from_secs(1)).is_err() {
        return;
    }
    while q
        .execute("guest-ping", serde_json::json!({}), Duration::from_secs(1))
        .is_ok()
    {}
}

/// A store's `config.json`.
pub fn store_config(data: &[u8]) {
    let _ = crate::store::config_read::parse_config(Path::new("store"), data);
}

/// A host's memory of a store (`STATE/stores/HASH.json`).
pub fn known_store(data: &[u8]) {
    let _ = crate::format::known_store::KnownStore::parse(data);
}

/// A server's token list (`SERVER_DIR/tokens.json`).
pub fn token_list(data: &[u8]) {
    let _ = crate::format::token_list::TokenList::parse(data);
}

/// A server's configuration file (`/etc/hoard/serve.toml`).
pub fn serve_config(data: &[u8]) {
    let _ = crate::format::serve_config::ServeConfig::parse(&String::from_utf8_lossy(data));
}

/// What a server decodes of a request before anything else: the
/// `Authorization` header's token (the first half of `data`) and the
/// repository address and fingerprint a client parses (the rest).
pub fn api_request(data: &[u8]) {
    let (header, rest) = data.split_at(data.len() / 2);
    let _ = crate::serve::api::parse_authorization(header);
    let text = String::from_utf8_lossy(rest);
    let _ = crate::serve::api::client::RemoteRepo::parse(&text);
    let _ = crate::serve::api::parse_fingerprint(&text);
}

/// A chunk upload batch and a list of digests, as the server reads them.
pub fn wire_upload(data: &[u8]) {
    let _ = crate::serve::api::wire::parse_upload(data);
    let _ = crate::serve::api::wire::parse_digests(data);
}

/// The answer to a chunk read, as the client reads it (the first byte
/// says how many digests were asked).
pub fn wire_answers(data: &[u8]) {
    let Some((&asked, rest)) = data.split_first() else {
        return;
    };
    let _ = crate::serve::api::wire::parse_answers(rest, asked as usize);
}

/// A file bundle (catalogue, config and key slots), as the client reads
/// it before writing its copy.
pub fn wire_bundle(data: &[u8]) {
    use crate::serve::api::wire::{catalogue_path, key_bundle_path, parse_files};
    let _ = parse_files(data, catalogue_path);
    let _ = parse_files(data, key_bundle_path);
}

/// A request's path (below `/api/v1/`) and body as the server decodes
/// them before it touches the store (the first line is the path).
pub fn api_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, body) = text.split_once('\n').unwrap_or((&text, ""));
    crate::serve::api::service::decode_request(path, body.as_bytes());
}

/// A pack as index rebuild, check and GC walk it: header, records,
/// trailer and resynchronisation past damage; every record found is
/// decoded. Its trailer is also read from the end alone, as a rebuild over
/// a remote backend reads it.
pub fn pack_scan(data: &[u8]) {
    let reader = crate::format::pack::reader_of(data);
    let _ = crate::format::pack::read_listing(reader, data.len() as u64);
    let scan = crate::format::pack::scan_bytes(data, None);
    let Ok(mut dec) = ChunkDecoder::new() else { return };
    let mut scratch = Vec::new();
    for (offset, h) in scan.records {
        let end = offset.saturating_add(h.record_len());
        if let Some(rec) = data.get(offset as usize..end as usize) {
            let _ = dec.check(rec, &h.digest, &mut scratch);
        }
    }
}

/// What a store in a bucket reads besides the store's own files: a cache's
/// `remote.json` and the AWS shared credentials file.
pub fn remote_config(data: &[u8]) {
    crate::store::remote::fuzz_remote_file(data);
    let text = String::from_utf8_lossy(data);
    for profile in ["default", "backup"] {
        let _ = crate::store::aws_credentials::parse(&text, profile);
    }
}

/// A job file (`/etc/hoard/jobs/NAME.toml`): checked, never a panic.
pub fn job_file(data: &[u8]) {
    let _ = crate::format::job_file::parse(std::path::Path::new("/etc/hoard/jobs/fuzz.toml"), data);
}

/// A snapshot's `task.log` and a snapshot's or group's `notes` (the same
/// sealed-text reader), plain or sealed, read with and without a key.
pub fn task_log(data: &[u8]) {
    let keys = fuzz_keys();
    for sealed_store in [true, false] {
        for k in [Some(&keys), None] {
            let _ = crate::format::task_log::decode(data, "vm/1/2026-12-03T02:00:00Z", sealed_store, k);
            let _ = crate::format::notes::decode(data, "vm/1", sealed_store, k);
        }
    }
}

/// GC's state record (`g/state` in the chunk index).
pub fn gc_state(data: &[u8]) {
    let _ = crate::store::gc::GcState::from_bytes(data);
}

/// A snapshot's `verify.json`, and a key of verify's on-disk work list.
pub fn verify_state(data: &[u8]) {
    let _ = crate::format::verify_state::VerifyState::from_bytes(data);
    let (_, text) = crate::format::snapshot::split_mac(data);
    let _ = crate::format::verify_state::VerifyState::from_bytes(&text);
    let _ = crate::store::chunk_check::parse_work_key(data);
}

/// A snapshot's `protected` marker.
pub fn protect_marker(data: &[u8]) {
    if let Some(mac) = crate::format::protect_marker::decode(data) {
        assert_eq!(crate::format::protect_marker::encode(Some(&mac)), data);
    }
}

/// A session record (`sessions/PID-UUID.session`).
pub fn session_record(data: &[u8]) {
    let _ = crate::store::session::start_ns(&String::from_utf8_lossy(data));
}

/// A container configuration as LXC writes it (includes of files that do
/// not exist are errors, of real paths are read as LXC would).
pub fn lxc_config(data: &[u8]) {
    let _ = crate::modes::ct::lxc::parse_config(Path::new("config"), &String::from_utf8_lossy(data));
}

/// What a QMP server sends: the greeting, then replies and events for the
/// commands hoard's live copy issues.
pub fn qmp_server(data: &[u8]) {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    let Ok((ours, mut theirs)) = UnixStream::pair() else {
        return;
    };
    let Ok(mut drain) = theirs.try_clone() else { return };
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = theirs.write_all(&input);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
    });
    let drainer = std::thread::spawn(move || {
        let _ = std::io::copy(&mut drain, &mut std::io::sink());
    });
    if let Ok(mut q) = crate::source::qmp::Qmp::over(ours, Path::new("fuzz.qmp"), Duration::from_secs(5)) {
        let _ =
            q.execute::<Vec<serde_json::Value>>("query-named-block-nodes", serde_json::json!({"flat": true}));
        let _ = q.transaction(vec![serde_json::json!({"type": "x"})]);
        let _ = q.wait_event("JOB_STATUS_CHANGE", Duration::from_secs(5), |d| {
            d.get("id").is_some()
        });
        while q.execute_value("query-block-jobs", serde_json::json!({})).is_ok() {}
    }
    let _ = feeder.join();
    let _ = drainer.join();
}

/// A peer that sends `input` and takes whatever is written to it.
pub struct Replay<'a> {
    input: &'a [u8],
    pub written: Vec<u8>,
}

impl<'a> Replay<'a> {
    pub fn new(input: &'a [u8]) -> Replay<'a> {
        Replay {
            input,
            written: Vec::new(),
        }
    }
}

impl std::io::Read for Replay<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.input, b)
    }
}

impl std::io::Write for Replay<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::source::qga::Channel for Replay<'_> {
    fn set_read_timeout(&mut self, _: std::time::Duration) -> std::io::Result<()> {
        Ok(())
    }
}

/// A key file (format-spec/key-file.md): parsed and checked, never
/// unwrapped (that costs an argon2id run).
pub fn key_file(data: &[u8]) {
    if let Ok(k) = crate::format::key_file::CheckedKeyFile::parse(data) {
        let _ = k.associated_data();
        let _ = k.to_bytes();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::chunk::{ChunkEncoder, Compression};
    use crate::format::fixed_index::FixedIndexWriter;

    /// Deterministic mutations: bit flips, truncations, byte runs, random tails.
    fn mutations(seed: &[u8], rounds: usize, mut each: impl FnMut(&[u8])) {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        each(seed);
        each(&[]);
        for cut in [1, 7, 55, 56, 57, 127, 128, 129] {
            each(&seed[..seed.len().min(cut)]);
        }
        for _ in 0..rounds {
            let mut m = seed.to_vec();
            for _ in 0..1 + rnd() % 4 {
                if m.is_empty() {
                    break;
                }
                let at = (rnd() as usize) % m.len();
                match rnd() % 4 {
                    0 => m[at] ^= 1 << (rnd() % 8),
                    1 => m.truncate(at),
                    2 => m[at] = 0xff,
                    _ => m.extend((0..rnd() % 64).map(|_| rnd() as u8)),
                }
            }
            each(&m);
        }
    }

    #[test]
    fn chunk_record_never_panics() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        for c in [Compression::None, Compression::Zstd(1)] {
            let rec = ChunkEncoder::new(c).unwrap().encode(&data, Digest::of(&data));
            mutations(&rec, 3000, chunk_record);
        }
    }

    #[test]
    fn sealed_record_never_panics() {
        let keys = std::sync::Arc::new(fuzz_keys());
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        for c in [Compression::None, Compression::Zstd(1)] {
            let rec = ChunkEncoder::new(c)
                .unwrap()
                .with_keys(Some(&keys))
                .encode(&data, keys.hasher().digest(&data));
            let mut dec = ChunkDecoder::for_store(crate::crypto::Protection::Encrypt, Some(&keys)).unwrap();
            assert_eq!(dec.decode(&rec, &keys.hasher().digest(&data)).unwrap(), data);
            mutations(&rec, 3000, sealed_record);
        }
    }

    #[test]
    fn fixed_index_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fidx");
        let w = FixedIndexWriter::create(&path, 300_000, ChunkSize::new(65536).unwrap()).unwrap();
        for i in 0..5 {
            w.set(i, &Digest::of(&[i as u8])).unwrap();
        }
        w.finish([0; 16], 0).unwrap();
        mutations(&std::fs::read(&path).unwrap(), 3000, fixed_index);
    }

    /// A valid server transcript: handshake with two contexts, then a read
    /// answered with data and a hole, and a block status answer.
    pub(crate) fn nbd_transcript() -> Vec<u8> {
        let mut t = Vec::new();
        let opt_reply = |t: &mut Vec<u8>, opt: u32, rep: u32, data: &[u8]| {
            t.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
            t.extend_from_slice(&opt.to_be_bytes());
            t.extend_from_slice(&rep.to_be_bytes());
            t.extend_from_slice(&(data.len() as u32).to_be_bytes());
            t.extend_from_slice(data);
        };
        t.extend_from_slice(b"NBDMAGICIHAVEOPT");
        t.extend_from_slice(&3u16.to_be_bytes());
        opt_reply(&mut t, 8, 1, &[]);
        opt_reply(
            &mut t,
            10,
            4,
            &[&1u32.to_be_bytes()[..], b"base:allocation"].concat(),
        );
        opt_reply(
            &mut t,
            10,
            4,
            &[&2u32.to_be_bytes()[..], b"qemu:dirty-bitmap:b"].concat(),
        );
        opt_reply(&mut t, 10, 1, &[]);
        let mut info = vec![0, 0];
        info.extend_from_slice(&(64u64 << 20).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        opt_reply(&mut t, 7, 3, &info);
        opt_reply(&mut t, 7, 1, &[]);
        let chunk = |t: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, p: &[u8]| {
            t.extend_from_slice(&0x668e_33efu32.to_be_bytes());
            t.extend_from_slice(&flags.to_be_bytes());
            t.extend_from_slice(&kind.to_be_bytes());
            t.extend_from_slice(&cookie.to_be_bytes());
            t.extend_from_slice(&(p.len() as u32).to_be_bytes());
            t.extend_from_slice(p);
        };
        let data = [&(4u64 << 20).to_be_bytes()[..], &[7u8; 100][..]].concat();
        chunk(&mut t, 0, 1, 1, &data);
        let hole = [
            &((4u64 << 20) + 100).to_be_bytes()[..],
            &((1u32 << 20) - 100).to_be_bytes()[..],
        ]
        .concat();
        chunk(&mut t, 1, 2, 1, &hole);
        let status = [1u32, 65536, 0, 983040, 3].map(u32::to_be_bytes).concat();
        chunk(&mut t, 1, 5, 2, &status);
        chunk(&mut t, 1, 0x8001, 3, &[0, 0, 0, 5, 0, 2, b'n', b'o']);
        t
    }

    #[test]
    fn remote_config_never_panics() {
        mutations(
            br#"{"url": "http://127.0.0.1:8333/b/p", "cache_id": "0123456789abcdef0123456789abcdef"}"#,
            3000,
            remote_config,
        );
        mutations(
            b"[default]\naws_access_key_id = A\naws_secret_access_key = S\n[backup]\naws_session_token=T\n",
            3000,
            remote_config,
        );
    }

    #[test]
    fn job_file_never_panics() {
        mutations(include_bytes!("../../packaging/reference.toml"), 3000, job_file);
        mutations(
            b"store = \"/s\"\n[containers]\nguests = [\"a\", { name = \"b\", mode = \"stop\" }]\n[keep]\nlast = 2\n",
            3000,
            job_file,
        );
    }

    #[test]
    fn task_log_never_panics() {
        let keys = fuzz_keys();
        let sealed =
            crate::format::task_log::encode("line one\nline two\n", "vm/1/2026-12-03T02:00:00Z", Some(&keys))
                .unwrap();
        mutations(&sealed, 3000, task_log);
        mutations(b"2026-12-03T02:00:00Z job x\n", 1000, task_log);
        let notes = crate::format::notes::encode("before the upgrade", "vm/1", Some(&keys)).unwrap();
        mutations(&notes, 3000, task_log);
    }

    #[test]
    fn qga_agent_never_panics() {
        let t = b"junk\xff{\"return\": 12}\n{\"return\": {}}\n\n{\"error\": {\"class\": \"X\", \"desc\": \"y\"}}\n";
        mutations(t, 3000, qga_agent);
    }

    #[test]
    fn nbd_server_never_panics() {
        use crate::source::nbd::{handshake, read_reply, Expect, Part};
        let t = nbd_transcript();
        // The transcript is understood as intended...
        let mut r = &t[..];
        let mut sink = Vec::new();
        struct Both<'a, 'b>(&'a mut &'b [u8], &'a mut Vec<u8>);
        impl std::io::Read for Both<'_, '_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                std::io::Read::read(self.0, b)
            }
        }
        impl std::io::Write for Both<'_, '_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = handshake(&mut Both(&mut r, &mut sink), "t", "e", &["base:allocation"]).unwrap();
        assert_eq!(e.size, 64 << 20);
        assert_eq!(e.contexts.len(), 2);
        let expect = |c: u64| {
            Some(Expect {
                offset: 4 << 20,
                len: 1 << 20,
                is_read: c == 1,
            })
        };
        let (c, part, done) = read_reply(&mut r, expect).unwrap();
        assert!(c == 1 && !done && matches!(part, Some(Part::Data { .. })));
        let (_, part, done) = read_reply(&mut r, expect).unwrap();
        assert!(done && matches!(part, Some(Part::Hole { .. })));
        let (_, part, _) = read_reply(&mut r, expect).unwrap();
        assert_eq!(
            part,
            Some(Part::Status {
                context: 1,
                extents: vec![(65536, 0), (983040, 3)]
            })
        );
        // ...and no mutation of it panics.
        mutations(&t, 5000, nbd_server);
    }

    /// What a client sends: structured replies, `base:allocation`, GO,
    /// then a read, a block status, a write with its payload, a flush, a
    /// read beyond the end, an unknown command and a disconnect.
    pub(crate) fn nbd_client_transcript() -> Vec<u8> {
        use crate::format::nbd_wire::*;
        let mut t = 3u32.to_be_bytes().to_vec();
        let option = |t: &mut Vec<u8>, opt: u32, data: &[u8]| {
            t.extend_from_slice(&IHAVEOPT.to_be_bytes());
            t.extend_from_slice(&opt.to_be_bytes());
            t.extend_from_slice(&(data.len() as u32).to_be_bytes());
            t.extend_from_slice(data);
        };
        option(&mut t, OPT_STRUCTURED_REPLY, &[]);
        let mut meta = 1u32.to_be_bytes().to_vec();
        meta.push(b'e');
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&15u32.to_be_bytes());
        meta.extend_from_slice(b"base:allocation");
        option(&mut t, OPT_SET_META_CONTEXT, &meta);
        option(&mut t, OPT_GO, &[0, 0, 0, 0, 0, 1, 0, 3]);
        let request = |t: &mut Vec<u8>, kind: u16, cookie: u64, offset: u64, len: u32| {
            t.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            t.extend_from_slice(&0u16.to_be_bytes());
            t.extend_from_slice(&kind.to_be_bytes());
            t.extend_from_slice(&cookie.to_be_bytes());
            t.extend_from_slice(&offset.to_be_bytes());
            t.extend_from_slice(&len.to_be_bytes());
        };
        request(&mut t, CMD_READ, 1, 4096, 8192);
        request(&mut t, CMD_BLOCK_STATUS, 2, 0, 65536);
        request(&mut t, CMD_WRITE, 3, 100, 4);
        t.extend_from_slice(b"hoar");
        request(&mut t, CMD_FLUSH, 4, 0, 0);
        request(&mut t, CMD_READ, 5, (256 << 10) - 10, 20);
        request(&mut t, 99, 6, 0, 1);
        request(&mut t, CMD_DISC, 7, 0, 0);
        t
    }

    #[test]
    fn nbd_export_never_panics() {
        use crate::format::nbd_wire::*;
        let t = nbd_client_transcript();
        // The transcript is served as intended...
        let mut out = Vec::new();
        let (device, counters, end) = serve_in_memory(&t, &mut out);
        end.unwrap();
        assert_eq!(counters.requests.load(std::sync::atomic::Ordering::Relaxed), 6);
        assert_eq!(counters.failed.load(std::sync::atomic::Ordering::Relaxed), 2);
        use crate::serve::export::device::BlockDevice;
        assert_eq!(device.read(100, 4).unwrap()[0].data(), Some(&b"hoar"[..]));
        // The read's data chunk (4096 bytes of 0x5a, then 4096 of zeros) is in the reply.
        let data_at = out
            .windows(4)
            .position(|w| w == STRUCTURED_REPLY_MAGIC.to_be_bytes())
            .unwrap();
        let reply = &out[data_at..];
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(
            u32::from_be_bytes([reply[16], reply[17], reply[18], reply[19]]),
            8 + 8192
        );
        // ...and no mutation of it panics.
        mutations(&t, 5000, nbd_export);
    }

    #[test]
    fn tree_metadata_never_panics() {
        use crate::archive::{encode_entry, encode_header, Entry, EntryKind};
        let mut s = encode_header().to_vec();
        encode_entry(&Entry::new(Vec::new(), EntryKind::Dir), &mut s);
        let mut f = Entry::new(b"a".to_vec(), EntryKind::File);
        f.size = 10;
        f.xattrs.push((b"user.k".to_vec(), b"v".to_vec()));
        encode_entry(&f, &mut s);
        encode_entry(&Entry::new(b"d".to_vec(), EntryKind::Dir), &mut s);
        let mut l = Entry::new(b"d/l".to_vec(), EntryKind::Symlink);
        l.target = b"../a".to_vec();
        encode_entry(&l, &mut s);
        let mut h = Entry::new(b"d/h".to_vec(), EntryKind::Hardlink);
        h.target = b"a".to_vec();
        encode_entry(&h, &mut s);
        mutations(&s, 5000, tree_metadata);
    }

    #[test]
    fn dynamic_index_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.didx");
        let mut w = crate::format::dynamic_index::DidxWriter::create(&path).unwrap();
        for i in 1..6u64 {
            w.push(i * 1000, &Digest::of(&[i as u8])).unwrap();
        }
        w.finish([0; 16], 0).unwrap();
        mutations(&std::fs::read(&path).unwrap(), 3000, dynamic_index);
    }

    #[test]
    fn manifest_never_panics() {
        let m =
            br#"{"format":"hoard-manifest","version":1,"kind":"vm","id":"1","time":"2026-11-26T07:00:00Z",
            "tool_version":"0.1.0","duration_secs":1.5,"archives":[{"name":"d.img","index":"d.img.fidx",
            "type":"fixed","size":1,"chunk_size":65536,"chunk_count":1,"index_checksum":"00","stats":{
            "bytes_read":1,"new_chunks":1,"reused_chunks":0,"zero_chunks":0,"new_bytes":1,"reused_bytes":0,
            "zero_bytes":0,"stored_bytes":57}}]}"#;
        assert!(Manifest::from_bytes(Path::new("m"), m).is_ok());
        mutations(m, 3000, manifest);
        let mut signed = format!("{{\"mac\":\"{}\",", "0".repeat(64)).into_bytes();
        signed.extend_from_slice(&m[1..]);
        let (mac, text) = crate::format::snapshot::split_mac(&signed);
        assert!(mac.is_some() && Manifest::from_bytes(Path::new("m"), &text).is_ok());
        mutations(&signed, 3000, manifest);
    }

    #[test]
    fn store_config_never_panics() {
        let c = br#"{"format":"hoard-store","version":1,"uuid":"2f1c1a2e-0d8b-4c55-9a61-4b7e4d2f8a10","chunk_size":4194304,"created":"2026-11-26T07:00:00Z"}"#;
        assert!(crate::store::config_read::parse_config(Path::new("s"), c).is_ok());
        mutations(c, 3000, store_config);
    }

    #[test]
    fn known_store_never_panics() {
        let k = br#"{"format":"hoard-known-store","version":1,"location":"/srv/s","uuid":"u","encryption":"encrypt","key_fingerprint":"0123456789abcdef","first_seen":"2026-12-07T06:00:00Z","last_slot":"key-1","newest":{"vm/100":"2026-12-07T06:00:00Z"}}"#;
        assert!(crate::format::known_store::KnownStore::parse(k).is_ok());
        mutations(k, 3000, known_store);
    }

    #[test]
    fn token_list_never_panics() {
        let t = br#"{"format":"hoard-tokens","version":1,"tokens":[{"name":"node1","role":"backup","namespace":"c/n1","hash":"0000000000000000000000000000000000000000000000000000000000000000","created":"2026-12-07T22:00:00Z"}]}"#;
        assert!(crate::format::token_list::TokenList::parse(t).is_ok());
        mutations(t, 3000, token_list);
    }

    #[test]
    fn serve_config_never_panics() {
        let c = b"listen = \"0.0.0.0:8007\"\nstore = \"/srv/s\"\nserver_dir = \"/var/lib/hoard/server\"\ncert_names = [\"a\"]\n";
        assert!(crate::format::serve_config::ServeConfig::parse(std::str::from_utf8(c).unwrap()).is_ok());
        mutations(c, 3000, serve_config);
    }

    #[test]
    fn api_request_never_panics() {
        let r = b"Bearer n1:abababababababababababababababababababababababababababababababab https://[::1]:8007/a/b";
        mutations(r, 3000, api_request);
    }

    #[test]
    fn wire_bodies_never_panic() {
        let mut batch = Vec::new();
        crate::serve::api::wire::push_upload(
            &mut batch,
            &crate::chunking::digest::Digest::of(b"x"),
            5,
            b"record",
        );
        mutations(&batch, 3000, wire_upload);
        let mut answers = vec![2u8];
        crate::serve::api::wire::push_answer(&mut answers, 1, Ok(b"rec"));
        crate::serve::api::wire::push_answer(&mut answers, 0, Err("gone"));
        mutations(&answers, 3000, wire_answers);
        let mut bundle = Vec::new();
        crate::serve::api::wire::push_file(&mut bundle, "vm/100/2026-12-08T00:00:00Z/manifest.json", b"{}");
        crate::serve::api::wire::push_file(&mut bundle, "keys/a.key", b"k");
        mutations(&bundle, 3000, wire_bundle);
        let request = b"vm/100/2026-12-08T00:00:00Z/verify.json\n{\"kind\":\"vm\",\"id\":\"100\",\"time\":\"2026-12-08T00:00:00Z\"}";
        mutations(request, 3000, api_paths);
    }

    #[test]
    fn key_file_never_panics() {
        let key = crate::crypto::master_key::MasterKey::generate().unwrap();
        let file = crate::format::key_wrap::wrap(
            &key,
            b"pw",
            crate::format::key_wrap::KdfCost::FAST,
            "2026-12-02T14:00:00Z",
            crate::format::key_file::KeyFor {
                mode: crate::format::key_file::KeyMode::Encrypt,
                store_version: 3,
            },
        )
        .unwrap()
        .to_bytes();
        assert!(crate::format::key_file::CheckedKeyFile::parse(&file).is_ok());
        mutations(&file, 3000, key_file);
    }

    #[test]
    fn pack_scan_never_panics() {
        let mut pack = b"HRDPACK\0\x01\0\0\0\0\0\0\0".to_vec();
        pack.extend([7u8; 16]);
        for (i, c) in [Compression::None, Compression::Zstd(1)].into_iter().enumerate() {
            let data: Vec<u8> = (0..3000u32).map(|j| (j % (7 + i as u32)) as u8).collect();
            pack.extend(ChunkEncoder::new(c).unwrap().encode(&data, Digest::of(&data)));
        }
        let scan = crate::format::pack::scan_bytes(&pack, None);
        assert!(scan.is_clean() && scan.records.len() == 2);
        mutations(&pack, 3000, pack_scan);
    }

    #[test]
    fn gc_state_never_panics() {
        let s = br#"{"version":1,"next_epoch":4,"epochs":[{"epoch":3,"condemned_ns":1764140400000000000}]}"#;
        assert!(crate::store::gc::GcState::from_bytes(s).is_ok());
        mutations(s, 3000, gc_state);
    }

    #[test]
    fn verify_state_never_panics() {
        let s = br#"{"version":1,"state":"failed","time":"2026-11-26T07:00:00Z","chunks":3,"bad_chunks":["00"],"error":"x"}"#;
        assert!(crate::format::verify_state::VerifyState::from_bytes(s).is_some());
        mutations(s, 3000, verify_state);
        let mut key = vec![0u8];
        key.extend([1u8; 64]);
        assert!(crate::store::chunk_check::parse_work_key(&key).is_some());
        mutations(&key, 3000, verify_state);
    }

    #[test]
    fn session_record_never_panics() {
        let r = b"pid=42 start_ns=1764140400000000000 started=2026-11-26T07:00:00Z backup vm/100";
        assert_eq!(
            crate::store::session::start_ns(&String::from_utf8_lossy(r)),
            1764140400000000000
        );
        mutations(r, 3000, session_record);
    }

    #[test]
    fn lxc_config_never_panics() {
        let c = b"lxc.rootfs.path = dir:/srv/ct/rootfs\nlxc.mount.entry = /srv/v mnt/v none bind 0 0\n\
                  lxc.include = /nonexistent/common.conf\n# comment\nlxc.uts.name = ct\n";
        mutations(c, 3000, lxc_config);
    }

    #[test]
    fn qmp_server_never_panics() {
        let t = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n{\"return\": {}, \"id\": 1}\n\
                  {\"return\": [{\"node-name\": \"n\"}], \"id\": 2}\n{\"event\": \"X\", \"data\": {}}\n\
                  {\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 3}\n\
                  {\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\"}}\n";
        mutations(t, 1500, qmp_server);
    }
}
