//! `hoard restore`: an image to a file, a block device or standard output; a tree into a directory; a container's volumes into a root.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hoard_engine::{is_tree, restore_image, restore_image_to_stream, RestoreOptions};

use crate::args::image_index;
use crate::args::BwLimit;
use crate::open::open_repo;
use crate::open::StoreArgs;
use crate::output::print_restore;
use crate::progress::Bar;
use crate::{ct, output, tree};

/// Restore an image archive to a file, a block device or standard output.
///
/// `hoard restore SNAPSHOT NAME.img TARGET`, or `hoard restore --index
/// FILE.fidx TARGET` to restore from an index file alone (its chunks are
/// read from --store). TARGET is a new file (in a directory that
/// exists), a regular file (replaced whole with --force), a block device
/// or a symlink to one (written in place, with --force), or `-`: every
/// byte in order to standard output, the summary on stderr. Anything
/// else (a directory, a character device, a FIFO, a socket, a symlink to
/// a file) is refused, and nothing is written. Zero chunks and 4 KiB
/// blocks of zeros become holes in a file target.
#[derive(clap::Args)]
pub(crate) struct Restore {
    /// Restore from this fixed index file instead of a snapshot.
    #[arg(long, value_name = "FILE.fidx")]
    index: Option<PathBuf>,
    /// Overwrite TARGET if it exists: a regular file (replaced whole) or a
    /// block device (written in place).
    #[arg(long)]
    force: bool,
    /// Fill missing or damaged chunks with zeros and list them instead of
    /// stopping; exits with status 3 if any range was filled.
    #[arg(long)]
    ignore_missing: bool,
    /// Worker threads (default: two per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    threads: usize,
    #[command(flatten)]
    bwlimit: BwLimit,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    json: bool,
    /// Tree archives: restore only this path (and what is below it);
    /// repeat for more.
    #[arg(long, value_name = "PATH")]
    include: Vec<String>,
    /// Tree archives: do not restore paths matching this gitignore-style
    /// pattern; repeat for more.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// SNAPSHOT NAME.img TARGET, SNAPSHOT NAME.tree TARGET_DIR, SNAPSHOT
    /// TARGET_ROOT (a container backup: every volume), or TARGET with
    /// --index.
    #[arg(required = true, num_args = 1..=3, value_name = "ARGS")]
    args: Vec<String>,
}

pub(crate) fn run(at: &StoreArgs, a: Restore) -> Result<()> {
    let Restore {
        index,
        force,
        ignore_missing,
        threads,
        bwlimit,
        json,
        include,
        exclude,
        args,
    } = a;
    bwlimit.apply()?;
    let store = &*open_repo(at, true)?;
    let stream = args.last().is_some_and(|t| t == "-");
    if let (None, [snap, target]) = (&index, args.as_slice()) {
        if stream {
            bail!("restore {snap} -: standard output takes one image archive (SNAPSHOT NAME.img -)");
        }
        if target.ends_with(".img") || target.ends_with(".tree") {
            bail!("restore {snap} {target}: where to? expected SNAPSHOT NAME.img TARGET (or SNAPSHOT TARGET_ROOT for a container backup)");
        }
        return ct::restore(store, snap, Path::new(target), force, json);
    }
    if let (None, [snap, archive, target]) = (&index, args.as_slice()) {
        if is_tree(archive) {
            if stream {
                bail!("{archive} is a tree: it is restored into a directory (`hoard cat` prints one file of it)");
            }
            let report = tree::restore(
                store,
                tree::RestoreTree {
                    snap,
                    archive,
                    target: Path::new(target),
                    shown: Path::new(target),
                    force,
                    include: &include,
                    exclude: &exclude,
                    json,
                },
            )?;
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["target"] = serde_json::json!(target);
                output::print_json(v)?;
            }
            if !report.unmatched_includes.is_empty() {
                std::process::exit(3);
            }
            return Ok(());
        }
    }
    if !include.is_empty() || !exclude.is_empty() {
        bail!("--include and --exclude apply to tree archives only");
    }
    let Some((target, image)) = args.split_last() else {
        bail!("give SNAPSHOT NAME.img TARGET (or --index FILE.fidx TARGET)");
    };
    let target = PathBuf::from(target);
    let (fidx, label) = image_index(store, image, &index)
        .context("restore SNAPSHOT NAME.img TARGET, or --index FILE.fidx TARGET")?;
    let opts = RestoreOptions {
        force,
        threads,
        ignore_missing,
    };
    let report = if stream {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("standard output is a terminal: send the image somewhere (`hoard restore SNAPSHOT NAME.img - | ...`)");
        }
        // The descriptor itself: Stdout's line buffering would split
        // every extent at its newlines.
        let out = std::fs::File::from(stdout.as_fd().try_clone_to_owned()?);
        restore_image_to_stream(store, &fidx, &label, out, &opts, &Bar::new(json))?
    } else {
        restore_image(store, &fidx, &label, &target, &opts, &Bar::new(json))?
    };
    print_restore(&report, &target, json)?;
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
