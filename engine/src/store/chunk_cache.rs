//! The read cache: decoded chunks shared by every reader of an export or
//! a mount, owned by the store layer so that every backend gets it.
//!
//! Entries are keyed by digest, so a chunk that occurs at many offsets is
//! read and verified once. A chunk being loaded is marked, and other
//! threads that want it wait for that load instead of starting their own.
//! The cache is bounded in bytes and drops the least recently used chunks.
//! Read-ahead requests go through a bounded queue to background threads
//! ([`ChunkCache::run_prefetcher`]); when the queue is full they are dropped,
//! never waited for.
//!
//! Failed loads are not cached: a damaged chunk fails every read of it, and
//! one that GC moved meanwhile is found at its new place next time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::error::StoreError;
use super::seam::ChunkSource;
use super::seam::Repository;
use super::session::ReadSession;
use crate::chunking::digest::Digest;

enum Slot {
    Loading,
    Ready { data: Arc<Vec<u8>>, used: u64 },
}

#[derive(Default)]
struct Slots {
    map: HashMap<Digest, Slot>,
    bytes: usize,
    tick: u64,
}

/// Counters for `--json` reports and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub loads: u64,
    pub prefetched: u64,
    pub failed: u64,
}

pub struct ChunkCache<'s> {
    store: &'s dyn Repository,
    /// Keeps GC from removing chunks condemned while the cache lives.
    _reading: Option<ReadSession>,
    capacity: usize,
    slots: Mutex<Slots>,
    loaded: Condvar,
    /// Idle readers (each keeps a decoder and open pack files).
    readers: Mutex<Vec<Box<dyn ChunkSource + 's>>>,
    prefetch_tx: Sender<(Digest, usize)>,
    prefetch_rx: Receiver<(Digest, usize)>,
    stopping: AtomicBool,
    hits: AtomicU64,
    loads: AtomicU64,
    prefetched: AtomicU64,
    failed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (every
    // update is a single insert or remove), so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'s> ChunkCache<'s> {
    /// A cache holding up to `capacity` bytes of decoded chunks (at least one chunk).
    /// `what` names the reader in GC's messages.
    pub fn new(store: &'s dyn Repository, capacity: usize, what: &str) -> ChunkCache<'s> {
        let (prefetch_tx, prefetch_rx) = bounded(64);
        ChunkCache {
            store,
            _reading: store.hold_reads(what),
            capacity,
            slots: Mutex::new(Slots::default()),
            loaded: Condvar::new(),
            readers: Mutex::new(Vec::new()),
            prefetch_tx,
            prefetch_rx,
            stopping: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            prefetched: self.prefetched.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// The chunk `digest` of `len` bytes, decoded and verified.
    pub fn get(&self, digest: &Digest, len: usize) -> Result<Arc<Vec<u8>>, StoreError> {
        {
            let mut slots = lock(&self.slots);
            loop {
                slots.tick += 1;
                let tick = slots.tick;
                match slots.map.get_mut(digest) {
                    Some(Slot::Ready { data, used }) => {
                        *used = tick;
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(Arc::clone(data));
                    }
                    Some(Slot::Loading) => {
                        slots = self.loaded.wait(slots).unwrap_or_else(|e| e.into_inner());
                    }
                    None => {
                        slots.map.insert(*digest, Slot::Loading);
                        break;
                    }
                }
            }
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_marked(digest, len)
    }

    /// Loads a chunk this thread marked as loading, and publishes the result.
    fn load_marked(&self, digest: &Digest, len: usize) -> Result<Arc<Vec<u8>>, StoreError> {
        let result = self.read(digest, len).map(Arc::new);
        let mut slots = lock(&self.slots);
        match &result {
            Ok(data) => {
                slots.tick += 1;
                let used = slots.tick;
                slots.bytes += data.len();
                slots.map.insert(
                    *digest,
                    Slot::Ready {
                        data: Arc::clone(data),
                        used,
                    },
                );
                self.evict(&mut slots, digest);
            }
            Err(_) => {
                slots.map.remove(digest);
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(slots);
        self.loaded.notify_all();
        result
    }

    fn read(&self, digest: &Digest, len: usize) -> Result<Vec<u8>, StoreError> {
        let reader = lock(&self.readers).pop();
        let mut reader = match reader {
            Some(r) => r,
            None => self.store.reader()?,
        };
        let mut data = vec![0u8; len];
        let n = reader.read_into(digest, &mut data);
        lock(&self.readers).push(reader);
        match n {
            Ok(n) if n == len => Ok(data),
            Ok(n) => Err(StoreError::ChunkLength {
                digest: *digest,
                found: n,
                expected: len,
            }),
            Err(e) => Err(e),
        }
    }

    /// Drops least recently used chunks until the cache fits, never `keep`.
    fn evict(&self, slots: &mut Slots, keep: &Digest) {
        while slots.bytes > self.capacity {
            let victim = slots
                .map
                .iter()
                .filter_map(|(d, s)| match s {
                    Slot::Ready { used, .. } if d != keep => Some((*used, *d)),
                    _ => None,
                })
                .min();
            let Some((_, victim)) = victim else { return };
            if let Some(Slot::Ready { data, .. }) = slots.map.remove(&victim) {
                slots.bytes -= data.len();
            }
        }
    }

    /// Asks the background threads to load a chunk soon, unless it is there
    /// already or the queue is full.
    pub(crate) fn prefetch(&self, digest: &Digest, len: usize) {
        if lock(&self.slots).map.contains_key(digest) {
            return;
        }
        let _ = self.prefetch_tx.try_send((*digest, len));
    }

    /// Body of a read-ahead thread: runs until [`stop`](Self::stop).
    pub fn run_prefetcher(&self) {
        while !self.stopping.load(Ordering::Relaxed) {
            let Ok((digest, len)) = self.prefetch_rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            {
                let mut slots = lock(&self.slots);
                if slots.map.contains_key(&digest) {
                    continue;
                }
                slots.map.insert(digest, Slot::Loading);
            }
            self.prefetched.fetch_add(1, Ordering::Relaxed);
            // A failure is reported to whoever reads the chunk for real.
            let _ = self.load_marked(&digest, len);
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A store whose image has the given 64 KiB chunks, and their digests.
    fn store_with(chunks: &[Vec<u8>]) -> (tempfile::TempDir, Store, Vec<Digest>) {
        let (dir, store, fidx) = crate::serve::export::testing::backed_up(&chunks.concat());
        let digests = (0..fidx.chunk_count()).map(|i| fidx.digest(i)).collect();
        (dir, store, digests)
    }

    #[test]
    fn loads_once_then_hits_and_stays_bounded() {
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 65536]).collect();
        let (_dir, store, digests) = store_with(&chunks);
        let cache = ChunkCache::new(&store, 2 * 65536 + 100, "test");
        for _ in 0..3 {
            assert_eq!(*cache.get(&digests[0], 65536).unwrap(), chunks[0]);
        }
        assert_eq!(cache.stats().loads, 1);
        assert_eq!(cache.stats().hits, 2);
        for (d, c) in digests.iter().zip(&chunks) {
            assert_eq!(*cache.get(d, 65536).unwrap(), *c);
        }
        assert!(lock(&cache.slots).bytes <= 2 * 65536 + 100);
        // The most recently used chunk is still there.
        let loads = cache.stats().loads;
        cache.get(&digests[3], 65536).unwrap();
        assert_eq!(cache.stats().loads, loads);
    }

    #[test]
    fn concurrent_readers_share_one_load() {
        let chunks = vec![vec![7u8; 65536]];
        let (_dir, store, digests) = store_with(&chunks);
        let cache = ChunkCache::new(&store, 1 << 20, "test");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| assert_eq!(cache.get(&digests[0], 65536).unwrap().len(), 65536));
            }
        });
        assert_eq!(cache.stats().loads, 1);
    }

    #[test]
    fn failures_are_not_cached_and_lengths_are_checked() {
        let chunks = vec![vec![3u8; 65536]];
        let (_dir, store, digests) = store_with(&chunks);
        let cache = ChunkCache::new(&store, 1 << 20, "test");
        assert!(cache.get(&Digest::of(b"absent"), 10).is_err());
        assert!(cache.get(&Digest::of(b"absent"), 10).is_err());
        assert_eq!(cache.stats().failed, 2);
        assert!(matches!(
            cache.get(&digests[0], 65537),
            Err(StoreError::ChunkLength { .. })
        ));
        assert!(cache.get(&digests[0], 65535).is_err());
    }

    #[test]
    fn prefetched_chunks_are_hits() {
        let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 9; 65536]).collect();
        let (_dir, store, digests) = store_with(&chunks);
        let cache = ChunkCache::new(&store, 1 << 20, "test");
        std::thread::scope(|s| {
            s.spawn(|| cache.run_prefetcher());
            for d in &digests {
                cache.prefetch(d, 65536);
            }
            while cache.stats().prefetched < 3 || lock(&cache.slots).map.len() < 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
            cache.stop();
        });
        for d in &digests {
            cache.get(d, 65536).unwrap();
        }
        assert_eq!(cache.stats().hits, 3);
        assert_eq!(cache.stats().loads, 0);
    }
}
