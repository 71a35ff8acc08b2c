//! The bytes of the server API's binary bodies (format-spec/server.md,
//! "Chunk batches"): chunks go up and come down in batches, so one request
//! carries many small chunks and the per-request cost is paid once per
//! batch, not once per chunk.
//!
//! An upload batch is a sequence of items, each
//! `digest[32] raw_len:u32le record_len:u32le record[record_len]`.
//! A read answer is a sequence of `index:u32le status:u8 len:u32le
//! bytes[len]`, one per asked digest in any order (the server reads in
//! the order its packs keep them; `index` is the digest's place in the
//! request): status 0 and a chunk record, or a non-zero status and a
//! UTF-8 reason.

use crate::chunking::chunker::MAX_CHUNK_SIZE;
use crate::chunking::digest::Digest;

/// The request header that names the namespace a request is for.
pub const NAMESPACE_HEADER: &str = "hoard-namespace";

/// The request header that names the client process (32 hex digits).
pub const CLIENT_HEADER: &str = "hoard-client";

/// The largest record a batch may carry: the largest chunk, stored raw,
/// with room for any record header and seal.
pub const MAX_RECORD: usize = MAX_CHUNK_SIZE as usize + 4096;

/// The largest batch body a server takes: a client closes a batch once it
/// passes [`BATCH_TARGET`], so this leaves room for one largest record.
pub const MAX_BATCH: usize = BATCH_TARGET + MAX_RECORD + ITEM_HEADER;

/// Where a client closes an upload batch.
pub const BATCH_TARGET: usize = 8 << 20;

/// Most digests one read request may ask for.
pub const MAX_READ_DIGESTS: usize = 4096;

const ITEM_HEADER: usize = 32 + 4 + 4;

/// One chunk of an upload batch, borrowed from the body.
#[derive(Debug, PartialEq, Eq)]
pub struct UploadItem<'a> {
    pub digest: Digest,
    pub raw_len: u32,
    pub record: &'a [u8],
}

/// Appends one chunk to an upload batch.
pub fn push_upload(batch: &mut Vec<u8>, digest: &Digest, raw_len: u32, record: &[u8]) {
    batch.extend_from_slice(&digest.0);
    batch.extend_from_slice(&raw_len.to_le_bytes());
    batch.extend_from_slice(&(record.len() as u32).to_le_bytes());
    batch.extend_from_slice(record);
}

/// Reads an upload batch; an error says what is wrong and where.
pub fn parse_upload(mut body: &[u8]) -> Result<Vec<UploadItem<'_>>, String> {
    if body.len() > MAX_BATCH {
        return Err(format!("a batch of {} bytes, more than {MAX_BATCH}", body.len()));
    }
    let mut items = Vec::new();
    let mut at = 0usize;
    while !body.is_empty() {
        if body.len() < ITEM_HEADER {
            return Err(format!(
                "item at byte {at}: {} bytes, shorter than its header",
                body.len()
            ));
        }
        let digest = Digest::from_slice(&body[..32]).ok_or("a digest of 32 bytes")?;
        let raw_len = u32_at(body, 32);
        let record_len = u32_at(body, 36) as usize;
        if record_len > MAX_RECORD || raw_len as u64 > MAX_CHUNK_SIZE {
            return Err(format!(
                "item at byte {at}: record of {record_len} bytes for a chunk of {raw_len}, larger than any chunk"
            ));
        }
        let rest = &body[ITEM_HEADER..];
        if rest.len() < record_len {
            return Err(format!(
                "item at byte {at}: record of {record_len} bytes, but {} remain",
                rest.len()
            ));
        }
        items.push(UploadItem {
            digest,
            raw_len,
            record: &rest[..record_len],
        });
        body = &rest[record_len..];
        at += ITEM_HEADER + record_len;
    }
    Ok(items)
}

/// Reads the body of a read request: digests, 32 bytes each.
pub fn parse_digests(body: &[u8]) -> Result<Vec<Digest>, String> {
    if !body.len().is_multiple_of(32) {
        return Err(format!(
            "{} bytes, not a whole number of 32-byte digests",
            body.len()
        ));
    }
    if body.len() / 32 > MAX_READ_DIGESTS {
        return Err(format!(
            "{} digests, more than {MAX_READ_DIGESTS} in one request",
            body.len() / 32
        ));
    }
    Ok(body.chunks_exact(32).filter_map(Digest::from_slice).collect())
}

/// Appends the answer for the `index`th digest asked: a record, or why
/// there is none.
pub fn push_answer(out: &mut Vec<u8>, index: u32, answer: Result<&[u8], &str>) {
    let (status, bytes) = match answer {
        Ok(record) => (0u8, record),
        Err(why) => (1u8, why.as_bytes()),
    };
    out.extend_from_slice(&index.to_le_bytes());
    out.push(status);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the answer to a read of `asked` digests: for each, in the order
/// asked, its record or the server's reason. Every digest must be
/// answered exactly once.
pub fn parse_answers(mut body: &[u8], asked: usize) -> Result<Vec<Result<&[u8], String>>, String> {
    let mut out: Vec<Option<Result<&[u8], String>>> = Vec::new();
    out.resize_with(asked.min(MAX_READ_DIGESTS), || None);
    if asked > MAX_READ_DIGESTS {
        return Err(format!("{asked} digests asked, more than {MAX_READ_DIGESTS}"));
    }
    let mut n = 0;
    while !body.is_empty() {
        if body.len() < 9 {
            return Err(format!(
                "answer {n}: {} bytes, shorter than its header",
                body.len()
            ));
        }
        let (index, status, len) = (u32_at(body, 0) as usize, body[4], u32_at(body, 5) as usize);
        let rest = &body[9..];
        if len > MAX_RECORD || rest.len() < len {
            return Err(format!(
                "answer {n}: {len} bytes announced, {} remain",
                rest.len()
            ));
        }
        let slot = out
            .get_mut(index)
            .ok_or_else(|| format!("answer {n}: for digest {index} of {asked}"))?;
        if slot.is_some() {
            return Err(format!("answer {n}: digest {index} answered twice"));
        }
        let bytes = &rest[..len];
        *slot = Some(match status {
            0 => Ok(bytes),
            _ => Err(String::from_utf8_lossy(bytes).into_owned()),
        });
        body = &rest[len..];
        n += 1;
    }
    out.into_iter()
        .enumerate()
        .map(|(i, a)| a.ok_or_else(|| format!("digest {i} of {asked} not answered")))
        .collect()
}

/// Appends one file of a catalogue bundle: `path_len:u16le path
/// len:u32le bytes`, `path` relative to the store's `snapshots/`.
pub fn push_file(out: &mut Vec<u8>, path: &str, bytes: &[u8]) {
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The largest file a catalogue bundle may carry (a task log, a manifest).
pub const MAX_BUNDLED_FILE: usize = 16 << 20;

/// Whether `path` may be in a catalogue bundle: `KIND/ID/TIME/FILE` or
/// `KIND/ID/FILE`, of parts a store's `snapshots/` may hold.
pub fn catalogue_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [kind, id, rest @ ..] if matches!(rest.len(), 1 | 2) => {
            kind.parse::<crate::format::snapshot::Kind>().is_ok()
                && crate::format::snapshot::validate_id(id).is_ok()
                && (rest.len() == 1 || crate::format::snapshot::valid_time(rest[0]))
                && crate::format::snapshot::safe_component(rest[rest.len() - 1])
        }
        _ => false,
    }
}

/// Whether `path` may be in a key bundle: `config.json`, or a key slot
/// `keys/NAME.key`.
pub fn key_bundle_path(path: &str) -> bool {
    path == "config.json"
        || path
            .strip_prefix("keys/")
            .and_then(|n| n.strip_suffix(".key"))
            .is_some_and(crate::format::snapshot::safe_component)
}

/// Reads a bundle of files (a catalogue, the config and key slots). Every
/// path must pass `valid` (checked here, so the client's copy is written
/// only where it belongs).
pub fn parse_files(mut body: &[u8], valid: fn(&str) -> bool) -> Result<Vec<(&str, &[u8])>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let n = out.len();
        if body.len() < 2 {
            return Err(format!("file {n}: truncated header"));
        }
        let path_len = u16::from_le_bytes([body[0], body[1]]) as usize;
        if body.len() < 2 + path_len + 4 {
            return Err(format!("file {n}: truncated header"));
        }
        let path =
            std::str::from_utf8(&body[2..2 + path_len]).map_err(|_| format!("file {n}: a path not UTF-8"))?;
        if !valid(path) {
            return Err(format!("file {n}: {path:?} is not a file this bundle may hold"));
        }
        let len = u32_at(body, 2 + path_len) as usize;
        let rest = &body[2 + path_len + 4..];
        if len > MAX_BUNDLED_FILE || rest.len() < len {
            return Err(format!(
                "file {n} ({path}): {len} bytes announced, {} remain",
                rest.len()
            ));
        }
        out.push((path, &rest[..len]));
        body = &rest[len..];
    }
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_batches_round_trip_and_refuse_lies() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut batch = Vec::new();
        push_upload(&mut batch, &a, 1, b"record a");
        push_upload(&mut batch, &b, 7, b"");
        let items = parse_upload(&batch).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].digest, items[0].raw_len, items[0].record),
            (a, 1, &b"record a"[..])
        );
        assert_eq!(
            (items[1].digest, items[1].raw_len, items[1].record),
            (b, 7, &b""[..])
        );
        assert!(parse_upload(&batch[..batch.len() - 1]).is_err());
        assert!(parse_upload(&batch[..10]).is_err());
        let mut huge = Vec::new();
        push_upload(&mut huge, &a, 1, b"");
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_upload(&huge).unwrap_err().contains("larger than any chunk"));
    }

    #[test]
    fn catalogue_bundles_round_trip_and_stay_inside_the_store() {
        let mut body = Vec::new();
        push_file(&mut body, "vm/100/2026-12-08T00:00:00Z/manifest.json", b"{}");
        push_file(&mut body, "vm/100/notes", b"n");
        let files = parse_files(&body, catalogue_path).unwrap();
        assert_eq!(files[1], ("vm/100/notes", &b"n"[..]));
        for evil in ["../../etc/passwd", "vm/../x/y", "vm/100", "/vm/1/x", "vm/1/2/3/4"] {
            let mut b = Vec::new();
            push_file(&mut b, evil, b"x");
            assert!(parse_files(&b, catalogue_path).is_err(), "{evil}");
        }
        assert!(parse_files(&body[..body.len() - 1], catalogue_path).is_err());
        assert!(key_bundle_path("keys/admin.key") && key_bundle_path("config.json"));
        for evil in [
            "keys/../config.json",
            "keys/.key",
            "index/CURRENT",
            "keys/a/b.key",
        ] {
            assert!(!key_bundle_path(evil), "{evil}");
        }
    }

    #[test]
    fn read_answers_round_trip_and_must_answer_every_digest() {
        let mut body = Vec::new();
        push_answer(&mut body, 1, Err("not readable"));
        push_answer(&mut body, 0, Ok(b"rec"));
        let answers = parse_answers(&body, 2).unwrap();
        assert_eq!(answers[0], Ok(&b"rec"[..]));
        assert_eq!(answers[1], Err("not readable".to_string()));
        assert!(parse_answers(&body, 3).is_err());
        assert!(parse_answers(&body, 1).is_err());
        assert!(parse_answers(&body[..body.len() - 2], 2).is_err());
        let mut twice = body.clone();
        push_answer(&mut twice, 0, Ok(b"again"));
        assert!(parse_answers(&twice, 2).unwrap_err().contains("twice"));
        assert!(parse_digests(&[0; 33]).is_err());
        assert_eq!(parse_digests(&[0; 64]).unwrap().len(), 2);
    }
}
