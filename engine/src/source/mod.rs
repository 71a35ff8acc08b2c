//! Sources of image bytes: regular files and block devices (pread).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
}

/// A regular file or block device.
pub struct FileSource {
    path: PathBuf,
    file: File,
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
}

/// Fills `buf` from `offset`; returns how many bytes were available (less
/// than `buf.len()` only when the source ended early).
pub(crate) fn read_full(src: &dyn ImageSource, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = src.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

pub mod nbd;
pub mod qga;
pub mod qmp;
