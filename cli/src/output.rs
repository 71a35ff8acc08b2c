//! What the commands print: human summaries and --json documents.

use std::path::Path;

use hoard_engine::{ArchiveStats, ChunkSize, Manifest, RestoreReport, VerifyState};
use serde_json::json;

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

/// Prints a `--json` document: an object with its schema version
/// (format-spec/json.md).
pub fn print_json(doc: impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", json_text(doc)?);
    Ok(())
}

/// The text of a `--json` document, for a caller that prints it elsewhere.
pub fn json_text(doc: impl serde::Serialize) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(doc)?;
    match &mut v {
        serde_json::Value::Object(m) => {
            m.insert("schema".into(), json!(JSON_SCHEMA));
        }
        _ => anyhow::bail!("internal: a --json document must be an object"),
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

/// A file time as RFC 3339 UTC with nanoseconds (format-spec/json.md).
pub fn rfc3339(t: hoard_engine::Time) -> String {
    let at = if t.sec >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(t.sec as u64, t.nsec)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(t.sec.unsigned_abs())
    };
    humantime::format_rfc3339_nanos(at).to_string()
}

/// The version of every `--json` document (format-spec/json.md).
pub const JSON_SCHEMA: u32 = 1;

/// Bytes per second, whole.
pub fn bytes_per_sec(bytes: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    }
}

/// `1.5 GiB`: IEC units, one decimal.
pub(crate) fn iec(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A rate in IEC units: `123.4 MiB/s`.
pub fn iec_rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", iec(bytes_per_sec(bytes, secs)))
}

/// The `--json` document of every backup command; `disks`: a live VM
/// backup's per-disk reports.
pub fn backup_json(m: &Manifest, disks: Option<serde_json::Value>) -> serde_json::Value {
    let sum = |f: fn(&ArchiveStats) -> u64| m.archives.iter().map(|a| f(&a.stats)).sum::<u64>();
    let read = sum(|s| s.bytes_read);
    json!({
        "snapshot": m.name().to_string(),
        "host": m.host,
        "mode": m.mode,
        "vm": m.vm,
        "ct": m.ct,
        "disks": disks,
        "duration_secs": m.duration_secs,
        "bytes_read": read,
        "new_chunks": sum(|s| s.new_chunks),
        "reused_chunks": sum(|s| s.reused_chunks),
        "zero_chunks": sum(|s| s.zero_chunks),
        "new_bytes": sum(|s| s.new_bytes),
        "stored_bytes": sum(|s| s.stored_bytes),
        "bytes_per_sec": bytes_per_sec(read, m.duration_secs),
        "archives": m.archives,
    })
}

pub fn print_backup(m: &Manifest, json: bool) -> anyhow::Result<()> {
    let sum = |f: fn(&ArchiveStats) -> u64| m.archives.iter().map(|a| f(&a.stats)).sum::<u64>();
    let read = sum(|s| s.bytes_read);
    if json {
        return print_json(backup_json(m, None));
    }
    println!("{}", m.name());
    for a in &m.archives {
        let s = &a.stats;
        eprintln!(
            "  {}: {} read, chunks {} new / {} reused / {} zero, {} new stored as {}",
            a.name,
            iec(s.bytes_read),
            s.new_chunks,
            s.reused_chunks,
            s.zero_chunks,
            iec(s.new_bytes),
            iec(s.stored_bytes)
        );
    }
    eprintln!(
        "  {} in {:.2} s ({})",
        iec(read),
        m.duration_secs,
        iec_rate(read, m.duration_secs)
    );
    Ok(())
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
            iec(a.logical_size()),
            ChunkSize::new(a.chunk_size).map_or_else(|_| a.chunk_size.to_string(), |c| c.to_string()),
            crate::listing::chunk_count(a),
            s.new_chunks,
            s.reused_chunks,
            s.zero_chunks,
            iec(s.new_bytes),
            iec(s.stored_bytes)
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
pub fn print_restore(r: &RestoreReport, target: &Path, json: bool) -> anyhow::Result<()> {
    for m in &r.leftovers_removed {
        eprintln!("hoard: {m}");
    }
    let text = if json {
        json_text(json!({
            "target": target.display().to_string(),
            "bytes": r.bytes,
            "chunks": r.chunks,
            "zero_chunks": r.zero_chunks,
            "duration_secs": r.seconds,
            "bytes_per_sec": bytes_per_sec(r.bytes, r.seconds),
            "missing": r.missing,
        }))?
    } else {
        format!(
            "restored {} to {} ({} chunks, {} zero) in {:.2} s ({})",
            iec(r.bytes),
            if target == Path::new("-") {
                "standard output".into()
            } else {
                target.display().to_string()
            },
            r.chunks,
            r.zero_chunks,
            r.seconds,
            iec_rate(r.bytes, r.seconds)
        )
    };
    if target == Path::new("-") {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_iec_units() {
        assert_eq!(iec(0), "0 B");
        assert_eq!(iec(1023), "1023 B");
        assert_eq!(iec(1536), "1.5 KiB");
        assert_eq!(iec(3 << 30), "3.0 GiB");
        assert_eq!(iec_rate(3 << 20, 2.0), "1.5 MiB/s");
    }
}
