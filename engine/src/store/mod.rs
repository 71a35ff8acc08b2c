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

pub mod address;
pub mod aws_credentials;
pub mod backend;
pub mod backup_session;
pub mod cached;
pub mod catalog;
pub mod chunk_cache;
pub(crate) mod chunk_check;
pub mod chunk_reader;
pub mod config;
pub mod config_read;
mod datastore;
pub mod error;
pub mod failing;
pub mod gc;
#[cfg(test)]
pub(crate) mod in_memory;
pub mod index;
pub mod key_slots;
pub mod known_stores;
pub mod lease;
mod local;
pub mod local_dir;
pub mod memory;
pub mod objects;
pub mod packs;
pub mod remote;
pub mod repair;
mod root_check;
pub mod s3;
pub mod scratch;
pub mod seam;
pub mod session;
pub mod snapshot_dir;

pub use chunk_reader::ChunkReader;
pub use config::{
    StoreConfig, LEGACY_PROTECTED_STORE_VERSION, PROTECTED_STORE_VERSION, STORE_FORMAT, STORE_VERSION,
};
pub use config_read::{config_keys, read_config};
pub use datastore::{Access, NewStoreKey, Store};
pub(crate) use error::io_err;
pub use error::StoreError;
pub use index::{ChunkIndex, ChunkLocation, IndexError};
pub use local_dir::write_durably;
pub use seam::{BatchItem, Catalogue, ChunkCheck, ChunkSink, ChunkSource, Protected, Rejected, Repository};
pub(crate) use session::remove_rebuild_leftovers;
