//! GC at scale on a synthetic store: N chunk entries in the index, S
//! snapshots whose fixed indexes reference 90% of them (the rest is garbage).
//! Reports GC time and the GC process's peak RSS, to show that memory does
//! not grow with the number of chunks.
//!
//!   cargo bench -p hoard-engine --bench gc_scale -- 1000000 1000
//!
//! See benches/synthetic_store.rs for what the store holds.

use std::process::Command;
use std::time::Instant;

use hoard_engine::{gc, GcOptions, NoProgress, Store};

#[path = "synthetic_store.rs"]
mod synthetic_store;

fn run_gc(root: &std::path::Path) {
    let store = Store::open(root).unwrap();
    let t = Instant::now();
    let r = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
    let secs = t.elapsed().as_secs_f64();
    // VmHWM, not getrusage: after a vfork+exec, ru_maxrss starts from the
    // parent's RSS.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    println!(
        "gc: {:.2} s, peak RSS {} MiB, {} snapshots, {} referenced, {} condemned",
        secs,
        hwm_kib / 1024,
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
    synthetic_store::build(&root, chunks, snapshots);
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
