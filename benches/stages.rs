//! Criterion benches of the backup stages on one 4 MiB chunk of disk-like
//! data: zero check + fixed chunking, BLAKE3, zstd encode/decode, pack append;
//! and content-defined chunking, public and keyed, on 16 MiB.
//! `cargo bench -p hoard-engine`; compare runs with `--save-baseline NAME`
//! and `--baseline NAME`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hoard_engine::{
    is_zero, ChunkDecoder, ChunkEncoder, ChunkSize, Compression, Digest, LocalDir, PackWriter,
};

const CHUNK: usize = 4 << 20;

/// Half text-like, half noise: compresses roughly like a system disk.
fn disk_like() -> Vec<u8> {
    hoard_engine::bench::disk_like(CHUNK)
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

/// Every cut of `data` by `cut` (the length of the first chunk of a slice).
fn cut_all(data: &[u8], cut: impl Fn(&[u8]) -> usize) -> usize {
    let (mut at, mut n) = (0, 0);
    while at < data.len() {
        at += cut(&data[at..]).max(1);
        n += 1;
    }
    n
}

/// The keyed chunker of protected stores against FastCDC's public one, on
/// the same 16 MiB, at the default tree average (1 MiB), at 64 KiB and at
/// the smallest average a tree may have (4 KiB).
fn chunking(c: &mut Criterion) {
    let data = hoard_engine::bench::disk_like(16 << 20);
    use hoard_engine::keyed_cdc;
    let key = keyed_cdc::ChunkerKey::new(&[0x5a; 32]);
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    for avg in [1usize << 20, 64 << 10, 4 << 10] {
        let (min, max) = (avg / 4, avg * 4);
        g.bench_function(format!("fastcdc_public_{}k", avg >> 10), |b| {
            b.iter(|| {
                cut_all(&data, |s| {
                    fastcdc::v2020::FastCDC::new(s, min as u32, avg as u32, max as u32)
                        .cut(0, s.len())
                        .1
                })
            })
        });
        g.bench_function(format!("keyed_{}k", avg >> 10), |b| {
            b.iter(|| cut_all(&data, |s| key.cut(s, min, avg, max)))
        });
    }
    g.finish();
}

criterion_group!(benches, stages, chunking);
criterion_main!(benches);
