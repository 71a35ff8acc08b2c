//! A snapshot's archive as a read-only file system: `hoard mount`.
//!
//! [`MountTree`] is the file system as plain data, independent of FUSE:
//! inodes, directories, attributes, and reads that go through the same
//! chunk cache as `hoard export`. A tree archive's metadata is read once at
//! mount time and kept in memory (a few hundred bytes per entry); file
//! contents are read on demand from the payload stream. An image archive
//! appears as a directory holding one file, `NAME.img`. [`fuse`] adapts the
//! tree to the kernel.

pub mod fuse;

use std::path::Path;

use crate::archive::stream::StreamReader;
use crate::archive::{parent_of, ArchiveError, Entry, EntryKind, EntryReader, Time};
use crate::error::{Classify, Context, ErrorKind};
use crate::format::dynamic_index::DynamicIndex;
use crate::serve::export::{BlockDevice, Fault, ImageDevice};
use crate::store::chunk_cache::ChunkCache;
use crate::store::Store;

/// The root directory's inode (FUSE's fixed root id).
pub(crate) const ROOT: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{0}")]
    Stream(String),
}

impl Classify for MountError {
    fn kind(&self) -> ErrorKind {
        match self {
            MountError::Archive(e) => e.kind(),
            MountError::Stream(_) => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            MountError::Archive(e) => e.context(),
            MountError::Stream(_) => Context::default(),
        }
    }
}

/// One inode: the archive's entry (its path dropped: names live in the
/// parent's `children`), and its place in the tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub entry: Entry,
    pub nlink: u32,
    pub parent: u64,
    /// Directories: entries sorted by name, with their inodes.
    pub children: Vec<(Vec<u8>, u64)>,
}

impl Node {
    fn new(mut entry: Entry, parent: u64) -> Node {
        entry.path = Vec::new();
        // A symlink's size is its target's length, as stat reports it.
        if entry.kind == EntryKind::Symlink {
            entry.size = entry.target.len() as u64;
        }
        Node {
            entry,
            nlink: 1,
            parent,
            children: Vec::new(),
        }
    }
}

/// Where file contents come from. (One per mount: size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Contents {
    Tree {
        payload: DynamicIndex,
        cache: ChunkCache<'static>,
    },
    Image(ImageDevice<'static>),
}

pub struct MountTree {
    nodes: Vec<Node>,
    contents: Contents,
    /// Entries left out because the archive is inconsistent (a hardlink
    /// to nothing): the mount shows the rest.
    pub skipped: Vec<String>,
}

fn stream_err(e: impl std::fmt::Display) -> MountError {
    MountError::Stream(e.to_string())
}

impl MountTree {
    /// A tree archive: reads its whole metadata stream now. `label` names
    /// the mount in its read session.
    pub fn tree(
        store: &'static Store,
        meta: StreamReader<'static>,
        payload: &Path,
        cache_bytes: usize,
        label: &str,
    ) -> Result<MountTree, MountError> {
        let payload = DynamicIndex::open(payload).map_err(stream_err)?;
        let mut nodes: Vec<Node> = Vec::new();
        let mut skipped = Vec::new();
        // Directories on the path to the current entry, with their inodes:
        // the metadata stream is depth-first, so a parent is always on it.
        let mut open: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut entries = EntryReader::new(meta)?;
        while let Some(e) = entries.next_entry()? {
            if e.path.is_empty() {
                nodes.push(Node::new(e, ROOT));
                open.push((Vec::new(), ROOT));
                continue;
            }
            let parent_path = parent_of(&e.path);
            while open.last().is_some_and(|(p, _)| p.as_slice() != parent_path) {
                open.pop();
            }
            let Some(&(_, parent)) = open.last() else {
                skipped.push(format!("{}: no parent directory", e.display()));
                continue;
            };
            let name = e.path[parent_path.len() + usize::from(!parent_path.is_empty())..].to_vec();
            let ino = if e.kind == EntryKind::Hardlink {
                match resolve(&nodes, &e.target)
                    .filter(|&i| nodes[(i - 1) as usize].entry.kind == EntryKind::File)
                {
                    Some(i) => {
                        nodes[(i - 1) as usize].nlink += 1;
                        i
                    }
                    None => {
                        skipped.push(format!("{}: hardlink to a file not in the archive", e.display()));
                        continue;
                    }
                }
            } else {
                let is_dir = e.kind == EntryKind::Dir;
                let path = e.path.clone();
                nodes.push(Node::new(e, parent));
                let ino = nodes.len() as u64;
                if is_dir {
                    open.push((path, ino));
                }
                ino
            };
            // Entries arrive sorted by name, so children stay sorted.
            nodes[(parent - 1) as usize].children.push((name, ino));
        }
        if nodes.is_empty() {
            return Err(MountError::Stream("the archive has no root directory".into()));
        }
        Ok(MountTree {
            nodes,
            contents: Contents::Tree {
                payload,
                cache: ChunkCache::new(store, cache_bytes, &format!("mount {label}")),
            },
            skipped,
        })
    }

    /// An image archive: a read-only directory holding one file, `name`,
    /// both dated `mtime`.
    pub fn image(device: ImageDevice<'static>, name: &str, mtime: Time) -> MountTree {
        let size = device.size();
        let node = |kind, mode, size| {
            let entry = Entry {
                mode,
                mtime,
                ctime: mtime,
                size,
                ..Entry::new(Vec::new(), kind)
            };
            Node::new(entry, ROOT)
        };
        let mut root = node(EntryKind::Dir, 0o555, 0);
        root.children.push((name.as_bytes().to_vec(), 2));
        MountTree {
            nodes: vec![root, node(EntryKind::File, 0o444, size)],
            contents: Contents::Image(device),
            skipped: Vec::new(),
        }
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    pub fn inodes(&self) -> u64 {
        self.nodes.len() as u64
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        child(&self.nodes, parent, name)
    }

    /// Up to `len` bytes of file `ino` from `offset` (fewer at its end).
    pub fn read(&self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>, Fault> {
        let node = self
            .node(ino)
            .ok_or_else(|| Fault::io(format!("no inode {ino}")))?;
        let end = node.entry.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        match &self.contents {
            Contents::Image(device) => {
                for piece in device.read(offset, (end - offset) as usize)? {
                    match piece.data() {
                        Some(d) => out.extend_from_slice(d),
                        None => out.resize(out.len() + piece.len(), 0),
                    }
                }
            }
            Contents::Tree { payload, cache } => {
                let at = node.entry.payload_offset;
                let (mut pos, stop) = (at + offset, at + end);
                while pos < stop {
                    let i = payload.chunk_at(pos).ok_or_else(|| {
                        Fault::io(format!("payload offset {pos} is beyond the payload stream"))
                    })?;
                    let (start, chunk_end) = (payload.start(i), payload.end(i));
                    let digest = payload.digest(i);
                    let data = cache
                        .get(&digest, (chunk_end - start) as usize)
                        .map_err(|e| Fault::io(format!("payload chunk {digest} at {start}: {e}")))?;
                    let from = (pos - start) as usize;
                    let to = (stop.min(chunk_end) - start) as usize;
                    out.extend_from_slice(&data[from..to]);
                    pos = start + to as u64;
                }
            }
        }
        Ok(out)
    }
}

/// The inode named `name` in directory `dir`.
fn child(nodes: &[Node], dir: u64, name: &[u8]) -> Option<u64> {
    let dir = nodes.get(dir.checked_sub(1)? as usize)?;
    let at = dir
        .children
        .binary_search_by(|(n, _)| n.as_slice().cmp(name))
        .ok()?;
    Some(dir.children[at].1)
}

/// The inode of `path` (relative, `/`-separated), following directories.
fn resolve(nodes: &[Node], path: &[u8]) -> Option<u64> {
    path.split(|b| *b == b'/')
        .try_fold(ROOT, |dir, part| child(nodes, dir, part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::snapshot::{Kind, SnapshotName};
    use crate::ops::backup::{backup, BackupOptions, Input};

    #[test]
    fn tree_model_resolves_names_hardlinks_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("d/big"), &big).unwrap();
        std::fs::write(src.join("a"), b"first").unwrap();
        std::fs::hard_link(src.join("a"), src.join("d/e/link")).unwrap();
        std::os::unix::fs::symlink("../a", src.join("d/sym")).unwrap();
        let store: &'static Store = Box::leak(Box::new(
            Store::init(&dir.path().join("s"), ChunkSize::new(1 << 20).unwrap()).unwrap(),
        ));
        let opts = BackupOptions::new(Kind::Ct, "1");
        let input = Input::Tree(crate::archive::create::TreeInput {
            name: "root.tree".into(),
            root: src.clone(),
            exclude: Vec::new(),
            one_file_system: true,
            include_mounts: Vec::new(),
            full_read: false,
            cdc: Default::default(),
            origin: None,
        });
        let (m, _) = backup(store, &opts, vec![input], &crate::progress::NoProgress).unwrap();
        let name = SnapshotName {
            kind: m.kind,
            id: m.id.clone(),
            time: m.time.clone(),
        };
        let snap_dir = store.catalog().dir(&name);
        let entry = m.archive("root.tree").unwrap();
        let (meta, _) = crate::archive::extract::open_streams(store, &snap_dir, entry).unwrap();
        let payload = snap_dir.join(&entry.payload.as_ref().unwrap().index);
        let t = MountTree::tree(store, meta, &payload, 4 << 20, "test").unwrap();
        assert!(t.skipped.is_empty());
        let d = t.lookup(ROOT, b"d").unwrap();
        let big_ino = t.lookup(d, b"big").unwrap();
        assert_eq!(t.node(big_ino).unwrap().entry.size, big.len() as u64);
        assert!(t.read(big_ino, 0, big.len()).unwrap() == big);
        assert!(t.read(big_ino, 1_234_567, 2_000_000).unwrap() == big[1_234_567..]);
        assert!(t.read(big_ino, big.len() as u64 + 5, 10).unwrap().is_empty());
        let a = t.lookup(ROOT, b"a").unwrap();
        let e = t.lookup(d, b"e").unwrap();
        assert_eq!(t.lookup(e, b"link"), Some(a), "a hardlink is the same inode");
        assert_eq!(t.node(a).unwrap().nlink, 2);
        assert_eq!(t.read(a, 0, 100).unwrap(), b"first");
        let sym = t.node(t.lookup(d, b"sym").unwrap()).unwrap();
        assert_eq!(
            (sym.entry.kind, sym.entry.target.as_slice()),
            (EntryKind::Symlink, &b"../a"[..])
        );
        assert_eq!(t.lookup(ROOT, b"missing"), None);
        assert!(t.node(0).is_none() && t.node(t.inodes() + 1).is_none());
    }
}
