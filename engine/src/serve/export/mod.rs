//! Serving a snapshot's image straight from its index, without restoring it
//! first: `hoard export` (NBD) and the image side of `hoard mount`.
//!
//! The layers, each its own module:
//! - [`crate::store::chunk_cache`] (in the store layer): decoded, verified
//!   chunks shared by every client, bounded in
//!   bytes, with read-ahead on background threads;
//! - [`overlay`]: the copy-on-write overlay of a `--writable` export, in an
//!   unlinked temporary file (the store is never written);
//! - [`image`]: an image archive as a [`BlockDevice`]: index + cache + overlay;
//! - [`proto`]: the server side of the NBD handshake and requests;
//! - [`connection`]: one client, its requests and replies;
//! - [`server`]: listening sockets and the worker pool.
//!
//! Whatever serves an image talks to it through [`BlockDevice`], so a live
//! restore (copying the image to a new disk while a VM already runs from the
//! export) can later sit between the two: reads of copied ranges go to the
//! new disk, the rest to the store.

pub mod connection;
pub(crate) mod device;
pub mod image;
pub mod overlay;
pub mod proto;
pub mod server;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;

pub use device::{BlockDevice, Extent, Fault, MemoryDevice, Piece};
pub use image::{ImageDevice, ImageOptions};
pub use server::{serve, Listen, ServeOptions};
