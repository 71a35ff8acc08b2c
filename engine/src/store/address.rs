//! Which backend a store's address names: the one place that knows.
//!
//! A directory with a `remote.json` is the cache of a store in a bucket
//! ([`Cached`]); any other store directory is a store of its own
//! ([`LocalObjects`]). A remote server's client will be one more arm here.

use std::path::Path;
use std::sync::Arc;

use super::cached::Cached;
use super::error::StoreError;
use super::local_dir::LocalDir;
use super::objects::{LocalObjects, StoreObjects};
use super::remote::Remote;

/// The objects of the store whose directory (or cache directory) is
/// `root`: the backend its address names, chosen here once.
pub(crate) fn open(root: &Path) -> Result<Arc<dyn StoreObjects>, StoreError> {
    Ok(match Remote::open(root)? {
        Some(bucket) => Arc::new(Cached::new(bucket, root)),
        None => Arc::new(LocalObjects::new(root, Arc::new(LocalDir::new(root)))),
    })
}
