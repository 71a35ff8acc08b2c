//! Peak memory of a backup stays bounded whatever the image size. Alone in
//! its own test binary: a child's peak RSS includes what the parent had
//! mapped when it forked, so no other test may hold large buffers meanwhile.

mod common;

use std::fs::File;
use std::io::Write;
use std::process::Command;

use common::{noise, Env};

#[test]
fn peak_memory_is_bounded_with_the_largest_chunks() {
    let env = Env::new("16M");
    let img = env.path("rand");
    // Incompressible and all new: every buffer in flight is full-size, and
    // zstd output is computed then dropped.
    let mut f = File::create(&img).unwrap();
    for i in 0..64 {
        f.write_all(&noise(600 + i, 16 << 20)).unwrap();
    }
    drop(f);
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["backup", "--id", "mem", &format!("d.img:{}", img.display())])
        .env("HOARD_STORE", &env.store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let peak_mib = usage.ru_maxrss / 1024;
    eprintln!("peak RSS of a 1 GiB backup with 16 MiB chunks: {peak_mib} MiB");
    assert!(peak_mib < 256, "peak RSS {peak_mib} MiB");
}

#[path = "../benches/synthetic_store.rs"]
mod synthetic_store;

/// GC keeps its mark set on disk: its memory does not follow the chunk count.
#[test]
fn gc_memory_does_not_grow_with_chunk_count() {
    let mut peaks = Vec::new();
    for chunks in [300_000u64, 900_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        synthetic_store::build(&store, chunks, 100);
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(["--store", store.to_str().unwrap(), "gc", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["chunks_referenced"], chunks * 9 / 10);
        peaks.push(r["peak_rss_mib"].as_u64().unwrap());
    }
    eprintln!(
        "gc peak RSS: {} MiB at 300k chunks, {} MiB at 900k chunks",
        peaks[0], peaks[1]
    );
    // 3x the chunks, the same memory: RocksDB buffers, no per-chunk state.
    assert!(peaks[1] <= peaks[0] + 6 && peaks[1] < 100, "{peaks:?}");
}
