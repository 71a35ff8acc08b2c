//! [`ObjectBackend`] over a local directory: today's layout and durability.
//!
//! An object is written as `NAME.partial`, fsynced, renamed to `NAME`, and
//! its directory fsynced, so a crash leaves it absent or whole; a killed
//! writer leaves only a `.partial` file, which listings skip. Whole objects
//! are read through a read-only map.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};
use super::error::{io_err, StoreError};
use crate::direct_io::{AlignedBuf, Direct};

const PARTIAL: &str = ".partial";

pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_path_buf(),
        }
    }

    /// Every file below `dir`, depth first.
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue }; // removed meanwhile
            if meta.is_dir() {
                LocalDir::walk(&entry.path(), out)?;
            } else if meta.is_file() {
                out.push((entry.path(), meta));
            }
        }
        Ok(())
    }

    /// Files whose names relative to the root start with `prefix`.
    fn files(&self, prefix: &str) -> io::Result<Vec<(String, PathBuf, fs::Metadata)>> {
        let dir = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut found = Vec::new();
        LocalDir::walk(&dir, &mut found)?;
        Ok(found
            .into_iter()
            .filter_map(|(path, meta)| {
                let name = path.strip_prefix(&self.root).ok()?.to_str()?.to_string();
                name.starts_with(prefix).then_some((name, path, meta))
            })
            .collect())
    }
}

fn modified_ns(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The name's extension, which names the crash points of its write
/// (`pack-fsynced`, ...).
fn kind_of(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or("object")
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ObjectBackend for LocalDir {
    fn location(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let path = self.root.join(name);
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "object exists"));
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let partial = PathBuf::from(format!("{}{PARTIAL}", path.display()));
        let file = OpenOptions::new().write(true).create_new(true).open(&partial)?;
        Ok(Box::new(LocalWriter {
            kind: kind_of(name).to_string(),
            path,
            partial,
            direct: Direct::open(&file, true),
            file,
            buf: AlignedBuf::new(WRITE_BYTES),
            filled: 0,
            written: 0,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>> {
        Ok(Box::new(File::open(self.root.join(name))?))
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        let file = File::open(self.root.join(name))?;
        // SAFETY: objects are immutable once finished; they are deleted or
        // replaced whole, and a deleted file stays mapped until unmapped.
        // Only truncation by something outside hoard could fault a reader.
        let map = unsafe { Mmap::map(&file) }?;
        let _ = map.advise(Advice::Sequential);
        Ok(ObjectBytes::Mapped(map))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let mut out: Vec<ObjectInfo> = self
            .files(prefix)?
            .into_iter()
            .filter(|(name, _, _)| !name.ends_with(PARTIAL))
            .map(|(name, _, meta)| ObjectInfo {
                name,
                size: meta.len(),
                modified_ns: modified_ns(&meta),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.root.join(name))
    }

    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String> {
        let mut target = format!("{name}{suffix}");
        let mut n = 1;
        while self.root.join(&target).exists() {
            target = format!("{name}{suffix}-{n}");
            n += 1;
        }
        let path = self.root.join(name);
        fs::rename(&path, self.root.join(&target))?;
        sync_dir(path.parent().unwrap_or(&self.root))?;
        Ok(target)
    }

    fn remove_unfinished(&self, prefix: &str, cutoff_ns: u64) -> io::Result<Vec<(String, u64)>> {
        let mut removed = Vec::new();
        for (name, path, meta) in self.files(prefix)? {
            if name.ends_with(PARTIAL) && modified_ns(&meta) < cutoff_ns {
                fs::remove_file(&path)?;
                removed.push((name, meta.len()));
            }
        }
        Ok(removed)
    }
}

impl ObjectRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

/// Bytes an object writer gathers before it writes them.
const WRITE_BYTES: usize = 4 << 20;

/// Writes an object in [`WRITE_BYTES`] pieces past the page cache (the
/// tail, unaligned, through it): a backup writes packs once and reads them
/// rarely, and on a virtual machine filling the cache with them cost a
/// cold backup as much CPU as a quarter of its compression.
struct LocalWriter {
    kind: String,
    path: PathBuf,
    partial: PathBuf,
    file: File,
    direct: Direct,
    buf: AlignedBuf,
    filled: usize,
    /// Bytes of the object written to the file so far.
    written: u64,
}

impl LocalWriter {
    fn flush(&mut self) -> io::Result<()> {
        let data = &self.buf.as_slice()[..self.filled];
        match self.direct.write_all_at(data, self.written) {
            Some(r) => r?,
            None => self.file.write_all_at(data, self.written)?,
        }
        self.written += self.filled as u64;
        self.filled = 0;
        Ok(())
    }
}

impl ObjectWriter for LocalWriter {
    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(WRITE_BYTES - self.filled);
            self.buf.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == WRITE_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush()?;
        self.file.sync_all()?;
        crate::failpoint::hit(&format!("{}-fsynced", self.kind));
        fs::rename(&self.partial, &self.path)?;
        crate::failpoint::hit(&format!("{}-renamed", self.kind));
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.partial);
    }
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename, so that
/// `path` is either absent or complete.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::failpoint::hit(&format!("{file}-fsynced"));
    fs::rename(&tmp, path).map_err(io_err(path))?;
    crate::failpoint::hit(&format!("{file}-renamed"));
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(io_err(dir))?;
    crate::failpoint::hit(&format!("{file}-synced"));
    Ok(())
}
