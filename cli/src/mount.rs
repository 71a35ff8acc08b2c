//! `hoard mount`: a snapshot's archive as a read-only FUSE file system.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hoard_engine::{
    fuse, is_tree, open_streams, signals, signals::DeferSignals, ImageDevice, ImageOptions, MountTree, Store,
    Time,
};
use serde_json::json;

/// Mount an archive read-only through FUSE, without restoring it.
///
/// `hoard mount SNAPSHOT NAME.tree DIR` shows the file tree with its
/// owners, modes, times, symlinks, hardlinks and xattrs; file contents
/// are read on demand. `hoard mount SNAPSHOT NAME.img DIR` shows a
/// directory holding the image as one file (loop-mount it read-only to
/// browse its file systems). Runs until Ctrl-C or `umount DIR`.
#[derive(Args)]
pub(crate) struct Mount {
    /// KIND/ID/TIME, or KIND/ID for the newest.
    snapshot: String,
    /// NAME.tree (the file tree) or NAME.img (a directory holding the image file).
    archive: String,
    /// An existing, empty directory.
    mountpoint: PathBuf,
    /// Let other users than the one mounting read it (their access is then
    /// checked against the archived owners and modes).
    #[arg(long)]
    allow_other: bool,
    /// Memory for decoded chunks.
    #[arg(long, default_value = "256M", value_parser = crate::export::parse_size)]
    cache_size: u64,
    /// Threads answering the kernel (default: two per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    threads: usize,
    /// Print a JSON line once mounted and one when unmounted.
    #[arg(long)]
    json: bool,
}

fn log(m: &str) {
    eprintln!("hoard mount: {m}");
}

pub(crate) fn run(store: Store, a: Mount) -> Result<()> {
    if let Err(why) = fuse::usable() {
        bail!("cannot mount: FUSE is not usable on this machine: {why}");
    }
    let meta = std::fs::metadata(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", a.mountpoint.display());
    }
    if std::fs::read_dir(&a.mountpoint)?.next().is_some() {
        bail!("mount point {} is not empty", a.mountpoint.display());
    }
    // The file system is served by threads that live as long as the mount,
    // which is as long as this process: the store is simply never freed.
    let store: &'static Store = Box::leak(Box::new(store));
    let name = store.catalog().find(&a.snapshot)?;
    let label = format!("{name} {}", a.archive);
    let cache = a.cache_size as usize;
    let tree = if is_tree(&a.archive) {
        let (_, entry) = crate::tree::tree_archive(store, &a.snapshot, &a.archive)?;
        let dir = store.catalog().dir(&name);
        let (meta, _) = open_streams(store, &dir, &entry)?;
        let payload = entry
            .payload
            .as_ref()
            .map(|p| dir.join(&p.index))
            .context("no payload stream")?;
        MountTree::tree(store, meta, &payload, cache, &label)?
    } else {
        let fidx = store.catalog().open_image_index(&name, &a.archive)?;
        let opts = ImageOptions {
            cache_bytes: cache,
            // The kernel reads ahead on its own.
            read_ahead: 0,
            overlay: None,
            reader: "mount",
        };
        let sec = name.unix_time();
        MountTree::image(
            ImageDevice::new(store, fidx, label.clone(), opts),
            &a.archive,
            Time { sec, nsec: 0 },
        )
    };
    for s in &tree.skipped {
        log(&format!("left out: {s}"));
    }
    let inodes = tree.inodes();
    // Signals are held until the session file is gone, after the unmount.
    let _held = DeferSignals::start();
    let threads = if a.threads == 0 {
        2 * hoard_engine::worker_threads(0)
    } else {
        a.threads
    };
    let session = fuse::mount(
        tree,
        &a.mountpoint,
        &format!("hoard:{label}"),
        a.allow_other,
        threads,
        log,
    )
    .with_context(|| format!("mounting on {}", a.mountpoint.display()))?;
    if a.json {
        println!(
            "{}",
            json!({"event": "mounted", "mountpoint": a.mountpoint, "archive": label, "inodes": inodes})
        );
    } else {
        println!(
            "mounted {label} read-only at {} ({inodes} inodes)",
            a.mountpoint.display()
        );
        eprintln!(
            "hoard mount: Ctrl-C, SIGTERM or `umount {}` unmounts it",
            a.mountpoint.display()
        );
    }
    while !signals::pending() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    if session.guard.is_finished() {
        // Unmounted from outside (umount, fusermount3 -u).
        let _ = session.join();
    } else if let Err(e) = session.umount_and_join() {
        // Busy (a shell inside it): detach now, the kernel finishes when it is free.
        match fuse::detach(&a.mountpoint) {
            Ok(()) => log(&format!("mount point busy ({e}); detached it")),
            Err(d) => log(&format!("unmount failed: {e}; detaching: {d}")),
        }
    }
    if a.json {
        println!("{}", json!({"event": "unmounted", "mountpoint": a.mountpoint}));
    }
    Ok(())
}
