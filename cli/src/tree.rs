//! Tree archives on the command line: parsing `NAME.tree:DIR`, restore into
//! a directory, `ls` and `cat`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hoard_engine::{
    extract, is_within, open_streams, ArchiveEntry, ArchiveKind, CdcParams, EntryKind, EntryReader,
    ExtractOptions, ExtractReport, Repository, SnapshotName, TreeInput,
};
use serde_json::json;

use crate::progress::Bar;

/// List the entries of a tree archive (from its metadata alone).
#[derive(clap::Args)]
pub(crate) struct Ls {
    /// KIND/ID/TIME, or KIND/ID for the newest.
    pub(crate) snapshot: String,
    /// NAME.tree
    pub(crate) archive: String,
    /// Only this path and what is below it.
    pub(crate) path: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Write one file of a tree archive to standard output.
#[derive(clap::Args)]
pub(crate) struct Cat {
    /// The snapshot: KIND/ID/TIME, or KIND/ID (KIND/ID/latest) for the newest of a group.
    pub(crate) snapshot: String,
    /// The tree archive (NAME.tree).
    pub(crate) archive: String,
    /// The file, relative to the archive's root (etc/hostname).
    pub(crate) path: String,
}

/// Options of `hoard backup` that apply to tree archives.
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct TreeArgs {
    /// Do not back up paths matching this gitignore-style pattern (relative
    /// to the tree's root); repeat for more.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) exclude: Vec<String>,
    /// Stay on the file system of each tree's root (mount points below are
    /// archived as empty directories). `--one-file-system false` crosses them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) one_file_system: bool,
    /// Cross into this mount point anyway; repeat for more.
    #[arg(long, value_name = "PATH")]
    pub(crate) include_mount: Vec<PathBuf>,
    /// Read every file, even those the previous snapshot has unchanged.
    #[arg(long)]
    pub(crate) full_read: bool,
    /// Average content-defined chunk size of tree archives: a power of
    /// two, 4K..4M (default 1M, chosen by benches/tree-chunk-size.sh).
    /// Backups with another average do not deduplicate against this one's.
    #[arg(long, value_name = "SIZE", value_parser = parse_avg)]
    #[serde(serialize_with = "crate::argv::avg_opt")]
    pub(crate) tree_chunk_avg: Option<CdcParams>,
}

pub(crate) fn parse_avg(s: &str) -> Result<CdcParams, String> {
    let bytes = crate::args::parse_chunk_size(s).map(|c| c.bytes()).or_else(|_| {
        let (n, mult) = match s.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1024),
            None => (s, 1),
        };
        n.parse::<u64>().map(|v| v * mult).map_err(|e| e.to_string())
    })?;
    CdcParams::new(bytes as u32)
        .ok_or_else(|| format!("{s}: average chunk size must be a power of two, 4K..4M"))
}

pub(crate) fn parse_tree(name: &str, dir: &str, a: &TreeArgs) -> Result<TreeInput> {
    let root = std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir));
    if !root.is_dir() {
        bail!("{dir}: not a directory (NAME.tree takes a directory)");
    }
    Ok(TreeInput {
        name: name.into(),
        root,
        exclude: a.exclude.clone(),
        one_file_system: a.one_file_system,
        include_mounts: a.include_mount.clone(),
        full_read: a.full_read,
        cdc: a.tree_chunk_avg.unwrap_or_default(),
        origin: None,
    })
}

/// The snapshot and tree archive entry that SNAPSHOT and NAME.tree name.
pub(crate) fn tree_archive(
    store: &dyn Repository,
    snap: &str,
    archive: &str,
) -> Result<(SnapshotName, ArchiveEntry)> {
    let name = store.catalogue().find(snap)?;
    let m = store.catalogue().load_manifest(&name)?;
    let entry = m.archive(archive)?.clone();
    if entry.archive_type != ArchiveKind::Tree {
        bail!("{name} {archive}: not a tree archive");
    }
    Ok((name, entry))
}

pub(crate) struct RestoreTree<'a> {
    pub snap: &'a str,
    pub archive: &'a str,
    pub target: &'a Path,
    /// TARGET as messages name it (the target may be a descriptor's path).
    pub shown: &'a Path,
    pub force: bool,
    pub include: &'a [String],
    pub exclude: &'a [String],
    pub json: bool,
}

/// Restores one tree archive; says what it restored unless `json` (then
/// the caller prints the report).
pub(crate) fn restore(store: &dyn Repository, r: RestoreTree) -> Result<ExtractReport> {
    let (name, entry) = tree_archive(store, r.snap, r.archive)?;
    let opts = ExtractOptions {
        force: r.force,
        include: r
            .include
            .iter()
            .map(|p| p.trim_matches('/').as_bytes().to_vec())
            .collect(),
        exclude: r.exclude.to_vec(),
    };
    let dir = store.catalogue().dir(&name);
    let report = extract(store, &dir, &entry, r.target, &opts, &Bar::new(r.json))
        .with_context(|| format!("restoring {name} {} into {}", r.archive, r.shown.display()))?;
    if !r.json {
        eprintln!(
            "restored {} entries ({} files, {}) into {}",
            report.entries,
            report.files,
            crate::output::iec(report.bytes),
            r.shown.display()
        );
        if report.skipped_need_root > 0 {
            eprintln!(
                "  {} device nodes skipped: creating them needs root",
                report.skipped_need_root
            );
        }
    }
    if !report.unmatched_includes.is_empty() {
        eprintln!(
            "hoard: warning: --include {} matched nothing in {name} {} (paths are relative to the archive's root; `hoard ls {name} {}` lists them)",
            report.unmatched_includes.join(", "),
            r.archive,
            r.archive
        );
    }
    Ok(report)
}

/// `hoard ls`: entries at or below PATH, from the metadata stream alone.
pub(crate) fn ls(
    store: &dyn Repository,
    snap: &str,
    archive: &str,
    path: Option<&str>,
    json: bool,
) -> Result<()> {
    let (name, entry) = tree_archive(store, snap, archive)?;
    let (meta, _) = open_streams(store, &store.catalogue().dir(&name), &entry)?;
    let under = path.unwrap_or("").trim_matches('/').as_bytes().to_vec();
    let mut entries = EntryReader::new(meta)?;
    let mut out = std::io::stdout().lock();
    let mut found = false;
    while let Some(e) = entries.next_entry()? {
        if !is_within(&e.path, &under) {
            continue;
        }
        found = true;
        let shown = e.display();
        if json {
            let v = json!({"schema": crate::output::JSON_SCHEMA, "path": shown, "type": e.kind.letter().to_string(), "mode": format!("{:04o}", e.mode),
                "uid": e.uid, "gid": e.gid, "size": e.size, "mtime": crate::output::rfc3339(e.mtime),
                "target": (!e.target.is_empty()).then(|| String::from_utf8_lossy(&e.target).into_owned())});
            writeln!(out, "{v}")?;
        } else {
            let link = match e.kind {
                EntryKind::Symlink => format!(" -> {}", String::from_utf8_lossy(&e.target)),
                EntryKind::Hardlink => format!(" link to {}", String::from_utf8_lossy(&e.target)),
                _ => String::new(),
            };
            writeln!(
                out,
                "{}{:04o} {:>5} {:>5} {:>12} {}{}",
                e.kind.letter(),
                e.mode,
                e.uid,
                e.gid,
                e.size,
                shown,
                link
            )?;
        }
    }
    if !found {
        bail!("{name} {archive}: no entry {:?}", path.unwrap_or(""));
    }
    Ok(())
}

/// `hoard cat`: one regular file's contents to stdout.
pub(crate) fn cat(store: &dyn Repository, snap: &str, archive: &str, path: &str) -> Result<()> {
    let (name, entry) = tree_archive(store, snap, archive)?;
    let (meta, mut payload) = open_streams(store, &store.catalogue().dir(&name), &entry)?;
    let want = path.trim_matches('/').as_bytes();
    let mut entries = EntryReader::new(meta)?;
    while let Some(mut e) = entries.next_entry()? {
        if e.path != want {
            continue;
        }
        if e.kind == EntryKind::Hardlink {
            // The first entry of the inode holds the contents: look again.
            let target = e.target.clone();
            let (meta, _) = open_streams(store, &store.catalogue().dir(&name), &entry)?;
            let mut again = EntryReader::new(meta)?;
            e = loop {
                match again.next_entry()? {
                    Some(t) if t.path == target => break t,
                    Some(_) => continue,
                    None => bail!("{path}: hardlink target missing"),
                }
            };
        }
        if e.kind != EntryKind::File {
            bail!("{path}: not a regular file");
        }
        let mut out = std::io::stdout().lock();
        let mut done = 0u64;
        while done < e.size {
            let data = payload.slice_at(e.payload_offset + done)?;
            let n = (e.size - done).min(data.len() as u64) as usize;
            if n == 0 {
                bail!("{path}: payload stream ended early");
            }
            out.write_all(&data[..n])?;
            done += n as u64;
        }
        return Ok(());
    }
    bail!("{name} {archive}: no entry {path:?}")
}
