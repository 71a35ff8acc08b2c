//! `hoard`: the command line. Argument parsing and output only; the work is
//! done by hoard-engine.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hoard_engine::backup::{backup_images, BackupOptions, ImageInput};
use hoard_engine::chunk::Compression;
use hoard_engine::chunker::ChunkSize;
use hoard_engine::fixed_index::FixedIndex;
use hoard_engine::gc::{gc, GcOptions};
use hoard_engine::prune::{prune, KeepOptions};
use hoard_engine::repair::{check_store, rebuild_index};
use hoard_engine::restore::{restore_image, RestoreOptions, RestoreReport};
use hoard_engine::snapshot::{self, Kind, Manifest, SnapshotRef};
use hoard_engine::source::FileSource;
use hoard_engine::store::Store;
use hoard_engine::verify::{self as verification, verify, VerifyOptions};
use serde_json::json;

use crate::progress::Bar;

const MB: f64 = 1_000_000.0;

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Deduplicating backups of VM disks and container trees"
)]
struct Cli {
    /// Store directory.
    #[arg(long, env = "HOARD_STORE", global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new, empty store.
    Init {
        /// Default chunk size for image archives: a power of two, 64K..16M.
        #[arg(long, default_value = "4M", value_parser = parse_chunk_size)]
        chunk_size: ChunkSize,
    },
    /// Back up disk images (files or block devices) as one snapshot.
    ///
    /// Prints the snapshot name, KIND/ID/TIME. Chunks the store already has are
    /// neither compressed nor written again.
    Backup {
        /// Snapshot kind.
        #[arg(long, default_value = "host")]
        kind: Kind,
        /// Backup group id (for example the VM id): A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        /// Compression of new chunks: none, zstd or zstd:LEVEL (1..19).
        #[arg(long = "compress", default_value = "zstd:1")]
        compression: Compression,
        /// Chunk size for this backup (default: the store's).
        #[arg(long, value_parser = parse_chunk_size)]
        chunk_size: Option<ChunkSize>,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
        /// Images as NAME.img:PATH, for example disk0.img:/dev/sdb.
        #[arg(required = true, value_name = "NAME.img:PATH")]
        images: Vec<String>,
    },
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        json: bool,
    },
    /// Show a snapshot's archives, sizes and chunk counts.
    Show {
        /// KIND/ID/TIME, or KIND/ID for the newest of that group.
        snapshot: String,
        #[arg(long)]
        json: bool,
    },
    /// Read back and check every chunk the snapshots reference (each once).
    ///
    /// SNAPSHOT is KIND/ID/TIME, or KIND/ID for every snapshot of that group;
    /// none means all. The result is recorded per snapshot; damaged chunks are
    /// dropped from the index so the next backup stores them again. Exits with
    /// status 1 if a snapshot failed.
    Verify {
        snapshots: Vec<String>,
        /// Skip snapshots whose last verification passed.
        #[arg(long)]
        ignore_verified: bool,
        /// With --ignore-verified: re-verify snapshots verified more than DAYS ago.
        #[arg(long, value_name = "DAYS", requires = "ignore_verified")]
        outdated_after: Option<u64>,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots that a retention policy does not keep (PBS semantics).
    ///
    /// Per group, the options apply in the order last, hourly, daily, weekly,
    /// monthly, yearly; each keeps the newest snapshot of each of its N newest
    /// buckets (UTC) not already kept. Protected snapshots are always kept.
    /// Prune removes snapshots only: `hoard gc` frees their space.
    Prune {
        /// Only this kind (with --id: only this group).
        #[arg(long)]
        kind: Option<Kind>,
        #[arg(long, requires = "kind")]
        id: Option<String>,
        #[arg(long)]
        keep_last: Option<usize>,
        #[arg(long)]
        keep_hourly: Option<usize>,
        #[arg(long)]
        keep_daily: Option<usize>,
        #[arg(long)]
        keep_weekly: Option<usize>,
        #[arg(long)]
        keep_monthly: Option<usize>,
        #[arg(long)]
        keep_yearly: Option<usize>,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Protect a snapshot from prune and forget.
    Protect { snapshot: String },
    /// Remove a snapshot's protection.
    Unprotect { snapshot: String },
    /// Remove one snapshot (its chunks are freed by `hoard gc`).
    Forget { snapshot: String },
    /// Free the space of chunks no snapshot references, safely next to running backups.
    ///
    /// A chunk is removed at the second gc after it became unreferenced, once
    /// no backup that could still claim it is running (format-spec/gc.md).
    /// A second gc at the same time is refused.
    Gc {
        /// Rewrite packs whose live share of bytes is below this fraction (0 disables).
        #[arg(long, default_value_t = 0.5)]
        repack_below: f64,
        #[arg(long)]
        json: bool,
    },
    /// Maintain the chunk index.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Read and verify every record of every pack; list damaged packs and chunks.
    ///
    /// Exits with status 1 if anything is damaged or missing.
    Check {
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Restore an image archive to a file or block device.
    ///
    /// `hoard restore SNAPSHOT NAME.img TARGET`, or `hoard restore --index
    /// FILE.fidx TARGET` to restore from an index file alone (its chunks are
    /// read from --store). Zero chunks become holes in a file target.
    Restore {
        /// Restore from this fixed index file instead of a snapshot.
        #[arg(long, value_name = "FILE.fidx")]
        index: Option<PathBuf>,
        /// Overwrite TARGET if it exists (required for block devices).
        #[arg(long)]
        force: bool,
        /// Fill missing or damaged chunks with zeros and list them instead of
        /// stopping; exits with status 3 if any range was filled.
        #[arg(long)]
        ignore_missing: bool,
        /// Worker threads (default: two per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        json: bool,
        /// SNAPSHOT NAME.img TARGET, or TARGET with --index.
        #[arg(required = true, num_args = 1..=3, value_name = "ARGS")]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Rebuild the RocksDB chunk index from the packs alone.
    ///
    /// Needs the store to itself: refused while backups or other maintenance run.
    Rebuild {
        #[arg(long)]
        json: bool,
    },
}

fn parse_chunk_size(s: &str) -> Result<ChunkSize, String> {
    ChunkSize::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoard: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: engine errors already include their
/// source's text in their own message, so a cause is added only if new.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

fn store_path(cli_store: &Option<PathBuf>) -> Result<&Path> {
    cli_store
        .as_deref()
        .context("no store given: use --store DIR or set HOARD_STORE")
}

fn open_store(cli_store: &Option<PathBuf>) -> Result<Store> {
    Ok(Store::open(store_path(cli_store)?)?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { chunk_size } => {
            let path = store_path(&cli.store)?;
            let store = Store::init(path, chunk_size)?;
            println!(
                "created store {} (uuid {}, chunk size {chunk_size})",
                path.display(),
                store.config().uuid
            );
            Ok(())
        }
        Command::Backup {
            kind,
            id,
            compression,
            chunk_size,
            threads,
            json,
            images,
        } => {
            let store = open_store(&cli.store)?;
            let inputs = images
                .iter()
                .map(|spec| parse_image(spec))
                .collect::<Result<Vec<_>>>()?;
            let opts = BackupOptions {
                kind,
                id,
                compression,
                chunk_size,
                threads,
            };
            let manifest = backup_images(&store, &opts, inputs, &Bar::new(json))?;
            print_backup(&manifest, json);
            Ok(())
        }
        Command::Snapshots { json } => {
            let store = open_store(&cli.store)?;
            let names = snapshot::list(&store.snapshots_dir())?;
            if json {
                let mut out = Vec::new();
                for n in &names {
                    let m = snapshot::load_manifest(&store.snapshots_dir(), n)?;
                    out.push(json!({
                        "snapshot": n.to_string(),
                        "kind": n.kind, "id": n.id, "time": n.time,
                        "archives": m.archives.iter().map(|a| json!({"name": a.name, "size": a.size})).collect::<Vec<_>>(),
                    }));
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for n in &names {
                    println!("{n}");
                }
            }
            Ok(())
        }
        Command::Show { snapshot, json } => {
            let store = open_store(&cli.store)?;
            let name = snapshot::resolve(&store.snapshots_dir(), &snapshot.parse::<SnapshotRef>()?)?;
            let m = snapshot::load_manifest(&store.snapshots_dir(), &name)?;
            let state = verification::load_state(&store.snapshots_dir(), &name);
            if json {
                let mut v = serde_json::to_value(&m)?;
                v["verify"] = serde_json::to_value(&state)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_show(&m, state);
            }
            Ok(())
        }
        Command::Verify {
            snapshots,
            ignore_verified,
            outdated_after,
            threads,
            json,
        } => {
            let store = open_store(&cli.store)?;
            let selected = select_snapshots(&store, &snapshots)?;
            let opts = VerifyOptions {
                ignore_verified,
                outdated_after: outdated_after.map(|d| std::time::Duration::from_secs(d * 86400)),
                threads,
            };
            let report = verify(&store, &selected, &opts, &Bar::new(json))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "verified {} chunks ({:.1} MB) of {} snapshots in {:.2} s ({:.0} MB/s); {} skipped as recently verified",
                    report.chunks,
                    report.bytes as f64 / MB,
                    report.snapshots_verified.len() + report.snapshots_failed.len(),
                    report.seconds,
                    mbps(report.bytes, report.seconds),
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
            }
            if !report.snapshots_failed.is_empty() {
                bail!("{} snapshots failed verification", report.snapshots_failed.len());
            }
            Ok(())
        }
        Command::Prune {
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
        } => {
            let store = open_store(&cli.store)?;
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
            let tmp = store.root().join("tmp");
            let report = prune(&store.snapshots_dir(), &tmp, kind, id.as_deref(), &keep, dry_run)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (name, mark) in &report.snapshots {
                    println!("{:9} {name}", format!("{mark:?}").to_lowercase());
                }
                let verb = if dry_run { "would remove" } else { "removed" };
                println!("{verb} {} snapshots, kept {}", report.removed, report.kept);
            }
            Ok(())
        }
        Command::Protect { snapshot } => set_protected(&cli.store, &snapshot, true),
        Command::Unprotect { snapshot } => set_protected(&cli.store, &snapshot, false),
        Command::Forget { snapshot } => {
            let store = open_store(&cli.store)?;
            let name = match snapshot.parse::<SnapshotRef>()? {
                SnapshotRef::Exact(n) => n,
                SnapshotRef::Newest { .. } => bail!("forget needs an exact snapshot KIND/ID/TIME"),
            };
            snapshot::forget(&store.snapshots_dir(), &store.root().join("tmp"), &name)?;
            println!("forgot {name}");
            Ok(())
        }
        Command::Gc { repack_below, json } => {
            let store = open_store(&cli.store)?;
            let report = gc(&store, &GcOptions { repack_below }, &Bar::new(json))?;
            let peak = peak_rss_mib();
            for m in &report.stale_sessions_removed {
                eprintln!("hoard: {m}");
            }
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["peak_rss_mib"] = serde_json::to_value(peak)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "gc epoch {}: {} snapshots, {} chunks referenced ({:.1} MB), dedup factor {:.2}, {:.1} s, peak memory {} MiB",
                    report.epoch,
                    report.snapshots,
                    report.chunks_referenced,
                    report.bytes_kept as f64 / MB,
                    report.dedup_factor,
                    report.seconds,
                    peak.map_or("?".into(), |p| p.to_string())
                );
                println!(
                    "  removed {} chunks; {} packs deleted, {} rewritten, {} leftovers; {:.1} MB freed",
                    report.chunks_removed,
                    report.packs_deleted,
                    report.packs_rewritten,
                    report.leftovers_removed,
                    report.bytes_freed as f64 / MB
                );
                println!(
                    "  pending: {} chunks ({:.1} MB) condemned, removed by a later gc",
                    report.chunks_pending,
                    report.bytes_pending as f64 / MB
                );
                if !report.postponed_epochs.is_empty() {
                    println!(
                        "  postponed epochs {:?}: backups started before them still run",
                        report.postponed_epochs
                    );
                }
            }
            Ok(())
        }
        Command::Index {
            command: IndexCommand::Rebuild { json },
        } => {
            let report = rebuild_index(store_path(&cli.store)?, &Bar::new(json))?;
            for m in &report.stale_sessions_removed {
                eprintln!("hoard: {m}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "index rebuilt from {} packs: {} chunks ({} records, {} duplicates)",
                    report.packs, report.chunks, report.records, report.duplicates
                );
                for d in &report.damaged {
                    eprintln!("  damaged: {d}");
                }
            }
            Ok(())
        }
        Command::Check { threads, json } => {
            let store = open_store(&cli.store)?;
            let report = check_store(&store, threads, &Bar::new(json))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "checked {} packs: {} records, {:.1} MB of chunk data; {} index entries",
                    report.packs,
                    report.records,
                    report.bytes as f64 / MB,
                    report.index_entries
                );
                for d in &report.damaged {
                    println!("  damaged: {}", d.reason);
                }
                for (pack, n) in &report.missing_packs {
                    println!("  missing pack {pack} ({n} indexed chunks)");
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
        Command::Restore {
            index,
            force,
            ignore_missing,
            threads,
            json,
            args,
        } => {
            let store = open_store(&cli.store)?;
            let (fidx, label, target) = match (&index, args.as_slice()) {
                (Some(path), [target]) => (
                    FixedIndex::open(path)?,
                    path.display().to_string(),
                    PathBuf::from(target),
                ),
                (None, [snap, archive, target]) => {
                    let name = snapshot::resolve(&store.snapshots_dir(), &snap.parse::<SnapshotRef>()?)?;
                    let m = snapshot::load_manifest(&store.snapshots_dir(), &name)?;
                    let entry = m.archive(archive)?;
                    let dir = name.dir(&store.snapshots_dir());
                    let fidx = FixedIndex::open(&dir.join(&entry.index))?;
                    let h = fidx.header();
                    if h.image_size != entry.size
                        || h.chunk_size != entry.chunk_size
                        || h.checksum.to_hex() != entry.index_checksum
                    {
                        bail!(
                            "{}: index does not match the snapshot manifest",
                            dir.join(&entry.index).display()
                        );
                    }
                    (fidx, format!("{name} {archive}"), PathBuf::from(target))
                }
                (Some(_), _) => bail!("with --index, give only TARGET"),
                (None, _) => bail!("give SNAPSHOT NAME.img TARGET (or --index FILE.fidx TARGET)"),
            };
            let opts = RestoreOptions {
                force,
                threads,
                ignore_missing,
            };
            let report = restore_image(&store, &fidx, &label, &target, &opts, &Bar::new(json))?;
            print_restore(&report, &target, json);
            if !report.missing.is_empty() {
                if !json {
                    for m in &report.missing {
                        eprintln!(
                            "  zero-filled {} bytes at offset {}: {}",
                            m.len, m.offset, m.reason
                        );
                    }
                }
                eprintln!(
                    "hoard: warning: {} ranges could not be restored and were filled with zeros",
                    report.missing.len()
                );
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

fn set_protected(store: &Option<PathBuf>, snapshot: &str, protect: bool) -> Result<()> {
    let store = open_store(store)?;
    let name = snapshot::resolve(&store.snapshots_dir(), &snapshot.parse::<SnapshotRef>()?)?;
    snapshot::set_protected(&store.snapshots_dir(), &name, protect)?;
    println!("{} {name}", if protect { "protected" } else { "unprotected" });
    Ok(())
}

/// Snapshot arguments: exact names, or KIND/ID for every snapshot of a group.
fn select_snapshots(store: &Store, args: &[String]) -> Result<Vec<snapshot::SnapshotName>> {
    let all = snapshot::list(&store.snapshots_dir())?;
    let mut out = Vec::new();
    for a in args {
        match a.parse::<SnapshotRef>()? {
            SnapshotRef::Exact(n) => {
                out.push(snapshot::resolve(&store.snapshots_dir(), &SnapshotRef::Exact(n))?)
            }
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

/// This process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> Option<u64> {
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

fn parse_image(spec: &str) -> Result<ImageInput> {
    let (name, path) = spec
        .split_once(':')
        .with_context(|| format!("{spec:?}: expected NAME.img:PATH"))?;
    snapshot::validate_archive_name(name)?;
    let source = FileSource::open(Path::new(path)).with_context(|| format!("cannot open source {path}"))?;
    Ok(ImageInput {
        name: name.to_string(),
        source: Box::new(source),
    })
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / MB / secs
    } else {
        0.0
    }
}

fn print_backup(m: &Manifest, json: bool) {
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

fn print_show(m: &Manifest, verify_state: Option<verification::VerifyState>) {
    println!("snapshot {}", m.name());
    if let Some(mode) = &m.mode {
        println!("mode     {mode}");
    }
    println!("duration {:.2} s, hoard {}", m.duration_secs, m.tool_version);
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
        println!(
            "  {:16} {:>14} bytes  chunk {:>8}  chunks {} ({} new, {} reused, {} zero)  new {} bytes, stored {} bytes",
            a.name,
            a.size,
            ChunkSize::new(a.chunk_size).map_or_else(|_| a.chunk_size.to_string(), |c| c.to_string()),
            a.chunk_count,
            s.new_chunks,
            s.reused_chunks,
            s.zero_chunks,
            s.new_bytes,
            s.stored_bytes
        );
    }
}

fn print_restore(r: &RestoreReport, target: &Path, json: bool) {
    if json {
        let v = json!({
            "target": target.display().to_string(),
            "bytes": r.bytes,
            "chunks": r.chunks,
            "chunks_zero": r.zero_chunks,
            "seconds": r.seconds,
            "mb_per_s": mbps(r.bytes, r.seconds),
            "missing": r.missing,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!(
            "restored {} bytes to {} ({} chunks, {} zero) in {:.2} s ({:.0} MB/s)",
            r.bytes,
            target.display(),
            r.chunks,
            r.zero_chunks,
            r.seconds,
            mbps(r.bytes, r.seconds)
        );
    }
}
