//! The operations on a store: backup, restore, verify, prune, garbage
//! collection, repair and the benchmark. They reach the store only through
//! its seams (crate::store).

pub mod backup;
pub mod bench;
pub mod gc;
#[cfg(test)]
mod over_the_seam;
pub mod prune;
pub mod restore;
pub mod space;
pub mod verify;
