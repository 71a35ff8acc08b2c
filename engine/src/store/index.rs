//! The chunk index: RocksDB, digest → location in a pack.
//!
//! RocksDB lets one process at a time open a database for writing. hoard
//! never keeps it open: every process reads through its own *secondary*
//! instance (which follows the primary's files without locking them) and
//! writes in short commits, each of which takes `index.lock` (flock), opens
//! the primary, writes one synced batch and closes it again. A commit takes a
//! few milliseconds, so backups running at once only wait for each other's
//! commits, never for each other's runs. See format-spec/concurrency.md.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};

use crate::chunking::digest::Digest;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::pack::PackId;

/// Key prefix of chunk entries; other prefixes are reserved for later records.
pub(crate) const CHUNK_KEY_PREFIX: u8 = b'c';
/// Key prefix of the packs a store cache has indexed from an object store's
/// listing (`p` + 16-byte pack id, empty value).
pub(crate) const PACK_KEY_PREFIX: u8 = b'p';
/// Key of the garbage collector's state (format-spec/gc.md).
pub(crate) const GC_STATE_KEY: &[u8] = b"g/state";
/// Entry value version written by this build; version 1 (no epoch) is still read.
pub(crate) const ENTRY_VERSION: u8 = 2;
pub(crate) const ENTRY_LEN: usize = 37;
const ENTRY_V1_LEN: usize = 33;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("chunk index {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("chunk index lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("chunk index entry for {digest} is malformed")]
    BadEntry { digest: Digest },
    #[error("chunk index {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} belongs to {owner} and is not writable by the store's group (made by a hoard from before group stores shared RocksDB's files): any hoard command by {owner} that writes the index (backup, gc) shares it, as does `chmod -R g+rwX {dir}`", dir = path.parent().unwrap_or(Path::new(".")).display())]
    NotShared { path: PathBuf, owner: String },
    #[error("chunk index {path}: No space left on device ({free} bytes free; index writes need {MIN_FREE_FOR_COMMIT})")]
    NoSpace { path: PathBuf, free: u64 },
}

impl Classify for IndexError {
    fn kind(&self) -> ErrorKind {
        match self {
            IndexError::Db { .. } => ErrorKind::Io,
            IndexError::Lock { source, .. } | IndexError::Io { source, .. } => io_kind(source),
            IndexError::NotShared { .. } => ErrorKind::Io,
            IndexError::BadEntry { .. } => ErrorKind::Damaged,
            IndexError::NoSpace { .. } => ErrorKind::NoSpace,
        }
    }

    fn context(&self) -> Context {
        match self {
            IndexError::Db { path, .. }
            | IndexError::Lock { path, .. }
            | IndexError::Io { path, .. }
            | IndexError::NotShared { path, .. }
            | IndexError::NoSpace { path, .. } => Context::path(path),
            IndexError::BadEntry { digest } => Context::digest(*digest),
        }
    }
}

/// Free space an index commit insists on. RocksDB as built by Debian aborts
/// the process (an assertion) when a write runs out of space, so hoard
/// refuses to start a commit that could.
pub(crate) const MIN_FREE_FOR_COMMIT: u64 = 8 << 20;

/// Fails with [`IndexError::NoSpace`] unless the file system holding `path`
/// has [`MIN_FREE_FOR_COMMIT`] bytes free.
pub(crate) fn ensure_free_space(path: &Path) -> Result<(), IndexError> {
    let free = free_bytes(path).map_err(|e| IndexError::Db {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if free < MIN_FREE_FOR_COMMIT {
        return Err(IndexError::NoSpace {
            path: path.to_path_buf(),
            free,
        });
    }
    Ok(())
}

pub(crate) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Where a chunk's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub offset: u64,
    /// Whole record length: header plus stored payload.
    pub record_len: u32,
    pub raw_len: u32,
}

/// A chunk index value: the location, and whether garbage collection has
/// condemned the chunk (0: live; otherwise the GC epoch that condemned it).
/// Backups treat condemned chunks as absent and store their own copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub loc: ChunkLocation,
    pub condemned: u32,
}

impl IndexEntry {
    /// Not condemned: a backup may claim it.
    pub fn is_live(&self) -> bool {
        self.condemned == 0
    }

    pub fn live(loc: ChunkLocation) -> IndexEntry {
        IndexEntry { loc, condemned: 0 }
    }

    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut v = [0u8; ENTRY_LEN];
        v[0] = ENTRY_VERSION;
        v[1..17].copy_from_slice(&self.loc.pack.0);
        v[17..25].copy_from_slice(&self.loc.offset.to_le_bytes());
        v[25..29].copy_from_slice(&self.loc.record_len.to_le_bytes());
        v[29..33].copy_from_slice(&self.loc.raw_len.to_le_bytes());
        v[33..37].copy_from_slice(&self.condemned.to_le_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<IndexEntry> {
        let condemned = match (v.first(), v.len()) {
            (Some(1), ENTRY_V1_LEN) => 0,
            (Some(2), ENTRY_LEN) => u32::from_le_bytes(v[33..37].try_into().ok()?),
            _ => return None,
        };
        let loc = ChunkLocation {
            pack: PackId(v[1..17].try_into().ok()?),
            offset: u64::from_le_bytes(v[17..25].try_into().ok()?),
            record_len: u32::from_le_bytes(v[25..29].try_into().ok()?),
            raw_len: u32::from_le_bytes(v[29..33].try_into().ok()?),
        };
        Some(IndexEntry { loc, condemned })
    }
}

/// The entry stored for `digest`, if any.
fn decode_value(digest: &Digest, value: Option<&[u8]>) -> Result<Option<IndexEntry>, IndexError> {
    value
        .map(|v| IndexEntry::decode(v).ok_or(IndexError::BadEntry { digest: *digest }))
        .transpose()
}

pub(crate) fn chunk_key(d: &Digest) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = CHUNK_KEY_PREFIX;
    k[1..].copy_from_slice(&d.0);
    k
}

/// Adds `entries` to `batch`, but for digests that have a live entry.
fn put_unless_live(
    db: &DB,
    batch: &mut WriteBatch,
    entries: &[(Digest, ChunkLocation)],
) -> Result<(), rocksdb::Error> {
    for (digest, loc) in entries {
        let key = chunk_key(digest);
        let keep_existing = db
            .get(key)?
            .and_then(|v| IndexEntry::decode(&v))
            .is_some_and(|e| e.is_live());
        if !keep_existing {
            batch.put(key, IndexEntry::live(*loc).encode());
        }
    }
    Ok(())
}

fn pack_key(id: PackId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = PACK_KEY_PREFIX;
    k[1..].copy_from_slice(&id.0);
    k
}

pub struct ChunkIndex {
    primary: PathBuf,
    lock: PathBuf,
    secondary_dir: PathBuf,
    reader: DB,
}

/// A change to one chunk's entry, made only if the entry still is `seen`:
/// `new` replaces it, or None removes it.
pub(crate) struct EntryUpdate {
    pub digest: Digest,
    pub seen: IndexEntry,
    pub new: Option<IndexEntry>,
}

impl ChunkIndex {
    /// Creates an empty index at `primary` (store initialisation only).
    pub fn create(primary: &Path) -> Result<(), IndexError> {
        let mut opts = primary_options();
        opts.create_if_missing(true);
        opts.set_error_if_exists(true);
        DB::open(&opts, primary).map(drop).map_err(db_err(primary))?;
        share_with_group(primary)
    }

    /// Opens a reading instance; `scratch` is a private directory for its
    /// own log files (removed on drop).
    pub fn open(primary: &Path, lock: &Path, scratch: &Path) -> Result<ChunkIndex, IndexError> {
        let secondary_dir = scratch.join(format!(
            "index-reader-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let mut opts = Options::default();
        // Keep every table file open: the primary may delete files it compacted
        // away while this reader still needs them.
        opts.set_max_open_files(-1);
        // The reader's only writes are its info log; keep them few, so a disk
        // that fills up later does not meet a RocksDB write (see ensure_free_space).
        opts.set_log_level(rocksdb::LogLevel::Error);
        opts.set_stats_dump_period_sec(0);
        opts.set_block_based_table_factory(&table_options());
        let reader = DB::open_as_secondary(&opts, primary, &secondary_dir).map_err(|e| {
            let _ = fs::remove_dir_all(&secondary_dir);
            db_err(primary)(e)
        })?;
        Ok(ChunkIndex {
            primary: primary.to_path_buf(),
            lock: lock.to_path_buf(),
            secondary_dir,
            reader,
        })
    }

    /// The location of a chunk, condemned or not (what a reader needs).
    pub fn lookup(&self, digest: &Digest) -> Result<Option<ChunkLocation>, IndexError> {
        Ok(self.entry(digest)?.map(|e| e.loc))
    }

    pub fn entry(&self, digest: &Digest) -> Result<Option<IndexEntry>, IndexError> {
        let value = self
            .reader
            .get_pinned(chunk_key(digest))
            .map_err(db_err(&self.primary))?;
        decode_value(digest, value.as_deref())
    }

    /// [`entry`](Self::entry) of many chunks in one batched read.
    pub(crate) fn entries(&self, digests: &[Digest]) -> Result<Vec<Option<IndexEntry>>, IndexError> {
        let values = self.reader.multi_get(digests.iter().map(chunk_key));
        digests
            .iter()
            .zip(values)
            .map(|(d, v)| decode_value(d, v.map_err(db_err(&self.primary))?.as_deref()))
            .collect()
    }

    /// A raw value (GC state and other non-chunk records).
    pub(crate) fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.reader.get(key).map_err(db_err(&self.primary))
    }

    /// Makes the reader see every commit made so far, by any process.
    pub(crate) fn refresh(&self) -> Result<(), IndexError> {
        self.reader
            .try_catch_up_with_primary()
            .map_err(db_err(&self.primary))
    }

    /// Durably records `entries`. A digest that is already indexed keeps its
    /// existing location (its duplicate record stays unreferenced in the pack),
    /// unless garbage collection condemned it: then the new copy replaces it.
    /// Only records of sealed (fsynced) packs may be committed.
    pub fn commit(&self, entries: &[(Digest, ChunkLocation)]) -> Result<(), IndexError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write_locked(|db, batch| put_unless_live(db, batch, entries))
    }

    /// [`commit`](Self::commit) of the records of sealed pack `pack`, with
    /// the note that the pack is indexed, in one write: what a store cache
    /// needs to tell the packs it knows from new ones in a listing.
    pub(crate) fn commit_pack(
        &self,
        pack: PackId,
        entries: &[(Digest, ChunkLocation)],
    ) -> Result<(), IndexError> {
        self.write_locked(|db, batch| {
            put_unless_live(db, batch, entries)?;
            batch.put(pack_key(pack), []);
            Ok(())
        })
    }

    /// The packs noted by [`commit_pack`](Self::commit_pack).
    pub(crate) fn indexed_packs(&self) -> Result<std::collections::HashSet<PackId>, IndexError> {
        let mut out = std::collections::HashSet::new();
        let iter = self.reader.iterator(rocksdb::IteratorMode::From(
            &[PACK_KEY_PREFIX],
            rocksdb::Direction::Forward,
        ));
        for item in iter {
            let (k, _) = item.map_err(db_err(&self.primary))?;
            if k.first() != Some(&PACK_KEY_PREFIX) {
                break;
            }
            if let Ok(id) = <[u8; 16]>::try_from(&k[1..]) {
                out.insert(PackId(id));
            }
        }
        Ok(out)
    }

    /// Drops the notes of packs deleted whole (GC), whose entries are gone.
    pub(crate) fn forget_pack_notes(&self, ids: &[PackId]) -> Result<(), IndexError> {
        self.write_locked(|_, batch| {
            for id in ids {
                batch.delete(pack_key(*id));
            }
            Ok(())
        })
    }

    /// Drops every entry that points into one of `gone` (packs deleted
    /// from the object store by another process) and their notes; returns
    /// how many entries went. One pass over the index.
    pub(crate) fn forget_packs(&self, gone: &std::collections::HashSet<PackId>) -> Result<usize, IndexError> {
        let mut doomed = Vec::new();
        self.for_each_entry(|digest, e| {
            if gone.contains(&e.loc.pack) {
                doomed.push((digest, e));
            }
        })?;
        let removed = doomed.len();
        self.write_locked(|db, batch| {
            for (digest, seen) in &doomed {
                let key = chunk_key(digest);
                if db.get(key)?.and_then(|v| IndexEntry::decode(&v)) == Some(*seen) {
                    batch.delete(key);
                }
            }
            for id in gone {
                batch.delete(pack_key(*id));
            }
            Ok(())
        })?;
        Ok(removed)
    }

    /// One short write: takes `index.lock`, opens the primary, lets `build`
    /// fill a batch (it may read the primary's current values to make each
    /// write conditional), writes it synced, closes, and refreshes the reader.
    fn write_locked(
        &self,
        build: impl FnOnce(&DB, &mut WriteBatch) -> Result<(), rocksdb::Error>,
    ) -> Result<(), IndexError> {
        let _guard = self.lock_writer()?;
        ensure_free_space(&self.primary)?;
        let db = DB::open(&primary_options(), &self.primary)
            .map_err(|e| not_shared(&self.primary).unwrap_or_else(|| db_err(&self.primary)(e)))?;
        let mut batch = WriteBatch::default();
        build(&db, &mut batch).map_err(db_err(&self.primary))?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        crate::failpoint::hit("index-commit");
        db.write_opt(batch, &wo).map_err(db_err(&self.primary))?;
        crate::failpoint::hit("index-committed");
        drop(db);
        share_with_group(&self.primary)?;
        self.refresh()
    }

    /// Applies `updates` in one synced commit, each only if its entry still
    /// holds what the caller saw (a backup may have stored a new copy of a
    /// chunk meanwhile, or another GC moved it); returns which were applied.
    pub(crate) fn update_if_unchanged(&self, updates: &[EntryUpdate]) -> Result<Vec<bool>, IndexError> {
        let mut applied = Vec::with_capacity(updates.len());
        self.write_locked(|db, batch| {
            for u in updates {
                let key = chunk_key(&u.digest);
                let unchanged = db.get(key)?.and_then(|v| IndexEntry::decode(&v)) == Some(u.seen);
                if unchanged {
                    match &u.new {
                        Some(e) => {
                            batch.put(key, e.encode());
                            // A repack's new pack: noted like a backup's.
                            batch.put(pack_key(e.loc.pack), []);
                        }
                        None => batch.delete(key),
                    }
                }
                applied.push(unchanged);
            }
            Ok(())
        })?;
        Ok(applied)
    }

    /// Stores a record of the store's own (GC's state) under `key`, synced.
    pub(crate) fn put_record(&self, key: &[u8], value: &[u8]) -> Result<(), IndexError> {
        self.write_locked(|_, batch| {
            batch.put(key, value);
            Ok(())
        })
    }

    fn lock_writer(&self) -> Result<File, IndexError> {
        lock_writer(&self.lock)
    }

    /// Calls `f` for every chunk entry, in digest order (one sequential pass).
    pub(crate) fn for_each_entry(&self, mut f: impl FnMut(Digest, IndexEntry)) -> Result<(), IndexError> {
        // A full scan: keep it out of the block cache (which serves lookups),
        // so memory stays flat however many entries there are.
        let mut ro = rocksdb::ReadOptions::default();
        ro.fill_cache(false);
        ro.set_readahead_size(2 << 20);
        let iter = self.reader.iterator_opt(
            rocksdb::IteratorMode::From(&[CHUNK_KEY_PREFIX], rocksdb::Direction::Forward),
            ro,
        );
        for item in iter {
            let (k, v) = item.map_err(db_err(&self.primary))?;
            if k.first() != Some(&CHUNK_KEY_PREFIX) {
                break;
            }
            let digest = Digest::from_slice(&k[1..]).ok_or_else(|| IndexError::Db {
                path: self.primary.clone(),
                message: format!("malformed chunk key of {} bytes", k.len()),
            })?;
            f(
                digest,
                IndexEntry::decode(&v).ok_or(IndexError::BadEntry { digest })?,
            );
        }
        Ok(())
    }

    /// Removes the entries of `digests` that still point at the given
    /// locations (so a chunk stored again meanwhile keeps its new entry).
    pub fn remove(&self, entries: &[(Digest, ChunkLocation)]) -> Result<(), IndexError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write_locked(|db, batch| {
            for (digest, loc) in entries {
                let key = chunk_key(digest);
                if db
                    .get(key)?
                    .and_then(|v| IndexEntry::decode(&v))
                    .is_some_and(|e| e.loc == *loc)
                {
                    batch.delete(key);
                }
            }
            Ok(())
        })
    }
}

/// Takes the index writer lock (blocking). The kernel releases a flock when
/// its process dies, so a crashed writer never leaves a stale lock.
pub(crate) fn lock_writer(lock: &Path) -> Result<File, IndexError> {
    let lock_err = |source| IndexError::Lock {
        path: lock.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)
        .map_err(lock_err)?;
    f.lock().map_err(lock_err)?;
    Ok(f)
}

/// Writes a fresh index from scratch (index rebuild). The first location
/// added for a digest wins, as in commits.
pub struct IndexBuilder {
    path: PathBuf,
    db: DB,
    batch: WriteBatch,
    in_batch: std::collections::HashSet<Digest>,
    /// Packs whose note is written: every pack an entry points into is
    /// noted, so a pack that disappears is found by its note.
    noted: std::collections::HashSet<PackId>,
}

impl IndexBuilder {
    pub fn create(path: &Path) -> Result<IndexBuilder, IndexError> {
        ensure_free_space(path.parent().unwrap_or(Path::new(".")))?;
        let mut opts = primary_options();
        opts.create_if_missing(true);
        opts.set_error_if_exists(true);
        let db = DB::open(&opts, path).map_err(db_err(path))?;
        Ok(IndexBuilder {
            path: path.to_path_buf(),
            db,
            batch: WriteBatch::default(),
            in_batch: Default::default(),
            noted: Default::default(),
        })
    }

    /// Adds an entry unless the digest is already present; returns whether it was added.
    pub fn add(&mut self, digest: Digest, loc: ChunkLocation) -> Result<bool, IndexError> {
        let key = chunk_key(&digest);
        if self.in_batch.contains(&digest) || self.db.get_pinned(key).map_err(db_err(&self.path))?.is_some() {
            return Ok(false);
        }
        self.batch.put(key, IndexEntry::live(loc).encode());
        if self.noted.insert(loc.pack) {
            self.batch.put(pack_key(loc.pack), []);
        }
        self.in_batch.insert(digest);
        if self.in_batch.len() >= 10_000 {
            self.flush()?;
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), IndexError> {
        ensure_free_space(&self.path)?;
        let batch = std::mem::take(&mut self.batch);
        self.db.write(batch).map_err(db_err(&self.path))?;
        self.in_batch.clear();
        Ok(())
    }

    /// Writes what is left and makes it durable.
    pub fn finish(mut self) -> Result<(), IndexError> {
        self.flush()?;
        self.db.flush().map_err(db_err(&self.path))?;
        share_with_group(&self.path)?;
        crate::failpoint::hit("index-built");
        Ok(())
    }
}

impl Drop for ChunkIndex {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.secondary_dir);
    }
}

/// In a group store (store.md, "Group stores") RocksDB's directory and
/// files are made group-writable, as every other file of the store is:
/// RocksDB creates files 0644 and directories 0755 whatever the umask, so
/// another member could not open the database (it opens `LOCK` for
/// writing) nor add a file to it. The index directory inherits the store's
/// setgid bit, which is how a group store is told here. Only what this
/// user owns can be changed: whoever created a file fixes it at their
/// next write, and the creator of a store at once.
fn share_with_group(dir: &Path) -> Result<(), IndexError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IndexError::Io { path, source }
    };
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if meta.mode() & 0o2000 == 0 {
        return Ok(());
    }
    let me = nix::unistd::geteuid().as_raw();
    let share = |path: &Path, m: &fs::Metadata, wanted: u32| {
        if m.uid() != me || m.mode() & wanted == wanted {
            return Ok(());
        }
        match fs::set_permissions(path, fs::Permissions::from_mode((m.mode() | wanted) & 0o7777)) {
            // Compacted away since it was listed (a rebuild's database is
            // still open): nothing left to share.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(io(path)),
        }
    };
    share(dir, &meta, 0o070)?;
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let Ok(m) = e.metadata() else { continue };
        if m.is_file() {
            share(&e.path(), &m, 0o060)?;
        }
    }
    Ok(())
}

/// Why this user cannot open a group store's index, if that is why: its
/// `LOCK` belongs to another member and is not group-writable.
fn not_shared(dir: &Path) -> Option<IndexError> {
    use std::os::unix::fs::MetadataExt;
    let lock = dir.join("LOCK");
    let m = fs::metadata(&lock).ok()?;
    let me = nix::unistd::geteuid();
    (m.uid() != me.as_raw() && m.mode() & 0o020 == 0 && !me.is_root()).then(|| IndexError::NotShared {
        owner: nix::unistd::User::from_uid(m.uid().into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {}", m.uid()), |u| u.name),
        path: lock,
    })
}

fn primary_options() -> Options {
    let mut opts = Options::default();
    opts.set_keep_log_file_num(4);
    opts.set_block_based_table_factory(&table_options());
    opts
}

/// Digests are random, so every lookup may meet every level-0 table: a
/// Bloom filter per table lets a lookup skip the tables that lack the key
/// (a first backup asks for keys no table has, a re-backup for keys one
/// table has). The reader must name the same policy to use the filters.
///
/// Filters cost about 1.25 bytes per chunk. Kept beside each open table
/// they would grow with the store, so they live in one block cache of
/// fixed size shared by every handle in the process, ahead of data blocks
/// (level 0's pinned: those are the tables every lookup meets).
fn table_options() -> BlockBasedOptions {
    static CACHE: std::sync::OnceLock<Option<rocksdb::Cache>> = std::sync::OnceLock::new();
    let mut t = BlockBasedOptions::default();
    t.set_bloom_filter(10.0, false);
    if let Some(cache) = CACHE.get_or_init(|| rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).ok()) {
        t.set_block_cache(cache);
        t.set_cache_index_and_filter_blocks(true);
        t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    }
    t
}

/// Holds the filters of about 25 million chunks (1.5 TiB at 64 KiB).
const BLOCK_CACHE_BYTES: usize = 32 << 20;

fn db_err(path: &Path) -> impl FnOnce(rocksdb::Error) -> IndexError + '_ {
    move |e| IndexError::Db {
        path: path.to_path_buf(),
        message: e.into_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u64) -> ChunkLocation {
        ChunkLocation {
            pack: PackId([n as u8; 16]),
            offset: n * 100,
            record_len: 77,
            raw_len: 99,
        }
    }

    #[test]
    fn entry_round_trip_reads_version_1_and_rejects_garbage() {
        let e = IndexEntry {
            loc: loc(3),
            condemned: 7,
        };
        assert_eq!(IndexEntry::decode(&e.encode()), Some(e));
        assert_eq!(IndexEntry::decode(&[1u8; 5]), None);
        let mut v = e.encode();
        v[0] = 9;
        assert_eq!(IndexEntry::decode(&v), None);
        // A version-1 value is the first 33 bytes with version 1: never condemned.
        let mut v1 = e.encode()[..33].to_vec();
        v1[0] = 1;
        assert_eq!(IndexEntry::decode(&v1), Some(IndexEntry::live(loc(3))));
    }

    #[test]
    fn a_condemned_entry_is_replaced_by_a_new_copy() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index");
        ChunkIndex::create(&db).unwrap();
        let idx = ChunkIndex::open(&db, &dir.path().join("index.lock"), dir.path()).unwrap();
        let d = Digest::of(b"x");
        idx.commit(&[(d, loc(1))]).unwrap();
        idx.write_locked(|_, b| {
            b.put(
                chunk_key(&d),
                IndexEntry {
                    loc: loc(1),
                    condemned: 3,
                }
                .encode(),
            );
            Ok(())
        })
        .unwrap();
        assert_eq!(idx.entry(&d).unwrap().unwrap().condemned, 3);
        idx.commit(&[(d, loc(2))]).unwrap();
        assert_eq!(idx.entry(&d).unwrap(), Some(IndexEntry::live(loc(2))));
    }

    #[test]
    fn commits_are_seen_by_other_readers_and_first_location_wins() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index");
        ChunkIndex::create(&db).unwrap();
        let lock = dir.path().join("index.lock");
        let a = ChunkIndex::open(&db, &lock, dir.path()).unwrap();
        let b = ChunkIndex::open(&db, &lock, dir.path()).unwrap();
        let d1 = Digest::of(b"one");
        assert_eq!(a.lookup(&d1).unwrap(), None);
        a.commit(&[(d1, loc(1))]).unwrap();
        assert_eq!(a.lookup(&d1).unwrap(), Some(loc(1)));
        b.refresh().unwrap();
        assert_eq!(b.lookup(&d1).unwrap(), Some(loc(1)));
        b.commit(&[(d1, loc(2))]).unwrap();
        a.refresh().unwrap();
        assert_eq!(a.lookup(&d1).unwrap(), Some(loc(1)));
        // Many commits in a row keep working (each reopens the primary).
        for i in 0..50u64 {
            a.commit(&[(Digest::of(&i.to_le_bytes()), loc(i))]).unwrap();
        }
        b.refresh().unwrap();
        assert_eq!(
            b.lookup(&Digest::of(&49u64.to_le_bytes())).unwrap(),
            Some(loc(49))
        );
    }
}
