//! Holding back the signals that would end hoard in the middle of a step
//! that must be undone (a frozen guest or container, a paused VM).

use std::sync::atomic::{AtomicI32, Ordering};

/// SIGINT, SIGTERM and SIGHUP are held while this lives and delivered
/// (with their default action) when it ends.
pub struct DeferSignals {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

static DEFERRED: AtomicI32 = AtomicI32::new(0);

/// True once a held signal arrived: long work (a tree walk while the
/// container is stopped) stops early, so that what was held back can be
/// undone and the signal delivered.
pub fn pending() -> bool {
    DEFERRED.load(Ordering::SeqCst) != 0
}

extern "C" fn note_signal(sig: libc::c_int) {
    DEFERRED.store(sig, Ordering::SeqCst);
}

impl DeferSignals {
    pub fn start() -> DeferSignals {
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a plain handler that only stores to an atomic; the old
            // action is kept to be put back.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &new, &mut old) == 0 {
                    previous.push((sig, old));
                }
            }
        }
        DeferSignals { previous }
    }
}

impl Drop for DeferSignals {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores the action saved in start().
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        let sig = DEFERRED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: re-raises a signal that arrived meanwhile.
            unsafe { libc::raise(sig) };
        }
    }
}
