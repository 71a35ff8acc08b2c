//! How container modes run host tools (lxc-*, btrfs): behind a trait, so
//! that command sequences can be checked where the real tools cannot run.

use super::error::CtError;

/// Runs a program; its standard output, or an error with its standard error.
pub trait Runner {
    fn run(&mut self, program: &str, args: &[String]) -> Result<String, CtError>;
}

/// The real commands.
pub struct System;

impl Runner for System {
    fn run(&mut self, program: &str, args: &[String]) -> Result<String, CtError> {
        let out = crate::umask::user_command(program)
            .args(args)
            .output()
            .map_err(|e| CtError::Command {
                command: format!("{program} {}", args.join(" ")),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(CtError::Command {
                command: format!("{program} {}", args.join(" ")),
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
