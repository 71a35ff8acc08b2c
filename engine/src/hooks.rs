//! vzdump-style hook scripts: called with the phase name, and the backup's
//! kind, id and mode in the environment; a failing call aborts the job.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("hook script {script} failed in phase {phase}: {detail}")]
pub struct HookError {
    pub script: PathBuf,
    pub phase: &'static str,
    pub detail: String,
}

/// Runs `script PHASE` (nothing without a script).
pub fn run(
    script: Option<&Path>,
    phase: &'static str,
    kind: &str,
    id: &str,
    mode: &str,
) -> Result<(), HookError> {
    let Some(script) = script else { return Ok(()) };
    let err = |detail: String| HookError {
        script: script.to_path_buf(),
        phase,
        detail,
    };
    let status = Command::new(script)
        .arg(phase)
        .env("HOARD_PHASE", phase)
        .env("HOARD_KIND", kind)
        .env("HOARD_ID", id)
        .env("HOARD_MODE", mode)
        .status()
        .map_err(|e| err(e.to_string()))?;
    if !status.success() {
        return Err(err(status.to_string()));
    }
    Ok(())
}

/// Runs a backup job between its `job-start` and `backup-end` hooks;
/// `job-abort` follows whatever failed, the job or a hook.
pub fn job<T, E: From<H>, H>(
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
