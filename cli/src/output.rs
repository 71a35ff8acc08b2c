//! What the commands print: human summaries and --json documents.

use std::path::Path;

use hoard_engine::chunking::chunker::ChunkSize;
use hoard_engine::format::snapshot::{self, Manifest};
use hoard_engine::ops::restore::RestoreReport;
use hoard_engine::ops::verify::VerifyState;
use serde_json::json;

use crate::MB;

/// This process's peak resident memory (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

pub fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / MB / secs
    } else {
        0.0
    }
}

pub fn print_backup(m: &Manifest, json: bool) {
    let sum = |f: fn(&snapshot::ArchiveStats) -> u64| m.archives.iter().map(|a| f(&a.stats)).sum::<u64>();
    let read = sum(|s| s.bytes_read);
    if json {
        let v = json!({
            "snapshot": m.name().to_string(),
            "seconds": m.duration_secs,
            "bytes_read": read,
            "chunks_new": sum(|s| s.new_chunks),
            "chunks_reused": sum(|s| s.reused_chunks),
            "chunks_zero": sum(|s| s.zero_chunks),
            "bytes_new": sum(|s| s.new_bytes),
            "bytes_stored": sum(|s| s.stored_bytes),
            "mb_per_s": mbps(read, m.duration_secs),
            "archives": m.archives,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return;
    }
    println!("{}", m.name());
    for a in &m.archives {
        let s = &a.stats;
        eprintln!(
            "  {}: {:.1} MB read, chunks {} new / {} reused / {} zero, {:.1} MB new stored as {:.1} MB",
            a.name,
            s.bytes_read as f64 / MB,
            s.new_chunks,
            s.reused_chunks,
            s.zero_chunks,
            s.new_bytes as f64 / MB,
            s.stored_bytes as f64 / MB
        );
    }
    eprintln!(
        "  {:.1} MB in {:.2} s ({:.0} MB/s)",
        read as f64 / MB,
        m.duration_secs,
        mbps(read, m.duration_secs)
    );
}

pub fn print_show(m: &Manifest, verify_state: Option<VerifyState>, protected: bool) {
    println!("snapshot {}", m.name());
    if protected {
        println!("protected (prune and forget leave it alone)");
    }
    if let Some(mode) = &m.mode {
        println!("mode     {mode}");
    }
    if let Some(vm) = &m.vm {
        println!(
            "guest    agent {}, downtime {:.3} s, frozen {:.3} s",
            vm.guest_agent, vm.downtime_secs, vm.frozen_secs
        );
        for d in &vm.disks {
            println!("bitmap   {} (node {}): {}", d.archive, d.node, d.bitmap);
        }
    }
    if let Some(ct) = &m.ct {
        println!(
            "ct       downtime {:.3} s, frozen {:.3} s, first pass {:.2} s",
            ct.downtime_secs, ct.frozen_secs, ct.first_pass_secs
        );
        for v in &ct.volumes {
            println!("volume   {} <- {} ({})", v.archive, v.mount_point, v.source);
        }
        for s in &ct.skipped_mounts {
            println!("skipped  {} ({}): {}", s.mount_point, s.source, s.why);
        }
    }
    println!(
        "duration {:.2} s, hoard {}{}",
        m.duration_secs,
        m.tool_version,
        m.host
            .as_ref()
            .map_or(String::new(), |h| format!(", on host {h}"))
    );
    match verify_state {
        Some(v) => println!(
            "verified {} at {} ({} chunks, {} bad)",
            v.state,
            v.time,
            v.chunks,
            v.bad_chunks.len()
        ),
        None => println!("verified never"),
    }
    for a in &m.archives {
        let s = &a.stats;
        // A tree's size is its files' bytes, and its chunks both streams'
        // (its entry's own size and count are the metadata stream's).
        println!(
            "  {:16} {:>10}  chunk {:>8}  chunks {} ({} new, {} reused, {} zero)  new {}, stored {}",
            a.name,
            crate::listing::iec(a.logical_size()),
            ChunkSize::new(a.chunk_size).map_or_else(|_| a.chunk_size.to_string(), |c| c.to_string()),
            crate::listing::chunk_count(a),
            s.new_chunks,
            s.reused_chunks,
            s.zero_chunks,
            crate::listing::iec(s.new_bytes),
            crate::listing::iec(s.stored_bytes)
        );
        if let Some(source) = &a.source {
            println!("  {:16} from {source}", "");
        }
        if let (Some(t), Some(p)) = (&a.tree, &a.payload) {
            println!(
                "  {:16} {} entries, {} files of {} bytes ({} unchanged, not read); payload {} bytes in {} chunks ({} bytes held by no file)",
                "",
                t.entries,
                t.files,
                t.file_bytes,
                t.reused_files,
                p.size,
                p.chunk_count,
                p.size.saturating_sub(t.file_bytes)
            );
            if t.unreadable + t.changed_while_read + t.excluded + t.mounts_skipped > 0 {
                println!(
                    "  {:16} {} unreadable, {} changed while read, {} excluded, {} mounts not crossed",
                    "", t.unreadable, t.changed_while_read, t.excluded, t.mounts_skipped
                );
            }
        }
    }
}

/// The summary of an image restore: on stdout, or on stderr when the image
/// itself went to stdout (`-`).
pub fn print_restore(r: &RestoreReport, target: &Path, json: bool) {
    for m in &r.leftovers_removed {
        eprintln!("hoard: {m}");
    }
    let text = if json {
        let v = json!({
            "target": target.display().to_string(),
            "bytes": r.bytes,
            "chunks": r.chunks,
            "chunks_zero": r.zero_chunks,
            "seconds": r.seconds,
            "mb_per_s": mbps(r.bytes, r.seconds),
            "missing": r.missing,
        });
        serde_json::to_string_pretty(&v).expect("json")
    } else {
        format!(
            "restored {} bytes to {} ({} chunks, {} zero) in {:.2} s ({:.0} MB/s)",
            r.bytes,
            if target == Path::new("-") {
                "standard output".into()
            } else {
                target.display().to_string()
            },
            r.chunks,
            r.zero_chunks,
            r.seconds,
            mbps(r.bytes, r.seconds)
        )
    };
    if target == Path::new("-") {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}
