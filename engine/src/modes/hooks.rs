//! vzdump-style hook scripts: called with the phase name, and the backup's
//! kind, id and mode in the environment; a failing call aborts the job.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;

use crate::error::{Classify, Context, ErrorKind};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A hook script and how long one call may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub script: PathBuf,
    /// A call still running after this is killed (with everything it
    /// started) and counts as failed.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("hook script {script} failed in phase {phase}: {detail}")]
pub struct HookError {
    pub script: PathBuf,
    pub phase: &'static str,
    pub detail: String,
}

impl Classify for HookError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Step
    }

    fn context(&self) -> Context {
        Context::path(&self.script)
    }
}

/// Runs `script PHASE` (nothing without a hook). What the script prints
/// goes to hoard's standard error, never into its standard output (which
/// may be `--json`); its standard input is empty.
pub(crate) fn run(
    hook: Option<&Hook>,
    phase: &'static str,
    kind: &str,
    id: &str,
    mode: &str,
) -> Result<(), HookError> {
    let Some(hook) = hook else { return Ok(()) };
    let err = |detail: String| HookError {
        script: hook.script.clone(),
        phase,
        detail,
    };
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err(e.to_string()))?;
    let mut child = crate::umask::user_command(&hook.script)
        .arg(phase)
        .env("HOARD_PHASE", phase)
        .env("HOARD_KIND", kind)
        .env("HOARD_ID", id)
        .env("HOARD_MODE", mode)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + hook.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| err(e.to_string()))? {
            break status;
        }
        if Instant::now() >= deadline {
            let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(err(format!(
                "still running after {} s; killed",
                hook.timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(err(status.to_string()));
    }
    Ok(())
}

/// Runs a backup job between its `job-start` and `backup-end` hooks;
/// `job-abort` follows whatever failed, the job or a hook.
pub(crate) fn job<T, E: From<H>, H>(
    hook: &dyn Fn(&'static str) -> Result<(), H>,
    body: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let r = hook("job-start")
        .map_err(E::from)
        .and_then(|()| body())
        .and_then(|made| hook("backup-end").map(|()| made).map_err(E::from));
    if r.is_err() {
        let _ = hook("job-abort");
    }
    r
}
