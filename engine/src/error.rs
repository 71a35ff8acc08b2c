//! The engine's one public error type: what kind of failure it was, where
//! (store, path, digest, offset), and the module's own error as its source.
//!
//! Each module keeps a precise enum for its own failures (a pack's bad
//! magic, an NBD reply out of order); the operations callers start
//! (backup, restore, verify, gc, prune, repair, serve, the modes) return
//! [`Error`], so a caller handles one type: it branches on [`Error::kind`],
//! reports [`Error::context`], prints the message (the module error's, word
//! for word) and may still [`Error::downcast_ref`] to the module enum.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::chunking::digest::Digest;

/// What went wrong, as a caller decides what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is wrong: a bad name, option or reference.
    Invalid,
    /// Something named does not exist: a store, snapshot, archive, chunk.
    NotFound,
    /// Stored or received bytes are damaged or malformed.
    Damaged,
    /// Authentication failed: a wrong passphrase or key, no key for a
    /// protected store, or bytes changed by someone without the key.
    Auth,
    /// Another process holds what is needed (a lock, a busy store).
    Busy,
    /// The store or a file the operation writes cannot take more data.
    NoSpace,
    /// What is backed up failed or changed: a disk image, an NBD or QMP
    /// server, the guest agent, a container.
    Source,
    /// A step around the copy failed: a hook, a freeze, a snapshot tool.
    Step,
    /// Stopped by a signal, a closed connection or a failing peer thread.
    Interrupted,
    /// The operating system refused (I/O, permissions).
    Io,
    /// None of the above.
    Other,
}

/// Where the failure happened, as far as the module error knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub store: Option<PathBuf>,
    pub path: Option<PathBuf>,
    pub digest: Option<Digest>,
    pub offset: Option<u64>,
}

impl Context {
    pub fn path(path: &Path) -> Context {
        Context {
            path: Some(path.to_path_buf()),
            ..Context::default()
        }
    }

    pub fn digest(digest: Digest) -> Context {
        Context {
            digest: Some(digest),
            ..Context::default()
        }
    }

    pub fn offset(mut self, offset: u64) -> Context {
        self.offset = Some(offset);
        self
    }
}

/// A module error that knows its kind and context: every engine error
/// enum implements it, and converts into [`Error`] with `?`.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;

    fn context(&self) -> Context {
        Context::default()
    }
}

/// Boxed, so that a `Result` stays two words wide on the success path.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    context: Context,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    pub fn context(&self) -> &Context {
        &self.0.context
    }

    /// The module error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.source.downcast_ref()
    }
}

impl<E: Classify> From<E> for Error {
    fn from(e: E) -> Error {
        Error(Box::new(Inner {
            kind: e.kind(),
            context: e.context(),
            source: Box::new(e),
        }))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.source.fmt(f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("context", &self.0.context)
            .field("source", &self.0.source)
            .finish()
    }
}

impl std::error::Error for Error {
    /// The module error's own cause: the module error itself is this
    /// error's message, so a chain printer does not repeat it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.source()
    }
}

/// An error as one line: its own message, then the innermost cause it
/// wraps unless the message already says it. Network clients' messages
/// ("error sending request") leave out what the user can act on
/// ("connection refused", "timed out", a TLS refusal).
pub(crate) fn with_innermost_cause(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    let mut innermost = None;
    let mut source = e.source();
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) if !text.contains(&cause) => format!("{text}: {cause}"),
        _ => text,
    }
}

/// The kind of an operating-system error.
pub(crate) fn io_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::StorageFull | K::QuotaExceeded => ErrorKind::NoSpace,
        K::InvalidData | K::UnexpectedEof => ErrorKind::Damaged,
        K::Interrupted | K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted => ErrorKind::Interrupted,
        K::WouldBlock | K::ResourceBusy => ErrorKind::Busy,
        _ => ErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::PackError;
    use crate::format::snapshot::SnapshotError;
    use crate::ops::backup::BackupError;
    use crate::store::StoreError;

    #[test]
    fn kind_and_context_come_from_the_innermost_module_error_and_the_message_is_unchanged() {
        let pack = PackError::Record {
            path: "/s/packs/ab/x.pack".into(),
            offset: 4096,
            source: crate::format::chunk::RecordError::PayloadChecksum,
        };
        let inner = BackupError::Store(StoreError::Pack(pack));
        let message = inner.to_string();
        let e = Error::from(inner);
        assert_eq!(e.kind(), ErrorKind::Damaged);
        assert_eq!(e.context().path.as_deref(), Some(Path::new("/s/packs/ab/x.pack")));
        assert_eq!(e.context().offset, Some(4096));
        assert_eq!(e.to_string(), message);
        assert!(matches!(
            e.downcast_ref::<BackupError>(),
            Some(BackupError::Store(_))
        ));

        let missing = Error::from(StoreError::ChunkMissing {
            digest: Digest([7; 32]),
        });
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(missing.context().digest, Some(Digest([7; 32])));

        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let full = Error::from(SnapshotError::Io {
            path: "/s/snapshots".into(),
            source: io,
        });
        assert_eq!(full.kind(), ErrorKind::NoSpace);
        assert_eq!(
            Error::from(SnapshotError::BadId("a/b".into())).kind(),
            ErrorKind::Invalid
        );
        // A failed step keeps the kind and context of what failed in it.
        let step = BackupError::Step(Box::new(missing));
        assert_eq!(Error::from(step).kind(), ErrorKind::NotFound);
    }
}
