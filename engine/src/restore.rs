//! Restore of an image archive from its fixed index.
//!
//! Worker threads take chunk numbers from a shared counter and each reads,
//! verifies (CRC, then digest) and writes its chunk with pwrite, so restore
//! runs on every core. Nothing unverified is ever written. A file target is
//! written under a temporary name and renamed over TARGET only when complete;
//! zero chunks are left as holes. A block device gets every byte, zeros too.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::digest::ZeroChunks;
use crate::fixed_index::FixedIndex;
use crate::progress::Progress;
use crate::source::{FileSource, ImageSource};
use crate::store::{ChunkReader, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} exists; use --force to overwrite it")]
    TargetExists(PathBuf),
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

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RestoreReport {
    pub bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub seconds: f64,
}

pub struct RestoreOptions {
    pub force: bool,
    /// Workers; 0 means one per core.
    pub threads: usize,
}

/// Restores the image described by `index` (named `archive` in messages) to `target`.
pub fn restore_image(
    store: &Store,
    index: &FixedIndex,
    archive: &str,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let size = index.header().image_size;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    let meta = fs::metadata(target).ok();
    let is_device = meta.as_ref().is_some_and(|m| m.file_type().is_block_device());
    if meta.is_some() && !opts.force {
        return Err(RestoreError::TargetExists(target.to_path_buf()));
    }
    // A file target is built beside TARGET and renamed into place at the end.
    let (out_path, file) = if is_device {
        let f = OpenOptions::new()
            .write(true)
            .open(target)
            .map_err(io_err(target))?;
        let device = FileSource::open(target)
            .and_then(|s| s.size())
            .map_err(io_err(target))?;
        if device < size {
            return Err(RestoreError::DeviceTooSmall {
                path: target.into(),
                device,
                image: size,
            });
        }
        (target.to_path_buf(), f)
    } else {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.hoard-restore-{}", std::process::id()));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.set_len(size).map_err(io_err(&tmp))?;
        (tmp, f)
    };
    let result =
        write_chunks(store, index, archive, &file, &out_path, is_device, opts, progress).and_then(|report| {
            file.sync_all().map_err(io_err(&out_path))?;
            Ok(report)
        });
    match result {
        Ok(mut report) => {
            if !is_device {
                fs::rename(&out_path, target).map_err(io_err(target))?;
            }
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            if !is_device {
                let _ = fs::remove_file(&out_path);
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_chunks(
    store: &Store,
    index: &FixedIndex,
    archive: &str,
    file: &File,
    out_path: &Path,
    is_device: bool,
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
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    progress.begin(archive, size);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let zero_buf = vec![0u8; if is_device { chunk_size.bytes() as usize } else { 0 }];
                let mut data = Vec::with_capacity(chunk_size.bytes() as usize);
                let mut reader = match ChunkReader::new(store) {
                    Ok(r) => r,
                    Err(e) => return record_error(&first_error, &failed, 0, e.into()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let (offset, len) = chunk_size.span(i, size);
                    let digest = index.digest(i);
                    let written = if zeros.is_zero_digest(&digest) {
                        zero_chunks.fetch_add(1, Ordering::Relaxed);
                        if is_device {
                            file.write_all_at(&zero_buf[..len], offset)
                        } else {
                            Ok(())
                        }
                    } else {
                        match reader.read_into(&digest, &mut data) {
                            Ok(()) if data.len() == len => file.write_all_at(&data, offset),
                            Ok(()) => Err(io::Error::other(format!(
                                "chunk {digest} has {} bytes, the index needs {len}",
                                data.len()
                            ))),
                            Err(source) => {
                                let e = RestoreError::Chunk {
                                    archive: archive.into(),
                                    offset,
                                    source,
                                };
                                return record_error(&first_error, &failed, offset, e);
                            }
                        }
                    };
                    if let Err(source) = written {
                        let e = RestoreError::Io {
                            path: out_path.to_path_buf(),
                            source,
                        };
                        return record_error(&first_error, &failed, offset, e);
                    }
                    progress.advance(len as u64);
                }
            });
        }
    });
    progress.end();
    if let Some((_, e)) = first_error.into_inner().expect("lock poisoned") {
        return Err(e);
    }
    Ok(RestoreReport {
        bytes: size,
        chunks: count,
        zero_chunks: zero_chunks.into_inner(),
        seconds: 0.0,
    })
}

/// Keeps the error at the lowest offset, so the report does not depend on
/// which worker got there first.
fn record_error(
    slot: &Mutex<Option<(u64, RestoreError)>>,
    failed: &AtomicBool,
    offset: u64,
    e: RestoreError,
) {
    failed.store(true, Ordering::Relaxed);
    let mut slot = slot.lock().expect("lock poisoned");
    if slot.as_ref().is_none_or(|(o, _)| offset < *o) {
        *slot = Some((offset, e));
    }
}
