//! The on-disk repository: config, packs, chunk index, snapshots.
//!
//! ```text
//! STORE/config.json        format, version, uuid, default chunk size,
//!                          encryption and key fingerprint
//! STORE/keys/NAME.key      key slots of an encrypted or signed store
//! STORE/index/             RocksDB chunk index (a cache of the packs)
//! STORE/index.lock         flock taken for each index commit
//! STORE/packs/XX/ID.pack   chunk records
//! STORE/snapshots/KIND/ID/TIME/{manifest.json, NAME.img.fidx}
//! STORE/tmp/               per-process scratch space
//! ```

pub(crate) mod address;
pub(crate) mod aws_credentials;
pub(crate) mod backend;
pub(crate) mod backup_session;
pub(crate) mod cached;
pub(crate) mod catalog;
pub(crate) mod chunk_cache;
pub(crate) mod chunk_check;
pub(crate) mod chunk_reader;
pub(crate) mod config;
pub(crate) mod config_read;
mod datastore;
pub(crate) mod error;
#[cfg(test)]
pub(crate) mod failing;
pub(crate) mod gc;
#[cfg(test)]
pub(crate) mod in_memory;
pub(crate) mod index;
pub mod key_slots;
pub mod known_stores;
pub(crate) mod lease;
mod local;
pub(crate) mod local_dir;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod objects;
pub(crate) mod packs;
pub mod remote;
pub(crate) mod repair;
mod root_check;
pub(crate) mod s3;
pub(crate) mod scratch;
pub(crate) mod seam;
pub(crate) mod session;
pub(crate) mod snapshot_dir;

pub(crate) use chunk_reader::ChunkReader;
pub use config_read::{config_keys, read_config};
pub use datastore::{Access, NewStoreKey, Store};
pub(crate) use error::io_err;
pub use error::StoreError;
pub(crate) use index::{ChunkLocation, IndexError};
pub use local_dir::write_durably;
pub(crate) use seam::{BatchItem, Catalogue, ChunkSink, ChunkSource, Repository};
pub(crate) use session::remove_rebuild_leftovers;
