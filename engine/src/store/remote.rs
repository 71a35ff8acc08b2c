//! A store kept in an S3 bucket, used through a local cache directory.
//!
//! The bucket (under the URL's prefix) holds everything that is the store:
//!
//! ```text
//! config.json                 the store's config (written last at init)
//! keys/NAME.key               key slots
//! packs/XX/ID.pack            packs, uploaded whole, create-only
//! snapshots/KIND/ID/TIME/     index files, then manifest.json; protected,
//!                             verify.json
//! leases/CACHE.PID-RAND       writer leases (below)
//! ```
//!
//! The cache directory is laid out as a local store whose config, keys and
//! snapshots are copies, whose RocksDB index is built from the packs'
//! trailers, plus `remote.json` naming the bucket. Every write goes to the
//! bucket first and to the cache after; every open brings the cache up to
//! date with the bucket (a LIST per prefix, a ranged GET per pack it has not
//! indexed), so a deleted cache is rebuilt and one that another host's
//! writes made stale catches up. The cache can be deleted at any time.
//!
//! Who writes: the processes of one cache directory at a time. A writer
//! holds a lease object, refreshed every two minutes; a writer of another
//! cache refuses to start while a lease of a different cache is younger
//! than ten minutes. Processes of one cache share its index and locks, as
//! on a local store, so they may write at once.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backend::{ObjectBackend, ObjectInfo};
use super::error::{io_err, StoreError};
use super::index::{ChunkIndex, ChunkLocation};
use super::lease::{LeaseKeeper, LeasedBackend};
use super::local_dir::write_durably;
use super::objects::ObjectKind;
use super::packs;
use super::s3::{S3Backend, S3Url};
use super::snapshot_dir::{self, PROTECTED_FILE};
use crate::format::notes::NOTES_FILE;
use crate::format::pack::read_listing;
use crate::format::snapshot::MANIFEST_FILE;
use crate::format::task_log::TASK_LOG_FILE;
use crate::format::verify_state::VERIFY_FILE;

/// In a cache directory: which bucket it caches.
pub const REMOTE_FILE: &str = "remote.json";
/// How much of a pack's end one GET fetches when indexing it: its trailer
/// (24 bytes an entry) whole for packs of up to ~10,000 records.
const TAIL_GUESS: u64 = 256 << 10;

/// The default cache directory of the store at `url`:
/// `$XDG_CACHE_HOME/hoard/` (or `~/.cache/hoard/`) + a hash of the URL.
pub fn default_cache_dir(url: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let hash = blake3::hash(url.trim_end_matches('/').as_bytes()).to_hex();
    base.join("hoard").join(&hash.as_str()[..16])
}

/// Per-request timeout: `HOARD_S3_TIMEOUT` seconds, 30 by default.
fn request_timeout() -> Duration {
    std::env::var("HOARD_S3_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(30), Duration::from_secs_f64)
}

#[derive(Serialize, Deserialize)]
struct RemoteFile {
    url: String,
    /// Names this cache in lease objects.
    cache_id: String,
}

/// A cache's `remote.json` at `path`.
fn parse_remote_file(path: &Path, bytes: &[u8]) -> Result<RemoteFile, StoreError> {
    let file: RemoteFile = serde_json::from_slice(bytes).map_err(|e| StoreError::BadConfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    file.url
        .parse::<S3Url>()
        .map_err(|message| StoreError::BadConfig {
            path: path.to_path_buf(),
            message,
        })?;
    Ok(file)
}

/// For the fuzz target: a `remote.json`.
#[doc(hidden)]
pub fn fuzz_remote_file(bytes: &[u8]) {
    let _ = parse_remote_file(Path::new("remote.json"), bytes);
}

pub struct Remote {
    s3: Arc<S3Backend>,
    pub(super) url: String,
    pub(super) lease: Arc<LeaseKeeper>,
}

/// What an S3 error is in a store's terms.
fn remote_err(source: io::Error) -> StoreError {
    StoreError::Remote(source)
}

impl Remote {
    /// The bucket the cache at `root` caches, if it is a cache.
    pub(crate) fn open(root: &Path) -> Result<Option<Arc<Remote>>, StoreError> {
        let path = root.join(REMOTE_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let file = parse_remote_file(&path, &bytes)?;
        Ok(Some(Arc::new(Remote::connect(&file.url, file.cache_id, root)?)))
    }

    fn connect(url: &str, cache_id: String, root: &Path) -> Result<Remote, StoreError> {
        let parsed: S3Url = url.parse().map_err(|message| StoreError::BadConfig {
            path: root.join(REMOTE_FILE),
            message,
        })?;
        let spool = root.join("tmp").join("spool");
        let s3 =
            Arc::new(S3Backend::new(parsed, spool.clone(), request_timeout(), None).map_err(io_err(&spool))?);
        Ok(Remote {
            lease: Arc::new(LeaseKeeper::new(s3.clone(), url, &cache_id)),
            s3,
            url: url.to_string(),
        })
    }

    /// The packs' backend: the bucket, changed only under the lease.
    pub(super) fn backend(&self) -> Arc<dyn ObjectBackend> {
        Arc::new(LeasedBackend {
            s3: self.s3.clone(),
            keeper: self.lease.clone(),
        })
    }

    /// Writes `name` in the bucket under this process's lease.
    pub(super) fn put(
        &self,
        name: &str,
        bytes: Vec<u8>,
        create_only: bool,
        what: &str,
    ) -> Result<(), StoreError> {
        // A new object answered after the lease lapsed may have landed
        // after another host took over: it is withdrawn (a manifest so
        // never publishes a snapshot whose chunks that host collected).
        self.lease.fenced(
            what,
            || self.s3.put(name, bytes, create_only),
            || {
                if create_only {
                    let _ = self.s3.delete(name);
                }
            },
        )
    }

    /// Deletes `name` from the bucket under this process's lease.
    pub(super) fn delete(&self, name: &str, what: &str) -> Result<(), StoreError> {
        let delete = || match self.s3.delete(name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        self.lease.fenced(what, delete, || ())
    }

    /// Uploads a snapshot's files, `manifest` last: the snapshot exists in
    /// the bucket once its manifest does.
    pub(super) fn publish_snapshot(&self, rel: &str, dir: &Path, manifest: &[u8]) -> Result<(), StoreError> {
        let what = ObjectKind::Manifest.writing(false);
        for e in fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == MANIFEST_FILE || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let bytes = fs::read(e.path()).map_err(io_err(&e.path()))?;
            self.put(&format!("{rel}/{name}"), bytes, true, what)?;
        }
        crate::failpoint::hit("remote-indexes-uploaded");
        self.put(&format!("{rel}/{MANIFEST_FILE}"), manifest.to_vec(), true, what)
    }

    /// Removes a snapshot from the bucket, its manifest first.
    pub(super) fn forget_snapshot(&self, rel: &str) -> Result<(), StoreError> {
        let what = ObjectKind::Manifest.writing(true);
        self.delete(&format!("{rel}/{MANIFEST_FILE}"), what)?;
        for o in self.s3.list(&format!("{rel}/")).map_err(remote_err)? {
            self.delete(&o.name, what)?;
        }
        Ok(())
    }

    /// Brings the cache at `root` up to date with the bucket.
    pub(super) fn sync(&self, root: &Path, index: &ChunkIndex) -> Result<SyncReport, StoreError> {
        let mut report = SyncReport::default();
        self.sync_keys(root)?;
        self.sync_snapshots(root, &mut report)?;
        self.sync_packs(index, &mut report)?;
        Ok(report)
    }

    fn fetch(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.s3.get(name).map_err(remote_err)?.to_vec())
    }

    fn sync_keys(&self, root: &Path) -> Result<(), StoreError> {
        let dir = root.join("keys");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let listed = self.s3.list("keys/").map_err(remote_err)?;
        for o in &listed {
            let local = root.join(&o.name);
            if !same_file(&local, o.size, o.modified_ns) {
                write_durably(&local, &self.fetch(&o.name)?)?;
            }
        }
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = format!("keys/{}", e.file_name().to_string_lossy());
            if name.ends_with(".key") && !listed.iter().any(|o| o.name == name) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// The objects under `snapshots/`, by snapshot directory, and whether
    /// each has its manifest.
    fn snapshot_objects(&self) -> Result<BTreeMap<String, (bool, Vec<ObjectInfo>)>, StoreError> {
        let mut dirs: BTreeMap<String, (bool, Vec<ObjectInfo>)> = BTreeMap::new();
        for o in self.s3.list("snapshots/").map_err(remote_err)? {
            if let Some((dir, file)) = o.name.rsplit_once('/') {
                let entry = dirs.entry(dir.to_string()).or_default();
                entry.0 |= file == MANIFEST_FILE;
                entry.1.push(o);
            }
        }
        Ok(dirs)
    }

    /// Deletes the files of snapshots that never got their manifest (an
    /// upload that failed or was killed, a forget killed half-way) once all
    /// of them are older than `cutoff_ns` by the listing's times: a backup
    /// still uploading is younger. Returns how many it removed.
    pub(super) fn remove_unpublished(&self, cutoff_ns: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (_, (published, files)) in self.snapshot_objects()? {
            if published || files.iter().any(|f| f.modified_ns >= cutoff_ns) {
                continue;
            }
            for f in &files {
                self.delete(&f.name, "removing an unpublished snapshot")?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    fn sync_snapshots(&self, root: &Path, report: &mut SyncReport) -> Result<(), StoreError> {
        // A snapshot without its manifest is still being uploaded, or its
        // upload failed: not a snapshot.
        let remote: BTreeMap<String, Vec<ObjectInfo>> = self
            .snapshot_objects()?
            .into_iter()
            .filter_map(|(dir, (published, files))| published.then_some((dir, files)))
            .collect();
        for (rel, files) in &remote {
            let local = root.join(rel);
            if !local.join(MANIFEST_FILE).exists() {
                self.download_snapshot(root, &local, files)?;
                report.snapshots_fetched += 1;
                continue;
            }
            for small in [PROTECTED_FILE, VERIFY_FILE, TASK_LOG_FILE, NOTES_FILE] {
                let path = local.join(small);
                match files.iter().find(|f| f.name.ends_with(&format!("/{small}"))) {
                    Some(f) if !same_file(&path, f.size, f.modified_ns) => {
                        write_durably(&path, &self.fetch(&f.name)?)?
                    }
                    Some(_) => {}
                    None if path.exists() => fs::remove_file(&path).map_err(io_err(&path))?,
                    None => {}
                }
            }
        }
        let snapshots = root.join("snapshots");
        for name in snapshot_dir::list(&snapshots)? {
            let dir = name.dir(&snapshots);
            let rel = format!("snapshots/{}/{}/{}", name.kind.as_str(), name.id, name.time);
            if !remote.contains_key(&rel) {
                // Forgotten in the bucket (by another host, or by a forget
                // of this one that was killed before it reached the cache).
                let doomed = root.join("tmp").join(format!("forget-{}", uuid::Uuid::new_v4()));
                fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
                let _ = fs::remove_dir_all(&doomed);
                report.snapshots_dropped += 1;
            }
        }
        Ok(())
    }

    /// Fetches a snapshot's files into a scratch directory and renames it
    /// into place, so the cache never shows half of one.
    fn download_snapshot(&self, root: &Path, local: &Path, files: &[ObjectInfo]) -> Result<(), StoreError> {
        let scratch = root.join("tmp").join(format!("fetch-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
        let result = (|| {
            for f in files {
                let file = f.name.rsplit_once('/').map_or(f.name.as_str(), |(_, n)| n);
                let path = scratch.join(file);
                fs::write(&path, self.fetch(&f.name)?).map_err(io_err(&path))?;
            }
            let parent = local.parent().expect("snapshot dir has a parent");
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            // Another process of this cache may have got there first, or a
            // backup of this one is publishing it: theirs stays.
            if fs::rename(&scratch, local).is_err() && !local.join(MANIFEST_FILE).exists() {
                let _ = fs::remove_dir_all(local);
                fs::rename(&scratch, local).map_err(io_err(local))?;
            }
            Ok(())
        })();
        let _ = fs::remove_dir_all(&scratch);
        result
    }

    /// Indexes the packs the cache has not seen (one ranged GET of each
    /// one's trailer) and drops the entries of packs that are gone.
    fn sync_packs(&self, index: &ChunkIndex, report: &mut SyncReport) -> Result<(), StoreError> {
        // Notes first: a pack noted before the listing was sealed before
        // it, so it is listed unless it really is gone.
        let known = index.indexed_packs()?;
        let listed = packs::list_sealed(self.s3.as_ref())?;
        let present: HashSet<_> = listed.iter().map(|(id, _)| *id).collect();
        let gone: HashSet<_> = known.difference(&present).copied().collect();
        if !gone.is_empty() {
            index.forget_packs(&gone)?;
            report.packs_dropped += gone.len();
        }
        for (id, o) in listed.iter().filter(|(id, _)| !known.contains(id)) {
            let tail = self
                .s3
                .get_tail(&o.name, o.size, TAIL_GUESS)
                .map_err(remote_err)?;
            let tail_at = o.size - tail.len() as u64;
            let read = |buf: &mut [u8], at: u64| -> io::Result<()> {
                if at >= tail_at {
                    let from = (at - tail_at) as usize;
                    let part = tail
                        .get(from..from + buf.len())
                        .ok_or(io::ErrorKind::UnexpectedEof)?;
                    buf.copy_from_slice(part);
                    Ok(())
                } else {
                    self.s3.open(&o.name)?.read_at(buf, at)
                }
            };
            let loc = |offset, record_len, raw_len| ChunkLocation {
                pack: *id,
                offset,
                record_len,
                raw_len,
            };
            let entries: Vec<_> = match read_listing(read, o.size).map_err(remote_err)? {
                Some(listing) => listing
                    .iter()
                    .map(|l| (l.digest, loc(l.offset, l.record_len, l.raw_len)))
                    .collect(),
                // No intact trailer: walk the pack's records instead (one
                // GET of all of it), so that what it holds stays indexed
                // and GC never takes it for a pack nobody references.
                None => {
                    report.packs_walked.push(o.name.clone());
                    packs::scan(self.s3.as_ref(), *id)?
                        .records
                        .iter()
                        .map(|(offset, h)| (h.digest, loc(*offset, h.record_len() as u32, h.raw_len)))
                        .collect()
                }
            };
            index.commit_pack(*id, &entries)?;
            report.packs_indexed += 1;
        }
        Ok(())
    }
}

/// Whether the cached copy at `path` is the listed object: same size, and
/// not older than it.
fn same_file(path: &Path, size: u64, modified_ns: u64) -> bool {
    let Ok(m) = fs::metadata(path) else { return false };
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    m.len() == size && mtime >= modified_ns
}

/// What bringing a cache up to date did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub snapshots_fetched: usize,
    pub snapshots_dropped: usize,
    pub packs_indexed: usize,
    pub packs_dropped: usize,
    /// Packs without an intact trailer, indexed by walking their records
    /// (`hoard check` and `hoard verify` say what is wrong with them).
    pub packs_walked: Vec<String>,
}

/// Connects a cache directory `cache` to the store at `url`: creates it
/// from the bucket's config if it is absent or empty, checks that it
/// caches `url` if not. The next [`super::Store::open`] fills it.
pub fn attach(url: &str, cache: &Path) -> Result<(), StoreError> {
    let remote_file = cache.join(REMOTE_FILE);
    if let Ok(bytes) = fs::read(&remote_file) {
        let file = parse_remote_file(&remote_file, &bytes)?;
        if file.url.trim_end_matches('/') != url.trim_end_matches('/') {
            return Err(StoreError::BadConfig {
                path: remote_file,
                message: format!(
                    "this cache belongs to {}, not {url}: give another --cache-dir",
                    file.url
                ),
            });
        }
        return Ok(());
    }
    if fs::read_dir(cache).is_ok_and(|mut d| d.next().is_some()) {
        return Err(StoreError::NotEmpty(cache.to_path_buf()));
    }
    let existed = cache.exists();
    let config = Remote::connect(url, String::new(), cache).and_then(|remote| {
        let config = match remote.s3.get("config.json") {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(PathBuf::from(url)));
            }
            Err(e) => return Err(remote_err(e)),
        };
        super::config_read::parse_config(Path::new(url), &config)?;
        Ok(config)
    });
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            // Leave the cache as it was (absent or empty), so that `init`
            // can still make the store there.
            let _ = fs::remove_dir_all(cache.join("tmp"));
            if !existed {
                let _ = fs::remove_dir(cache);
            }
            return Err(e);
        }
    };
    make_cache(cache)?;
    write_remote_file(cache, url)?;
    write_durably(&cache.join("config.json"), &config)
}

/// The directories of an empty cache, private to its owner.
fn make_cache(cache: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    for sub in ["", "snapshots", "tmp", "keys"] {
        let p = cache.join(sub);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(io_err(&p))?;
    }
    ChunkIndex::create(&cache.join("index"))?;
    Ok(())
}

fn write_remote_file(cache: &Path, url: &str) -> Result<(), StoreError> {
    let file = RemoteFile {
        url: url.trim_end_matches('/').to_string(),
        cache_id: uuid::Uuid::new_v4().simple().to_string(),
    };
    write_durably(
        &cache.join(REMOTE_FILE),
        &serde_json::to_vec_pretty(&file).expect("remote file serialises"),
    )
}

/// Creates a new store in the bucket at `url` (under its prefix, which
/// must hold no objects) with its cache in `cache` (absent or empty):
/// the cache is made as a local store, its key slots are uploaded, and its
/// config last, create-only, so of two racing inits exactly one wins.
pub(crate) fn init(
    url: &str,
    cache: &Path,
    make_local: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    make_local(cache)?;
    let undo = |e: StoreError| {
        let _ = fs::remove_dir_all(cache);
        e
    };
    write_remote_file(cache, url).map_err(undo)?;
    let remote = Remote::open(cache).map_err(undo)?.expect("just written");
    if let Some(o) = remote.s3.list("").map_err(remote_err).map_err(undo)?.first() {
        return Err(undo(StoreError::Remote(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "cannot create a store at {url}: it already holds objects ({})",
                o.name
            ),
        ))));
    }
    let keys = cache.join("keys");
    for e in fs::read_dir(&keys)
        .map_err(io_err(&keys))
        .map_err(undo)?
        .flatten()
    {
        let name = format!("keys/{}", e.file_name().to_string_lossy());
        let bytes = fs::read(e.path()).map_err(io_err(&e.path())).map_err(undo)?;
        remote
            .put(&name, bytes, true, ObjectKind::Config.writing(false))
            .map_err(undo)?;
    }
    let config = fs::read(cache.join("config.json"))
        .map_err(io_err(cache))
        .map_err(undo)?;
    remote
        .put("config.json", config, true, ObjectKind::Config.writing(false))
        .map_err(undo)?;
    Ok(())
}
