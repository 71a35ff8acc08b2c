//! Test hooks, compiled in only with the `failpoints` feature (test
//! builds: scripts/test.sh turns it on; release builds have none): injected
//! crash points, and pauses that hold an operation inside a race window.
//!
//! Every durable step of every operation (a write made durable, an fsync, a
//! rename, an index commit, a delete) calls [`hit`] with the step's name.
//! With `HOARD_FAILPOINTS_LOG=FILE` each point reached is appended to FILE,
//! so a test can enumerate the points of an operation; with
//! `HOARD_CRASH_AT=NAME` (or `NAME#N`: the Nth time it is reached) the
//! process kills itself there with SIGKILL, as `kill -9` would: no
//! destructor, no flush, no cleanup runs.

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Mutex;
    static COUNTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
    let n = {
        let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts
            .get_or_insert_with(HashMap::new)
            .entry(name.to_string())
            .or_insert(0);
        *c += 1;
        *c
    };
    if let Some(log) = std::env::var_os("HOARD_FAILPOINTS_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{name}\n").as_bytes());
        }
    }
    if let Ok(at) = std::env::var("HOARD_CRASH_AT") {
        let (point, nth) = match at.split_once('#') {
            Some((p, k)) => (p.to_string(), k.parse().unwrap_or(1)),
            None => (at, 1),
        };
        if point == name && nth == n {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Without the `failpoints` feature, nothing: the calls compile away.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

/// With `HOARD_TEST_PAUSE=POINT:MS` in the environment, sleeps MS
/// milliseconds at the named point, so whole-flow tests can hold a backup
/// or a GC inside a race window; with `HOARD_TEST_PAUSE_MARK=FILE` it also
/// writes the point's name to FILE when it gets there.
#[cfg(feature = "failpoints")]
pub(crate) fn pause(point: &str) {
    let Ok(spec) = std::env::var("HOARD_TEST_PAUSE") else {
        return;
    };
    for item in spec.split(',') {
        if let Some(ms) = item.strip_prefix(point).and_then(|r| r.strip_prefix(':')) {
            if let Ok(mark) = std::env::var("HOARD_TEST_PAUSE_MARK") {
                let _ = std::fs::write(mark, point);
            }
            // Held, but a stopping signal ends the hold, as it would end
            // the slow step the pause stands for.
            let end =
                std::time::Instant::now() + std::time::Duration::from_millis(ms.parse().unwrap_or(1000));
            while std::time::Instant::now() < end && !crate::signals::pending() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Without the `failpoints` feature, nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn pause(_point: &str) {}
