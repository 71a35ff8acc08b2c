//! What a backup is asked to do, and how it fails: the types that the
//! archivers, the modes and the CLI share with the backup itself.

use std::io;
use std::path::PathBuf;

use crate::chunking::chunker::ChunkSize;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::Compression;
use crate::format::fixed_index::FidxError;
use crate::format::snapshot::{Kind, SnapshotError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("archive name {0} is given twice")]
    DuplicateArchive(String),
    #[error("configuration file {path}: {why}")]
    ConfigFile { path: PathBuf, why: String },
    #[error("{source_name}: read failed at offset {offset}: {error}")]
    SourceRead {
        source_name: String,
        offset: u64,
        error: io::Error,
    },
    #[error("{source_name}: source shrank while being read: expected {expected} bytes at offset {offset}, got {got}")]
    SourceShrank {
        source_name: String,
        offset: u64,
        expected: usize,
        got: usize,
    },
    #[error("{source_name}: source size changed during the backup (was {before} bytes, now {after})")]
    SourceResized {
        source_name: String,
        before: u64,
        after: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fidx(#[from] FidxError),
    #[error(transparent)]
    Didx(#[from] crate::format::dynamic_index::DidxError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("backup interrupted")]
    Interrupted,
    /// A step of a backup mode around the read failed.
    #[error("{0}")]
    Step(Box<crate::error::Error>),
}

impl Classify for BackupError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Snapshot(e) => e.kind(),
            BackupError::DuplicateArchive(_) | BackupError::ConfigFile { .. } => ErrorKind::Invalid,
            BackupError::SourceRead { .. }
            | BackupError::SourceShrank { .. }
            | BackupError::SourceResized { .. } => ErrorKind::Source,
            BackupError::Store(e) => e.kind(),
            BackupError::Fidx(e) => e.kind(),
            BackupError::Didx(e) => e.kind(),
            BackupError::Io { source, .. } => io_kind(source),
            BackupError::Interrupted => ErrorKind::Interrupted,
            BackupError::Step(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            BackupError::Snapshot(e) => e.context(),
            BackupError::SourceRead {
                source_name, offset, ..
            }
            | BackupError::SourceShrank {
                source_name, offset, ..
            } => Context::path(std::path::Path::new(source_name)).offset(*offset),
            BackupError::SourceResized { source_name, .. } => {
                Context::path(std::path::Path::new(source_name))
            }
            BackupError::Store(e) => e.context(),
            BackupError::Fidx(e) => e.context(),
            BackupError::Didx(e) => e.context(),
            BackupError::Io { path, .. } | BackupError::ConfigFile { path, .. } => Context::path(path),
            BackupError::Step(e) => e.context().clone(),
            _ => Context::default(),
        }
    }
}

#[derive(Clone)]
pub struct BackupOptions {
    pub kind: Kind,
    pub id: String,
    pub compression: Compression,
    /// Overrides the store's default chunk size.
    pub chunk_size: Option<ChunkSize>,
    /// Hashing/compression workers; 0 means one per core.
    pub threads: usize,
    /// Recorded in the manifest: the VM/CT backup mode and how it went.
    pub mode: Option<String>,
    pub vm: Option<crate::format::snapshot::VmRecord>,
    pub ct: Option<crate::format::snapshot::CtRecord>,
    /// The guest's configuration files, stored as archive `config.tree`.
    pub config_files: Vec<PathBuf>,
}

impl BackupOptions {
    /// A plain backup of group KIND/ID: zstd level 1, the store's chunk
    /// size, one worker per core, no mode record.
    pub fn new(kind: Kind, id: impl Into<String>) -> BackupOptions {
        BackupOptions {
            kind,
            id: id.into(),
            compression: Compression::Zstd(1),
            chunk_size: None,
            threads: 0,
            mode: None,
            vm: None,
            ct: None,
            config_files: Vec::new(),
        }
    }
}
