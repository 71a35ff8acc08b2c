//! Progress reporting seam: the engine counts, the CLI draws.

/// Receives progress of long operations. Called from worker threads.
pub trait Progress: Sync {
    /// A new phase of `total` bytes begins (for example one image).
    fn begin(&self, _label: &str, _total: u64) {}
    /// `bytes` more of the current phase are done.
    fn advance(&self, _bytes: u64) {}
    /// One more file of a tree is done (a tree's total is not known ahead).
    fn entry(&self) {}
    /// The current phase is done.
    fn end(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
