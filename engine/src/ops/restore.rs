//! Restore of an image archive from its fixed index.
//!
//! Worker threads take extents (about 16 MiB of consecutive chunks) from a
//! shared counter; each reads and verifies (CRC, then digest) the extent's
//! chunks into one buffer and writes it, so restore runs on every core and
//! small chunks still make large writes. A file target is written under a
//! temporary name and renamed over TARGET only when complete and fsynced;
//! zero chunks, and 4 KiB blocks of zeros inside chunks, stay holes. A
//! block device gets every byte, zeros too, and only verified bytes.
//!
//! Chunks are written with O_DIRECT from aligned buffers where the file
//! system allows it: buffered writes of a whole disk serialise on the inode
//! lock and pay a page-cache copy, and everything must reach the disk before
//! the final fsync anyway.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::chunking::digest::{is_zero, ZeroChunks};
use crate::direct_io::{AlignedBuf, Direct};
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::fixed_index::FixedIndex;
use crate::progress::Progress;
use crate::source::{FileSource, ImageSource};
use crate::store::{BatchItem, Repository, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("{0} exists; use --force to overwrite it")]
    TargetExists(PathBuf),
    #[error("{0} is a directory: an image is restored into a file or a block device; give a file name inside it, e.g. {0}/NAME.img")]
    TargetIsDirectory(PathBuf),
    #[error("{path} is {what}: an image is restored into a block device (in place), a regular file (new, or replaced with --force) or `-` (standard output); nothing was written")]
    TargetUnsupported { path: PathBuf, what: String },
    #[error("{0}: no such directory to restore into")]
    NoSuchDirectory(PathBuf),
    #[error("{path}: block device is {device} bytes, the image needs {image}")]
    DeviceTooSmall { path: PathBuf, device: u64, image: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("archive {archive}, chunk at offset {offset}: {source}")]
    Chunk {
        archive: String,
        offset: u64,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for RestoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            RestoreError::TargetExists(_)
            | RestoreError::TargetIsDirectory(_)
            | RestoreError::TargetUnsupported { .. }
            | RestoreError::DeviceTooSmall { .. } => ErrorKind::Invalid,
            RestoreError::NoSuchDirectory(_) => ErrorKind::NotFound,
            RestoreError::Io { source, .. } => io_kind(source),
            RestoreError::Chunk { source, .. } | RestoreError::Store(source) => source.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            RestoreError::TargetExists(path)
            | RestoreError::TargetIsDirectory(path)
            | RestoreError::TargetUnsupported { path, .. }
            | RestoreError::NoSuchDirectory(path)
            | RestoreError::DeviceTooSmall { path, .. }
            | RestoreError::Io { path, .. } => Context::path(path),
            RestoreError::Chunk { offset, source, .. } => source.context().offset(*offset),
            RestoreError::Store(e) => e.context(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RestoreReport {
    pub bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub seconds: f64,
    /// With `ignore_missing`: the ranges filled with zeros instead of data.
    pub missing: Vec<MissingRange>,
    /// Temporary files of killed restores to the same target, removed.
    pub leftovers_removed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MissingRange {
    pub offset: u64,
    pub len: u64,
    pub digest: String,
    pub reason: String,
}

pub struct RestoreOptions {
    pub force: bool,
    /// Workers; 0 means two per core (a worker waits for its O_DIRECT
    /// write to reach the disk, and another can decompress meanwhile).
    pub threads: usize,
    /// Fill chunks that are missing or damaged with zeros and list them,
    /// instead of stopping.
    pub ignore_missing: bool,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Restores the image described by `index` (named `archive` in messages) to `target`.
pub fn restore_image(
    store: &dyn Repository,
    index: &FixedIndex,
    archive: &str,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> crate::Result<RestoreReport> {
    store.require_key("restore").map_err(RestoreError::Store)?;
    let _reading = store.hold_reads(&format!("restore {archive}"));
    let started = Instant::now();
    let size = index.header().image_size;
    let is_device = classify(target, opts.force)?;
    // A file target is built beside TARGET and renamed into place at the end.
    let out_path = if is_device {
        let device = FileSource::open(target)
            .and_then(|s| s.size())
            .map_err(io_err(target))?;
        if device < size {
            return Err(RestoreError::DeviceTooSmall {
                path: target.into(),
                device,
                image: size,
            }
            .into());
        }
        target.to_path_buf()
    } else {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        target.with_file_name(format!("{}{}", temp_prefix(&name), std::process::id()))
    };
    let leftovers = if is_device {
        Vec::new()
    } else {
        remove_dead_temp_files(target)
    };
    crate::failpoint::pause("restore-started");
    let result = Target::open(&out_path, is_device, size).and_then(|out| {
        let report = write_chunks(store, index, archive, &out, opts, progress)?;
        out.buffered.sync_all().map_err(io_err(&out_path))?;
        Ok((report, out))
    });
    match result {
        Ok((mut report, out)) => {
            if !is_device {
                // The directory may be writable by others: rename only the
                // file this restore wrote, not one put in its place.
                if !same_file(&out.buffered, &out_path) {
                    return Err(RestoreError::Io {
                        path: out_path,
                        source: io::Error::other("replaced by someone else while restoring; not renamed"),
                    }
                    .into());
                }
                fs::rename(&out_path, target).map_err(io_err(target))?;
            }
            report.leftovers_removed = leftovers;
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            if !is_device {
                let _ = fs::remove_file(&out_path);
            }
            Err(e.into())
        }
    }
}

/// Restores the image described by `index` (named `archive` in messages)
/// to `out` as one stream of every byte in order: `restore ... -`.
pub fn restore_image_to_stream<W: io::Write + Send>(
    store: &dyn Repository,
    index: &FixedIndex,
    archive: &str,
    out: W,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> crate::Result<RestoreReport> {
    store.require_key("restore").map_err(RestoreError::Store)?;
    let _reading = store.hold_reads(&format!("restore {archive}"));
    let started = Instant::now();
    let sink = Stream {
        state: Mutex::new(StreamState {
            out,
            written: 0,
            aborted: false,
        }),
        turn: std::sync::Condvar::new(),
    };
    let mut report = write_chunks(store, index, archive, &sink, opts, progress)?;
    let mut st = sink.state.into_inner().expect("lock poisoned");
    st.out.flush().map_err(io_err(Path::new("standard output")))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Whether a restore may write `target`, and whether it is a block device
/// (written in place). Only a block device (or a symlink to one) and a
/// regular file (replaced whole, with `force`) are written, or a new file
/// in a directory that exists: a character device, a FIFO, a socket or a
/// symlink to anything else would otherwise be replaced by a regular file
/// (as root, `/dev/null` itself).
fn classify(target: &Path, force: bool) -> Result<bool, RestoreError> {
    let exists = || {
        if force {
            Ok(())
        } else {
            Err(RestoreError::TargetExists(target.to_path_buf()))
        }
    };
    let unsupported = |what: String| RestoreError::TargetUnsupported {
        path: target.to_path_buf(),
        what,
    };
    let link = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match target.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            return match fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(false),
                _ => Err(RestoreError::NoSuchDirectory(dir.to_path_buf())),
            };
        }
        Err(e) => return Err(io_err(target)(e)),
    };
    let kind = |t: fs::FileType| {
        if t.is_block_device() {
            "a block device"
        } else if t.is_file() {
            "a regular file"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a special file"
        }
    };
    let t = link.file_type();
    if t.is_symlink() {
        // Renaming a file over a symlink would replace the link, not
        // what it points to: only a block device is written through one.
        return match fs::metadata(target) {
            Ok(m) if m.file_type().is_block_device() => exists().map(|()| true),
            Ok(m) => Err(unsupported(format!("a symlink to {}", kind(m.file_type())))),
            Err(_) => Err(unsupported("a symlink to nothing".into())),
        };
    }
    if t.is_dir() {
        return Err(RestoreError::TargetIsDirectory(target.to_path_buf()));
    }
    if t.is_block_device() || t.is_file() {
        return exists().map(|()| t.is_block_device());
    }
    Err(unsupported(kind(t).into()))
}

/// `.NAME.hoard-restore-`: what the temporary file of a restore to NAME
/// starts with, before the restoring process's PID.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.hoard-restore-")
}

/// Removes temporary files that killed restores to `target` left beside
/// it (their PID is gone); returns a message for each.
fn remove_dead_temp_files(target: &Path) -> Vec<String> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = temp_prefix(&name.to_string_lossy());
    let mut removed = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix) else {
            continue;
        };
        let dead = pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new("/proc").join(p.to_string()).exists());
        // Only regular files: unlinking never follows a symlink anyway.
        if dead && e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
            removed.push(format!(
                "removed {}, left by a killed restore",
                e.path().display()
            ));
        }
    }
    removed
}

/// Whether `path` (not followed) is still the file open as `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where a restore's extents go.
trait Sink: Sync {
    /// Writes one extent's bytes, which start at `offset` of the image.
    fn write_extent(&self, data: &[u8], offset: u64) -> Result<(), RestoreError>;
    /// Another worker failed: nobody waits for an extent any more.
    fn abort(&self) {}
}

/// Standard output (`-`): every byte, zeros too, extents in image order.
/// Workers still read and check their extents at once; each waits for its
/// turn to write, so at most one extent per worker is held.
struct Stream<W> {
    state: Mutex<StreamState<W>>,
    turn: std::sync::Condvar,
}

struct StreamState<W> {
    out: W,
    /// The image offset written up to.
    written: u64,
    aborted: bool,
}

impl<W: io::Write + Send> Sink for Stream<W> {
    fn write_extent(&self, data: &[u8], offset: u64) -> Result<(), RestoreError> {
        let mut st = self.state.lock().expect("lock poisoned");
        while st.written != offset && !st.aborted {
            st = self.turn.wait(st).expect("lock poisoned");
        }
        if st.aborted {
            return Ok(());
        }
        let r = st.out.write_all(data);
        st.written += data.len() as u64;
        self.turn.notify_all();
        r.map_err(io_err(Path::new("standard output")))
    }

    fn abort(&self) {
        self.state.lock().expect("lock poisoned").aborted = true;
        self.turn.notify_all();
    }
}

/// Where restored bytes go: the same file opened twice, with O_DIRECT (if the
/// file system supports it) for aligned chunks and buffered for the rest.
struct Target {
    path: PathBuf,
    is_device: bool,
    buffered: File,
    direct: Direct,
}

impl Target {
    fn open(path: &Path, is_device: bool, size: u64) -> Result<Target, RestoreError> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        if !is_device {
            // A new file, never one that is there (a symlink planted by
            // another user in the target's directory must not be followed),
            // and private until renamed into place.
            opts.create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let buffered = opts.open(path).map_err(io_err(path))?;
        if !is_device {
            buffered.set_len(size).map_err(io_err(path))?;
        }
        Ok(Target {
            path: path.to_path_buf(),
            is_device,
            direct: Direct::open(&buffered, true),
            buffered,
        })
    }

    /// Aligned writes go past the page cache: a restore would only fill
    /// it with data nobody reads back soon.
    fn write(&self, data: &[u8], offset: u64) -> Result<(), RestoreError> {
        match self.direct.write_all_at(data, offset) {
            Some(r) => r,
            None => self.buffered.write_all_at(data, offset),
        }
        .map_err(io_err(&self.path))
    }
}

impl Sink for Target {
    /// Writes restored bytes at `offset`. A file target starts as one
    /// hole, so its 4 KiB blocks of zeros are left unwritten: they stay
    /// holes, as in the image that was backed up, and cost no write. A
    /// device gets every byte.
    fn write_extent(&self, data: &[u8], offset: u64) -> Result<(), RestoreError> {
        if self.is_device {
            return self.write(data, offset);
        }
        for run in data_runs(data) {
            self.write(&data[run.clone()], offset + run.start as u64)?;
        }
        Ok(())
    }
}

/// Bytes a restore worker assembles from consecutive chunks before it
/// writes: small chunks still make large writes, and an extent's records
/// are read in few large requests (from a bucket, 16 MiB extents need a
/// third of the GETs of 4 MiB ones and half the server's CPU).
const EXTENT_BYTES: u64 = 16 << 20;

/// The block size below which zeros are written as data, not left as
/// holes: the page size, and the block size of the usual file systems.
const HOLE_BLOCK: usize = 4096;

/// The runs of `data` that hold a non-zero byte, in whole [`HOLE_BLOCK`]s
/// (the last one may be shorter); runs start on block boundaries, so they
/// keep O_DIRECT alignment.
fn data_runs(data: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let block = |i: usize| &data[i..(i + HOLE_BLOCK).min(data.len())];
        while at < data.len() && is_zero(block(at)) {
            at += HOLE_BLOCK;
        }
        if at >= data.len() {
            return None;
        }
        let start = at;
        while at < data.len() && !is_zero(block(at)) {
            at += HOLE_BLOCK;
        }
        Some(start..at.min(data.len()))
    })
}

fn write_chunks(
    store: &dyn Repository,
    index: &FixedIndex,
    archive: &str,
    out: &dyn Sink,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, RestoreError> {
    let size = index.header().image_size;
    let chunk_size = index.chunk_size();
    let count = index.chunk_count();
    let zeros = ZeroChunks::new(size, chunk_size.bytes());
    let next = AtomicU64::new(0);
    let zero_chunks = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(u64, RestoreError)>> = Mutex::new(None);
    let missing = Mutex::new(Vec::new());
    let threads = if opts.threads == 0 {
        2 * crate::worker_threads(0)
    } else {
        crate::worker_threads(opts.threads)
    };
    // Workers take extents of whole chunks, about EXTENT_BYTES each, and
    // write each in as few (large, aligned) writes as its data runs allow.
    let per_extent = (EXTENT_BYTES / chunk_size.bytes()).max(1);
    let extents = count.div_ceil(per_extent);
    progress.begin(archive, size);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = AlignedBuf::new((per_extent * chunk_size.bytes()) as usize);
                let mut reader = match store.reader() {
                    Ok(r) => r,
                    Err(e) => return record_error(&first_error, &failed, out, 0, e.into()),
                };
                loop {
                    let e = next.fetch_add(1, Ordering::Relaxed);
                    if e >= extents || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let chunks = e * per_extent..((e + 1) * per_extent).min(count);
                    let (start, _) = chunk_size.span(chunks.start, size);
                    let data = buf.as_mut_slice();
                    let mut filled = 0usize;
                    let mut items = Vec::with_capacity(per_extent as usize);
                    for i in chunks {
                        let len = chunk_size.span(i, size).1;
                        let digest = index.digest(i);
                        if zeros.is_zero_digest(&digest) {
                            zero_chunks.fetch_add(1, Ordering::Relaxed);
                            data[filled..filled + len].fill(0);
                        } else {
                            items.push(BatchItem {
                                digest,
                                at: filled,
                                len,
                            });
                        }
                        filled += len;
                    }
                    let read = reader.read_batch(&items, data);
                    // --bwlimit paces what a restore reads from the store.
                    crate::throttle::charge(items.iter().map(|i| i.len).sum());
                    let mut result = Ok(());
                    for (item, got) in items.iter().zip(read) {
                        let offset = start + item.at as u64;
                        result = match got {
                            Ok(n) if n == item.len => Ok(()),
                            Ok(n) => Err(RestoreError::Io {
                                path: index.path().to_path_buf(),
                                source: io::Error::other(format!(
                                    "chunk {} has {n} bytes, the index needs {}",
                                    item.digest, item.len
                                )),
                            }),
                            Err(source) if opts.ignore_missing && source.means_chunk_lost() => {
                                missing.lock().expect("lock poisoned").push(MissingRange {
                                    offset,
                                    len: item.len as u64,
                                    digest: item.digest.to_hex(),
                                    reason: source.to_string(),
                                });
                                data[item.at..item.at + item.len].fill(0);
                                Ok(())
                            }
                            Err(source) => Err(RestoreError::Chunk {
                                archive: archive.into(),
                                offset,
                                source,
                            }),
                        };
                        if result.is_err() {
                            break;
                        }
                    }
                    let written = result.and_then(|()| out.write_extent(&data[..filled], start));
                    if let Err(e) = written {
                        // A failed chunk names its own offset (RestoreError::Chunk).
                        return record_error(&first_error, &failed, out, start, e);
                    }
                    progress.advance(filled as u64);
                }
            });
        }
    });
    progress.end();
    if let Some((_, e)) = first_error.into_inner().expect("lock poisoned") {
        return Err(e);
    }
    let mut missing = missing.into_inner().expect("lock poisoned");
    missing.sort_by_key(|m| m.offset);
    Ok(RestoreReport {
        bytes: size,
        chunks: count,
        zero_chunks: zero_chunks.into_inner(),
        seconds: 0.0,
        missing,
        leftovers_removed: Vec::new(),
    })
}

/// Keeps the error at the lowest offset, so the report does not depend on
/// which worker got there first.
fn record_error(
    slot: &Mutex<Option<(u64, RestoreError)>>,
    failed: &AtomicBool,
    out: &dyn Sink,
    offset: u64,
    e: RestoreError,
) {
    failed.store(true, Ordering::Relaxed);
    out.abort();
    let mut slot = slot.lock().expect("lock poisoned");
    if slot.as_ref().is_none_or(|(o, _)| offset < *o) {
        *slot = Some((offset, e));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::snapshot::Kind;
    use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
    use crate::progress::NoProgress;
    use crate::store::Store;

    #[test]
    fn data_runs_are_the_non_zero_blocks() {
        let mut d = vec![0u8; 5 * HOLE_BLOCK + 100];
        d[HOLE_BLOCK + 7] = 1;
        d[2 * HOLE_BLOCK] = 1;
        d[5 * HOLE_BLOCK + 99] = 1;
        let runs: Vec<_> = data_runs(&d).collect();
        assert_eq!(runs, [HOLE_BLOCK..3 * HOLE_BLOCK, 5 * HOLE_BLOCK..d.len()]);
        assert_eq!(data_runs(&[0u8; 3]).count(), 0);
        assert_eq!(data_runs(&[1u8; 3]).next(), Some(0..3));
    }

    #[test]
    fn zero_blocks_inside_data_chunks_are_restored_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), ChunkSize::new(1 << 20).unwrap()).unwrap();
        // Two 1 MiB chunks, each with one 4 KiB block of data.
        let mut image = vec![0u8; 2 << 20];
        image[8192..12288].fill(0xa5);
        image[(2 << 20) - 4096..].fill(0x5a);
        let path = dir.path().join("d.img");
        fs::write(&path, &image).unwrap();
        let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&path).unwrap()));
        let m = backup_images(
            &store,
            &BackupOptions::new(Kind::Host, "h"),
            vec![input],
            &NoProgress,
        )
        .unwrap();
        let fidx = store.catalog().open_image_index(&m.name(), "d.img").unwrap();
        let target = dir.path().join("restored.img");
        let opts = RestoreOptions {
            force: false,
            threads: 0,
            ignore_missing: false,
        };
        restore_image(&store, &fidx, "d.img", &target, &opts, &NoProgress).unwrap();
        assert!(fs::read(&target).unwrap() == image);
        let allocated = fs::metadata(&target).unwrap().blocks() * 512;
        // Two data blocks, and whatever the file system rounds up to.
        assert!(allocated <= 64 * 1024, "{allocated} bytes allocated");
    }
}
