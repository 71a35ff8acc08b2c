//! The upper seam for writers: a backup session.
//!
//! A session is registered with the store for its whole life, so GC keeps
//! away from what it may claim; it answers "which of these chunks do you
//! have", takes new chunks, and publishes a snapshot only after a flush
//! barrier has made every chunk durable and indexed. The local session
//! fills one pack at a time; a full pack is sealed (made durable, or
//! uploaded to a bucket) on a thread of its own while the next one fills,
//! and its entries are committed to the chunk index when that is done. A
//! remote session would send the same calls over the wire.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::packs::PackWriter;
use super::seam::ChunkSink;
use super::session::Session;
use super::{datastore::Store, error::StoreError, index::ChunkLocation};
use crate::chunking::digest::{ChunkHasher, Digest, DigestSet};
use crate::chunking::keyed_cdc::ChunkerKey;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::pack::{PackError, PackId, PACK_TARGET_SIZE};
use crate::format::snapshot::{Kind, Manifest, SnapshotName};

/// Most digests a session keeps seeded (32 MiB of them: the unchanged
/// chunks of an 8 TiB image at 4 MiB, of 128 GiB at 64 KiB).
pub(crate) const SEED_LIMIT: usize = 1 << 20;

/// Digests per batched index read while seeding.
const SEED_BATCH: usize = 4096;

/// One backup in progress. Workers ask it what is known while one writer
/// thread adds chunks; the open pack is touched only by that writer, so its
/// lock is never contended.
pub(crate) struct BackupSession<'a> {
    store: &'a Store,
    hasher: ChunkHasher,
    _registered: Session,
    open: Mutex<OpenPack>,
    /// The full pack being sealed, at most one: the back-pressure that
    /// bounds what is in flight.
    sealing: Mutex<Option<Sealing>>,
    /// Digests added but not yet indexed, readable by the workers.
    unindexed: Mutex<Unindexed>,
    /// Digests of the base snapshots found present when seeded.
    seeded: RwLock<DigestSet>,
    /// The snapshot directory this session created and has not published.
    unpublished: Mutex<Option<PathBuf>>,
}

#[derive(Default)]
struct OpenPack {
    pack: Option<PackWriter>,
    uncommitted: Vec<(Digest, ChunkLocation)>,
}

/// A sealing pack's thread, and the entries to commit once it is sealed.
struct Sealing {
    thread: std::thread::JoinHandle<Result<PackId, PackError>>,
    entries: Vec<(Digest, ChunkLocation)>,
}

#[derive(Default)]
struct Unindexed {
    open: DigestSet,
    sealing: DigestSet,
}

impl<'a> BackupSession<'a> {
    /// Registers a session (`what` says whose, for `hoard gc`'s messages)
    /// and refreshes the view of the index after registering, so that no
    /// chunk condemned before this moment is taken for present.
    pub(crate) fn begin(store: &'a Store, what: &str) -> Result<BackupSession<'a>, StoreError> {
        // A backup into a protected store needs its key before anything
        // is read: digests are keyed, records sealed.
        let hasher = store.hasher()?;
        BackupSession::begin_with(store, what, hasher)
    }

    /// A session for `hoard serve`, which holds no key: its clients hash,
    /// seal and chunk, and it checks what they send with the store's
    /// decoder. [`ChunkSink::hasher`] of it names plain BLAKE3 and is not
    /// asked.
    pub(crate) fn begin_for_server(store: &'a Store, what: &str) -> Result<BackupSession<'a>, StoreError> {
        BackupSession::begin_with(store, what, ChunkHasher::PLAIN)
    }

    fn begin_with(
        store: &'a Store,
        what: &str,
        hasher: ChunkHasher,
    ) -> Result<BackupSession<'a>, StoreError> {
        store.begin_writing(what)?;
        let registered = Session::register(store.root(), what)?;
        store.index().refresh()?;
        // Reuse rests on chunks that exist: entries of a lost pack go now.
        store.forget_missing_packs()?;
        crate::failpoint::pause("backup-session-begun");
        Ok(BackupSession {
            store,
            hasher,
            _registered: registered,
            open: Mutex::default(),
            sealing: Mutex::default(),
            unindexed: Mutex::default(),
            seeded: RwLock::default(),
            unpublished: Mutex::default(),
        })
    }

    /// Known without asking the index: seeded, or added by this session.
    fn seen(&self, d: &Digest) -> bool {
        if self.seeded.read().expect("lock poisoned").contains(d) {
            return true;
        }
        let unindexed = self.unindexed.lock().expect("lock poisoned");
        unindexed.open.contains(d) || unindexed.sealing.contains(d)
    }

    /// Creates snapshot `name`'s directory, named by a client of the
    /// server; like [`ChunkSink::create_snapshot`] otherwise.
    pub(crate) fn create_named(&self, name: &SnapshotName) -> Result<PathBuf, StoreError> {
        let dir = self.store.snapshot_dirs().create_named(name)?;
        *self.unpublished.lock().expect("lock poisoned") = Some(dir.clone());
        Ok(dir)
    }

    /// [`ChunkSink::publish`] of manifest bytes a client made.
    pub(crate) fn publish_verbatim(&self, manifest: &[u8]) -> Result<(), StoreError> {
        self.flush()?;
        let mut unpublished = self.unpublished.lock().expect("lock poisoned");
        let dir = unpublished.as_ref().expect("publish follows create_named");
        self.store.snapshot_dirs().publish_verbatim(dir, manifest)?;
        *unpublished = None;
        Ok(())
    }

    /// Hands the full open pack to a thread that seals it, once the pack
    /// sealed before it is committed: one pack fills while one uploads.
    fn start_sealing(&self, open: &mut OpenPack) -> Result<(), StoreError> {
        let mut sealing = self.sealing.lock().expect("lock poisoned");
        self.commit_sealed(&mut sealing)?;
        let Some(pack) = open.pack.take() else {
            return Ok(());
        };
        {
            let mut unindexed = self.unindexed.lock().expect("lock poisoned");
            unindexed.sealing = std::mem::take(&mut unindexed.open);
        }
        let thread = std::thread::Builder::new()
            .name("pack-seal".into())
            .spawn(move || pack.seal())
            .map_err(|e| StoreError::Io {
                path: self.store.root().to_path_buf(),
                source: e,
            })?;
        *sealing = Some(Sealing {
            thread,
            entries: std::mem::take(&mut open.uncommitted),
        });
        Ok(())
    }

    /// Waits for the sealing pack, if any, and commits its entries.
    fn commit_sealed(&self, sealing: &mut Option<Sealing>) -> Result<(), StoreError> {
        let Some(Sealing { thread, entries }) = sealing.take() else {
            return Ok(());
        };
        let sealed = thread.join().expect("the sealing thread does not panic");
        let id = sealed?;
        self.store.index().commit_pack(id, &entries)?;
        self.unindexed.lock().expect("lock poisoned").sealing.clear();
        Ok(())
    }
}

impl ChunkSink for BackupSession<'_> {
    /// How this store addresses chunks (keyed in a protected store).
    fn hasher(&self) -> ChunkHasher {
        self.hasher.clone()
    }

    /// The keyed chunker of a version 3 protected store's tree archives;
    /// None where streams are cut by FastCDC's public table.
    fn chunker(&self) -> Option<Arc<ChunkerKey>> {
        self.store.keys().and_then(|k| k.chunker())
    }

    /// An encoder for this store's records, one per worker thread.
    fn encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError> {
        self.store.chunk_encoder(compression)
    }

    /// True if the store (or this session's open pack) already has the chunk.
    fn is_known(&self, d: &Digest) -> Result<bool, StoreError> {
        if self.seen(d) {
            return Ok(true);
        }
        // A chunk condemned by garbage collection counts as absent: this
        // backup stores its own copy instead of claiming one that may go.
        Ok(self.store.index().entry(d)?.is_some_and(|e| e.is_live()))
    }

    /// [`is_known`](Self::is_known) of many chunks at once: one batched
    /// index read (one round trip for a remote store).
    fn known(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let entries = self.store.index().entries(digests)?;
        Ok(digests
            .iter()
            .zip(entries)
            .map(|(d, e)| self.seen(d) || e.is_some_and(|e| e.is_live()))
            .collect())
    }

    /// Seeds the answers about a base snapshot's chunks (PBS's "known
    /// chunks"): they are asked for in batches now, so that the backup's
    /// lookups of unchanged chunks need no index read (and a remote store
    /// no round trip). The answer is taken inside this session, like every
    /// lookup, so GC's argument holds for it (format-spec/gc.md). At most
    /// [`SEED_LIMIT`] digests are kept, so memory does not grow with the
    /// disk: the rest are looked up one by one. Returns how many are known.
    fn seed(&self, digests: &mut dyn Iterator<Item = Digest>) -> Result<usize, StoreError> {
        let room = SEED_LIMIT.saturating_sub(self.seeded.read().expect("lock poisoned").len());
        let mut new: Vec<Digest> = digests.take(room).collect();
        // Sorted, a batch reads the index in key order.
        new.sort_unstable();
        new.dedup();
        let mut found = 0;
        for batch in new.chunks(SEED_BATCH) {
            // Read without the lock, so that workers keep asking meanwhile.
            let entries = self.store.index().entries(batch)?;
            let mut seeded = self.seeded.write().expect("lock poisoned");
            for (d, e) in batch.iter().zip(entries) {
                if e.is_some_and(|e| e.is_live()) && seeded.insert(*d) {
                    found += 1;
                }
            }
        }
        Ok(found)
    }

    /// Adds an encoded chunk record unless this session already added the
    /// chunk; returns whether it was written. It is durable and indexed
    /// after the next [`flush`](Self::flush).
    fn add_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, StoreError> {
        {
            let mut unindexed = self.unindexed.lock().expect("lock poisoned");
            if unindexed.sealing.contains(&d) || !unindexed.open.insert(d) {
                return Ok(false);
            }
        }
        let mut open = self.open.lock().expect("lock poisoned");
        if open.pack.is_none() {
            open.pack = Some(PackWriter::create(self.store.packs())?);
        }
        let pack = open.pack.as_mut().expect("pack just opened");
        let offset = pack.append(record, d, raw_len)?;
        let loc = ChunkLocation {
            pack: pack.id(),
            offset,
            record_len: record.len() as u32,
            raw_len,
        };
        let full = pack.len() >= PACK_TARGET_SIZE;
        open.uncommitted.push((d, loc));
        if full {
            self.start_sealing(&mut open)?;
        }
        Ok(true)
    }

    /// The barrier: every chunk added so far is sealed, durable and indexed
    /// when this returns.
    fn flush(&self) -> Result<(), StoreError> {
        let mut open = self.open.lock().expect("lock poisoned");
        self.commit_sealed(&mut self.sealing.lock().expect("lock poisoned"))?;
        if let Some(pack) = open.pack.take() {
            let id = pack.seal()?;
            self.store.index().commit_pack(id, &open.uncommitted)?;
            open.uncommitted.clear();
            self.unindexed.lock().expect("lock poisoned").open.clear();
        }
        Ok(())
    }

    /// Creates the (unlisted) directory of a new snapshot of `kind/id`,
    /// where the backup writes its index files.
    fn create_snapshot(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), StoreError> {
        let (name, dir) = self.store.snapshot_dirs().create(kind, id)?;
        *self.unpublished.lock().expect("lock poisoned") = Some(dir.clone());
        Ok((name, dir))
    }

    /// Flushes, then makes the snapshot visible by writing its manifest: no
    /// manifest can name a chunk that is not durable and indexed.
    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.flush()?;
        let mut unpublished = self.unpublished.lock().expect("lock poisoned");
        let dir = unpublished.as_ref().expect("publish follows create_snapshot");
        self.store.snapshot_dirs().publish(dir, manifest)?;
        *unpublished = None;
        Ok(())
    }

    /// Drops the open pack and the unpublished snapshot. Packs already
    /// sealed stay, and the one sealing is committed if its seal succeeds:
    /// their chunks are indexed and may be shared by then; unreferenced
    /// ones are GC's to remove.
    fn abort(&self) {
        if let Some(p) = self.open.lock().expect("lock poisoned").pack.take() {
            p.abort();
        }
        let _ = self.commit_sealed(&mut self.sealing.lock().expect("lock poisoned"));
        if let Some(dir) = self.unpublished.lock().expect("lock poisoned").take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for BackupSession<'_> {
    /// Never leaves a pack upload running behind the session.
    fn drop(&mut self) {
        let mut sealing = self.sealing.get_mut().expect("lock poisoned").take();
        let _ = self.commit_sealed(&mut sealing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::snapshot::Kind;
    use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
    use crate::ops::gc::{gc, GcOptions};
    use crate::progress::NoProgress;
    use crate::source::FileSource;

    #[test]
    fn seeded_answers_are_taken_once_and_condemned_chunks_are_not_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let store = Store::init(&root, ChunkSize::new(64 * 1024).unwrap()).unwrap();
        let image: Vec<u8> = (0..4u32 * 65536)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let path = dir.path().join("d.img");
        fs::write(&path, &image).unwrap();
        let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&path).unwrap()));
        let m = backup_images(
            &store,
            &BackupOptions::new(Kind::Host, "a"),
            vec![input],
            &NoProgress,
        )
        .unwrap();
        let fidx = store.catalog().open_image_index(&m.name(), "d.img").unwrap();
        let stored: Vec<Digest> = (0..fidx.chunk_count()).map(|i| fidx.digest(i)).collect();
        let absent = Digest::of(b"never stored");

        let session = BackupSession::begin(&store, "test").unwrap();
        let mut asked = stored.clone();
        asked.push(absent);
        assert_eq!(session.known(&asked).unwrap(), [true, true, true, true, false]);
        assert_eq!(session.seed(&mut asked.iter().copied()).unwrap(), 4);
        // The seeded answer stands for the session, without another read.
        let loc = store.index().lookup(&stored[0]).unwrap().unwrap();
        store.index().remove(&[(stored[0], loc)]).unwrap();
        store.index().refresh().unwrap();
        assert!(session.is_known(&stored[0]).unwrap());
        assert!(!session.is_known(&absent).unwrap());
        drop(session);
        let fresh = BackupSession::begin(&store, "test").unwrap();
        assert!(!fresh.is_known(&stored[0]).unwrap());
        drop(fresh);

        // Chunks GC condemned are absent to a seed, like to every lookup.
        store.catalog().forget(&m.name()).unwrap();
        let report = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
        assert_eq!(report.chunks_condemned, 3);
        let session = BackupSession::begin(&store, "test").unwrap();
        assert_eq!(session.seed(&mut stored.iter().copied()).unwrap(), 0);
        assert!(!session.is_known(&stored[1]).unwrap());
    }
}
