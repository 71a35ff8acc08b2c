//! GC at scale on a synthetic store: N chunk entries in the index, S
//! snapshots whose fixed indexes reference 90% of them (the rest is garbage).
//! Reports GC time and the GC process's peak RSS, to show that memory does
//! not grow with the number of chunks.
//!
//!   cargo bench -p hoard-engine --bench gc_scale -- 1000000 1000
//!
//! The chunk entries point into packs that do not exist (the bench measures
//! mark and sweep, the part that scales with chunks); GC leaves such entries
//! alone apart from condemning the unreferenced ones.

use std::process::Command;
use std::time::Instant;

use hoard_engine::chunker::ChunkSize;
use hoard_engine::digest::Digest;
use hoard_engine::fixed_index::FixedIndexWriter;
use hoard_engine::gc::{gc, GcOptions};
use hoard_engine::pack::PackId;
use hoard_engine::progress::NoProgress;
use hoard_engine::snapshot::{ArchiveEntry, ArchiveStats, Kind, Manifest, SnapshotName};
use hoard_engine::store::index::IndexBuilder;
use hoard_engine::store::{write_durably, ChunkLocation, Store};

fn digest(i: u64) -> Digest {
    Digest::of(&i.to_le_bytes())
}

fn build(root: &std::path::Path, chunks: u64, snapshots: u64) {
    let store = Store::init(root, ChunkSize::new(65536).unwrap()).unwrap();
    drop(store);
    // Replace the empty index with the synthetic one.
    let index = root.join("index");
    std::fs::remove_dir_all(&index).unwrap();
    let mut b = IndexBuilder::create(&index).unwrap();
    for i in 0..chunks {
        let loc = ChunkLocation {
            pack: PackId([(i % 251) as u8; 16]),
            offset: i * 100,
            record_len: 100,
            raw_len: 65536,
        };
        b.add(digest(i), loc).unwrap();
    }
    b.finish().unwrap();
    let referenced = chunks * 9 / 10;
    let per = referenced / snapshots;
    for s in 0..snapshots {
        let name = SnapshotName {
            kind: Kind::Vm,
            id: format!("{}", s % 50),
            time: format!(
                "2026-01-{:02}T{:02}:{:02}:00Z",
                1 + s / 1440 % 28,
                s / 60 % 24,
                s % 60
            ),
        };
        let dir = name.dir(&root.join("snapshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let size = per * 65536;
        let w =
            FixedIndexWriter::create(&dir.join("d.img.fidx"), size, ChunkSize::new(65536).unwrap()).unwrap();
        for i in 0..per {
            w.set(i, &digest(s * per + i)).unwrap();
        }
        let h = w.finish([0; 16], 0).unwrap();
        let m = Manifest {
            format: "hoard-manifest".into(),
            version: 1,
            kind: name.kind,
            id: name.id.clone(),
            time: name.time.clone(),
            mode: None,
            tool_version: "bench".into(),
            duration_secs: 0.0,
            archives: vec![ArchiveEntry {
                name: "d.img".into(),
                index: "d.img.fidx".into(),
                archive_type: "fixed".into(),
                size,
                chunk_size: 65536,
                chunk_count: per,
                index_checksum: h.checksum.to_hex(),
                stats: ArchiveStats::default(),
            }],
        };
        write_durably(&dir.join("manifest.json"), &m.to_bytes()).unwrap();
    }
}

fn run_gc(root: &std::path::Path) {
    let store = Store::open(root).unwrap();
    let t = Instant::now();
    let r = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    println!(
        "gc: {:.2} s, peak RSS {} MiB, {} snapshots, {} referenced, {} condemned",
        secs,
        usage.ru_maxrss / 1024,
        r.snapshots,
        r.chunks_referenced,
        r.chunks_condemned
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("gc-only") {
        return run_gc(std::path::Path::new(&args[1]));
    }
    let chunks: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let snapshots: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let t = Instant::now();
    build(&root, chunks, snapshots);
    println!(
        "built {chunks} chunks, {snapshots} snapshots in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // GC in a fresh process, so its peak RSS is its own.
    let exe = std::env::current_exe().unwrap();
    for _ in 0..2 {
        let status = Command::new(&exe).arg("gc-only").arg(&root).status().unwrap();
        assert!(status.success());
    }
}
