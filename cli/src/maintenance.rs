//! The store-maintenance commands: verify, prune, protect, forget, gc,
//! index rebuild, check.

use anyhow::{bail, Result};
use hoard_engine::{
    check_store, gc, prune, rebuild_index, verify as verify_snapshots, GcOptions, KeepOptions, Kind,
    Protected, PruneReport, Repository, SnapshotName, SnapshotRef, VerifyOptions,
};

use crate::args::kind_arg;
use crate::exit::Incomplete;
use crate::open::store_path;
use crate::open::StoreArgs;
use crate::output::peak_rss_mib;
use crate::output::{iec, iec_rate};
use crate::progress::Bar;

/// Read back and check every chunk the snapshots reference (each once).
///
/// SNAPSHOT is KIND/ID/TIME, or KIND/ID for every snapshot of that group;
/// none means all. The result is recorded per snapshot; damaged chunks are
/// dropped from the index so the next backup stores them again. Exits with
/// status 1 if a snapshot failed.
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct Verify {
    /// Snapshots (KIND/ID/TIME) or groups (KIND/ID: every snapshot of
    /// it); none: all.
    pub(crate) snapshots: Vec<String>,
    /// Skip snapshots whose last verification passed.
    #[arg(long)]
    pub(crate) ignore_verified: bool,
    /// With --ignore-verified: re-verify snapshots verified more than DAYS ago.
    #[arg(long, value_name = "DAYS", requires = "ignore_verified")]
    pub(crate) outdated_after: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    pub(crate) threads: usize,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Remove snapshots that a retention policy does not keep (PBS semantics).
///
/// Per group, the options apply in the order last, hourly, daily, weekly,
/// monthly, yearly; each keeps the newest snapshot of each of its N newest
/// buckets (UTC) not already kept. Protected snapshots are always kept.
/// Prune removes snapshots only: `hoard gc` frees their space. Only
/// snapshots that count are counted or removed: a manifest that does not
/// load (with a key source: fails its MAC), or a time more than 15
/// minutes ahead, is named in `ignored` and left alone.
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct Prune {
    /// Only these groups (KIND/ID, e.g. vm/100), as PBS's
    /// `prune vm/100`; without one, every group (or --kind/--id).
    #[arg(value_name = "GROUP", conflicts_with = "kind")]
    pub(crate) groups: Vec<String>,
    /// Only this kind (with --id: only this group).
    #[arg(long, value_parser = kind_arg())]
    #[serde(serialize_with = "crate::argv::as_text_opt")]
    pub(crate) kind: Option<Kind>,
    /// With --kind: only this group id.
    #[arg(long, requires = "kind")]
    pub(crate) id: Option<String>,
    /// Keep the N newest snapshots.
    #[arg(long)]
    pub(crate) keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long)]
    pub(crate) keep_hourly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest days (UTC) that have one.
    #[arg(long)]
    pub(crate) keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one.
    #[arg(long)]
    pub(crate) keep_weekly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest months that have one.
    #[arg(long)]
    pub(crate) keep_monthly: Option<usize>,
    /// Keep the newest snapshot of each of the N newest years that have one.
    #[arg(long)]
    pub(crate) keep_yearly: Option<usize>,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Free the space of chunks no snapshot references, safely next to running backups.
///
/// A chunk is removed at the second gc after it became unreferenced, once
/// no backup that could still claim it is running (format-spec/gc.md).
/// A pack is walked before it is deleted or rewritten: a damaged one, or
/// one holding chunks that snapshots reference but the index does not
/// list, is kept (exit status 3: run `hoard index rebuild`). A snapshot
/// whose manifest or index file cannot be read or does not match stops
/// gc with an error naming it (`hoard forget` gives it up). A second gc
/// at the same time is refused. In an encrypted or signed store a copy
/// of a chunk is given up for another only if that one passes a full
/// check, which needs the key: without it such packs are kept
/// (`packs_kept_for_key`, not an error).
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct Gc {
    /// Rewrite packs whose live share of bytes is below this fraction (0 disables).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) repack_below: f64,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Read and verify every record of every pack; list damaged packs and chunks.
///
/// In an encrypted or signed store, given the key (HOARD_PASSWORD_FILE,
/// --keyfile, ...) every record is checked in full (tag, keyed digest);
/// without it, by CRC only. Entries of packs that are gone are dropped.
/// Exits with status 1 if anything is damaged or missing.
#[derive(clap::Args)]
pub(crate) struct Check {
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    threads: usize,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    json: bool,
}

pub(crate) fn verify(at: &StoreArgs, a: Verify) -> Result<()> {
    let Verify {
        snapshots,
        ignore_verified,
        outdated_after,
        threads,
        json,
    } = a;
    // With a key source, a full verify; without one, a protected
    // store is checked by CRC only (what a server without the key does).
    let store = &*crate::open::open_repo(at, false)?;
    let selected = select_snapshots(store, &snapshots)?;
    let opts = VerifyOptions {
        ignore_verified,
        outdated_after: outdated_after.map(|d| std::time::Duration::from_secs(d * 86400)),
        threads,
    };
    let report = verify_snapshots(store, &selected, &opts, &Bar::new(json))?;
    if report.crc_only {
        eprintln!("hoard: note: verified without the key: records checked by CRC only (bit rot), not decrypted, hashed or authenticated; give the key (HOARD_PASSWORD_FILE, --keyfile, ...) for a full verify");
    }
    if json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "verified {} chunks ({}) of {} snapshots in {:.2} s ({}); {} skipped as recently verified",
            report.chunks,
            iec(report.bytes),
            report.snapshots_verified.len() + report.snapshots_failed.len(),
            report.seconds,
            iec_rate(report.bytes, report.seconds),
            report.snapshots_skipped.len()
        );
        for b in &report.bad_chunks {
            println!("  bad chunk {}: {}", b.digest, b.reason);
            for r in &b.referenced_by {
                println!("    referenced by {r}");
            }
        }
        for f in &report.snapshots_failed {
            println!("  FAILED {f}");
        }
        for u in &report.unreadable {
            println!("  unreadable: {u}");
        }
        for p in &report.packs_missing {
            println!("  missing pack {p}: its entries were dropped, so no backup reuses them");
        }
        for f in &report.snapshots_forgotten {
            println!("  forgotten while verify ran (not verified): {f}");
        }
    }
    for n in &report.not_recorded {
        eprintln!("hoard: warning: result not recorded in verify.json: {n}");
    }
    if !report.snapshots_failed.is_empty() {
        bail!("{} snapshots failed verification", report.snapshots_failed.len());
    }
    Ok(())
}

pub(crate) fn prune_groups(at: &StoreArgs, a: Prune) -> Result<()> {
    let Prune {
        groups,
        kind,
        id,
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        dry_run,
        json,
    } = a;
    // With a key source, manifests are authenticated and only the
    // ones that pass count; without, they must still load.
    let store = crate::open::open_repo(at, false)?;
    let keep = KeepOptions {
        last: keep_last,
        hourly: keep_hourly,
        daily: keep_daily,
        weekly: keep_weekly,
        monthly: keep_monthly,
        yearly: keep_yearly,
    };
    if !keep.any() {
        bail!("no --keep-* option given: prune would remove every snapshot");
    }
    let report = if groups.is_empty() {
        prune(store.catalogue(), kind, id.as_deref(), &keep, dry_run)?
    } else {
        let mut all = PruneReport {
            dry_run,
            ..Default::default()
        };
        for g in &groups {
            let SnapshotRef::Newest { kind, id } = g.parse::<SnapshotRef>()? else {
                bail!("prune {g}: give a group, KIND/ID (prune applies a policy to a group's snapshots; `hoard forget` removes one)");
            };
            let r = prune(store.catalogue(), Some(kind), Some(&id), &keep, dry_run)?;
            all.snapshots.extend(r.snapshots);
            all.removed += r.removed;
            all.kept += r.kept;
            all.ignored.extend(r.ignored);
            all.protection_ignored.extend(r.protection_ignored);
        }
        all
    };
    if json {
        crate::output::print_json(&report)?;
    } else {
        for e in &report.snapshots {
            println!("{:9} {}", format!("{:?}", e.mark).to_lowercase(), e.snapshot);
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        println!("{verb} {} snapshots, kept {}", report.removed, report.kept);
    }
    for i in &report.ignored {
        eprintln!(
            "hoard: warning: {} not counted and left alone: {}",
            i.snapshot, i.why
        );
    }
    for i in &report.protection_ignored {
        eprintln!("hoard: warning: {}: {}", i.snapshot, i.why);
    }
    Ok(())
}

pub(crate) fn collect(at: &StoreArgs, a: Gc) -> Result<()> {
    let Gc { repack_below, json } = a;
    // With the key, another copy of a chunk is checked in full
    // before this one is given up (format-spec/gc.md).
    let store = crate::open::open_keyed_if_given(at)?;
    let report = gc(&store, &GcOptions { repack_below }, &Bar::new(json))?;
    let peak = peak_rss_mib();
    for m in &report.stale_sessions_removed {
        eprintln!("hoard: {m}");
    }
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["peak_rss_mib"] = serde_json::to_value(peak)?;
        crate::output::print_json(v)?;
    } else {
        println!(
                "gc epoch {}: {} snapshots, {} chunks referenced ({}), dedup factor {:.2}, {:.1} s, peak memory {} MiB",
                report.epoch,
                report.snapshots,
                report.chunks_referenced,
                iec(report.bytes_kept),
                report.dedup_factor,
                report.seconds,
                peak.map_or("?".into(), |p| p.to_string())
            );
        println!(
            "  removed {} chunks; {} packs deleted, {} rewritten, {} leftovers; {} freed",
            report.chunks_removed,
            report.packs_deleted,
            report.packs_rewritten,
            report.leftovers_removed,
            iec(report.bytes_freed)
        );
        println!(
            "  pending: {} chunks ({}) condemned, removed by a later gc",
            report.chunks_pending,
            iec(report.bytes_pending)
        );
        if !report.postponed_epochs.is_empty() {
            println!(
                "  postponed epochs {:?}: backups started before them still run",
                report.postponed_epochs
            );
        }
    }
    for p in &report.packs_missing {
        eprintln!("hoard: missing pack {p}: its entries were dropped, so no backup reuses them");
    }
    for p in &report.packs_kept_for_key {
        eprintln!("hoard: note: pack kept for a gc with the key: {p}");
    }
    for p in &report.packs_kept {
        eprintln!("hoard: pack kept: {p}");
    }
    if report.chunks_missing > 0 || !report.packs_kept.is_empty() {
        return Err(Incomplete(format!(
                "{} chunks that snapshots reference are not in the chunk index, {} packs kept that looked dead: the store needs `hoard index rebuild` (then `hoard verify`)",
                report.chunks_missing,
                report.packs_kept.len()
            ))
            .into());
    }
    Ok(())
}

pub(crate) fn check(at: &StoreArgs, a: Check) -> Result<()> {
    let Check { threads, json } = a;
    // With a key source, every record is checked in full.
    let store = crate::open::open_keyed_if_given(at)?;
    let report = check_store(&store, threads, &Bar::new(json))?;
    if json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "checked {} packs: {} records, {} of chunk data; {} index entries",
            report.packs,
            report.records,
            iec(report.bytes),
            report.index_entries
        );
        for d in &report.damaged {
            println!("  damaged: {d}");
        }
        for (pack, n) in &report.missing_packs {
            println!("  missing pack {pack} ({n} indexed chunks; their entries were dropped, so no backup reuses them)");
        }
    }
    if !report.is_clean() {
        bail!(
            "{} damaged records or packs, {} missing packs",
            report.damaged.len(),
            report.missing_packs.len()
        );
    }
    Ok(())
}

pub(crate) fn forget(at: &StoreArgs, snapshot: &str) -> Result<()> {
    // With a key source, a protected marker counts only when its
    // MAC checks; without, any marker does.
    let store = crate::open::open_repo(at, false)?;
    let name = match snapshot.parse::<SnapshotRef>()? {
        SnapshotRef::Exact(n) => n,
        SnapshotRef::Newest { .. } => bail!("forget needs an exact snapshot KIND/ID/TIME"),
    };
    if let Protected::Ignored(why) = store.catalogue().protection(&name) {
        eprintln!("hoard: warning: {name}: {why}");
    }
    store.catalogue().forget(&name)?;
    drop(store);
    if at.repo.is_none() {
        // This host's memory of a local store (a server keeps its own).
        crate::known::forgot(&crate::open::open_keyed_if_given(at)?, &name);
    }
    println!("forgot {name}");
    Ok(())
}

pub(crate) fn rebuild(at: &StoreArgs, json: bool) -> Result<()> {
    // With a key source, every record is checked in full.
    let root = store_path(at)?;
    let report = rebuild_index(
        &root,
        crate::keys::config_keys(&root, at.keyfile())?,
        &Bar::new(json),
    )?;
    for m in &report.stale_sessions_removed {
        eprintln!("hoard: {m}");
    }
    if json {
        crate::output::print_json(&report)?;
    } else {
        println!(
            "index rebuilt from {} packs: {} chunks ({} records, {} duplicates)",
            report.packs, report.chunks, report.records, report.duplicates
        );
        if report.records_rescued > 0 {
            println!(
                "  {} intact records copied out of damaged packs",
                report.records_rescued
            );
        }
    }
    for m in &report.leftovers_removed {
        eprintln!("hoard: {m}");
    }
    for d in &report.damaged {
        eprintln!("hoard: damaged, skipped: {d}");
    }
    for q in &report.quarantined {
        eprintln!("hoard: quarantined damaged pack as {q}");
    }
    if !report.damaged.is_empty() {
        return Err(Incomplete(format!(
                "{} damaged byte ranges skipped (nothing in them indexed); `hoard verify` shows the snapshots that lost chunks",
                report.damaged.len()
            ))
            .into());
    }
    Ok(())
}

pub(crate) fn set_protected(at: &StoreArgs, snapshot: &str, protect: bool) -> Result<()> {
    // A protected store's marker carries a MAC: protecting needs the key.
    let store = crate::open::open_repo(at, protect)?;
    let name = store.catalogue().find(snapshot)?;
    store.catalogue().set_protected(&name, protect)?;
    println!("{} {name}", if protect { "protected" } else { "unprotected" });
    Ok(())
}

/// Snapshot arguments: exact names, or KIND/ID for every snapshot of a group.
fn select_snapshots(store: &dyn Repository, args: &[String]) -> Result<Vec<SnapshotName>> {
    let all = store.catalogue().list()?;
    let mut out = Vec::new();
    for a in args {
        match a.parse::<SnapshotRef>()? {
            SnapshotRef::Exact(n) => out.push(store.catalogue().resolve(&SnapshotRef::Exact(n))?),
            SnapshotRef::Newest { kind, id } => {
                let group: Vec<_> = all
                    .iter()
                    .filter(|n| n.kind == kind && n.id == id)
                    .cloned()
                    .collect();
                if group.is_empty() {
                    bail!("no snapshot {kind}/{id}");
                }
                out.extend(group);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(clap::Subcommand)]
pub(crate) enum IndexCommand {
    /// Rebuild the RocksDB chunk index from the packs alone.
    ///
    /// Every record is checked in full before it is indexed (in an
    /// encrypted or signed store only with the key, HOARD_PASSWORD_FILE or
    /// --keyfile; without it by CRC); the walk goes on past damaged bytes. A damaged pack's intact records are copied to
    /// a new pack and the pack is kept as PACKID.pack.bad. Exits with status
    /// 3, listing every damaged byte range, when anything was skipped.
    /// Needs the store to itself: refused while backups or other maintenance run.
    Rebuild {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
}
