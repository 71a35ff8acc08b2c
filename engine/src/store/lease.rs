//! The writer lease of a store in a bucket, and the fence that makes every
//! write to the bucket depend on it (format-spec/store.md, "Writer lease").
//!
//! A lease object `leases/CACHE.PID-RAND` is refreshed every `ttl / 5`;
//! another cache's writer takes over once the object is older than `ttl` by
//! the bucket's clock. The holder therefore counts its lease valid only
//! until `start + ttl - margin`, where `start` is its own clock (boot time,
//! which runs on through a stopped process and a suspended host) read
//! *before* the last refresh that succeeded was sent. Once that moment has
//! passed the lease is lost for good: the refresher never writes it again
//! (a stopped process that resumes would otherwise revive a lease another
//! host has legitimately taken over), and every later write fails.
//!
//! A write is checked before it is sent and again when its answer arrives:
//! an answer that comes after the lease lapsed may have landed after a
//! takeover, so a new object it created is withdrawn (deleted) and the
//! operation fails. A snapshot's manifest is such an object, so a writer
//! that lost its lease never leaves a published snapshot whose chunks the
//! new holder may already have collected.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};
use super::error::StoreError;
use super::s3::S3Backend;
use super::session::now_ns;

pub(crate) const LEASES: &str = "leases/";
/// A lease not refreshed for this long belongs to a dead writer.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(600);

/// The lease's lifetime: [`LEASE_TTL`], or in a test build
/// `HOARD_TEST_LEASE_SECS`, so that a test can stall a writer past it in
/// seconds.
pub(crate) fn lease_ttl() -> Duration {
    #[cfg(feature = "failpoints")]
    if let Some(secs) = std::env::var("HOARD_TEST_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s >= 5)
    {
        return Duration::from_secs(secs);
    }
    LEASE_TTL
}

fn refresh_period(ttl: Duration) -> Duration {
    ttl / 5
}

/// How long before the takeover point the holder stops trusting its lease:
/// two missed refreshes.
fn margin(ttl: Duration) -> Duration {
    2 * refresh_period(ttl)
}

/// Nanoseconds of CLOCK_BOOTTIME: monotonic, and counting while the
/// process is stopped or the machine sleeps, which is exactly when a lease
/// runs out unnoticed.
fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// What the refresher and the writers share about one lease.
struct LeaseState {
    /// The lease object's name, for messages.
    url: String,
    ttl: Duration,
    /// Boot-clock time after which the lease may have lapsed.
    valid_until: AtomicU64,
    /// Set once the lease lapsed; never cleared.
    lost: AtomicBool,
}

impl LeaseState {
    fn check(&self) -> Result<(), StoreError> {
        let now = boot_ns();
        if self.lost.load(Ordering::SeqCst) || now >= self.valid_until.load(Ordering::SeqCst) {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StoreError::LeaseLost {
                lease: self.url.clone(),
                ttl_secs: self.ttl.as_secs(),
            });
        }
        Ok(())
    }
}

/// A held lease: refreshed by a thread until dropped, then deleted.
struct Lease {
    s3: Arc<S3Backend>,
    name: String,
    state: Arc<LeaseState>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// Starts refreshing lease `name`, whose first write was sent at boot
    /// time `sent`.
    fn start(s3: Arc<S3Backend>, name: String, body: Vec<u8>, sent: u64, ttl: Duration) -> Lease {
        let state = Arc::new(LeaseState {
            url: s3.location(&name).display().to_string(),
            ttl,
            valid_until: AtomicU64::new(sent + (ttl - margin(ttl)).as_nanos() as u64),
            lost: AtomicBool::new(false),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let refresher = {
            let (s3, name, state) = (s3.clone(), name.clone(), state.clone());
            std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(refresh_period(ttl)) {
                    // Never revive a lapsed lease: another host may hold it now.
                    if state.check().is_err() {
                        return;
                    }
                    let sent = boot_ns();
                    if s3.put(&name, body.clone(), false).is_ok() {
                        let until = sent + (ttl - margin(ttl)).as_nanos() as u64;
                        state.valid_until.fetch_max(until, Ordering::SeqCst);
                    }
                }
            })
        };
        Lease {
            s3,
            name,
            state,
            stop: Some(stop),
            refresher: Some(refresher),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        // A lost lease's object may be the new holder's business now only
        // if it was taken over, and a takeover deletes it anyway.
        let _ = self.s3.delete(&self.name);
    }
}

/// Takes, holds and checks this process's writer lease on one bucket.
pub(crate) struct LeaseKeeper {
    s3: Arc<S3Backend>,
    url: String,
    cache_id: String,
    held: Mutex<Option<Lease>>,
}

impl LeaseKeeper {
    pub(crate) fn new(s3: Arc<S3Backend>, url: &str, cache_id: &str) -> LeaseKeeper {
        LeaseKeeper {
            s3,
            url: url.to_string(),
            cache_id: cache_id.to_string(),
            held: Mutex::new(None),
        }
    }

    /// Takes the lease if this process has none; true if it was taken now
    /// (the caller then catches up with the bucket again: what it read
    /// before may have changed until this moment). Fails once a lease this
    /// process held has lapsed: it is never taken again by the same
    /// process, whose view of the store may be stale.
    pub(crate) fn hold(&self, what: &str) -> Result<bool, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lease) = held.as_ref() {
            lease.state.check()?;
            return Ok(false);
        }
        *held = Some(self.acquire(what)?);
        Ok(true)
    }

    /// Fails unless this process holds a lease that has not lapsed.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_ref() {
            Some(lease) => lease.state.check(),
            None => Err(StoreError::Remote(io::Error::other(format!(
                "{}: no writer lease held for this write",
                self.url
            )))),
        }
    }

    fn acquire(&self, what: &str) -> Result<Lease, StoreError> {
        let ttl = lease_ttl();
        let name = format!(
            "{LEASES}{}.{}-{}",
            self.cache_id,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "host": crate::host::name(),
            "pid": std::process::id(),
            "cache_id": self.cache_id,
            "what": what,
            "started": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }))
        .expect("lease serialises");
        let sent = boot_ns();
        self.s3
            .put(&name, body.clone(), true)
            .map_err(StoreError::Remote)?;
        let written_by = now_ns();
        let release = |e: StoreError| {
            let _ = self.s3.delete(&name);
            e
        };
        let listed = self
            .s3
            .list(LEASES)
            .map_err(StoreError::Remote)
            .map_err(release)?;
        // Our lease's time: leases are compared with each other, by one
        // clock. It also puts listed times on our clock from now on: a
        // writer's GC compares object times with cutoffs of this host's.
        let own = listed.iter().find(|o| o.name == name);
        if let Some(o) = own {
            self.s3.set_clock(o.modified_ns, written_by);
        }
        let now = own.map_or_else(now_ns, |o| o.modified_ns);
        for other in listed.iter().filter(|o| o.name != name) {
            let cache = other.name[LEASES.len()..].split('.').next().unwrap_or("");
            if cache == self.cache_id {
                continue;
            }
            let age = Duration::from_nanos(now.saturating_sub(other.modified_ns));
            if age > ttl {
                // Its writer died without releasing it, or stalled past it:
                // either way it writes nothing more (it counts its lease
                // lost before this point, by its own clock).
                let _ = self.s3.delete(&other.name);
                continue;
            }
            let holder = self
                .s3
                .get(&other.name)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            return Err(release(StoreError::Busy {
                what: what.into(),
                holder: format!(
                    "another host writes {}: lease {} {holder}, refreshed {}s ago (it lapses {}s after its last refresh)",
                    self.url,
                    other.name,
                    age.as_secs(),
                    ttl.as_secs()
                ),
            }));
        }
        Ok(Lease::start(self.s3.clone(), name, body, sent, ttl))
    }

    /// Runs `write` under the lease: checked before it is sent and after its
    /// answer came. If the lease lapsed meanwhile, `withdraw` (what undoes
    /// a new object, if the write made one) runs and the write fails.
    pub(crate) fn fenced<T>(
        &self,
        what: &str,
        write: impl FnOnce() -> io::Result<T>,
        withdraw: impl FnOnce(),
    ) -> Result<T, StoreError> {
        self.hold(what)?;
        let out = write().map_err(StoreError::Remote)?;
        if let Err(e) = self.check() {
            withdraw();
            return Err(e);
        }
        Ok(out)
    }
}

fn lease_io(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

/// The bucket as the packs see it, with every change made under the lease
/// ([`LeaseKeeper::fenced`]): a writer whose lease lapsed creates, deletes
/// and moves nothing more. A pack whose upload was answered too late fails
/// the write but stays: the new holder may have indexed it already, and
/// unreferenced, it is only garbage for a later GC.
pub(crate) struct LeasedBackend {
    pub(crate) s3: Arc<S3Backend>,
    pub(crate) keeper: Arc<LeaseKeeper>,
}

impl ObjectBackend for LeasedBackend {
    fn location(&self, name: &str) -> std::path::PathBuf {
        self.s3.location(name)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        self.keeper.hold("writing a pack").map_err(lease_io)?;
        Ok(Box::new(LeasedWriter {
            inner: self.s3.create(name)?,
            keeper: self.keeper.clone(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>> {
        self.s3.open(name)
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        self.s3.get(name)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.s3.list(prefix)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.keeper
            .fenced("deleting an object", || self.s3.delete(name), || ())
            .map_err(lease_io)
    }

    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String> {
        self.keeper
            .fenced("setting a pack aside", || self.s3.set_aside(name, suffix), || ())
            .map_err(lease_io)
    }

    fn remove_unfinished(&self, prefix: &str, cutoff_ns: u64) -> io::Result<Vec<(String, u64)>> {
        self.s3.remove_unfinished(prefix, cutoff_ns)
    }
}

struct LeasedWriter {
    inner: Box<dyn ObjectWriter>,
    keeper: Arc<LeaseKeeper>,
}

impl ObjectWriter for LeasedWriter {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let LeasedWriter { inner, keeper } = *self;
        keeper
            .fenced("uploading a pack", || inner.finish(), || ())
            .map_err(lease_io)
    }

    fn abort(self: Box<Self>) {
        self.inner.abort()
    }
}
