//! Sources of image bytes: regular files and block devices (pread).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct_io::Direct;

/// A random-access byte source whose size is fixed for one backup. Later
/// sources (NBD exports of a live VM) implement this too.
pub trait ImageSource: Send + Sync {
    /// Human-readable origin, used in messages.
    fn describe(&self) -> String;
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The largest piece a backup worker should ask for at once; it hashes
    /// each piece right after reading it. Local files: small pieces that stay
    /// in the CPU cache. Network sources: whole chunks, so that many requests
    /// are in flight.
    fn preferred_read(&self) -> usize {
        256 * 1024
    }
    /// How many reads should be in flight at once to hide the source's
    /// latency; backups use at least this many workers when the thread count
    /// is automatic. Local files: one per core is plenty.
    fn reads_in_flight(&self) -> usize {
        1
    }
    /// Byte ranges `(offset, len)` known to read as zeros without being
    /// read (a sparse file's holes), sorted; empty if the source cannot
    /// tell. A backup does not read the chunks that lie inside them.
    fn holes(&self, _size: u64) -> io::Result<Vec<(u64, u64)>> {
        Ok(Vec::new())
    }
    /// Whether a backup reads this source ahead of its workers, in large
    /// blocks on a few threads ([`read_block`](Self::read_block)): local
    /// files and devices, where a few large reads keep the disk busy.
    /// Network sources want many chunk-sized reads in flight instead.
    fn reads_ahead(&self) -> bool {
        false
    }
    /// Fills `buf` (aligned to 4 KiB, its length a multiple of that) from
    /// `offset` for the read-ahead; returns less than `buf.len()` only at
    /// the end. A local file reads past the page cache where it can.
    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        fill(buf, offset, |piece, at| self.read_at(piece, at))
    }
}

/// A regular file or block device.
pub struct FileSource {
    path: PathBuf,
    file: File,
    direct: Direct,
}

impl FileSource {
    pub fn open(path: &Path) -> io::Result<FileSource> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory, not an image",
            ));
        }
        Ok(FileSource {
            path: path.to_path_buf(),
            direct: Direct::open(&file, false),
            file,
        })
    }
}

impl ImageSource for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> io::Result<u64> {
        // Seeking to the end works for both files and block devices, whose
        // metadata length is 0.
        (&self.file).seek(SeekFrom::End(0))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    /// With O_DIRECT: the read-ahead's blocks are read once, so caching
    /// them costs CPU (allocating pages, copying out of them) for nothing,
    /// and it was the largest cost of a cold backup. Pages that are cached
    /// and dirty are written back by the kernel first, so the bytes are
    /// the same.
    fn read_block(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        fill(buf, offset, |piece, at| {
            self.direct
                .read_at(piece, at)
                .unwrap_or_else(|| self.read_at(piece, at))
        })
    }

    /// A regular file's holes, from SEEK_DATA/SEEK_HOLE; none for a block
    /// device or a file system that does not report them.
    fn holes(&self, size: u64) -> io::Result<Vec<(u64, u64)>> {
        if !self.file.metadata()?.is_file() {
            return Ok(Vec::new());
        }
        let seek = |offset: u64, whence| {
            // SAFETY: lseek on a descriptor this source owns; it moves only
            // the offset, which read_at (pread) does not use.
            let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as u64)
            }
        };
        let mut holes = Vec::new();
        let mut pos = 0;
        while pos < size {
            let data = match seek(pos, libc::SEEK_DATA) {
                Ok(d) => d.min(size),
                // No data after pos: a hole to the end.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => size,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            if data > pos {
                holes.push((pos, data - pos));
            }
            if data >= size {
                break;
            }
            pos = seek(data, libc::SEEK_HOLE)?;
        }
        Ok(holes)
    }
}

/// Fills `buf` from `offset`; returns how many bytes were available (less
/// than `buf.len()` only when the source ended early).
pub(crate) fn read_full(src: &dyn ImageSource, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    fill(buf, offset, |piece, at| src.read_at(piece, at))
}

/// Fills `buf` from `offset` by calling `read` (a pread) until it is full
/// or `read` returns 0; returns how many bytes were read.
fn fill(
    buf: &mut [u8],
    offset: u64,
    read: impl Fn(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

pub(crate) mod nbd;
pub(crate) mod qga;
pub(crate) mod qmp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_reports_its_holes_and_a_full_one_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 3 << 20).unwrap();
        f.sync_all().unwrap();
        let src = FileSource::open(&path).unwrap();
        let holes = src.holes(8 << 20).unwrap();
        // Allocation granularity varies; the data block is never a hole,
        // and most of the rest is.
        assert!(
            holes
                .iter()
                .all(|&(o, l)| o + l <= 3 << 20 || o >= (3 << 20) + 4096),
            "{holes:?}"
        );
        let hole_bytes: u64 = holes.iter().map(|h| h.1).sum();
        assert!(hole_bytes >= 6 << 20, "{holes:?}");
        assert_eq!(holes.last().map(|&(o, l)| o + l), Some(8 << 20));

        let full = dir.path().join("full.img");
        std::fs::write(&full, [7u8; 65536]).unwrap();
        assert!(FileSource::open(&full).unwrap().holes(65536).unwrap().is_empty());
    }
}
