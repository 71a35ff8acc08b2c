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

pub(crate) mod connection;
pub(crate) mod device;
pub(crate) mod image;
pub(crate) mod overlay;
pub(crate) mod proto;
pub(crate) mod server;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod tls;

pub(crate) use device::{BlockDevice, Fault};
pub use image::{ImageDevice, ImageOptions};
pub use server::{serve, Listen, ServeOptions};
