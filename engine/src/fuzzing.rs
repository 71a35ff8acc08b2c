//! Entry points for the fuzz targets under fuzz/: each feeds arbitrary bytes
//! to one parser of stored bytes. They must return (Ok or Err), never panic.
//! The unit tests below run them on mutations of valid inputs in every test
//! run, so the guarantee is checked even where cargo-fuzz is not installed.

use std::path::Path;

use crate::chunk::{ChunkDecoder, RecordHeader};
use crate::digest::Digest;
use crate::fixed_index;
use crate::snapshot::Manifest;
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

/// A `.fidx` file.
pub fn fixed_index(data: &[u8]) {
    let _ = fixed_index::parse(Path::new("fuzz.fidx"), data);
}

/// A `manifest.json`.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::from_bytes(Path::new("manifest.json"), data);
    let _ = Digest::from_hex(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkEncoder, Compression};
    use crate::chunker::ChunkSize;
    use crate::fixed_index::FixedIndexWriter;

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
    }
}
