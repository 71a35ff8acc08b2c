//! Container backup modes, vzdump's stop, suspend and snapshot for LXC, as a
//! thin layer over tree archives: each mode is a short plan around one
//! backup, and what a step changed (a stopped or frozen container, a storage
//! snapshot) is put back also when a later step fails.
//!
//! - **stop**: `lxc-stop` (orderly, with a timeout), archive, `lxc-start`.
//! - **suspend**: a first pass while the container runs, `lxc-freeze`, a
//!   second pass that reads only what changed since the first (metadata
//!   change detection against it), `lxc-unfreeze`. The snapshot holds only
//!   the second, consistent pass; no temporary copy is needed.
//! - **snapshot**: freeze, a storage snapshot of every archived volume,
//!   unfreeze, archive from the snapshots, remove them.
//!
//! Only the root file system is archived unless mount points are included;
//! bind and device mounts never are (see `lxc::classify`).

mod error;
pub(crate) mod lxc;
pub(crate) mod runner;
mod steps;
pub(crate) mod volume;

pub(crate) use error::CtError;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::archive::create::TreeInput;
use crate::chunking::cdc::CdcParams;
use crate::format::snapshot::{CtRecord, CtSkipped, CtVolume, Manifest};
use crate::ops::backup::{back_up, backup_quiesced, BackupOptions, Input};
use crate::progress::Progress;
use crate::store::Repository;
use lxc::{classify, Lxc, MountKind, Rootfs};
use runner::Runner;
use steps::Steps;

pub use crate::modes::Mode;

pub struct CtOptions {
    pub name: String,
    pub lxcpath: PathBuf,
    pub mode: Mode,
    /// Mount points (targets in the container) to archive besides the root.
    pub include_mounts: Vec<String>,
    pub stop_timeout: Duration,
    pub hook: Option<crate::modes::hooks::Hook>,
    /// Where snapshot mode mounts LVM snapshots.
    pub work_dir: PathBuf,
    /// Suspend mode: copy the volumes here (rsync) instead of a first pass
    /// into the store; should be local storage with xattr and ACL support.
    pub tmpdir: Option<PathBuf>,
    pub cdc: CdcParams,
}

/// A volume to archive: archive name, mount point, where its files are.
struct Volume {
    archive: String,
    mount_point: String,
    source: String,
    dir: Option<PathBuf>,
    provider: Option<Box<dyn volume::Provider>>,
}

/// Backs up container `ct.name` in `ct.mode` as one `ct/ID` snapshot
/// (how the mode went is the manifest's `ct` record); returns the warnings.
pub fn backup_ct(
    store: &dyn Repository,
    opts: &BackupOptions,
    ct: &CtOptions,
    runner: &mut dyn Runner,
    progress: &dyn Progress,
) -> crate::Result<(Manifest, Vec<String>)> {
    let kind = opts.kind.to_string();
    let hook = |phase| crate::modes::hooks::run(ct.hook.as_ref(), phase, &kind, &opts.id, ct.mode.name());
    Ok(crate::modes::hooks::job(&hook, || {
        let mut lxc = Lxc {
            name: ct.name.clone(),
            lxcpath: ct.lxcpath.clone(),
            runner,
        };
        let config = lxc.config()?;
        let (mut volumes, skipped) = plan(&config, ct)?;
        let running = lxc.state()? == "RUNNING";
        let lvm_mount = match ct.mode {
            Mode::Snapshot => None,
            _ => readable_root(&mut lxc, &config, ct, running, &mut volumes[0])?,
        };
        let record = CtRecord {
            downtime_secs: 0.0,
            frozen_secs: 0.0,
            first_pass_secs: 0.0,
            volumes: volumes
                .iter()
                .map(|v| CtVolume {
                    archive: v.archive.clone(),
                    mount_point: v.mount_point.clone(),
                    source: v.source.clone(),
                })
                .collect(),
            skipped_mounts: skipped,
        };
        let job = Job {
            store,
            opts,
            ct,
            volumes,
            record,
            running,
            hook: &hook,
            progress,
        };
        match ct.mode {
            Mode::Suspend if ct.tmpdir.is_some() => job.suspend_via_tmpdir(&mut lxc, lvm_mount),
            Mode::Stop | Mode::Suspend => job.stop_or_suspend(&mut lxc, lvm_mount),
            Mode::Snapshot => job.snapshot(&mut lxc),
        }
    })?)
}

/// Stop and suspend read the root where it can be read: a ZFS dataset at
/// its mount point; an LVM volume mounted read-only by hoard while the
/// container is stopped (returned: device and where to mount it), or
/// through the running container's own root (/proc/PID/root).
fn readable_root(
    lxc: &mut Lxc,
    config: &lxc::Config,
    ct: &CtOptions,
    running: bool,
    root: &mut Volume,
) -> Result<Option<(String, PathBuf)>, CtError> {
    match &config.rootfs {
        Rootfs::Zfs(ds) => {
            let mp = lxc.runner.run(
                "zfs",
                &["get", "-H", "-o", "value", "mountpoint", ds].map(str::to_string),
            )?;
            root.dir = Some(PathBuf::from(mp.trim()));
        }
        Rootfs::Lvm(_) if running && ct.mode == Mode::Suspend => {
            let pid = lxc.pid()?;
            root.dir = Some(PathBuf::from(format!("/proc/{pid}/root")));
        }
        Rootfs::Lvm(dev) => {
            let dir = ct
                .work_dir
                .join(format!("hoard-root-{}", uuid::Uuid::new_v4().simple()));
            root.dir = Some(dir.clone());
            return Ok(Some((dev.clone(), dir)));
        }
        _ => {}
    }
    Ok(None)
}

/// One container backup under way: what every mode needs.
struct Job<'a> {
    store: &'a dyn Repository,
    opts: &'a BackupOptions,
    ct: &'a CtOptions,
    volumes: Vec<Volume>,
    record: CtRecord,
    running: bool,
    hook: &'a dyn Fn(&'static str) -> Result<(), crate::modes::hooks::HookError>,
    progress: &'a dyn Progress,
}

type Made = (Manifest, Vec<String>);

impl Job<'_> {
    /// The backup's options, with the mode and what it measured so far.
    fn options(&self) -> BackupOptions {
        // The container's LXC config goes with it: it says how to recreate it.
        let mut config_files = vec![self.ct.lxcpath.join(&self.ct.name).join("config")];
        config_files.extend(self.opts.config_files.iter().cloned());
        BackupOptions {
            mode: Some(self.ct.mode.name().into()),
            ct: Some(self.record.clone()),
            config_files,
            ..self.opts.clone()
        }
    }

    /// One tree input per volume, read from `dirs` (in volume order).
    fn trees(&self, dirs: &[PathBuf]) -> Vec<Input> {
        self.volumes
            .iter()
            .zip(dirs)
            .map(|(v, d)| {
                Input::Tree(TreeInput {
                    name: v.archive.clone(),
                    root: d.clone(),
                    exclude: Vec::new(),
                    one_file_system: true,
                    include_mounts: Vec::new(),
                    full_read: false,
                    cdc: self.ct.cdc,
                    origin: Some(v.source.clone()),
                })
            })
            .collect()
    }

    /// Where each volume's files are read.
    fn dirs(&self) -> Result<Vec<PathBuf>, CtError> {
        self.volumes
            .iter()
            .map(|v| v.dir.clone().ok_or_else(|| CtError::RootfsType(v.source.clone())))
            .collect()
    }

    /// The hooks before the container is stopped or frozen.
    fn pre_hooks(&self) -> Result<(), CtError> {
        if self.running {
            (self.hook)("pre-stop")?;
        }
        Ok((self.hook)("pre-snapshot")?)
    }

    fn suspend_via_tmpdir(
        mut self,
        lxc: &mut Lxc,
        lvm_mount: Option<(String, PathBuf)>,
    ) -> Result<Made, CtError> {
        if lvm_mount.is_some() {
            return Err(CtError::RootfsType(format!(
                "{} (an LVM root of a stopped container with --tmpdir: leave out --tmpdir)",
                self.volumes[0].source
            )));
        }
        let dirs = self.dirs()?;
        self.pre_hooks()?;
        let tmp = self.ct.tmpdir.as_deref().expect("suspend via tmpdir has one");
        // --tmpdir may be writable by others (/tmp): the copies go into a
        // directory of hoard's own that only it can enter, and one that
        // someone else made under that name is refused, never written into.
        let private = tmp.join(format!("hoard-{}-{}", self.ct.name, std::process::id()));
        let copies: Vec<PathBuf> = self.volumes.iter().map(|v| private.join(&v.archive)).collect();
        let r = (|| {
            let io = |path: &Path, e: std::io::Error| CtError::Io {
                path: path.to_path_buf(),
                detail: e.to_string(),
            };
            std::fs::create_dir_all(tmp).map_err(|e| io(tmp, e))?;
            crate::private_fs::private_dir(&private).map_err(|e| io(&private, e))?;
            let started = Instant::now();
            sync_copies(lxc.runner, &dirs, &copies, self.running)?;
            self.record.first_pass_secs = started.elapsed().as_secs_f64();
            if self.running {
                let _held = crate::signals::DeferSignals::start();
                let frozen = Instant::now();
                let synced = lxc
                    .freeze()
                    .and_then(|()| sync_copies(lxc.runner, &dirs, &copies, false));
                let thawed = lxc.unfreeze();
                self.record.frozen_secs = frozen.elapsed().as_secs_f64();
                synced?;
                thawed?;
            }
            Ok(back_up(
                self.store,
                &self.options(),
                self.trees(&copies),
                self.progress,
            )?)
        })();
        let _ = std::fs::remove_dir_all(&private);
        r
    }

    fn stop_or_suspend(self, lxc: &mut Lxc, lvm_mount: Option<(String, PathBuf)>) -> Result<Made, CtError> {
        let dirs = self.dirs()?;
        self.pre_hooks()?;
        let mut q = Steps {
            lxc,
            mode: self.ct.mode,
            running: self.running,
            stop_timeout: self.ct.stop_timeout,
            started: Instant::now(),
            since: None,
            record: self.record.clone(),
            signals: None,
            lvm_mount,
            mounted: false,
        };
        Ok(backup_quiesced(
            self.store,
            &self.options(),
            self.trees(&dirs),
            &mut q,
            self.progress,
        )?)
    }

    fn snapshot(mut self, lxc: &mut Lxc) -> Result<Made, CtError> {
        // Every volume must take snapshots before anything is frozen.
        let mut providers = Vec::new();
        for v in &self.volumes {
            match &v.provider {
                Some(p) => providers.push(p),
                None => {
                    return Err(CtError::NoSnapshot {
                        volume: format!("{} ({})", v.mount_point, v.source),
                        why: "its storage cannot take snapshots (btrfs subvolume, LVM-thin or ZFS)".into(),
                    })
                }
            }
        }
        (self.hook)("pre-snapshot")?;
        // A btrfs snapshot commits the file system's dirty data: write it
        // out while the container still runs, not while frozen.
        for v in &self.volumes {
            if let Some(d) = &v.dir {
                sync_fs(d);
            }
        }
        let tag = format!("hoard-snap-{}", uuid::Uuid::new_v4().simple());
        let mut snaps = Vec::new();
        let frozen_at = Instant::now();
        let held = crate::signals::DeferSignals::start();
        let froze = if self.running { lxc.freeze() } else { Ok(()) };
        let taken = froze.and_then(|()| {
            for p in &providers {
                snaps.push(p.snapshot(lxc.runner, &tag, &self.ct.work_dir)?);
            }
            Ok(())
        });
        let thawed = if self.running { lxc.unfreeze() } else { Ok(()) };
        self.record.frozen_secs = frozen_at.elapsed().as_secs_f64();
        drop(held);
        let made = taken
            .and(thawed)
            .and_then(|()| Ok((self.hook)("post-snapshot")?))
            .and_then(|()| {
                let dirs: Vec<PathBuf> = snaps.iter().map(|s| s.path.clone()).collect();
                crate::failpoint::pause("ct-snapshot-taken");
                Ok(back_up(
                    self.store,
                    &self.options(),
                    self.trees(&dirs),
                    self.progress,
                )?)
            });
        let mut removed = Ok(());
        for s in &snaps {
            if let Err(e) = volume::remove(lxc.runner, s) {
                removed = removed.and(Err(e));
            }
        }
        let made = made?;
        removed?;
        Ok(made)
    }
}

/// Suspend with a temporary directory (vzdump's way): each volume is
/// copied, or brought up to date, with rsync. Sizes and nanosecond mtimes
/// decide what changed (`--modify-window=-1`): rsync's default whole-second
/// comparison misses a same-size change within the second.
/// While the container runs, files vanishing under rsync (its exit status
/// 24) are expected: the frozen pass brings the copy up to date.
fn sync_copies(
    runner: &mut dyn Runner,
    dirs: &[PathBuf],
    copies: &[PathBuf],
    live: bool,
) -> Result<(), CtError> {
    for (d, c) in dirs.iter().zip(copies) {
        let args = [
            "-aHAXS",
            "--numeric-ids",
            "--delete",
            "--one-file-system",
            "--modify-window=-1",
            &format!("{}/", d.display()),
            &format!("{}/", c.display()),
        ];
        match runner.run("rsync", &args.map(str::to_string)) {
            Err(CtError::Command { detail, .. }) if live && detail.starts_with("exit status: 24") => {}
            r => drop(r?),
        }
    }
    Ok(())
}

/// syncfs(2) on the file system holding `dir` (best effort).
fn sync_fs(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid descriptor, open for the call.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// Which volumes to archive and which mounts are skipped.
fn plan(config: &lxc::Config, ct: &CtOptions) -> Result<(Vec<Volume>, Vec<CtSkipped>), CtError> {
    let norm = |s: &str| s.trim_matches('/').to_string();
    let wanted: Vec<String> = ct.include_mounts.iter().map(|m| norm(m)).collect();
    let (source, dir, provider): (String, _, Option<Box<dyn volume::Provider>>) = match &config.rootfs {
        Rootfs::Dir(d) => (
            d.display().to_string(),
            Some(d.clone()),
            volume::provider_for_dir(d),
        ),
        Rootfs::Lvm(dev) => (dev.clone(), None, Some(Box::new(volume::LvmThin(dev.clone())))),
        Rootfs::Zfs(ds) => (ds.clone(), None, Some(Box::new(volume::Zfs(ds.clone())))),
        Rootfs::Other(s) => return Err(CtError::RootfsType(s.clone())),
    };
    let mut volumes = vec![Volume {
        archive: "root.tree".into(),
        mount_point: "/".into(),
        source,
        dir,
        provider,
    }];
    let mut skipped = Vec::new();
    let mut found = Vec::new();
    for m in &config.mounts {
        let target = norm(&m.target);
        let kind = classify(m);
        let included = wanted.contains(&target);
        match (&kind, included) {
            (MountKind::Volume(src), true) => {
                found.push(target.clone());
                volumes.push(Volume {
                    archive: format!("mp{}.tree", volumes.len() - 1),
                    mount_point: format!("/{target}"),
                    source: src.display().to_string(),
                    dir: Some(src.clone()),
                    provider: volume::provider_for_dir(src),
                });
            }
            (_, true) => {
                return Err(CtError::Include(format!("/{target}"), kind.why_skipped().into()));
            }
            _ => skipped.push(CtSkipped {
                mount_point: format!("/{target}"),
                source: m.source.clone(),
                why: kind.why_skipped().into(),
            }),
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !found.contains(w)) {
        return Err(CtError::Include(
            format!("/{missing}"),
            "no lxc.mount.entry with that target".into(),
        ));
    }
    Ok((volumes, skipped))
}

/// The directory a restored volume goes to under `root`, opened.
///
/// The mount point comes from a manifest, so it is untrusted: it gets the
/// rules of a tree entry's path (absolute, no empty, `.` or `..`
/// components). Each of its parts is opened below the one before with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and created (0700; the
/// archive's own modes come with the restore) where missing: whatever the
/// restored root file system holds, or another user puts there meanwhile, a
/// symlink on the way is refused rather than followed out of `root`. The
/// caller restores through the descriptor (`/proc/self/fd/N`), never
/// through the path again.
pub fn open_restore_dir(root: &Path, mount_point: &str) -> Result<std::os::fd::OwnedFd, CtError> {
    use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let refuse = |detail: String| CtError::Config {
        path: root.to_path_buf(),
        detail: format!("manifest mount point {mount_point:?}: {detail}"),
    };
    let relative = mount_point
        .strip_prefix('/')
        .ok_or_else(|| refuse("not an absolute path".into()))?
        .trim_end_matches('/');
    crate::archive::check_path(relative.as_bytes()).map_err(refuse)?;
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut dir =
        open(root, dir_flags, Mode::empty()).map_err(|e| refuse(format!("{}: {e}", root.display())))?;
    let beneath = OpenHow::new().flags(dir_flags | OFlag::O_NOFOLLOW).resolve(
        ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let mut shown = root.to_path_buf();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        shown.push(part);
        if let Err(e) = mkdirat(&dir, part, Mode::S_IRWXU) {
            if e != nix::errno::Errno::EEXIST {
                return Err(refuse(format!("{}: {e}", shown.display())));
            }
        }
        dir = openat2(&dir, part, beneath).map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR | nix::errno::Errno::EXDEV => {
                refuse(format!("{} is not a directory (a symlink?)", shown.display()))
            }
            e => refuse(format!("{}: {e}", shown.display())),
        })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::snapshot::Kind;
    use crate::progress::NoProgress;
    use crate::store::Store;

    /// Plays LXC and the storage tools: records every command; `mount`
    /// puts the volume's one file into its target, `umount` takes it away.
    struct FakeHost {
        calls: Vec<String>,
        state: &'static str,
        /// What `zfs get mountpoint` answers.
        zfs_mountpoint: String,
    }

    impl Runner for FakeHost {
        fn run(&mut self, program: &str, args: &[String]) -> Result<String, CtError> {
            let line = format!("{program} {}", args.join(" "));
            let last = PathBuf::from(args.last().cloned().unwrap_or_default());
            let out = match program {
                "lxc-info" => format!("{}\n", self.state),
                "lxc-stop" => {
                    self.state = "STOPPED";
                    String::new()
                }
                "lxc-start" => {
                    self.state = "RUNNING";
                    String::new()
                }
                "mount" => {
                    std::fs::create_dir_all(last.join("etc")).unwrap();
                    std::fs::write(last.join("etc/hostname"), b"ct1\n").unwrap();
                    String::new()
                }
                "umount" => {
                    std::fs::remove_dir_all(last.join("etc")).unwrap();
                    String::new()
                }
                "zfs" => format!("{}\n", self.zfs_mountpoint),
                _ => String::new(),
            };
            // Tool arguments that vary per run are kept out of the record.
            self.calls
                .push(line.split(" -P ").next().unwrap_or(&line).to_string());
            Ok(out)
        }
    }

    /// A store, options and a container `ct1` whose config says `rootfs`.
    fn setup(tmp: &Path, rootfs: &str, mode: Mode) -> (Store, BackupOptions, CtOptions) {
        let lxcpath = tmp.join("lxc");
        std::fs::create_dir_all(lxcpath.join("ct1")).unwrap();
        std::fs::write(
            lxcpath.join("ct1/config"),
            format!("lxc.rootfs.path = {rootfs}\n"),
        )
        .unwrap();
        let store = Store::init(&tmp.join("store"), ChunkSize::new(65536).unwrap()).unwrap();
        let opts = BackupOptions {
            compression: Default::default(),
            threads: 1,
            ..BackupOptions::new(Kind::Ct, "ct1")
        };
        let ct = CtOptions {
            name: "ct1".into(),
            lxcpath,
            mode,
            include_mounts: Vec::new(),
            stop_timeout: Duration::from_secs(60),
            hook: None,
            work_dir: tmp.join("work"),
            tmpdir: None,
            cdc: CdcParams::default(),
        };
        (store, opts, ct)
    }

    #[test]
    fn stop_mode_mounts_an_lvm_root_read_only_while_the_container_is_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, opts, ct) = setup(tmp.path(), "lvm:/dev/vg0/ct1", Mode::Stop);
        let mut host = FakeHost {
            calls: Vec::new(),
            state: "RUNNING",
            zfs_mountpoint: String::new(),
        };
        let (m, _) = backup_ct(&store, &opts, &ct, &mut host, &NoProgress).unwrap();
        let mounted = host
            .calls
            .iter()
            .find(|c| c.starts_with("mount"))
            .unwrap()
            .clone();
        let dir = mounted.rsplit(' ').next().unwrap().to_string();
        assert_eq!(
            host.calls,
            [
                "lxc-info".to_string(),
                "lxc-stop".into(),
                format!("mount -o ro /dev/vg0/ct1 {dir}"),
                format!("umount {dir}"),
                "lxc-start".into(),
                "lxc-wait".into(),
            ]
        );
        assert_eq!(host.state, "RUNNING");
        assert!(m.ct.as_ref().unwrap().downtime_secs > 0.0);
        assert_eq!(
            m.archives[0].tree.as_ref().unwrap().files,
            1,
            "the volume's file was read"
        );
        assert!(!Path::new(&dir).exists(), "the mount point is removed");
    }

    #[test]
    fn stop_mode_reads_a_zfs_root_at_its_mount_point() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, opts, ct) = setup(tmp.path(), "zfs:tank/ct1", Mode::Stop);
        let mp = tmp.path().join("tank-ct1");
        std::fs::create_dir_all(mp.join("etc")).unwrap();
        std::fs::write(mp.join("etc/hostname"), b"ct1\n").unwrap();
        let mut host = FakeHost {
            calls: Vec::new(),
            state: "STOPPED",
            zfs_mountpoint: mp.display().to_string(),
        };
        let (m, _) = backup_ct(&store, &opts, &ct, &mut host, &NoProgress).unwrap();
        assert_eq!(
            host.calls,
            ["lxc-info", "zfs get -H -o value mountpoint tank/ct1"]
        );
        assert_eq!(host.state, "STOPPED", "a stopped container is not started");
        assert_eq!(m.archives[0].tree.as_ref().unwrap().files, 1);
    }
}
