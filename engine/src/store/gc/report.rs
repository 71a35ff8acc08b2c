//! What a GC is asked to do, what it reports and how it fails.

use serde::Serialize;

use crate::error::{Classify, Context, ErrorKind};
use crate::format::pack::PackError;
use crate::format::snapshot::SnapshotError;
use crate::store::scratch::ScratchError;
use crate::store::{IndexError, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Marks(#[from] ScratchError),
    #[error("snapshot {snapshot} cannot be read ({source}); gc stops so as not to remove chunks it may need: restore its files, or drop it with `hoard forget {snapshot}`")]
    Unreadable { snapshot: String, source: SnapshotError },
    #[error("gc state in the chunk index is malformed: {0}")]
    BadState(String),
}

impl Classify for GcError {
    fn kind(&self) -> ErrorKind {
        match self {
            GcError::Store(e) => e.kind(),
            GcError::Index(e) => e.kind(),
            GcError::Snapshot(e) | GcError::Unreadable { source: e, .. } => e.kind(),
            GcError::Pack(e) => e.kind(),
            GcError::Marks(e) => e.kind(),
            GcError::BadState(_) => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            GcError::Store(e) => e.context(),
            GcError::Index(e) => e.context(),
            GcError::Snapshot(e) | GcError::Unreadable { source: e, .. } => e.context(),
            GcError::Pack(e) => e.context(),
            GcError::Marks(e) => e.context(),
            GcError::BadState(_) => Context::default(),
        }
    }
}

pub struct GcOptions {
    /// Rewrite packs whose live share of bytes is below this (0 disables).
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { repack_below: 0.5 }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Epoch of the chunks this run condemned.
    pub epoch: u32,
    /// Snapshots whose chunks were marked.
    #[serde(rename = "snapshots_scanned")]
    pub snapshots: u64,
    /// Distinct chunks referenced by snapshots.
    pub chunks_referenced: u64,
    pub chunks_condemned: u64,
    pub chunks_revived: u64,
    pub chunks_removed: u64,
    /// Condemned chunks still stored: removed by a later run.
    pub chunks_pending: u64,
    pub bytes_pending: u64,
    /// Record bytes of referenced chunks.
    pub bytes_kept: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    /// Packs that looked dead or sparse but were left alone, each with why:
    /// damaged, or holding chunks that snapshots reference and the index
    /// does not list. Not empty means the store needs `hoard index rebuild`.
    pub packs_kept: Vec<String>,
    /// Packs left alone because they hold copies of referenced chunks whose
    /// other, indexed copy only a GC with the key can prove genuine (a
    /// planted record passes every keyless check). Not damage: a GC given
    /// the key frees them.
    pub packs_kept_for_key: Vec<String>,
    /// Chunks that snapshots reference and the chunk index does not list
    /// (lost index entries, or damaged chunks that verify dropped).
    pub chunks_missing: u64,
    pub leftovers_removed: u64,
    /// Bytes of pack files freed on disk.
    pub bytes_freed: u64,
    /// Bytes of all snapshots' archives, over bytes kept.
    pub logical_bytes: u64,
    pub dedup_factor: f64,
    /// Earlier epochs whose removal waits for backups that started before them.
    pub postponed_epochs: Vec<u32>,
    pub stale_sessions_removed: Vec<String>,
    /// Packs the index listed that are gone; their entries were dropped.
    pub packs_missing: Vec<String>,
    #[serde(rename = "duration_secs")]
    pub seconds: f64,
}
