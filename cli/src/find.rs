//! `hoard find PATTERN [GROUP ...]`: which snapshots hold a path, as
//! restic's `find`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use hoard_engine::{open_streams, ArchiveKind, EntryKind, EntryReader, Repository};
use ignore::gitignore::GitignoreBuilder;
use serde_json::{json, Value};

/// Which snapshots hold a path: every entry of every tree archive whose
/// path matches PATTERN (gitignore syntax: `nginx.conf` matches that
/// name anywhere, `etc/nginx/*.conf` from the root), as restic's `find`.
#[derive(clap::Args)]
pub(crate) struct Find {
    /// gitignore-style pattern.
    pub(crate) pattern: String,
    /// Only these groups (KIND/ID) or snapshots (KIND/ID/TIME).
    #[arg(value_name = "GROUP")]
    pub(crate) groups: Vec<String>,
    /// Print a JSON array of matches.
    #[arg(long)]
    pub(crate) json: bool,
}

use crate::output::iec;

pub(crate) fn find(store: &dyn Repository, pattern: &str, refs: &[String], json: bool) -> Result<()> {
    let mut builder = GitignoreBuilder::new("/");
    builder
        .add_line(None, pattern)
        .with_context(|| format!("bad pattern {pattern:?}"))?;
    let matcher = builder
        .build()
        .with_context(|| format!("bad pattern {pattern:?}"))?;
    let wanted = crate::listing::matcher(refs)?;
    let catalog = store.catalogue();
    let names = crate::listing::counted(catalog)?;
    let mut found: Vec<Value> = Vec::new();
    let mut images = 0;
    for n in names.iter().filter(|n| wanted(n)) {
        let m = catalog.load_manifest(n)?;
        for a in &m.archives {
            if a.archive_type != ArchiveKind::Tree {
                images += 1;
                continue;
            }
            let (meta, _) = open_streams(store, &catalog.dir(n), a)?;
            let mut entries = EntryReader::new(meta)?;
            while let Some(e) = entries.next_entry()? {
                if e.path.is_empty() {
                    continue;
                }
                let p = Path::new(std::ffi::OsStr::from_bytes(&e.path));
                if !matcher.matched(p, e.kind == EntryKind::Dir).is_ignore() {
                    continue;
                }
                let hit = json!({"snapshot": n.to_string(), "archive": a.name, "path": e.display(),
                    "type": e.kind.letter().to_string(), "size": e.size, "mtime": crate::output::rfc3339(e.mtime)});
                if !json {
                    println!(
                        "{n} {}/{}  {} {}",
                        a.name,
                        e.display(),
                        e.kind.letter(),
                        iec(e.size)
                    );
                }
                found.push(hit);
            }
        }
    }
    if json {
        crate::output::print_json(json!({"matches": found}))?;
    } else if found.is_empty() {
        eprintln!("hoard: nothing matches {pattern:?} in the tree archives");
    }
    if images > 0 && !json {
        eprintln!("hoard: {images} image archives were not searched (`hoard mount` one to look inside)");
    }
    Ok(())
}
