//! A store in a bucket, used through its cache directory: the cache's
//! [`LocalObjects`] decorated with the bucket (rustic's `CachedBackend`
//! turned around: here the cache is the local store and the bucket the
//! authority). Every write goes to the bucket first, under the writer
//! lease, then to the cache; reads come from the cache, which opening and
//! taking the lease bring up to date ([`Remote`]'s sync).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::ObjectBackend;
use super::error::StoreError;
use super::index::ChunkIndex;
use super::objects::{LocalObjects, ObjectKind, StoreObjects};
use super::remote::Remote;
use crate::format::snapshot::SnapshotName;

/// A store in a bucket through its cache directory: the cache's
/// [`LocalObjects`], decorated. Writes go to the bucket first (under the
/// writer lease) and to the cache after; reads come from the cache.
pub(crate) struct Cached {
    bucket: Arc<Remote>,
    cache: LocalObjects,
    root: PathBuf,
}

impl Cached {
    pub(crate) fn new(bucket: Arc<Remote>, root: &Path) -> Cached {
        Cached {
            cache: LocalObjects::new(root, bucket.backend()),
            bucket,
            root: root.to_path_buf(),
        }
    }
}

impl StoreObjects for Cached {
    fn address(&self) -> String {
        self.bucket.url.clone()
    }

    fn packs(&self) -> Arc<dyn ObjectBackend> {
        self.cache.packs()
    }

    fn put(&self, kind: ObjectKind, name: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError> {
        refuse_group_notes(kind, name)?;
        self.bucket
            .put(name, bytes.to_vec(), create_only, kind.writing(false))?;
        self.cache.put(kind, name, bytes, create_only)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        refuse_group_notes(kind, name)?;
        self.bucket.delete(name, kind.writing(true))?;
        self.cache.delete(kind, name)
    }

    fn publish_snapshot(&self, rel: &str, manifest: &[u8]) -> Result<(), StoreError> {
        self.bucket
            .publish_snapshot(rel, &self.root.join(rel), manifest)?;
        self.cache.publish_snapshot(rel, manifest)
    }

    fn forget_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let rel = format!("snapshots/{}/{}/{}", name.kind.as_str(), name.id, name.time);
        self.bucket.forget_snapshot(&rel)?;
        self.cache.forget_snapshot(name)
    }

    /// Takes this process's writer lease if it has none
    /// (`LeaseKeeper::hold`): refused while another host holds one.
    fn begin_writing(&self, what: &str) -> Result<bool, StoreError> {
        self.bucket.lease.hold(what)
    }

    fn refresh(&self, index: &ChunkIndex) -> Result<(), StoreError> {
        self.bucket.sync(&self.root, index).map(drop)
    }

    /// Nothing to do: bringing the cache up to date with the bucket (open,
    /// and taking the lease) already dropped them, from the same listing.
    fn forget_missing_packs(&self, _: &ChunkIndex) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn remove_unpublished(&self, cutoff_ns: u64) -> Result<u64, StoreError> {
        Ok(self.bucket.remove_unpublished(cutoff_ns)? + self.cache.remove_unpublished(cutoff_ns)?)
    }
}

/// Group notes live beside a group's snapshot directories, which a bucket
/// does not have (its snapshots are only objects): refused, for now.
fn refuse_group_notes(kind: ObjectKind, name: &str) -> Result<(), StoreError> {
    if kind != ObjectKind::GroupNotes {
        return Ok(());
    }
    let group = name.strip_prefix("snapshots/").unwrap_or(name);
    let group = group.rsplit_once('/').map_or(group, |(g, _)| g);
    Err(StoreError::GroupNotesInBucket(group.to_string()))
}
