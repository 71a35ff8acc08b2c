//! `hoard diff SNAP1 SNAP2 [ARCHIVE]` (what changed between two snapshots)
//! and `hoard find PATTERN [GROUP ...]` (which snapshots hold a path, as
//! restic's `find`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hoard_engine::archive::diff::{diff_images, diff_trees, TreeSide};
use hoard_engine::archive::extract::open_streams;
use hoard_engine::archive::{EntryKind, EntryReader};
use hoard_engine::format::snapshot::{ArchiveKind, Manifest};
use hoard_engine::store::Store;
use ignore::gitignore::GitignoreBuilder;
use serde_json::{json, Value};

use crate::output::iec;

pub(crate) fn diff(store: &Store, from: &str, to: &str, archive: Option<&str>, json: bool) -> Result<()> {
    let catalog = store.catalog();
    let (a, b) = (catalog.find(from)?, catalog.find(to)?);
    let (ma, mb): (Manifest, Manifest) = (catalog.load_manifest(&a)?, catalog.load_manifest(&b)?);
    let mut names: Vec<&str> = ma
        .archives
        .iter()
        .chain(&mb.archives)
        .map(|x| x.name.as_str())
        .collect();
    names.sort();
    names.dedup();
    if let Some(want) = archive {
        if !names.contains(&want) {
            bail!("neither {a} nor {b} has an archive {want}");
        }
        names.retain(|n| *n == want);
    }
    let mut docs = Vec::new();
    for name in names {
        let (old, new) = (ma.archive(name).ok(), mb.archive(name).ok());
        let (old, new) = match (old, new) {
            (Some(o), Some(n)) => (o, n),
            (o, _) => {
                let state = if o.is_some() { "removed" } else { "added" };
                if !json {
                    println!("{} {name}: archive {state}", if o.is_some() { '-' } else { '+' });
                }
                docs.push(json!({"archive": name, "state": state}));
                continue;
            }
        };
        if old.archive_type != new.archive_type {
            bail!("{name} is an image in one snapshot and a tree in the other");
        }
        if old.archive_type == ArchiveKind::Fixed {
            let (fo, fn_) = (
                catalog.open_image_index(&a, name)?,
                catalog.open_image_index(&b, name)?,
            );
            let Some(ranges) = diff_images(&fo, &fn_) else {
                bail!("{name}: the two snapshots cut it into chunks of different sizes ({} and {}): compare the restored images instead", old.chunk_size, new.chunk_size);
            };
            let changed: u64 = ranges.iter().map(|r| r.1).sum();
            if !json {
                println!("{name}: {} changed in {} ranges", iec(changed), ranges.len());
                for (offset, len) in &ranges {
                    println!("  @ {offset} +{len}");
                }
            }
            docs.push(
                json!({"archive": name, "state": "compared", "type": "fixed", "changed_bytes": changed,
                "ranges": ranges.iter().map(|(o, l)| json!({"offset": o, "len": l})).collect::<Vec<_>>()}),
            );
            continue;
        }
        let mut changes = Vec::new();
        let stats = diff_trees(
            store,
            TreeSide {
                dir: &catalog.dir(&a),
                archive: old,
            },
            TreeSide {
                dir: &catalog.dir(&b),
                archive: new,
            },
            |c| {
                if !json {
                    let mark = match c.change {
                        "added" => "+",
                        "removed" => "-",
                        _ => "M",
                    };
                    let what = if c.what.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", c.what.join(", "))
                    };
                    println!("{mark} {name}/{}{what}", c.path);
                }
                changes.push(c);
            },
        )?;
        if !json {
            println!(
                "{name}: {} added, {} removed, {} changed, {} unchanged; {} files compared by reading ({})",
                stats.added,
                stats.removed,
                stats.changed,
                stats.unchanged,
                stats.files_read,
                iec(stats.bytes_read)
            );
        }
        docs.push(
            json!({"archive": name, "state": "compared", "type": "tree", "changes": changes, "stats": stats}),
        );
    }
    if json {
        let doc = json!({"from": a.to_string(), "to": b.to_string(), "archives": docs});
        crate::output::print_json(doc)?;
    }
    Ok(())
}

pub(crate) fn find(store: &Store, pattern: &str, refs: &[String], json: bool) -> Result<()> {
    let mut builder = GitignoreBuilder::new("/");
    builder
        .add_line(None, pattern)
        .with_context(|| format!("bad pattern {pattern:?}"))?;
    let matcher = builder
        .build()
        .with_context(|| format!("bad pattern {pattern:?}"))?;
    let wanted = crate::listing::matcher(refs)?;
    let catalog = store.catalog();
    let (names, rejected) = catalog.authentic()?;
    for r in &rejected {
        eprintln!(
            "hoard: warning: {} does not count as a snapshot: {}",
            r.name, r.why
        );
    }
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
