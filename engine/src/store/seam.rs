//! The upper seam: everything backup, restore, verify and prune ask of a
//! store, as traits. [`super::Store`] is the local implementation (its
//! RocksDB index, packs and snapshot directories); the tests' in-memory
//! repository is a second one, and a backup server's client will be the
//! next. Nothing above this seam knows where chunks, manifests or markers
//! live.
//!
//! A snapshot's index files are the one thing read and written as files:
//! they are memory-mapped, so [`ChunkSink::create_snapshot`] hands the
//! backup a local directory to write them into and
//! [`Catalogue::dir`] names a local directory to read them from (the
//! store's own; a remote store's client would keep a copy).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::error::StoreError;
use super::session::ReadSession;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{ChunkHasher, Digest};
use crate::chunking::keyed_cdc::ChunkerKey;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::dynamic_index::DynamicIndex;
use crate::format::fixed_index::FixedIndex;
use crate::format::notes::NotesOf;
use crate::format::sealed_text::SealedText;
use crate::format::snapshot::{self, ArchiveEntry, Kind, Manifest, SnapshotError, SnapshotName, SnapshotRef};
use crate::format::verify_state::VerifyState;
use crate::progress::Progress;

/// A store as the operations see it.
pub trait Repository: Sync {
    /// The chunk size of images backed up without `--chunk-size`.
    fn default_chunk_size(&self) -> ChunkSize;
    /// An error naming `what` if the store is protected and locked.
    fn require_key(&self, what: &str) -> Result<(), StoreError>;
    /// Whether chunks can be checked only by their CRCs: a protected store
    /// read without its key.
    fn checks_crc_only(&self) -> bool;
    /// The snapshots.
    fn catalogue(&self) -> &dyn Catalogue;
    /// Starts a backup (`what` says whose, for maintenance's messages),
    /// registered with the store until it is dropped.
    fn begin_backup(&self, what: &str) -> Result<Box<dyn ChunkSink + '_>, StoreError>;
    /// A reader of chunks, which keeps GC from removing what it may read
    /// while it lives. One per thread.
    fn reader(&self) -> Result<Box<dyn ChunkSource + '_>, StoreError>;
    /// Keeps GC from removing chunks this run may still read, for as long
    /// as the result lives: taken before a run reads the index files that
    /// name its chunks. None where the store needs no such hold.
    fn hold_reads(&self, what: &str) -> Option<ReadSession>;
    /// Starts verify's check of chunks.
    fn begin_check(&self) -> Result<Box<dyn ChunkCheck + '_>, StoreError>;
    /// Each chunk's size before and after encoding (None: not stored),
    /// asked in one request.
    fn chunk_sizes(&self, digests: &[Digest]) -> Result<Vec<Option<(u32, u32)>>, StoreError>;
}

/// One backup in progress: shared by the workers (which ask what is known
/// and add chunks) and the thread that publishes.
pub trait ChunkSink: Sync {
    /// How this store addresses chunks (keyed in a protected store).
    fn hasher(&self) -> ChunkHasher;
    /// The keyed chunker of a protected store's tree archives; None where
    /// streams are cut by FastCDC's public table.
    fn chunker(&self) -> Option<Arc<ChunkerKey>>;
    /// An encoder for this store's records, one per worker thread.
    fn encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError>;
    /// Whether the store has chunk `d` (or this session added it).
    fn is_known(&self, d: &Digest) -> Result<bool, StoreError>;
    /// [`is_known`](Self::is_known) for a batch, in one request.
    fn known(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError>;
    /// Asks about the chunks of a base snapshot up front, in batches; the
    /// ones present are answered from memory from then on. Returns how
    /// many were present.
    fn seed(&self, digests: &mut dyn Iterator<Item = Digest>) -> Result<usize, StoreError>;
    /// Adds the encoded `record` of chunk `d` (`raw_len` bytes before
    /// encoding); false if it was already there.
    fn add_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, StoreError>;
    /// The barrier: every chunk added so far is durable and readable when
    /// this returns.
    fn flush(&self) -> Result<(), StoreError>;
    /// Names a new, unlisted snapshot of `kind/id` and the local directory
    /// where the backup writes its index files.
    fn create_snapshot(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), StoreError>;
    /// Flushes, then makes the snapshot visible with `manifest`: no
    /// manifest names a chunk that is not durable.
    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError>;
    /// Drops what was not published.
    fn abort(&self);
}

/// Where a batched read puts one chunk: `out[at..at + len]`.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem {
    pub digest: Digest,
    pub at: usize,
    pub len: usize,
}

/// Reads chunks back, each checked (CRC, decompression, digest) before
/// its bytes are returned.
pub trait ChunkSource: Send {
    /// Reads chunk `digest` into the front of `out` (which must be large
    /// enough for it); returns its length.
    fn read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError>;
    /// Reads a batch of chunks, each into its place in `out`; returns each
    /// item's result in `items`' order.
    fn read_batch(&mut self, items: &[BatchItem], out: &mut [u8]) -> Vec<Result<usize, StoreError>>;
}

/// Verify's half in the store: every chunk the selected snapshots
/// reference, read back once in the order the store keeps them.
pub trait ChunkCheck {
    /// A chunk a snapshot references (again or for the first time).
    fn add(&mut self, d: Digest) -> Result<(), StoreError>;
    /// Checks every chunk added, on `threads` workers, and stops backups
    /// from reusing the ones certainly damaged (the next backup of the
    /// same data stores a good copy).
    fn run(self: Box<Self>, threads: usize, progress: &dyn Progress) -> Result<CheckOutcome, StoreError>;
}

#[derive(Debug, Default)]
pub struct CheckOutcome {
    /// Distinct chunks present and read.
    pub chunks: u64,
    /// Their bytes before encoding.
    pub bytes: u64,
    /// Missing or damaged chunks, and why.
    pub bad: HashMap<Digest, String>,
    /// Containers of chunks the store listed and found gone: their chunks
    /// count as missing.
    pub packs_missing: Vec<String>,
}

/// A listed snapshot that does not count, and why.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub name: SnapshotName,
    pub why: String,
}

/// Whether a snapshot is protected ([`Catalogue::protection`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protected {
    No,
    Yes,
    /// It has a marker this reader does not believe; why.
    Ignored(String),
}

/// The snapshots of a store: list, load, protect, forget, notes, and the
/// records kept beside each (verify state, task log). Publishing is the
/// backup session's ([`ChunkSink::publish`]).
pub trait Catalogue: Sync {
    /// Every published snapshot, sorted by kind, id and time.
    fn list(&self) -> Result<Vec<SnapshotName>, SnapshotError>;
    /// Its manifest, checked (with the key, authenticated).
    fn load_manifest(&self, name: &SnapshotName) -> Result<Manifest, SnapshotError>;
    /// Whether its manifest is in place (a forget removes it first).
    fn is_published(&self, name: &SnapshotName) -> bool;
    /// The local directory its index files are read from.
    fn dir(&self, name: &SnapshotName) -> PathBuf;
    /// Whether it is protected, as far as this reader may believe.
    fn protection(&self, name: &SnapshotName) -> Protected;
    /// Protects or unprotects it.
    fn set_protected(&self, name: &SnapshotName, protect: bool) -> Result<(), StoreError>;
    /// Removes it at once (refused for a protected one).
    fn forget(&self, name: &SnapshotName) -> Result<(), StoreError>;
    /// Its last verification, and whether that record is authenticated.
    fn verify_state_checked(&self, name: &SnapshotName) -> Option<(VerifyState, bool)>;
    /// Records its verification.
    fn save_verify_state(&self, name: &SnapshotName, state: &VerifyState) -> Result<(), StoreError>;
    /// The log of the job run that made it.
    fn task_log(&self, name: &SnapshotName) -> Option<SealedText>;
    /// Stores the log of the job run that made it.
    fn save_task_log(&self, name: &SnapshotName, log: &str) -> Result<(), StoreError>;
    /// The notes on a snapshot or a group.
    fn notes(&self, of: &NotesOf) -> Option<SealedText>;
    /// Sets (or with an empty text, removes) the notes on a snapshot or a group.
    fn set_notes(&self, of: &NotesOf, text: &str) -> Result<(), StoreError>;
    /// Whether this catalogue checks MACs (an unlocked protected store).
    fn authenticates(&self) -> bool;
}

/// How far ahead of this host's clock a snapshot's time may be and still
/// count: hosts' clocks differ a little, but a snapshot from an hour ahead
/// was planted (or made by a host whose clock is wrong), and counting it
/// would make the owner's own `prune --keep-last` forget real snapshots.
pub(crate) const FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What every catalogue answers the same way, from the calls above.
impl dyn Catalogue + '_ {
    /// The snapshots that count: every listed snapshot whose manifest
    /// loads (parses, names its own directory and, with the key, passes its
    /// MAC) and whose time is not beyond [`FUTURE_SKEW`] ahead of this
    /// host's clock. The others come back apart, each with why: they are
    /// never the newest of a group, never counted by prune, and left where
    /// they are (format-spec/store.md, "What a reader believes").
    pub fn authentic(&self) -> Result<(Vec<SnapshotName>, Vec<Rejected>), SnapshotError> {
        let mut counted = Vec::new();
        let mut rejected = Vec::new();
        for name in self.list()? {
            match self.why_not_counted(&name) {
                None => counted.push(name),
                Some(why) => rejected.push(Rejected { name, why }),
            }
        }
        Ok((counted, rejected))
    }

    /// The newest snapshot of each group that counts, and the newer ones
    /// of each group that were passed over: what "latest" sees, for about
    /// one manifest read per group.
    pub fn newest_counted(&self) -> Result<(Vec<SnapshotName>, Vec<Rejected>), SnapshotError> {
        let mut newest = Vec::new();
        let mut passed_over = Vec::new();
        let mut group: Option<(Kind, String)> = None;
        let mut found = false;
        for name in self.list()?.into_iter().rev() {
            let this = (name.kind, name.id.clone());
            if group.as_ref() != Some(&this) {
                group = Some(this);
                found = false;
            }
            if found {
                continue;
            }
            match self.why_not_counted(&name) {
                None => {
                    newest.push(name);
                    found = true;
                }
                Some(why) => passed_over.push(Rejected { name, why }),
            }
        }
        Ok((newest, passed_over))
    }

    /// Why `name` does not count as a snapshot, or None if it does.
    fn why_not_counted(&self, name: &SnapshotName) -> Option<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if name.unix_time() > now + FUTURE_SKEW.as_secs() as i64 {
            return Some(format!(
                "dated in the future, more than {} minutes ahead of this host's clock",
                FUTURE_SKEW.as_secs() / 60
            ));
        }
        self.load_manifest(name).err().map(|e| e.to_string())
    }

    /// The snapshot a reference names: an exact one, or the newest of a
    /// group that counts ([`authentic`](Self::authentic)).
    pub fn resolve(&self, r: &SnapshotRef) -> Result<SnapshotName, SnapshotError> {
        let (kind, id) = match r {
            SnapshotRef::Exact(name) if self.is_published(name) => return Ok(name.clone()),
            SnapshotRef::Exact(name) => return Err(SnapshotError::NotFound(name.to_string())),
            SnapshotRef::Newest { kind, id } => (kind, id),
        };
        self.list()?
            .into_iter()
            .rev()
            .filter(|n| n.kind == *kind && n.id == *id)
            .find(|n| self.why_not_counted(n).is_none())
            .ok_or_else(|| SnapshotError::NotFound(format!("{kind}/{id}")))
    }

    /// [`resolve`](Self::resolve) of a reference as the user typed it.
    pub fn find(&self, reference: &str) -> Result<SnapshotName, SnapshotError> {
        self.resolve(&reference.parse()?)
    }

    pub fn is_protected(&self, name: &SnapshotName) -> bool {
        self.protection(name) == Protected::Yes
    }

    /// A snapshot's last verification; None if never verified (or unreadable).
    pub fn verify_state(&self, name: &SnapshotName) -> Option<VerifyState> {
        self.verify_state_checked(name).map(|(s, _)| s)
    }

    /// The fixed index of image archive `archive`, checked against the manifest.
    pub fn open_image_index(&self, name: &SnapshotName, archive: &str) -> Result<FixedIndex, SnapshotError> {
        let m = self.load_manifest(name)?;
        let entry = m.archive(archive)?;
        if entry.payload.is_some() || snapshot::is_tree(archive) {
            return Err(SnapshotError::NotAnImage {
                snapshot: name.to_string(),
                archive: archive.into(),
            });
        }
        self.open_fixed(name, entry)
    }

    /// An image archive's fixed index, checked against its manifest entry.
    pub fn open_fixed(&self, name: &SnapshotName, a: &ArchiveEntry) -> Result<FixedIndex, SnapshotError> {
        super::snapshot_dir::open_fixed(&self.dir(name), a)
    }

    /// A tree archive's stream indexes (metadata, payload), checked against
    /// its manifest entry.
    pub fn open_streams(
        &self,
        name: &SnapshotName,
        a: &ArchiveEntry,
    ) -> Result<Vec<DynamicIndex>, SnapshotError> {
        super::snapshot_dir::open_streams(&self.dir(name), a)
    }

    /// Calls `f(archive, offset, digest)` for every non-zero chunk of every
    /// archive of snapshot `name`, after checking each index file against
    /// `manifest`: the one place that knows how an archive lists its
    /// chunks, for verify and GC alike.
    pub fn for_each_chunk<E: From<SnapshotError>>(
        &self,
        name: &SnapshotName,
        manifest: &Manifest,
        f: impl FnMut(&ArchiveEntry, u64, Digest) -> Result<(), E>,
    ) -> Result<(), E> {
        super::snapshot_dir::for_each_chunk(&self.dir(name), manifest, f)
    }

    /// Whether a snapshot may serve as the base of an incremental backup:
    /// never one whose last verification failed (authenticated or not: a
    /// planted failure costs a full read, never a wrong backup).
    pub fn usable_as_base(&self, name: &SnapshotName) -> bool {
        self.verify_state(name).is_none_or(|s| s.ok())
    }

    /// The newest snapshot of group `(kind, id)` that may serve as a base
    /// and whose archive `archive` `f` accepts (and turns into what the
    /// caller needs): the base of an incremental backup.
    pub fn newest_base<T>(
        &self,
        (kind, id): (Kind, &str),
        archive: &str,
        mut f: impl FnMut(&SnapshotName, &ArchiveEntry) -> Option<T>,
    ) -> Option<T> {
        let names = self.list().ok()?;
        names
            .iter()
            .rev()
            .filter(|n| n.kind == kind && n.id == id && self.usable_as_base(n))
            .find_map(|n| f(n, self.load_manifest(n).ok()?.archive(archive).ok()?))
    }
}
