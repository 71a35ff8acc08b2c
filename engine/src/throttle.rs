//! The read-rate limit of a backup (`--bwlimit`, a job's `bwlimit`): every
//! byte read from a source, by any thread, is paced by one bucket, so the
//! backup reads at most the given bytes per second on average, with bursts
//! of at most a quarter second's worth.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static LIMIT: OnceLock<Throttle> = OnceLock::new();

/// How far reads may run ahead of the rate after a pause.
const BURST: Duration = Duration::from_millis(250);

struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes charged so far are paid for.
    paid_until: Mutex<Option<Instant>>,
}

/// Limits this process's source reads to `bytes_per_sec` (once; a second
/// call is ignored). Without it reads are not paced.
pub fn set_read_limit(bytes_per_sec: u64) {
    let _ = LIMIT.set(Throttle {
        bytes_per_sec: bytes_per_sec.max(1),
        paid_until: Mutex::new(None),
    });
}

/// Accounts for `bytes` just read, sleeping as long as the limit needs.
pub(crate) fn charge(bytes: usize) {
    let Some(t) = LIMIT.get() else { return };
    let wait = t.charge(bytes, Instant::now());
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
}

impl Throttle {
    fn charge(&self, bytes: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(|e| e.into_inner());
        // Credit for time spent not reading, but no more than BURST of it.
        let start = paid.map_or(now, |p| p.max(now.checked_sub(BURST).unwrap_or(now)));
        let until = start + cost;
        *paid = Some(until);
        until.saturating_duration_since(now + BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_paced_at_the_rate_after_one_burst() {
        let t = Throttle {
            bytes_per_sec: 1000,
            paid_until: Mutex::new(None),
        };
        let now = Instant::now();
        // A quarter second's worth goes at once ...
        assert_eq!(t.charge(250, now), Duration::ZERO);
        // ... then every byte waits for its share of the second.
        let wait = t.charge(500, now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // After a long pause, the credit is one burst, not the whole pause.
        let later = now + Duration::from_secs(60);
        assert_eq!(t.charge(250, later), Duration::ZERO);
        let wait = t.charge(1000, later);
        assert!((wait.as_secs_f64() - 0.75).abs() < 1e-6, "{wait:?}");
    }
}
