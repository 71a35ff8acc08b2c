//! A sorted set of byte keys kept on disk: a private RocksDB without a WAL in
//! the store's `tmp/`, removed on drop. GC marks and verify's work list live
//! here, so their memory does not grow with the number of chunks.

use std::fs;
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::index::{ensure_free_space, free_bytes};
use crate::error::{Classify, Context, ErrorKind};

#[derive(Debug, thiserror::Error)]
#[error("scratch set {path}: {message}")]
pub struct ScratchError {
    pub path: PathBuf,
    pub message: String,
}

impl Classify for ScratchError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Io
    }

    fn context(&self) -> Context {
        Context::path(&self.path)
    }
}

/// One entry of the set: key and value bytes.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Free space a directory needs to be chosen for a scratch set when
/// another is left to try.
const MIN_FREE_FOR_SCRATCH: u64 = 64 << 20;

pub(crate) struct ScratchSet {
    path: PathBuf,
    db: Option<DB>,
    batch: WriteBatch,
}

impl ScratchSet {
    /// Creates the set as `name` in the first of `dirs` whose file system
    /// has room for RocksDB to write ([`ensure_free_space`]): a set on a
    /// full disk would abort the process at its first flush.
    pub(crate) fn create_in(dirs: &[&Path], name: &str) -> Result<ScratchSet, ScratchError> {
        let mut last = ScratchError {
            path: PathBuf::from(name),
            message: "no directory given".into(),
        };
        for (i, dir) in dirs.iter().enumerate() {
            // A directory with another one after it must leave room for
            // the set to grow (its first flush alone writes megabytes):
            // a nearly full store disk sends the set to the next one.
            if i + 1 < dirs.len() && free_bytes(dir).is_ok_and(|f| f < MIN_FREE_FOR_SCRATCH) {
                continue;
            }
            match ScratchSet::create(&dir.join(name)) {
                Ok(set) => return Ok(set),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub(crate) fn create(path: &Path) -> Result<ScratchSet, ScratchError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        ensure_free_space(dir).map_err(|e| ScratchError {
            path: path.into(),
            message: e.to_string(),
        })?;
        let mut o = Options::default();
        o.create_if_missing(true);
        // Small buffers: the set is written once and scanned once.
        o.set_write_buffer_size(4 << 20);
        let db = DB::open(&o, path).map_err(|e| ScratchError {
            path: path.into(),
            message: e.into_string(),
        })?;
        Ok(ScratchSet {
            path: path.into(),
            db: Some(db),
            batch: WriteBatch::default(),
        })
    }

    fn db(&self) -> &DB {
        self.db.as_ref().expect("open until drop")
    }

    fn err(&self, e: rocksdb::Error) -> ScratchError {
        ScratchError {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    /// Adds a key (with an optional small value); written in batches.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), ScratchError> {
        self.batch.put(key, value);
        if self.batch.len() >= 100_000 {
            self.flush()?;
        }
        Ok(())
    }

    /// Whether `key` was inserted (and flushed).
    pub(crate) fn contains(&self, key: &[u8]) -> Result<bool, ScratchError> {
        Ok(self.db().get_pinned(key).map_err(|e| self.err(e))?.is_some())
    }

    /// Writes pending inserts; call before iterating.
    pub(crate) fn flush(&mut self) -> Result<(), ScratchError> {
        // Refuse before RocksDB meets a full disk (it would abort).
        ensure_free_space(&self.path).map_err(|e| ScratchError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let batch = std::mem::take(&mut self.batch);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db().write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    /// Every (key, value) in key order, without filling the block cache.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<KeyValue, ScratchError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        self.db()
            .iterator_opt(IteratorMode::Start, ro)
            .map(|r| r.map_err(|e| self.err(e)))
    }
}

impl Drop for ScratchSet {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set");
        let mut set = ScratchSet::create(&path).unwrap();
        for k in [b"c", b"a", b"b", b"a"] {
            set.insert(k, b"").unwrap();
        }
        set.flush().unwrap();
        let keys: Vec<Box<[u8]>> = set.iter().map(|r| r.unwrap().0).collect();
        assert_eq!(
            keys,
            vec![b"a".to_vec().into(), b"b".to_vec().into(), b"c".to_vec().into()]
        );
        drop(set);
        assert!(!path.exists());
    }
}
