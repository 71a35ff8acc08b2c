//! `hoard diff SNAP1 SNAP2 [ARCHIVE]`: what changed between two snapshots.

use anyhow::{bail, Result};
use hoard_engine::{diff_images, diff_trees, ArchiveKind, Manifest, Repository, TreeSide};
use serde_json::json;

/// What changed between two snapshots: files added, removed and
/// changed (content, size, mode, owner, xattrs, target, mtime) in tree
/// archives; changed byte ranges (per chunk) in images.
///
/// A file's content counts as unchanged without reading it when both
/// versions lie in the same chunks; otherwise both are read and
/// compared. Images are compared by chunk digests alone.
#[derive(clap::Args)]
pub(crate) struct Diff {
    /// The older snapshot: KIND/ID/TIME or KIND/ID/latest.
    pub(crate) from: String,
    /// The newer snapshot.
    pub(crate) to: String,
    /// Only this archive (NAME.img or NAME.tree).
    pub(crate) archive: Option<String>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
}

use crate::output::iec;

pub(crate) fn diff(
    store: &dyn Repository,
    from: &str,
    to: &str,
    archive: Option<&str>,
    json: bool,
) -> Result<()> {
    let catalog = store.catalogue();
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
