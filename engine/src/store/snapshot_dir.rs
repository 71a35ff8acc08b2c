//! Snapshots as directories of a local store: `snapshots/KIND/ID/TIME/`
//! holding `manifest.json` and the index files it names. A snapshot exists
//! once its manifest has been renamed into place; a directory without one
//! is an unfinished backup and is ignored. Used through [`super::catalog`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::chunking::digest::{Digest, ZeroChunks};
use crate::format::dynamic_index::DynamicIndex;
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::{
    is_tree, safe_component, split_mac, valid_time, ArchiveEntry, Kind, Manifest, SnapshotError,
    SnapshotName, MANIFEST_FILE,
};

/// What a reader can check of a manifest's MAC.
#[derive(Clone, Default)]
pub(crate) struct ManifestAuth {
    /// Signed or encrypted: the store's manifests carry MACs.
    pub protection: crate::crypto::Protection,
    /// Unlocked: MACs are checked (and written). Without the key a
    /// protected store's manifests are read unchecked, for the keyless
    /// operations (list, prune, forget, GC), which never hand out content.
    pub keys: Option<std::sync::Arc<crate::crypto::StoreKeys>>,
}

impl ManifestAuth {
    fn check(&self, path: &Path, mac: Option<[u8; 32]>, text: &[u8]) -> Result<(), SnapshotError> {
        let unauthenticated = |why| SnapshotError::Unauthenticated {
            path: path.to_path_buf(),
            why,
        };
        match (&self.keys, mac) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(unauthenticated("it has no MAC, and this store's manifests must")),
            (Some(k), Some(mac)) if k.verify_mac(text, &mac) => Ok(()),
            (Some(_), Some(_)) => Err(unauthenticated(
                "its MAC does not match (changed, or written with another key)",
            )),
        }
    }
}

pub(crate) fn load_manifest(
    snapshots_dir: &Path,
    name: &SnapshotName,
    auth: &ManifestAuth,
) -> Result<Manifest, SnapshotError> {
    let path = name.dir(snapshots_dir).join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SnapshotError::NotFound(name.to_string()),
        _ => SnapshotError::Io {
            path: path.clone(),
            source: e,
        },
    })?;
    let (mac, text) = split_mac(&bytes);
    auth.check(&path, mac, &text)?;
    let m = Manifest::from_bytes(&path, &text)?;
    if m.name() != *name {
        return Err(SnapshotError::BadManifest {
            path,
            message: format!("manifest names {}", m.name()),
        });
    }
    Ok(m)
}

fn subdirs(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SnapshotError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Creates the directory of a new snapshot of group `kind/id` under
/// `snapshots_dir`, named for the current second (waiting for the next one
/// if a snapshot of the group has it).
pub(crate) fn create(
    snapshots_dir: &Path,
    kind: Kind,
    id: &str,
) -> Result<(SnapshotName, PathBuf), SnapshotError> {
    loop {
        let name = SnapshotName {
            kind,
            id: id.to_string(),
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        match create_named(snapshots_dir, &name) {
            Ok(dir) => return Ok((name, dir)),
            Err(SnapshotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the directory of snapshot `name` (named by this host's clock,
/// or by a client of the server); an existing one (published or being
/// written) is refused.
pub(crate) fn create_named(snapshots_dir: &Path, name: &SnapshotName) -> Result<PathBuf, SnapshotError> {
    let dir = name.dir(snapshots_dir);
    let parent = dir.parent().expect("snapshot dir has a parent");
    fs::create_dir_all(parent).map_err(|source| SnapshotError::Io {
        path: parent.into(),
        source,
    })?;
    fs::create_dir(&dir).map_err(|source| SnapshotError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Every finished snapshot, sorted by kind, id and time.
pub(crate) fn list(snapshots_dir: &Path) -> Result<Vec<SnapshotName>, SnapshotError> {
    let mut out = Vec::new();
    for kind in [Kind::Ct, Kind::Host, Kind::Vm] {
        let kdir = snapshots_dir.join(kind.as_str());
        for id in subdirs(&kdir)?.into_iter().filter(|i| safe_component(i)) {
            for time in subdirs(&kdir.join(&id))?.into_iter().filter(|t| valid_time(t)) {
                let name = SnapshotName {
                    kind,
                    id: id.clone(),
                    time,
                };
                if name.dir(snapshots_dir).join(MANIFEST_FILE).is_file() {
                    out.push(name);
                }
            }
        }
    }
    Ok(out)
}

/// Whether snapshot `name` is published (its manifest is in place).
pub(crate) fn is_published(snapshots_dir: &Path, name: &SnapshotName) -> bool {
    name.dir(snapshots_dir).join(MANIFEST_FILE).is_file()
}

/// Opens an image archive's fixed index after checking that it is the one
/// the manifest describes (size, chunk size, checksum of its digests): a
/// swapped or stale index is refused, not read.
pub(crate) fn open_fixed(dir: &Path, a: &ArchiveEntry) -> Result<FixedIndex, SnapshotError> {
    let path = dir.join(&a.index);
    let fidx = FixedIndex::open(&path)?;
    let h = fidx.header();
    if h.image_size != a.size || h.chunk_size != a.chunk_size || h.checksum.to_hex() != a.index_checksum {
        return Err(SnapshotError::IndexMismatch(path));
    }
    Ok(fidx)
}

/// The dynamic indexes of a tree archive's streams (metadata, then
/// payload), each checked against the manifest.
pub(crate) fn open_streams(dir: &Path, a: &ArchiveEntry) -> Result<Vec<DynamicIndex>, SnapshotError> {
    let meta = (a.index.as_str(), a.size, a.index_checksum.as_str());
    let payload = a
        .payload
        .as_ref()
        .map(|p| (p.index.as_str(), p.size, p.index_checksum.as_str()));
    let mut out = Vec::with_capacity(2);
    for (index, size, checksum) in std::iter::once(meta).chain(payload) {
        let path = dir.join(index);
        let didx = DynamicIndex::open(&path)?;
        if didx.header().size != size || didx.header().checksum.to_hex() != checksum {
            return Err(SnapshotError::IndexMismatch(path));
        }
        out.push(didx);
    }
    Ok(out)
}

/// Calls `f(archive, offset, digest)` for every non-zero chunk of every
/// archive of a snapshot (`dir` is the snapshot directory), after checking
/// each index file against the manifest. The one place that knows how an
/// archive lists its chunks, for verify and GC alike.
pub(crate) fn for_each_chunk<E: From<SnapshotError>>(
    dir: &Path,
    manifest: &Manifest,
    mut f: impl FnMut(&ArchiveEntry, u64, Digest) -> Result<(), E>,
) -> Result<(), E> {
    for a in &manifest.archives {
        if is_tree(&a.name) {
            // Metadata chunks first, then payload chunks (offsets per stream).
            for didx in open_streams(dir, a)? {
                for i in 0..didx.chunk_count() {
                    f(a, didx.start(i), didx.digest(i))?;
                }
            }
            continue;
        }
        let fidx = open_fixed(dir, a)?;
        let h = fidx.header();
        let zeros = ZeroChunks::new(h.image_size, h.chunk_size);
        for i in 0..fidx.chunk_count() {
            let d = fidx.digest(i);
            if !zeros.is_zero_digest(&d) {
                f(a, i * h.chunk_size, d)?;
            }
        }
    }
    Ok(())
}

/// Marker file: a protected snapshot is never pruned or forgotten (what
/// counts as one: `Catalog::protection`).
pub(crate) const PROTECTED_FILE: &str = "protected";

/// Removes a snapshot. It disappears at once (its directory is renamed into
/// `scratch` first), so a crash never leaves half a snapshot visible.
/// The caller has checked that it is not protected.
pub(crate) fn forget(snapshots_dir: &Path, scratch: &Path, name: &SnapshotName) -> Result<(), SnapshotError> {
    let dir = name.dir(snapshots_dir);
    let doomed = scratch.join(format!("forget-{}", uuid::Uuid::new_v4()));
    match fs::rename(&dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotFound(name.to_string()))
        }
        Err(source) => return Err(SnapshotError::Io { path: dir, source }),
    }
    crate::failpoint::hit("forget-hidden");
    let parent = dir.parent().expect("snapshot dir has a parent");
    crate::store::local_dir::sync_dir(parent).map_err(|source| SnapshotError::Io {
        path: parent.into(),
        source,
    })?;
    crate::failpoint::hit("forget-synced");
    match fs::remove_dir_all(&doomed) {
        // GC clears hidden snapshots of killed forgets and may get there first.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SnapshotError::Io {
            path: doomed,
            source: e,
        }),
        _ => Ok(()),
    }
}
