//! How a live copy fails.

use std::path::PathBuf;

use crate::error::{Classify, Context, ErrorKind};
use crate::source::nbd::NbdError;
use crate::source::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Nbd(#[from] NbdError),
    #[error("no block node {0:?} in QEMU (see query-named-block-nodes)")]
    NoSuchNode(String),
    #[error("disk node {node}: {detail}")]
    Disk { node: String, detail: String },
    #[error("{path}: {detail}")]
    Fleece { path: PathBuf, detail: String },
    #[error("QEMU already runs an NBD server: pass its unix socket with --nbd-socket")]
    NbdServerRunning,
    #[error(transparent)]
    Snapshot(#[from] crate::format::snapshot::SnapshotError),
    #[error(transparent)]
    Backup(#[from] crate::ops::backup::BackupError),
    /// A step of the backup mode around the point in time failed.
    #[error("{0}")]
    Step(Box<crate::error::Error>),
    /// The backup failed and so did putting QEMU back as it was.
    #[error("{backup}; cleaning up in QEMU also failed: {cleanup}")]
    CleanupAfter {
        backup: Box<LiveError>,
        cleanup: Box<LiveError>,
    },
}

impl Classify for LiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            LiveError::Qmp(e) => e.kind(),
            LiveError::Nbd(e) => e.kind(),
            LiveError::NoSuchNode(_) => ErrorKind::NotFound,
            LiveError::Disk { .. } => ErrorKind::Source,
            LiveError::Fleece { .. } => ErrorKind::Io,
            LiveError::NbdServerRunning => ErrorKind::Busy,
            LiveError::Snapshot(e) => e.kind(),
            LiveError::Backup(e) => e.kind(),
            LiveError::Step(e) => e.kind(),
            LiveError::CleanupAfter { backup, .. } => backup.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            LiveError::Qmp(e) => e.context(),
            LiveError::Nbd(e) => e.context(),
            LiveError::Fleece { path, .. } => Context::path(path),
            LiveError::Snapshot(e) => e.context(),
            LiveError::Backup(e) => e.context(),
            LiveError::Step(e) => e.context().clone(),
            LiveError::CleanupAfter { backup, .. } => backup.context(),
            _ => Context::default(),
        }
    }
}
