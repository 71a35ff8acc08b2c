//! How a container backup or restore fails.

use std::path::PathBuf;

use crate::error::{Classify, Context, ErrorKind};
use crate::ops::backup::BackupError;

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("--include-mount {0}: {1}")]
    Include(String, String),
    #[error("{volume}: {why}; exclude it or use stop or suspend mode")]
    NoSnapshot { volume: String, why: String },
    #[error("root file system {0}: not supported in this mode yet (use snapshot mode)")]
    RootfsType(String),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Hook(#[from] crate::modes::hooks::HookError),
}

impl Classify for CtError {
    fn kind(&self) -> ErrorKind {
        match self {
            CtError::Config { .. } | CtError::Include(..) | CtError::RootfsType(_) => ErrorKind::Invalid,
            CtError::Command { .. } | CtError::NoSnapshot { .. } => ErrorKind::Step,
            CtError::Io { .. } => ErrorKind::Io,
            CtError::Backup(e) => e.kind(),
            CtError::Hook(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            CtError::Config { path, .. } | CtError::Io { path, .. } => Context::path(path),
            CtError::Backup(e) => e.context(),
            CtError::Hook(e) => e.context(),
            _ => Context::default(),
        }
    }
}
