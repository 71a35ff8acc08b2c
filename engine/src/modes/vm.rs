//! VM backup modes, vzdump's snapshot and suspend, as a thin layer over the
//! live copy: each mode is an ordered plan of steps around one
//! [`backup_live`](crate::modes::live::backup_live) call, and whatever a step changed in the VM is put back,
//! also when a later step fails.
//!
//! - **snapshot**: the guest runs throughout. With a guest agent, its file
//!   systems are frozen just before the copy-before-write point in time and
//!   thawed right after it; without one the backup is crash-consistent.
//! - **suspend**: the VM is paused just before the point in time and resumed
//!   right after it (not after the copy), its file systems frozen around
//!   the pause when an agent answers. Kept for compatibility: snapshot mode
//!   gives the same point in time without stopping the guest.
//! - **stop**: an orderly shutdown (ACPI power button, then the SHUTDOWN
//!   event within a timeout). QEMU must stay alive after the guest powers
//!   off (`-no-shutdown`): the point in time is set up in that same QEMU on
//!   the quiet disks, and the guest is booted again (`system_reset`,
//!   `cont`) right after it, while hoard still reads the powered-off state
//!   through the copy-before-write filter. Downtime is shutdown plus boot,
//!   not the whole read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Classify, Context, ErrorKind};
use crate::format::snapshot::{Manifest, VmDisk, VmRecord};
use crate::modes::live::{copy_live, DiskReport, LiveDisk, LiveError, LiveOptions, PointHooks};
use crate::ops::backup::BackupOptions;
use crate::progress::Progress;
use crate::source::qga::{Qga, QgaError};
use crate::source::qmp::{Qmp, QmpError};
use crate::store::Repository;

pub use crate::modes::Mode;

#[derive(Debug, thiserror::Error)]
pub(crate) enum VmError {
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(
        "the guest did not shut down within {secs} s (--stop-timeout); it was asked to, and is left as it is (--force-stop stops it hard)"
    )]
    StopTimeout { secs: u64 },
    #[error("QEMU exited when the guest powered off: start it with -no-shutdown so that hoard can boot the guest again after the point in time; the VM stays off")]
    QemuExited,
    #[error("after the guest powered off QEMU reports {0}, not status shutdown")]
    NotShutDown(String),
    #[error(transparent)]
    Hook(#[from] crate::modes::hooks::HookError),
}

impl Classify for VmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmError::Live(e) => e.kind(),
            VmError::Qmp(e) => e.kind(),
            VmError::StopTimeout { .. } | VmError::QemuExited | VmError::NotShutDown(_) => ErrorKind::Source,
            VmError::Hook(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            VmError::Live(e) => e.context(),
            VmError::Qmp(e) => e.context(),
            VmError::Hook(e) => e.context(),
            _ => Context::default(),
        }
    }
}

pub struct VmOptions {
    pub mode: Mode,
    /// The guest agent's chardev socket on the host.
    pub qga: Option<PathBuf>,
    /// Freeze the guest's file systems around the point in time (snapshot
    /// mode, with an agent).
    pub fsfreeze: bool,
    /// How long the agent may take to answer a ping, to freeze, to thaw.
    pub agent_timeout: Duration,
    pub freeze_timeout: Duration,
    /// vzdump-style hook script, called with the phase name.
    pub hook: Option<crate::modes::hooks::Hook>,
    /// Stop mode: how long the guest may take to shut down.
    pub stop_timeout: Duration,
    /// Stop mode: past the timeout, stop the guest hard (its CPUs stop,
    /// and it boots again after the point in time) instead of giving up.
    pub force_stop: bool,
}

/// Backs up `disks` of the VM behind `qmp` in `vm.mode` (how the mode went
/// is the manifest's `vm` record); returns the disks' reports and warnings.
pub fn backup_vm(
    store: &dyn Repository,
    qmp: &mut Qmp,
    disks: &[LiveDisk],
    live: &LiveOptions,
    opts: &BackupOptions,
    vm: &VmOptions,
    progress: &dyn Progress,
) -> crate::Result<(Manifest, Vec<DiskReport>, Vec<String>)> {
    let hook = |phase: &'static str| run_hook(vm, opts, phase);
    crate::modes::hooks::job(&hook, || {
        let mut point = Point::new(vm, opts, qmp)?;
        let r = (|| -> Result<_, VmError> {
            if vm.mode != Mode::Snapshot && point.was_running {
                hook("pre-stop")?;
            }
            if vm.mode == Mode::Stop && point.was_running {
                point.shut_down(qmp)?;
            }
            hook("pre-snapshot")?;
            // post-snapshot runs from the point's after_point, once the
            // guest runs again and before the disks are read.
            Ok(copy_live(store, qmp, disks, live, opts, &mut point, progress)?)
        })();
        if r.is_err() {
            // Failed before the point in time: the guest must run again.
            let _ = point.resume(qmp);
        }
        let (manifest, reports) = r?;
        Ok((manifest, reports, std::mem::take(&mut point.warnings)))
    })
}

/// The steps of a mode around the point in time.
struct Point<'a> {
    vm: &'a VmOptions,
    opts: &'a BackupOptions,
    was_running: bool,
    agent: Option<Qga<std::os::unix::net::UnixStream>>,
    agent_state: String,
    frozen_at: Option<Instant>,
    frozen_secs: f64,
    paused_at: Option<Instant>,
    downtime_secs: f64,
    signals: Option<crate::signals::DeferSignals>,
    warnings: Vec<String>,
}

impl<'a> Point<'a> {
    fn new(vm: &'a VmOptions, opts: &'a BackupOptions, qmp: &mut Qmp) -> Result<Point<'a>, VmError> {
        let status: Value = qmp.execute_value("query-status", json!({}))?;
        let was_running = status.get("running").and_then(Value::as_bool).unwrap_or(false);
        let mut p = Point {
            vm,
            opts,
            was_running,
            agent: None,
            agent_state: String::new(),
            frozen_at: None,
            frozen_secs: 0.0,
            paused_at: None,
            downtime_secs: 0.0,
            signals: None,
            warnings: Vec::new(),
        };
        p.agent_state = match &vm.qga {
            _ if vm.mode == Mode::Stop => "not running".into(),
            _ if !vm.fsfreeze => "skipped".into(),
            _ if !was_running => "skipped (VM not running)".into(),
            None => "unavailable: no guest agent socket given".into(),
            Some(path) => match ping(path, vm.agent_timeout) {
                Ok(q) => {
                    p.agent = Some(q);
                    String::new()
                }
                Err(e) => format!("unavailable: {e}"),
            },
        };
        if !p.agent_state.is_empty() && vm.mode != Mode::Stop {
            p.warnings.push(format!(
                "guest agent {}: the backup is crash-consistent only",
                p.agent_state
            ));
        }
        Ok(p)
    }

    fn vm_record(&self, reports: &[DiskReport]) -> VmRecord {
        VmRecord {
            guest_agent: self.agent_state.clone(),
            downtime_secs: self.downtime_secs,
            frozen_secs: self.frozen_secs,
            disks: reports
                .iter()
                .map(|r| VmDisk {
                    archive: r.archive.clone(),
                    node: r.node.clone(),
                    bitmap: r.bitmap.to_string(),
                })
                .collect(),
        }
    }

    /// Presses the power button and waits for the guest to power off;
    /// QEMU must stay (-no-shutdown) to boot it again after the point.
    fn shut_down(&mut self, qmp: &mut Qmp) -> Result<(), VmError> {
        let asked = Instant::now();
        qmp.execute_value("system_powerdown", json!({}))?;
        let timeout = self.vm.stop_timeout;
        match qmp.wait_event("SHUTDOWN", timeout, |_| true) {
            Ok(_) => {}
            Err(QmpError::Timeout { .. }) if self.vm.force_stop => {
                // Pulling the plug: the CPUs stop where they are, the disks
                // are crash-consistent, and resume() boots it again.
                qmp.execute_value("stop", json!({}))?;
                self.paused_at = Some(asked);
                self.warnings.push(format!(
                    "the guest did not shut down within {} s: stopped hard (--force-stop), the backup is crash-consistent",
                    timeout.as_secs()
                ));
                return Ok(());
            }
            Err(QmpError::Timeout { .. }) => {
                return Err(VmError::StopTimeout {
                    secs: timeout.as_secs(),
                })
            }
            Err(QmpError::Closed { .. }) => return Err(VmError::QemuExited),
            Err(e) => return Err(e.into()),
        }
        // With -no-shutdown QEMU now sits in status "shutdown".
        let status: Value = qmp
            .execute_value("query-status", json!({}))
            .map_err(|e| match e {
                QmpError::Closed { .. } | QmpError::Io { .. } => VmError::QemuExited,
                e => e.into(),
            })?;
        if status.get("status").and_then(Value::as_str) != Some("shutdown") {
            return Err(VmError::NotShutDown(status.to_string()));
        }
        // Off now: from here on, whatever happens, resume() boots it again.
        self.paused_at = Some(asked);
        Ok(())
    }

    /// Runs the guest again if this backup stopped it: a powered-off guest
    /// boots again, a paused one resumes. Nothing the second time.
    fn resume(&mut self, qmp: &mut Qmp) -> Result<(), QmpError> {
        let Some(at) = self.paused_at.take() else {
            return Ok(());
        };
        let reset = match self.vm.mode {
            Mode::Stop => qmp.execute_value("system_reset", json!({})).map(drop),
            _ => Ok(()),
        };
        let r = reset.and_then(|()| qmp.execute_value("cont", json!({})).map(drop));
        self.downtime_secs = at.elapsed().as_secs_f64();
        r
    }

    fn freeze(&mut self) {
        // The agent's channel serves one client at a time: let go of it
        // while frozen (the thaw takes a fresh session), so that others,
        // the tests among them, can ask the agent meanwhile.
        let Some(mut q) = self.agent.take() else { return };
        self.frozen_at = Some(Instant::now());
        match q.execute("guest-fsfreeze-freeze", json!({}), self.vm.freeze_timeout) {
            Ok(_) => self.agent_state = "frozen".into(),
            Err(e) => {
                self.agent_state = format!("freeze failed: {e}");
                self.warnings.push(format!(
                    "guest agent: freeze failed ({e}); thawing, the backup is crash-consistent only"
                ));
            }
        }
    }

    fn thaw(&mut self) {
        let Some(started) = self.frozen_at.take() else {
            return;
        };
        // Also after a failed or timed-out freeze: the agent may still
        // freeze later.
        let timeout = self.vm.agent_timeout;
        let thawed = match self.vm.qga.as_deref() {
            Some(path) => {
                ping(path, timeout).and_then(|mut q| q.execute("guest-fsfreeze-thaw", json!({}), timeout))
            }
            None => Ok(Value::Null),
        };
        self.frozen_secs = started.elapsed().as_secs_f64();
        if let Err(e) = thawed {
            if self.agent_state == "frozen" {
                self.agent_state = format!("thaw failed: {e}");
            }
            self.warnings.push(format!(
                "guest agent: thaw failed ({e}): the guest's file systems may still be frozen"
            ));
        }
    }
}

impl PointHooks for Point<'_> {
    fn record(&self, disks: &[DiskReport]) -> (Option<String>, Option<VmRecord>) {
        (Some(self.vm.mode.name().into()), Some(self.vm_record(disks)))
    }

    fn before_point(&mut self, qmp: &mut Qmp) -> Result<(), LiveError> {
        // Ctrl-C between here and after_point would leave the guest frozen
        // or paused: signals wait until it is resumed.
        self.signals = Some(crate::signals::DeferSignals::start());
        self.freeze();
        if self.vm.mode == Mode::Suspend && self.was_running {
            qmp.execute_value("stop", json!({}))?;
            self.paused_at = Some(Instant::now());
        }
        crate::failpoint::pause("vm-before-point");
        Ok(())
    }

    fn after_point(&mut self, qmp: &mut Qmp) -> Result<(), LiveError> {
        let r = self.resume(qmp);
        self.thaw();
        self.signals = None;
        r?;
        run_hook(self.vm, self.opts, "post-snapshot").map_err(|e| LiveError::Step(Box::new(e.into())))
    }
}

fn run_hook(vm: &VmOptions, opts: &BackupOptions, phase: &'static str) -> Result<(), VmError> {
    let kind = opts.kind.to_string();
    Ok(crate::modes::hooks::run(
        vm.hook.as_ref(),
        phase,
        &kind,
        &opts.id,
        vm.mode.name(),
    )?)
}

fn ping(path: &Path, timeout: Duration) -> Result<Qga<std::os::unix::net::UnixStream>, QgaError> {
    let mut q = Qga::connect(path, timeout)?;
    q.execute("guest-ping", json!({}), timeout)?;
    Ok(q)
}
