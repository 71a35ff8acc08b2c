//! The stop and suspend modes' steps around the read of the trees.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::CtError;
use super::lxc::Lxc;
use crate::format::snapshot::{CtRecord, Manifest};
use crate::modes::Mode;
use crate::ops::backup::{BackupError, Quiesce};

/// Stop and suspend modes around the read: stop or freeze the container,
/// and always start or unfreeze it again.
pub(super) struct Steps<'l, 'r> {
    pub(super) lxc: &'l mut Lxc<'r>,
    pub(super) mode: Mode,
    pub(super) running: bool,
    pub(super) stop_timeout: Duration,
    pub(super) started: Instant,
    /// When the container was stopped or frozen.
    pub(super) since: Option<Instant>,
    pub(super) record: CtRecord,
    pub(super) signals: Option<crate::signals::DeferSignals>,
    /// An LVM root to mount read-only once the container is stopped.
    pub(super) lvm_mount: Option<(String, PathBuf)>,
    pub(super) mounted: bool,
}

impl Steps<'_, '_> {
    fn mount_root(&mut self) -> Result<(), CtError> {
        let Some((dev, dir)) = self.lvm_mount.clone() else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir).map_err(|e| CtError::Io {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
        let d = dir.display().to_string();
        self.lxc
            .runner
            .run("mount", &["-o", "ro", &dev, &d].map(str::to_string))?;
        self.mounted = true;
        Ok(())
    }

    fn unmount_root(&mut self) -> Result<(), CtError> {
        let Some((_, dir)) = self.lvm_mount.clone() else {
            return Ok(());
        };
        if std::mem::take(&mut self.mounted) {
            self.lxc.runner.run("umount", &[dir.display().to_string()])?;
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }
}

impl Quiesce for Steps<'_, '_> {
    fn first_pass(&self) -> bool {
        self.mode == Mode::Suspend
    }

    fn quiesce(&mut self) -> Result<(), BackupError> {
        self.record.first_pass_secs = if self.mode == Mode::Suspend {
            self.started.elapsed().as_secs_f64()
        } else {
            0.0
        };
        let step = |e: CtError| BackupError::Step(Box::new(e.into()));
        if !self.running {
            return self.mount_root().map_err(step);
        }
        self.signals = Some(crate::signals::DeferSignals::start());
        self.since = Some(Instant::now());
        match self.mode {
            Mode::Stop => self.lxc.stop(self.stop_timeout.as_secs().max(1)).map_err(step)?,
            _ => self.lxc.freeze().map_err(step)?,
        }
        self.mount_root().map_err(step)
    }

    fn resume(&mut self) -> Result<(), BackupError> {
        let unmounted = self.unmount_root();
        let Some(at) = self.since.take() else {
            return unmounted.map_err(|e| BackupError::Step(Box::new(e.into())));
        };
        let r = unmounted.and_then(|()| match self.mode {
            Mode::Stop => self.lxc.start(),
            _ => self.lxc.unfreeze(),
        });
        let secs = at.elapsed().as_secs_f64();
        match self.mode {
            Mode::Stop => self.record.downtime_secs = secs,
            _ => self.record.frozen_secs = secs,
        }
        self.signals = None;
        r.map_err(|e| BackupError::Step(Box::new(e.into())))
    }

    fn annotate(&self, manifest: &mut Manifest) {
        manifest.ct = Some(self.record.clone());
    }
}
