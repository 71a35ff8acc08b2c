//! Serving snapshots while they stay in the store: an NBD export of an
//! image (with TLS and a writable overlay) and a FUSE mount of images and
//! trees; and the backup server's API (`hoard serve`).

pub mod api;
pub(crate) mod export;
pub(crate) mod mount;
