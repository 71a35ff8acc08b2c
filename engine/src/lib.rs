//! hoard's storage engine.
//!
//! Data flows one way: a [`source`] yields bytes, the [`chunker`] cuts them,
//! workers [`digest`] and compress them into [`chunk`] records, which land in
//! [`pack`]s of the [`store`], while a [`fixed_index`] records the digest
//! sequence and a [`snapshot`] manifest makes the result visible. [`restore`]
//! walks an index back out. Nothing here knows about QEMU, LXC or the CLI.
//!
//! # Locking and durability (who waits for whom)
//!
//! | operation            | takes                         | waits for            |
//! |----------------------|-------------------------------|----------------------|
//! | backup (reading)     | nothing                       | nobody               |
//! | backup (pack sealed) | `index.lock` for one commit   | other commits (ms)   |
//! | restore, show, list  | nothing                       | nobody               |
//!
//! Each backup appends to its own pack; the chunk index is written only in
//! short synced commits under `index.lock` and read through a private
//! RocksDB secondary instance. A snapshot's manifest is written (fsync +
//! rename) only after every pack it references is sealed, fsynced and
//! committed and its index files are fsynced. See format-spec/.

// Errors carry paths, digests and offsets so that messages name what is
// wrong; they are on cold paths, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod archive;
pub mod backup;
pub mod bench;
pub mod cdc;
pub mod chunk;
pub mod chunker;
pub mod ct;
pub mod digest;
pub mod dynamic_index;
pub mod export;
pub mod failpoint;
pub mod fixed_index;
/// Entry points of the fuzz targets (fuzz/), which need protocol internals.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gc;
pub mod hooks;
pub mod modes;
pub mod mount;
pub mod nbd_wire;
pub mod pack;
pub mod pipeline;
pub mod private_fs;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod signals;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod umask;
pub mod verify;
pub mod verify_state;
pub mod vm;

/// Worker threads for a `threads` option: 0 means one per core.
pub fn worker_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    }
}
