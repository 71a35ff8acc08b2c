//! Choosing the base of an incremental live copy: QEMU's description of a
//! node and its bitmaps, the previous backup whose bitmap may stand for
//! "everything that changed since", and the bitmaps put in order before
//! the snapshot point.

use serde::Deserialize;
use serde_json::json;

use super::block_jobs::PREFIX;
use super::error::LiveError;
use super::options::{BitmapStatus, LiveDisk};
use crate::chunking::chunker::ChunkSize;
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::{Kind, SnapshotName};
use crate::source::qmp::Qmp;
use crate::store::Repository;

#[derive(Debug, Deserialize)]
pub(super) struct NodeInfo {
    #[serde(rename = "node-name")]
    pub(super) node_name: String,
    pub(super) image: ImageInfo,
    #[serde(default, rename = "dirty-bitmaps")]
    pub(super) dirty_bitmaps: Vec<BitmapInfo>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub(super) virtual_size: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct BitmapInfo {
    pub(super) name: String,
    #[serde(default)]
    pub(super) recording: bool,
    #[serde(default)]
    pub(super) inconsistent: bool,
}

/// The previous backup of a disk that a bitmap may be measured against.
pub(super) struct Base {
    pub(super) bitmap: String,
    pub(super) fidx: FixedIndex,
}

/// The newest finished snapshot of the group.
pub(super) fn newest_snapshot(
    store: &dyn Repository,
    (kind, id): (Kind, &str),
) -> Result<Option<SnapshotName>, LiveError> {
    Ok(store
        .catalogue()
        .list()?
        .into_iter()
        .rfind(|n| n.kind == kind && n.id == id))
}

/// Whether the bitmap started by the previous backup of this disk may stand
/// for "everything that changed since": any doubt means a full read.
pub(super) fn choose_base(
    store: &dyn Repository,
    previous: Option<&SnapshotName>,
    disk: &LiveDisk,
    node: &NodeInfo,
    chunk_size: ChunkSize,
) -> (Option<Base>, BitmapStatus) {
    let invalid = |why: String| (None, BitmapStatus::Invalid(why));
    let Some(prev) = previous else {
        return (None, BitmapStatus::New);
    };
    let catalog = store.catalogue();
    let manifest = match catalog.load_manifest(prev) {
        Ok(m) => m,
        Err(e) => return invalid(format!("previous snapshot {prev} unreadable: {e}")),
    };
    let Ok(archive) = manifest.archive(&disk.archive) else {
        return (None, BitmapStatus::New);
    };
    let Some(record) = &archive.bitmap else {
        return invalid(format!(
            "previous snapshot {prev} has no bitmap for {}",
            disk.archive
        ));
    };
    if record.node != disk.node {
        return invalid(format!("previous bitmap was on node {}", record.node));
    }
    if !catalog.usable_as_base(prev) {
        return invalid(format!("previous snapshot {prev} failed verification"));
    }
    let Some(bitmap) = node.dirty_bitmaps.iter().find(|b| b.name == record.name) else {
        return invalid(format!("bitmap {} missing", record.name));
    };
    if bitmap.inconsistent {
        return invalid(format!(
            "bitmap {} inconsistent (QEMU was not shut down cleanly)",
            record.name
        ));
    }
    if archive.size != node.image.virtual_size {
        return invalid(format!(
            "disk size changed from {} to {}",
            archive.size, node.image.virtual_size
        ));
    }
    if archive.chunk_size != chunk_size.bytes() {
        return invalid(format!(
            "chunk size changed from {} to {}",
            archive.chunk_size,
            chunk_size.bytes()
        ));
    }
    let fidx = match catalog.open_fixed(prev, archive) {
        Ok(f) => f,
        Err(e) => return invalid(format!("previous index unusable: {e}")),
    };
    let h = fidx.header();
    if h.checksum.to_hex() != archive.index_checksum || h.image_size != archive.size {
        return invalid("previous index does not match its manifest".into());
    }
    (
        Some(Base {
            bitmap: record.name.clone(),
            fidx,
        }),
        BitmapStatus::New, // replaced by Dirty/Clean once the bitmap is read
    )
}

/// Puts a disk's hoard bitmaps in order before the snapshot point. With a
/// valid base, bitmaps of killed runs (started later than the base's) are
/// merged into it, and it records again: together they cover every write
/// since the base. Without one, every hoard bitmap goes.
pub(super) fn tidy_bitmaps(
    qmp: &mut Qmp,
    node: &str,
    info: &NodeInfo,
    keep: Option<&str>,
) -> Result<(), LiveError> {
    let others: Vec<&BitmapInfo> = info
        .dirty_bitmaps
        .iter()
        .filter(|b| b.name.starts_with(PREFIX) && Some(b.name.as_str()) != keep)
        .collect();
    let mut actions = Vec::new();
    if let Some(keep) = keep {
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|b| b.name.as_str()).collect();
            actions.push(json!({"type": "block-dirty-bitmap-merge",
                "data": {"node": node, "target": keep, "bitmaps": names}}));
        }
        let kept = info.dirty_bitmaps.iter().find(|b| b.name == keep);
        if kept.is_some_and(|b| !b.recording) {
            actions.push(json!({"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": keep}}));
        }
    }
    for b in others {
        actions.push(json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": b.name}}));
    }
    if !actions.is_empty() {
        qmp.transaction(actions)?;
    }
    Ok(())
}
