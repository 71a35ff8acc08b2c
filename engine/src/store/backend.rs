//! The lower storage seam: named, immutable objects.
//!
//! Packs are written once, read in ranges, listed, and deleted whole; they
//! are never changed in place. That is all a pack store needs, and all an
//! object store (S3, a remote server) offers, so it is the whole interface.
//! Names are `/`-separated paths relative to the backend (`packs/ab/ID.pack`).
//!
//! Errors are `io::Error`s: a missing object is `NotFound`, an existing one
//! on create is `AlreadyExists`, a read past the end is `UnexpectedEof`.
//! Callers name the object in their messages with [`ObjectBackend::location`].

use std::io;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// When it was written (nanoseconds since the Unix epoch): the clock of
    /// GC's grace periods.
    pub modified_ns: u64,
}

pub trait ObjectBackend: Send + Sync {
    /// Where `name` lives, for messages: a file path or a URL.
    fn location(&self, name: &str) -> PathBuf;

    /// Starts writing the new object `name`. It becomes visible, whole and
    /// durable, only when the writer finishes; `AlreadyExists` if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>>;

    /// Opens `name` for ranged reads.
    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>>;

    /// The whole of `name`, mapped where the backend can.
    fn get(&self, name: &str) -> io::Result<ObjectBytes>;

    /// Finished objects whose names start with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>>;

    fn delete(&self, name: &str) -> io::Result<()>;

    /// Moves `name` to `name` + `suffix` (or `suffix-N` if that is taken),
    /// out of the way of listings that select by suffix; returns the new name.
    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String>;

    /// Removes writes under `prefix` that were started before `cutoff_ns`
    /// and never finished (their writer was killed); returns each one's
    /// name and size.
    fn remove_unfinished(&self, prefix: &str, cutoff_ns: u64) -> io::Result<Vec<(String, u64)>>;
}

/// A write in progress: invisible until [`finish`](ObjectWriter::finish).
pub trait ObjectWriter: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the object durable and visible under its name.
    fn finish(self: Box<Self>) -> io::Result<()>;
    /// Drops the write; nothing of it stays.
    fn abort(self: Box<Self>);
}

/// An object opened for ranged reads.
pub trait ObjectRead: Send {
    /// Fills `buf` from `offset`; `UnexpectedEof` if the object ends first.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A whole object in memory: a read-only map of a local file, bytes held
/// in memory, or the body a client received (no copy of it is made).
pub enum ObjectBytes {
    Mapped(Mmap),
    Shared(Arc<[u8]>),
    Bytes(bytes::Bytes),
}

impl Deref for ObjectBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ObjectBytes::Mapped(m) => m,
            ObjectBytes::Shared(b) => b,
            ObjectBytes::Bytes(b) => b,
        }
    }
}

impl ObjectBytes {
    /// The bytes as a [`bytes::Bytes`], for a client to send (a copy
    /// unless they came from one).
    pub fn to_bytes(&self) -> bytes::Bytes {
        match self {
            ObjectBytes::Bytes(b) => b.clone(),
            other => bytes::Bytes::copy_from_slice(other),
        }
    }

    /// Drops a range already read from this process's resident set, so
    /// walking a store does not look like holding it in memory. The page
    /// cache keeps the pages.
    pub fn release(&self, offset: u64, len: u64) {
        let ObjectBytes::Mapped(map) = self else { return };
        let page = 4096;
        let start = offset as usize / page * page;
        let end = (offset as usize).saturating_add(len as usize).min(map.len());
        if end > start {
            // SAFETY: the map is read-only and file-backed: discarded pages
            // are read from the file again if touched, never zero-filled.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}
