//! `hoard backup-ct` (an LXC container in one of vzdump's modes) and the
//! restore of a whole container snapshot.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hoard_engine::{
    backup_ct, open_restore_dir, BackupOptions, CdcParams, CtMode as Mode, CtOptions, Kind, Repository,
    System,
};

use crate::output::print_backup;
use crate::progress::Bar;

#[derive(Clone, Copy, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ModeArg {
    /// Stopped (lxc-stop) for the whole read, started again after it.
    Stop,
    /// Read while running, frozen only for a second pass over what changed.
    Suspend,
    /// Frozen only while storage snapshots of its volumes are taken.
    Snapshot,
}

/// Back up an LXC container in one of vzdump's modes.
///
/// stop: lxc-stop (orderly, --stop-timeout), archive, lxc-start.
/// suspend: a first pass while it runs, lxc-freeze, a second pass over
/// what changed, lxc-unfreeze; no temporary copy. snapshot (default):
/// frozen only while storage snapshots of its volumes are taken (btrfs
/// subvolumes here; LVM-thin and ZFS), archived from the snapshots.
/// Only the root file system unless --include-mount names volumes; bind
/// and device mounts are never archived and are listed as skipped.
/// `hoard restore SNAPSHOT TARGET_ROOT` restores it all.
#[derive(Args, serde::Serialize)]
pub(crate) struct BackupCt {
    /// Container name.
    #[arg(long)]
    pub(crate) name: String,
    /// LXC's container directory.
    #[arg(long, default_value = "/var/lib/lxc")]
    pub(crate) lxcpath: PathBuf,
    /// Backup group id (default: the container name).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// How the container is held still while it is read (below).
    #[arg(long, value_enum, default_value = "snapshot")]
    pub(crate) mode: ModeArg,
    /// Also archive the volume mounted at this mount point (a mount entry
    /// whose source is the root of a file system or btrfs subvolume); repeat
    /// for more. Bind mounts of host paths and device mounts never are.
    #[arg(long = "include-mount", value_name = "MOUNT_POINT")]
    pub(crate) include_mounts: Vec<String>,
    /// Suspend mode the vzdump way: copy the container into DIR with
    /// rsync while it runs, freeze, rsync again, unfreeze, archive from
    /// DIR. Needs the container's size free in DIR, which should be local
    /// storage that keeps xattrs and ACLs (not NFS). Without it, the first
    /// pass goes into the store and no temporary space is needed.
    #[arg(long, value_name = "DIR")]
    pub(crate) tmpdir: Option<PathBuf>,
    /// Stop mode: seconds for an orderly lxc-stop before it kills.
    #[arg(long, default_value_t = 60)]
    pub(crate) stop_timeout: u64,
    /// Script called with the phase (job-start, pre-stop, pre-snapshot,
    /// post-snapshot, backup-end, job-abort) as argument and HOARD_PHASE,
    /// HOARD_KIND, HOARD_ID, HOARD_MODE in the environment; a failing call
    /// aborts the backup. Its output goes to standard error.
    #[arg(long, value_name = "SCRIPT")]
    pub(crate) hook: Option<PathBuf>,
    /// Seconds one hook call may run; then it is killed and fails.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub(crate) hook_timeout: u64,
    /// Average content-defined chunk size of the tree archives (as for
    /// `backup`; default 1M).
    #[arg(long, value_name = "SIZE", value_parser = crate::tree::parse_avg)]
    #[serde(serialize_with = "crate::argv::avg_opt")]
    pub(crate) tree_chunk_avg: Option<CdcParams>,
    /// More configuration files to store with it in archive config.tree
    /// (the container's LXC config always is); repeatable.
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) config_files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) write: crate::args::WriteArgs,
}

pub(crate) fn run(at: &crate::open::StoreArgs, a: BackupCt) -> Result<()> {
    let (store, scratch) = crate::open::open_repo_with_scratch(at)?;
    let store = &*store;
    let opts = BackupOptions {
        config_files: a.config_files.clone(),
        ..a.write
            .begin(Kind::Ct, a.id.clone().unwrap_or_else(|| a.name.clone()))?
    };
    let ct = CtOptions {
        name: a.name.clone(),
        lxcpath: a.lxcpath.clone(),
        mode: match a.mode {
            ModeArg::Stop => Mode::Stop,
            ModeArg::Suspend => Mode::Suspend,
            ModeArg::Snapshot => Mode::Snapshot,
        },
        include_mounts: a.include_mounts.clone(),
        stop_timeout: Duration::from_secs(a.stop_timeout.max(1)),
        hook: a.hook.clone().map(|script| hoard_engine::Hook {
            script,
            timeout: std::time::Duration::from_secs(a.hook_timeout),
        }),
        work_dir: scratch,
        tmpdir: a.tmpdir.clone(),
        cdc: a.tree_chunk_avg.unwrap_or_default(),
    };
    let (manifest, warnings) = backup_ct(store, &opts, &ct, &mut System, &Bar::new(a.write.json))
        .with_context(|| format!("container {} ({})", a.name, a.lxcpath.display()))?;
    for w in &warnings {
        eprintln!("hoard: warning: {w}");
    }
    if a.write.json {
        return print_backup(&manifest, true);
    }
    if let Some(r) = &manifest.ct {
        eprintln!(
            "  mode {}: downtime {:.3} s, frozen {:.3} s, first pass {:.2} s",
            ct.mode.name(),
            r.downtime_secs,
            r.frozen_secs,
            r.first_pass_secs
        );
        for v in &r.volumes {
            eprintln!("  {} <- {} ({})", v.archive, v.mount_point, v.source);
        }
        for s in &r.skipped_mounts {
            eprintln!("  skipped {} ({}): {}", s.mount_point, s.source, s.why);
        }
    }
    print_backup(&manifest, false)
}

/// `hoard restore SNAPSHOT TARGET_ROOT` of a container snapshot: the root
/// file system into TARGET_ROOT, each included volume into its mount point.
pub(crate) fn restore(
    store: &dyn Repository,
    snap: &str,
    target: &Path,
    force: bool,
    json: bool,
) -> Result<()> {
    let name = store.catalogue().find(snap)?;
    let m = store.catalogue().load_manifest(&name)?;
    let Some(ct) = &m.ct else {
        bail!("{name} is not a container backup (backup-ct): name the archive, SNAPSHOT NAME TARGET");
    };
    let mut volumes = Vec::new();
    for (i, v) in ct.volumes.iter().enumerate() {
        // The root file system goes to TARGET_ROOT itself; each volume
        // through a descriptor of its mount point opened beneath it, so no
        // symlink (from the archive or planted meanwhile) can lead it out.
        let opened = match v.mount_point.trim_end_matches('/') {
            "" => None,
            _ => Some(open_restore_dir(target, &v.mount_point)?),
        };
        let dir = opened.as_ref().map_or_else(
            || target.to_path_buf(),
            |fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        );
        let report = crate::tree::restore(
            store,
            crate::tree::RestoreTree {
                snap: &name.to_string(),
                archive: &v.archive,
                target: &dir,
                shown: &target.join(v.mount_point.trim_start_matches('/')),
                // Volumes go into the (empty) mount point dirs of the root.
                force: force || i > 0,
                include: &[],
                exclude: &[],
                json,
            },
        )?;
        let mut r = serde_json::to_value(&report)?;
        r["archive"] = serde_json::json!(v.archive);
        r["mount_point"] = serde_json::json!(v.mount_point);
        volumes.push(r);
    }
    if json {
        let sum = |k: &str| volumes.iter().filter_map(|v| v[k].as_u64()).sum::<u64>();
        crate::output::print_json(serde_json::json!({
            "target": target,
            "entries": sum("entries"),
            "files": sum("files"),
            "bytes": sum("bytes"),
            "skipped_need_root": sum("skipped_need_root"),
            "unmatched_includes": [],
            "volumes": volumes,
        }))?;
    }
    Ok(())
}
