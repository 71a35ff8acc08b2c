//! `hoard stats [GROUP|SNAPSHOT ...]`: space accounting per group and
//! snapshot (what it references, what only it holds) and the store's
//! factors, from the indexes alone (borg's "this archive / deduplicated
//! size", PBS's deduplication factor).

use anyhow::Result;
use hoard_engine::{space, Repository, Space};
use serde_json::json;

/// Space per group and snapshot: what it references, what it stores,
/// what only it holds (what forgetting it would free), and the store's
/// deduplication and compression factors.
///
/// From the index files and the chunk index alone; no pack is read.
/// Uniqueness counts every snapshot of the store, whichever are shown.
#[derive(clap::Args)]
pub(crate) struct Stats {
    /// Only these groups (KIND/ID, e.g. vm/100) or snapshots
    /// (KIND/ID/TIME); the store's totals always cover all.
    #[arg(value_name = "GROUP")]
    pub(crate) groups: Vec<String>,
    /// Print a JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

use crate::output::iec;

pub(crate) fn run(store: &dyn Repository, refs: &[String], json: bool) -> Result<()> {
    let wanted = crate::listing::matcher(refs)?;
    let report = space(store, wanted)?;
    let missing = report.store.missing_chunks;
    if missing > 0 {
        eprintln!("hoard: warning: {missing} referenced chunks are not in the chunk index (their sizes are not counted): run `hoard check`");
    }
    if json {
        let factors = |s: &Space| {
            json!({
                "saving": s.saving_factor(),
                "dedup": s.dedup_factor(),
                "compression": s.compression_factor(),
            })
        };
        let with = |v: serde_json::Value, s: &Space| {
            let mut v = v;
            v["factors"] = factors(s);
            v
        };
        let doc = json!({
            "groups": report.groups.iter().map(|g| with(json!(g), &g.space)).collect::<Vec<_>>(),
            "snapshots": report.snapshots.iter().map(|s| with(json!(s), &s.space)).collect::<Vec<_>>(),
            "store": with(json!(report.store), &report.store),
        });
        return crate::output::print_json(doc);
    }
    if report.snapshots.is_empty() && !refs.is_empty() {
        eprintln!("hoard: no snapshot of those");
    }
    println!(
        "{:<36} {:>10} {:>11} {:>10} {:>13}",
        "GROUP / SNAPSHOT", "LOGICAL", "REFERENCED", "STORED", "ONLY IT HOLDS"
    );
    let row = |name: &str, s: &Space| {
        println!(
            "{:<36} {:>10} {:>11} {:>10} {:>13}",
            name,
            iec(s.logical_bytes),
            iec(s.referenced_bytes),
            iec(s.stored_bytes),
            iec(s.unique_stored_bytes)
        );
    };
    for g in &report.groups {
        row(&g.group, &g.space);
        let prefix = format!("{}/", g.group);
        for s in report
            .snapshots
            .iter()
            .filter(|s| s.snapshot.starts_with(&prefix))
        {
            row(&format!("  {}", &s.snapshot[prefix.len()..]), &s.space);
        }
    }
    let s = &report.store;
    println!(
        "store: {} logical in {} chunks of {} stored as {}: {:.1}x smaller (deduplication {:.2}x, compression {:.2}x)",
        iec(s.logical_bytes),
        s.chunks,
        iec(s.chunk_bytes),
        iec(s.stored_bytes),
        s.saving_factor(),
        s.dedup_factor(),
        s.compression_factor()
    );
    println!("STORED: the distinct chunks it references, after compression; ONLY IT HOLDS: what forgetting it and two gc runs would free");
    Ok(())
}
