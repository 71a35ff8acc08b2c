//! Storage snapshots of container volumes, for snapshot mode: one trait,
//! with btrfs (subvolume snapshot), LVM-thin (thin snapshot, mounted
//! read-only) and ZFS (dataset snapshot, read through `.zfs/snapshot`).

use std::path::{Path, PathBuf};

use super::error::CtError;
use super::runner::Runner;

/// A read-only point-in-time view of a volume, to archive and then remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Where its files can be read.
    pub path: PathBuf,
    /// The commands that remove it (run in order, also after a failure).
    pub cleanup: Vec<(String, Vec<String>)>,
}

/// Volume storage that can take snapshots.
pub(crate) trait Provider {
    /// Takes the snapshot (the container is frozen meanwhile).
    fn snapshot(&self, runner: &mut dyn Runner, tag: &str, work: &Path) -> Result<Snapshot, CtError>;
}

/// A btrfs subvolume on the host.
pub(crate) struct Btrfs(pub PathBuf);

/// An LVM thin volume `/dev/VG/LV`.
pub(crate) struct LvmThin(pub String);

/// A ZFS dataset.
pub(crate) struct Zfs(pub String);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl Provider for Btrfs {
    fn snapshot(&self, runner: &mut dyn Runner, tag: &str, _work: &Path) -> Result<Snapshot, CtError> {
        // Beside the subvolume: a snapshot must be on the same file system.
        let parent = self.0.parent().unwrap_or(Path::new("/"));
        let snap = parent.join(format!(".{tag}"));
        let (src, dst) = (self.0.display().to_string(), snap.display().to_string());
        runner.run("btrfs", &args(&["subvolume", "snapshot", "-r", &src, &dst]))?;
        Ok(Snapshot {
            path: snap,
            cleanup: vec![("btrfs".into(), args(&["subvolume", "delete", &dst]))],
        })
    }
}

impl Provider for LvmThin {
    fn snapshot(&self, runner: &mut dyn Runner, tag: &str, work: &Path) -> Result<Snapshot, CtError> {
        let vg_lv = self.0.trim_start_matches("/dev/");
        let vg = vg_lv.split('/').next().unwrap_or(vg_lv);
        let snap = format!("{vg}/{tag}");
        let mnt = work.join(tag);
        std::fs::create_dir_all(&mnt).map_err(|e| CtError::Io {
            path: mnt.clone(),
            detail: e.to_string(),
        })?;
        let m = mnt.display().to_string();
        runner.run("lvcreate", &args(&["-s", "-n", tag, vg_lv]))?;
        let mut cleanup = vec![("lvremove".to_string(), args(&["-f", &snap]))];
        let steps: [(&str, Vec<String>); 2] = [
            ("lvchange", args(&["-ay", "-K", &snap])),
            ("mount", args(&["-o", "ro", &format!("/dev/{snap}"), &m])),
        ];
        for (program, a) in steps {
            if let Err(e) = runner.run(program, &a) {
                for (p, a) in &cleanup {
                    let _ = runner.run(p, a);
                }
                return Err(e);
            }
        }
        cleanup.insert(0, ("umount".into(), args(&[&m])));
        Ok(Snapshot { path: mnt, cleanup })
    }
}

impl Provider for Zfs {
    fn snapshot(&self, runner: &mut dyn Runner, tag: &str, _work: &Path) -> Result<Snapshot, CtError> {
        let mountpoint = runner.run("zfs", &args(&["get", "-H", "-o", "value", "mountpoint", &self.0]))?;
        let snap = format!("{}@{tag}", self.0);
        runner.run("zfs", &args(&["snapshot", &snap]))?;
        Ok(Snapshot {
            path: Path::new(mountpoint.trim()).join(".zfs/snapshot").join(tag),
            cleanup: vec![("zfs".into(), args(&["destroy", &snap]))],
        })
    }
}

/// Removes a snapshot; the first failure is returned, every step is tried.
pub(crate) fn remove(runner: &mut dyn Runner, s: &Snapshot) -> Result<(), CtError> {
    let mut first = Ok(());
    for (program, a) in &s.cleanup {
        if let Err(e) = runner.run(program, a) {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

fn is_btrfs(p: &Path) -> bool {
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statfs buffer.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0) && s.f_type as i64 == BTRFS_SUPER_MAGIC
}

/// The root of a btrfs subvolume (inode 256 on btrfs).
pub(crate) fn is_btrfs_subvolume(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.ino() == 256) && is_btrfs(dir)
}

/// The provider for a directory volume, if its storage takes snapshots.
pub(crate) fn provider_for_dir(dir: &Path) -> Option<Box<dyn Provider>> {
    is_btrfs_subvolume(dir).then(|| Box::new(Btrfs(dir.to_path_buf())) as Box<dyn Provider>)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records commands; fails the ones whose program is in `fail`.
    pub(crate) struct Recorder {
        pub calls: Vec<String>,
        pub fail: Vec<&'static str>,
        pub output: String,
    }

    impl Runner for Recorder {
        fn run(&mut self, program: &str, args: &[String]) -> Result<String, CtError> {
            self.calls.push(format!("{program} {}", args.join(" ")));
            if self.fail.contains(&program) {
                return Err(CtError::Command {
                    command: program.into(),
                    detail: "injected".into(),
                });
            }
            Ok(self.output.clone())
        }
    }

    fn recorder(fail: &[&'static str]) -> Recorder {
        Recorder {
            calls: Vec::new(),
            fail: fail.to_vec(),
            output: "/tank/ct1\n".into(),
        }
    }

    #[test]
    fn lvm_thin_sequence_and_cleanup_after_a_failure() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path().display();
        let mut r = recorder(&[]);
        let s = LvmThin("/dev/vg0/ct1".into())
            .snapshot(&mut r, "hoard-snap-1", work.path())
            .unwrap();
        remove(&mut r, &s).unwrap();
        assert_eq!(
            r.calls,
            [
                "lvcreate -s -n hoard-snap-1 vg0/ct1".to_string(),
                "lvchange -ay -K vg0/hoard-snap-1".into(),
                format!("mount -o ro /dev/vg0/hoard-snap-1 {w}/hoard-snap-1"),
                format!("umount {w}/hoard-snap-1"),
                "lvremove -f vg0/hoard-snap-1".into(),
            ]
        );
        // The mount fails: the snapshot volume is removed at once.
        let mut r = recorder(&["mount"]);
        assert!(LvmThin("/dev/vg0/ct1".into())
            .snapshot(&mut r, "hoard-snap-2", work.path())
            .is_err());
        assert_eq!(r.calls.last().unwrap(), "lvremove -f vg0/hoard-snap-2");
    }

    #[test]
    fn zfs_sequence_and_cleanup() {
        let mut r = recorder(&[]);
        let s = Zfs("tank/ct1".into())
            .snapshot(&mut r, "hoard-snap-1", Path::new("/tmp"))
            .unwrap();
        assert_eq!(s.path, Path::new("/tank/ct1/.zfs/snapshot/hoard-snap-1"));
        remove(&mut r, &s).unwrap();
        assert_eq!(
            r.calls,
            [
                "zfs get -H -o value mountpoint tank/ct1",
                "zfs snapshot tank/ct1@hoard-snap-1",
                "zfs destroy tank/ct1@hoard-snap-1"
            ]
        );
        // A failing destroy is reported.
        let mut r = recorder(&["zfs"]);
        assert!(remove(&mut r, &s).is_err());
    }
}
