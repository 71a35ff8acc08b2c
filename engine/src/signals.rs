//! Holding back the signals that would end hoard in the middle of a step
//! that must be undone (a frozen guest or container, a paused VM), and
//! turning them into an orderly stop of a backup that can simply be
//! dropped (`Interrupt`).

use std::sync::atomic::{AtomicI32, Ordering};

/// SIGINT, SIGTERM and SIGHUP are held while this lives and delivered
/// (with their default action) when it ends.
pub struct DeferSignals {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

static DEFERRED: AtomicI32 = AtomicI32::new(0);

static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// True once a held signal arrived, or an [`Interrupt`] was asked for:
/// long work (a tree walk while the container is stopped, a backup's
/// reads) stops early, so that what was held back can be undone, what was
/// written removed, and the signal delivered or reported.
pub fn pending() -> bool {
    DEFERRED.load(Ordering::SeqCst) != 0 || INTERRUPTED.load(Ordering::SeqCst) != 0
}

/// The signal that interrupted this run while an [`Interrupt`] was
/// installed, if one did.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::SeqCst)).filter(|s| *s != 0)
}

extern "C" fn note_signal(sig: libc::c_int) {
    DEFERRED.store(sig, Ordering::SeqCst);
}

extern "C" fn note_interrupt(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

const STOPPING: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs `handler` for SIGINT, SIGTERM and SIGHUP; returns the actions
/// it replaced.
fn install(handler: extern "C" fn(libc::c_int)) -> Vec<(libc::c_int, libc::sigaction)> {
    let mut previous = Vec::new();
    for sig in STOPPING {
        // SAFETY: a plain handler that only stores to an atomic; the old
        // action is kept to be put back.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = handler as usize;
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &new, &mut old) == 0 {
                previous.push((sig, old));
            }
        }
    }
    previous
}

fn restore(previous: &[(libc::c_int, libc::sigaction)]) {
    for (sig, old) in previous {
        // SAFETY: restores an action saved by install().
        unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
    }
}

impl DeferSignals {
    pub fn start() -> DeferSignals {
        DeferSignals {
            previous: install(note_signal),
        }
    }
}

/// While this lives, SIGINT, SIGTERM and SIGHUP do not kill hoard: they
/// are noted ([`interrupted`]), the work in progress sees [`pending`] and
/// fails as interrupted, and its error path removes what it wrote. For a
/// backup, which publishes nothing until its last step.
pub struct Interrupt {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Interrupt {
    pub fn start() -> Interrupt {
        Interrupt {
            previous: install(note_interrupt),
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        restore(&self.previous);
    }
}

impl Drop for DeferSignals {
    fn drop(&mut self) {
        restore(&self.previous);
        let sig = DEFERRED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: re-raises a signal that arrived meanwhile.
            unsafe { libc::raise(sig) };
        }
    }
}

/// `SIGINT`, `SIGTERM`, `SIGHUP` or the number.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// Ends this process by `sig` with its default action (after an orderly
/// stop), so that a parent sees the signal it sent.
pub fn die_by(sig: i32) -> ! {
    // SAFETY: resets the action to the default and raises the signal;
    // nothing runs after it but the exit below, for a signal that does
    // not end a process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}
