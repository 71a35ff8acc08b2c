//! Direct I/O beside the page cache: a file opened a second time with
//! O_DIRECT, and buffers aligned for it.
//!
//! Large sequential transfers (an image read for backup, a restore) gain
//! nothing from the page cache and pay for it: on a virtual machine whose
//! host takes freed guest pages back, filling the cache costs more CPU
//! than compressing the data. Every use falls back to the ordinary
//! descriptor when a transfer is unaligned or the file system refuses
//! O_DIRECT.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block
/// size; 4 KiB covers every device hoard is likely to meet.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The O_DIRECT twin of an open file, if the file system allows one.
pub(crate) struct Direct {
    file: Option<File>,
    refused: AtomicBool,
}

impl Direct {
    /// Opens `file` again through its descriptor (not its name, which may
    /// have been replaced since), for reading or for writing.
    pub(crate) fn open(file: &File, write: bool) -> Direct {
        let file = OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .ok();
        Direct {
            file,
            refused: AtomicBool::new(false),
        }
    }

    /// Reads into `buf` at `offset` as one pread would (short only at the
    /// end of the file); None if this transfer must take the buffered path.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
        let file = self.usable(buf, offset)?;
        loop {
            match file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.refusal(e),
                Ok(n) => return Some(Ok(n)),
            }
        }
    }

    /// Writes all of `data` at `offset`; None if this transfer must take
    /// the buffered path.
    pub(crate) fn write_all_at(&self, data: &[u8], offset: u64) -> Option<io::Result<()>> {
        let file = self.usable(data, offset)?;
        match file.write_all_at(data, offset) {
            Ok(()) => Some(Ok(())),
            Err(e) => self.refusal(e),
        }
    }

    fn usable(&self, buf: &[u8], offset: u64) -> Option<&File> {
        let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64);
        if !aligned || self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.file.as_ref()
    }

    /// EINVAL: the file system refused O_DIRECT for this transfer; from
    /// now on, everything is buffered. Any other error is the file's.
    fn refusal<T>(&self, e: io::Error) -> Option<io::Result<T>> {
        if e.raw_os_error() == Some(libc::EINVAL) {
            self.refused.store(true, Ordering::Relaxed);
            None
        } else {
            Some(Err(e))
        }
    }
}

/// A reusable buffer whose data starts on a [`DIRECT_ALIGN`] boundary.
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_transfers_go_direct_and_others_are_left_to_the_caller() {
        // /var/tmp: tmpfs (where /tmp often is) may refuse O_DIRECT.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let direct = Direct::open(&file, true);
        let mut buf = AlignedBuf::new(2 * DIRECT_ALIGN);
        buf.as_mut_slice().fill(7);
        assert!(direct.write_all_at(buf.as_slice(), 0).is_some_and(|r| r.is_ok()));
        assert!(
            direct.write_all_at(&buf.as_slice()[1..], 0).is_none(),
            "unaligned"
        );
        drop(direct);
        let reader = Direct::open(&File::open(&path).unwrap(), false);
        let mut back = AlignedBuf::new(4 * DIRECT_ALIGN);
        // Short at the end of the file, like pread.
        let n = reader.read_at(back.as_mut_slice(), 0).unwrap().unwrap();
        assert_eq!(n, 2 * DIRECT_ALIGN);
        assert!(back.as_slice()[..n].iter().all(|&b| b == 7));
        assert!(
            reader.read_at(back.as_mut_slice(), 512).is_none(),
            "unaligned offset"
        );
    }
}
