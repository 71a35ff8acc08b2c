//! The operations on a store: backup, restore, verify, prune, garbage
//! collection, repair and the benchmark. They reach the store only through
//! its seams (crate::store).

pub(crate) mod backup;
pub mod bench;
pub(crate) mod gc;
#[cfg(test)]
mod over_the_seam;
pub(crate) mod prune;
pub(crate) mod restore;
pub(crate) mod space;
pub(crate) mod verify;
