//! Where a store's objects live: the one seam every stored object goes
//! through.
//!
//! Each object has a kind ([`ObjectKind`]: config, key slot, snapshot
//! (manifest and index files), verify state, task log, notes, protected
//! marker; packs are the [`StoreObjects::packs`] backend's) and a name
//! relative to the store (`snapshots/vm/100/TIME/verify.json`), the same
//! in a directory and in a bucket. Above this module nothing asks where
//! the bytes go: the catalogue, the key slots, GC and repair write through
//! a [`StoreObjects`], chosen once by `address::open` from the
//! store's address.
//!
//! - [`LocalObjects`]: a store in a directory. Small objects are written
//!   with [`write_durably`] (temporary file, fsync, rename, directory
//!   fsync); packs go through [`super::local_dir::LocalDir`].
//! - [`super::cached::Cached`]: a store in a bucket, used through a local
//!   cache directory. It decorates the cache's [`LocalObjects`]: every
//!   write goes to the bucket first, under the writer lease, and to the
//!   cache after; reads come from the cache, which opening brings up to
//!   date.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::ObjectBackend;
use super::local_dir;
use super::snapshot_dir;
use super::{error::io_err, error::StoreError, index::ChunkIndex, local_dir::write_durably, packs};
use crate::format::snapshot::{SnapshotName, MANIFEST_FILE};

/// What a stored object is. The kind says what a write of it is for (the
/// lease's error messages name it) and which ones a backend keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Config,
    Key,
    /// A snapshot: its manifest, written last, and the index files before it.
    Manifest,
    VerifyState,
    TaskLog,
    /// Notes on one snapshot.
    Notes,
    /// Notes on a group (beside its snapshots' directories).
    GroupNotes,
    Protected,
}

impl ObjectKind {
    /// What writing (or removing) an object of this kind does, for errors.
    pub fn writing(self, remove: bool) -> &'static str {
        match (self, remove) {
            (ObjectKind::Config, _) => "creating a store",
            (ObjectKind::Key, false) => "writing a key slot",
            (ObjectKind::Key, true) => "removing a key slot",
            (ObjectKind::Manifest, false) => "publishing a snapshot",
            (ObjectKind::Manifest, true) => "forgetting a snapshot",
            (ObjectKind::VerifyState, _) => "recording a verification",
            (ObjectKind::TaskLog, _) => "storing a task log",
            (ObjectKind::Notes | ObjectKind::GroupNotes, false) => "writing notes",
            (ObjectKind::Notes | ObjectKind::GroupNotes, true) => "removing notes",
            (ObjectKind::Protected, false) => "protecting a snapshot",
            (ObjectKind::Protected, true) => "unprotecting a snapshot",
        }
    }
}

/// Every object of one store, wherever it lives.
pub trait StoreObjects: Send + Sync {
    /// Where the store is, as a user names it: the bucket's URL, or the
    /// directory's absolute path.
    fn address(&self) -> String;

    /// The packs' backend.
    fn packs(&self) -> Arc<dyn ObjectBackend>;

    /// Writes object `name` whole and durably, replacing it unless
    /// `create_only` (then of two racing writers in a bucket one fails;
    /// in a directory the caller has checked).
    fn put(&self, kind: ObjectKind, name: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError>;

    /// Removes object `name`; one that is absent is no error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError>;

    /// Makes the snapshot whose files were written into its directory
    /// (`rel`, below the store) visible: `manifest` is written last.
    fn publish_snapshot(&self, rel: &str, manifest: &[u8]) -> Result<(), StoreError>;

    /// Removes a snapshot so that it disappears at once.
    fn forget_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError>;

    /// Declares that this process writes the store from now on; true if
    /// that was not so before and what others wrote must be caught up
    /// with ([`refresh`](Self::refresh)).
    fn begin_writing(&self, what: &str) -> Result<bool, StoreError>;

    /// Brings what this host knows of the store (the chunk index, cached
    /// copies) up to date with what other hosts wrote.
    fn refresh(&self, index: &ChunkIndex) -> Result<(), StoreError>;

    /// Drops the index entries of packs that are gone and returns their
    /// names (see [`super::Store::forget_missing_packs`]).
    fn forget_missing_packs(&self, index: &ChunkIndex) -> Result<Vec<String>, StoreError>;

    /// Removes what writers that died left of snapshots that never got a
    /// manifest, where only this backend can see it, if older than
    /// `cutoff_ns`; returns how many snapshots it removed.
    fn remove_unpublished(&self, cutoff_ns: u64) -> Result<u64, StoreError>;
}

/// A store in a directory (or a bucket store's cache of one).
pub(crate) struct LocalObjects {
    root: PathBuf,
    packs: Arc<dyn ObjectBackend>,
}

impl LocalObjects {
    /// The store at `root` with its packs in `packs` (`root` itself, or a
    /// test's backend).
    pub(crate) fn new(root: &Path, packs: Arc<dyn ObjectBackend>) -> LocalObjects {
        LocalObjects {
            root: root.to_path_buf(),
            packs,
        }
    }
}

impl StoreObjects for LocalObjects {
    fn address(&self) -> String {
        fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .display()
            .to_string()
    }

    fn packs(&self) -> Arc<dyn ObjectBackend> {
        self.packs.clone()
    }

    fn put(&self, _: ObjectKind, name: &str, bytes: &[u8], _: bool) -> Result<(), StoreError> {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        write_durably(&path, bytes)
    }

    fn delete(&self, _: ObjectKind, name: &str) -> Result<(), StoreError> {
        let path = self.root.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r.map_err(io_err(&path))?,
        }
        let dir = path.parent().unwrap_or(&self.root);
        local_dir::sync_dir(dir).map_err(io_err(dir))
    }

    fn publish_snapshot(&self, rel: &str, manifest: &[u8]) -> Result<(), StoreError> {
        write_durably(&self.root.join(rel).join(MANIFEST_FILE), manifest)
    }

    fn forget_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError> {
        Ok(snapshot_dir::forget(
            &self.root.join("snapshots"),
            &self.root.join("tmp"),
            name,
        )?)
    }

    fn begin_writing(&self, _: &str) -> Result<bool, StoreError> {
        // Writers of one directory coordinate through its locks.
        Ok(false)
    }

    fn refresh(&self, _: &ChunkIndex) -> Result<(), StoreError> {
        Ok(())
    }

    /// The notes are read before the listing, so a pack sealed meanwhile
    /// by another writer is never taken for lost.
    fn forget_missing_packs(&self, index: &ChunkIndex) -> Result<Vec<String>, StoreError> {
        let noted = index.indexed_packs()?;
        if noted.is_empty() {
            return Ok(Vec::new());
        }
        let listed: HashSet<_> = packs::list_sealed(self.packs.as_ref())?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let gone: HashSet<_> = noted.difference(&listed).copied().collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        index.forget_packs(&gone)?;
        let mut names: Vec<String> = gone
            .iter()
            .map(|id| self.packs.location(&id.name()).display().to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove_unpublished(&self, _: u64) -> Result<u64, StoreError> {
        // GC walks the snapshot directories itself (they are the cache's
        // too); a directory holds nothing else of an unfinished snapshot.
        Ok(0)
    }
}
