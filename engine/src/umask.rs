//! The file-creation mask: hoard's own files are private, whatever the
//! umask it was started with; programs it starts get that umask back.
//!
//! A store holds every backed-up byte (0600 files included), so its files
//! must not be readable by other users. The store's root directory is
//! created 0700 (or 2770 for a group store, store.md), which already shuts
//! everybody else out; a private umask also keeps every file below it (and
//! every restored image, fleecing image or socket) 0600 in case the root's
//! mode is ever loosened. RocksDB creates files with the umask, so the mask
//! is the only way to reach all of them.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::stat::{umask, Mode};

/// The umask hoard was started with; `u32::MAX` until [`make_private`].
static ORIGINAL: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process umask to `077` (`007` when `group` is true: a store
/// shared with a group) and remembers the original for child processes.
pub fn make_private(group: bool) {
    let mask = if group { 0o007 } else { 0o077 };
    let before = umask(Mode::from_bits_truncate(mask));
    let _ = ORIGINAL.compare_exchange(u32::MAX, before.bits(), Ordering::SeqCst, Ordering::SeqCst);
}

/// A command for a program that is not hoard's own helper (a hook, LXC's
/// tools): it runs with the umask hoard was started with, so that what it
/// creates (a container's files, say) is as it would be without hoard.
pub(crate) fn user_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let original = ORIGINAL.load(Ordering::SeqCst);
    if original != u32::MAX {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(move || {
                umask(Mode::from_bits_truncate(original));
                Ok(())
            });
        }
    }
    cmd
}
