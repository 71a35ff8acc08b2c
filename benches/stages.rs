//! Criterion benches of the backup stages on one 4 MiB chunk of disk-like
//! data: zero check + fixed chunking, BLAKE3, zstd encode/decode, pack append.
//! `cargo bench -p hoard-engine`; compare runs with `--save-baseline NAME`
//! and `--baseline NAME`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hoard_engine::chunking::chunker::ChunkSize;
use hoard_engine::chunking::digest::{is_zero, Digest};
use hoard_engine::format::chunk::{ChunkEncoder, Compression};
use hoard_engine::format::chunk_decoder::ChunkDecoder;
use hoard_engine::store::local_dir::LocalDir;
use hoard_engine::store::packs::PackWriter;

const CHUNK: usize = 4 << 20;

/// Half text-like, half noise: compresses roughly like a system disk.
fn disk_like() -> Vec<u8> {
    hoard_engine::ops::bench::disk_like(CHUNK)
}

fn stages(c: &mut Criterion) {
    let data = disk_like();
    let zeros = vec![0u8; CHUNK];
    let digest = Digest::of(&data);
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.sample_size(20);

    g.bench_function("zero_check_of_zero_chunk", |b| b.iter(|| is_zero(&zeros)));
    g.bench_function("fixed_chunking_1gib_spans", |b| {
        let cs = ChunkSize::new(CHUNK as u64).unwrap();
        b.iter(|| {
            (0..cs.count(1 << 30))
                .map(|i| cs.span(i, 1 << 30).1)
                .sum::<usize>()
        })
    });
    g.bench_function("blake3", |b| b.iter(|| Digest::of(&data)));
    for level in [1, 3] {
        let mut enc = ChunkEncoder::new(Compression::Zstd(level)).unwrap();
        g.bench_function(format!("zstd_{level}_encode_record"), |b| {
            b.iter(|| enc.encode(&data, digest))
        });
    }
    let record = ChunkEncoder::new(Compression::Zstd(1))
        .unwrap()
        .encode(&data, digest);
    let mut dec = ChunkDecoder::new().unwrap();
    let mut out = vec![0u8; CHUNK];
    g.bench_function("decode_verify_record", |b| {
        b.iter(|| dec.decode_to_slice(&record, &digest, &mut out).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let packs = LocalDir::new(dir.path());
    g.bench_function("pack_append", |b| {
        let mut w = PackWriter::create(&packs).unwrap();
        b.iter(|| {
            if w.len() > 256 << 20 {
                std::mem::replace(&mut w, PackWriter::create(&packs).unwrap()).abort();
            }
            w.append(&record, digest, CHUNK as u32).unwrap()
        });
        w.abort();
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
