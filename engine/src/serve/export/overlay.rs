//! The copy-on-write overlay of a `--writable` export.
//!
//! Written blocks live in an unlinked temporary file as large as the image
//! (sparse: only written blocks take space); one bit per block says which
//! blocks are there. A write that covers a block only partly first copies
//! the block from the base image, so a block is always whole in the overlay.
//! Writes are serialised (one lock), reads are not: a block's bit is set only
//! after its data is in the file. Everything is gone when the export ends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::device::{Fault, Piece};

/// Copy-on-write granularity: 2 MiB of bitmap per TiB of image.
pub(crate) const BLOCK: u64 = 64 << 10;

pub struct Overlay {
    file: File,
    dir: PathBuf,
    size: u64,
    written: Vec<AtomicU64>,
    write_lock: Mutex<()>,
}

impl Overlay {
    /// An empty overlay for an image of `size` bytes, in a temporary file in `dir`.
    pub fn create(dir: &Path, size: u64) -> io::Result<Overlay> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
            .or_else(|_| {
                // File systems without O_TMPFILE: a named file, unlinked at once.
                let path = dir.join(format!(".hoard-overlay-{}", std::process::id()));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                Ok::<File, io::Error>(f)
            })?;
        file.set_len(size)?;
        let blocks = size.div_ceil(BLOCK);
        Ok(Overlay {
            file,
            dir: dir.to_path_buf(),
            size,
            written: (0..blocks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            write_lock: Mutex::new(()),
        })
    }

    fn fault(&self, e: io::Error) -> Fault {
        Fault::io(format!("overlay in {}: {e}", self.dir.display()))
    }

    fn is_written(&self, block: u64) -> bool {
        self.written[(block / 64) as usize].load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }

    fn mark(&self, block: u64) {
        self.written[(block / 64) as usize].fetch_or(1 << (block % 64), Ordering::Release);
    }

    /// Whether any byte of `start..end` was written.
    pub(crate) fn any_written(&self, start: u64, end: u64) -> bool {
        end > start && (start / BLOCK..=(end - 1) / BLOCK).any(|b| self.is_written(b))
    }

    /// Appends the pieces of `offset..offset + len` to `out`: written blocks
    /// from the overlay, the rest from `base` (called with ranges inside
    /// `offset..offset + len`).
    pub fn read(
        &self,
        offset: u64,
        len: usize,
        out: &mut Vec<Piece>,
        base: impl Fn(u64, usize) -> Result<Piece, Fault>,
    ) -> Result<(), Fault> {
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let written = self.is_written(pos / BLOCK);
            let mut run_end = end.min((pos / BLOCK + 1) * BLOCK);
            while run_end < end && self.is_written(run_end / BLOCK) == written {
                run_end = end.min(run_end + BLOCK);
            }
            let n = (run_end - pos) as usize;
            if written {
                let mut buf = vec![0u8; n];
                self.file
                    .read_exact_at(&mut buf, pos)
                    .map_err(|e| self.fault(e))?;
                out.push(Piece::Bytes(buf));
            } else {
                out.push(base(pos, n)?);
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; `fill(at, buf)` supplies the base image's
    /// bytes for the parts of partly written blocks that are not yet here.
    pub fn write(
        &self,
        offset: u64,
        data: &[u8],
        fill: impl Fn(u64, &mut [u8]) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        let _serial = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        for block in [first, last] {
            let start = block * BLOCK;
            let block_end = (start + BLOCK).min(self.size);
            let partial = offset > start || end < block_end;
            if partial && !self.is_written(block) {
                let mut buf = vec![0u8; (block_end - start) as usize];
                fill(start, &mut buf)?;
                self.file.write_all_at(&buf, start).map_err(|e| self.fault(e))?;
            }
        }
        self.file.write_all_at(data, offset).map_err(|e| self.fault(e))?;
        for block in first..=last {
            self.mark(block);
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), Fault> {
        self.file.sync_data().map_err(|e| self.fault(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_byte(at: u64) -> u8 {
        (at % 251) as u8
    }

    fn read_all(o: &Overlay, offset: u64, len: usize) -> Vec<u8> {
        let mut pieces = Vec::new();
        o.read(offset, len, &mut pieces, |at, n| {
            Ok(Piece::Bytes((at..at + n as u64).map(base_byte).collect()))
        })
        .unwrap();
        let mut out = Vec::new();
        for p in pieces {
            match p.data() {
                Some(d) => out.extend_from_slice(d),
                None => out.resize(out.len() + p.len(), 0),
            }
        }
        out
    }

    #[test]
    fn partial_writes_keep_the_base_around_them() {
        let dir = tempfile::tempdir().unwrap();
        let size = 5 * BLOCK + 1000;
        let o = Overlay::create(dir.path(), size).unwrap();
        let fill = |at: u64, buf: &mut [u8]| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = base_byte(at + i as u64);
            }
            Ok(())
        };
        let mut expect: Vec<u8> = (0..size).map(base_byte).collect();
        for (offset, len, v) in [
            (100u64, 10usize, 1u8),
            (BLOCK - 5, 2 * BLOCK as usize, 2),
            (size - 7, 7, 3),
        ] {
            o.write(offset, &vec![v; len], fill).unwrap();
            expect[offset as usize..offset as usize + len].fill(v);
        }
        assert!(o.any_written(0, 1));
        assert!(!o.any_written(4 * BLOCK, 5 * BLOCK));
        assert_eq!(read_all(&o, 0, size as usize), expect);
        assert_eq!(read_all(&o, 90, 30), expect[90..120]);
        // Nothing of the overlay file is visible in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
