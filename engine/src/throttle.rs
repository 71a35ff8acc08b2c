//! The read-rate limit (`--bwlimit`, a job's `bwlimit`): every byte a
//! backup reads from its source, or a restore from its store, by any
//! thread, is paced by one bucket, so the process reads at most the given
//! bytes per second on average, with bursts of at most a quarter second's
//! worth. The bucket can live in a file that several processes share (the
//! backups of one job): then the limit is their total, and a worker that
//! finishes leaves its share to the ones still running.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::time::{clock_gettime, ClockId};

static LIMIT: OnceLock<Throttle> = OnceLock::new();

/// The environment variable that names a shared bucket file (set by
/// `hoard job run` for its backups).
pub const SHARED_VAR: &str = "HOARD_BWLIMIT_SHARED";

/// How far reads may run ahead of the rate after a pause.
const BURST: Duration = Duration::from_millis(250);

/// Where the bucket's one number lives: when the bytes charged so far are
/// paid for, in CLOCK_MONOTONIC time (the same clock in every process).
enum Bucket {
    Own(Mutex<Option<Duration>>),
    /// 8 bytes, little-endian nanoseconds (0: never charged), locked with
    /// flock around each charge.
    Shared(File),
}

struct Throttle {
    bytes_per_sec: u64,
    bucket: Bucket,
}

/// Limits this process's reads to `bytes_per_sec` (once; a second call is
/// ignored). Without it reads are not paced.
pub fn set_read_limit(bytes_per_sec: u64) {
    let _ = LIMIT.set(Throttle {
        bytes_per_sec: bytes_per_sec.max(1),
        bucket: Bucket::Own(Mutex::new(None)),
    });
}

/// As [`set_read_limit`], with the bucket in `file`, shared with every
/// process given the same file: their reads together stay under the rate.
pub fn set_shared_read_limit(bytes_per_sec: u64, file: &Path) -> std::io::Result<()> {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)?;
    let _ = LIMIT.set(Throttle {
        bytes_per_sec: bytes_per_sec.max(1),
        bucket: Bucket::Shared(f),
    });
    Ok(())
}

/// Accounts for `bytes` just read, sleeping as long as the limit needs.
pub(crate) fn charge(bytes: usize) {
    let Some(t) = LIMIT.get() else { return };
    let wait = t.charge(bytes, now());
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
}

fn now() -> Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(Duration::ZERO, Duration::from)
}

/// The bucket's new `paid` time after charging `cost` at `now`, and how
/// long the reader must wait.
fn pay(paid: Option<Duration>, cost: Duration, now: Duration) -> (Duration, Duration) {
    // Credit for time spent not reading, but no more than BURST of it.
    let start = paid.map_or(now, |p| p.max(now.saturating_sub(BURST)));
    let until = start + cost;
    (until, until.saturating_sub(now + BURST))
}

impl Throttle {
    fn charge(&self, bytes: usize, now: Duration) -> Duration {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        match &self.bucket {
            Bucket::Own(paid) => {
                let mut paid = paid.lock().unwrap_or_else(|e| e.into_inner());
                let (until, wait) = pay(*paid, cost, now);
                *paid = Some(until);
                wait
            }
            // A bucket that cannot be locked, read or written paces this
            // process alone from then on: a limit is never lifted.
            Bucket::Shared(f) => shared_charge(f, cost, now).unwrap_or(cost),
        }
    }
}

fn shared_charge(f: &File, cost: Duration, now: Duration) -> Option<Duration> {
    let f = f.try_clone().ok()?;
    let lock = Flock::lock(f, FlockArg::LockExclusive).ok()?;
    let mut buf = [0u8; 8];
    let n = lock.read_at(&mut buf, 0).ok()?;
    let nanos = if n == 8 { u64::from_le_bytes(buf) } else { 0 };
    let paid = (nanos > 0).then(|| Duration::from_nanos(nanos));
    let (until, wait) = pay(paid, cost, now);
    lock.write_at(&(until.as_nanos() as u64).to_le_bytes(), 0).ok()?;
    Some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            bucket: Bucket::Own(Mutex::new(None)),
        }
    }

    #[test]
    fn reads_are_paced_at_the_rate_after_one_burst() {
        let t = own(1000);
        let now = Duration::from_secs(1000);
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

    /// Two processes' throttles on one file pace their sum: what one
    /// charged, the other waits for.
    #[test]
    fn a_shared_bucket_paces_the_sum_of_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bucket");
        let open = || Throttle {
            bytes_per_sec: 1000,
            bucket: Bucket::Shared(
                File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .unwrap(),
            ),
        };
        let (a, b) = (open(), open());
        let now = Duration::from_secs(1000);
        assert_eq!(a.charge(250, now), Duration::ZERO);
        let wait = b.charge(500, now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Alone again later, a reader gets the whole rate.
        let later = now + Duration::from_secs(60);
        assert_eq!(a.charge(250, later), Duration::ZERO);
        let wait = a.charge(1000, later);
        assert!((wait.as_secs_f64() - 0.75).abs() < 1e-6, "{wait:?}");
    }
}
