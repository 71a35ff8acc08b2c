//! Tree archives: a file tree as two streams, each chunked with
//! content-defined chunking and stored through a dynamic index.
//!
//! - The **metadata stream** (`NAME.tree.meta.didx`) is a header followed by
//!   one record per entry (directory, file, symlink, hardlink, device, fifo,
//!   socket) in depth-first order with children sorted by name bytes. A
//!   regular file's record points into the payload stream (offset, size).
//! - The **payload stream** (`NAME.tree.payload.didx`) is file contents.
//!
//! Listing a tree reads the metadata stream alone. The layout of a record is
//! in format-spec/tree-archive.md; [`decode_entry`] is its only parser and a
//! fuzz target. An archive is untrusted input: the parser refuses any path
//! that is absolute, has an empty, `.` or `..` component, or does not sort
//! after the previous entry, so that restore never sees one.

mod at;
pub(crate) mod create;
pub(crate) mod diff;
pub(crate) mod extract;
pub(crate) mod scan;
pub(crate) mod stream;

use crate::error::{Classify, Context, ErrorKind};
use std::cmp::Ordering;

pub(crate) const META_MAGIC: [u8; 8] = *b"HRDTREE\0";
/// Version 1: cut by FastCDC's public gear table (plain and version 2
/// stores). Version 3: the same layout, cut by the keyed chunker of a
/// version 3 protected store (format-spec/tree-archive.md). Version 2 was
/// cut by that chunker's first rule, a PRF call per byte; it is read, never
/// written.
pub(crate) const META_VERSION: u32 = 1;
const META_VERSION_PER_BYTE_PRF: u32 = 2;
pub(crate) const META_VERSION_KEYED: u32 = 3;
pub(crate) const META_HEADER_LEN: usize = 16;
/// Limits that bound what a hostile archive can make a reader hold.
pub(crate) const MAX_PATH: usize = 4096;
pub(crate) const MAX_XATTR_NAME: usize = 255;
pub(crate) const MAX_XATTR_VALUE: usize = 65536;
pub(crate) const MAX_XATTRS: usize = 1024;
pub(crate) const MAX_RECORD: usize = 8 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("not a hoard tree archive (bad metadata stream header)")]
    BadHeader,
    #[error("unsupported tree archive version {0}")]
    UnsupportedVersion(u32),
    #[error("metadata record at stream offset {offset}: {reason}")]
    BadRecord { offset: u64, reason: String },
    #[error("metadata stream ends inside a record at offset {0}")]
    Truncated(u64),
    #[error("reading the metadata stream: {0}")]
    Read(String),
}

impl Classify for ArchiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Read(_) => ErrorKind::Io,
            _ => ErrorKind::Damaged,
        }
    }

    fn context(&self) -> Context {
        match self {
            ArchiveError::BadRecord { offset, .. } | ArchiveError::Truncated(offset) => {
                Context::default().offset(*offset)
            }
            _ => Context::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Hardlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::Dir => 1,
            EntryKind::File => 2,
            EntryKind::Symlink => 3,
            EntryKind::Hardlink => 4,
            EntryKind::CharDev => 5,
            EntryKind::BlockDev => 6,
            EntryKind::Fifo => 7,
            EntryKind::Socket => 8,
        }
    }

    fn from_code(c: u8) -> Option<EntryKind> {
        Some(match c {
            1 => EntryKind::Dir,
            2 => EntryKind::File,
            3 => EntryKind::Symlink,
            4 => EntryKind::Hardlink,
            5 => EntryKind::CharDev,
            6 => EntryKind::BlockDev,
            7 => EntryKind::Fifo,
            8 => EntryKind::Socket,
            _ => return None,
        })
    }

    /// The letter `ls -l` shows.
    pub fn letter(self) -> char {
        match self {
            EntryKind::Dir => 'd',
            EntryKind::File | EntryKind::Hardlink => '-',
            EntryKind::Symlink => 'l',
            EntryKind::CharDev => 'c',
            EntryKind::BlockDev => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        }
    }
}

/// Time as seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, components separated by `/`; empty for the root.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// Change detection for incrementals: ctime and inode at backup time.
    pub ctime: Time,
    pub inode: u64,
    /// Regular files: size and offset in the payload stream.
    pub size: u64,
    pub payload_offset: u64,
    /// Symlinks: the link target (never followed). Hardlinks: the path of
    /// the earlier entry they link to.
    pub target: Vec<u8>,
    /// Devices: the device number.
    pub rdev: u64,
    /// Extended attributes, including POSIX ACLs (`system.posix_acl_*`) and
    /// file capabilities (`security.capability`), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn new(path: Vec<u8>, kind: EntryKind) -> Entry {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: Time::default(),
            ctime: Time::default(),
            inode: 0,
            size: 0,
            payload_offset: 0,
            target: Vec::new(),
            rdev: 0,
            xattrs: Vec::new(),
        }
    }

    /// The path for messages (lossy for non-UTF-8 names).
    pub fn display(&self) -> String {
        if self.path.is_empty() {
            ".".into()
        } else {
            String::from_utf8_lossy(&self.path).into_owned()
        }
    }
}

/// The metadata stream header: magic and version (of a keyed-cut
/// archive, or not).
pub(crate) fn encode_header_for(keyed: bool) -> [u8; META_HEADER_LEN] {
    let mut h = [0u8; META_HEADER_LEN];
    h[..8].copy_from_slice(&META_MAGIC);
    let v = if keyed { META_VERSION_KEYED } else { META_VERSION };
    h[8..12].copy_from_slice(&v.to_le_bytes());
    h
}

/// The header of an archive cut by the public chunker.
#[cfg(test)]
pub(crate) fn encode_header() -> [u8; META_HEADER_LEN] {
    encode_header_for(false)
}

pub(crate) fn check_header(h: &[u8]) -> Result<(), ArchiveError> {
    if h.len() < META_HEADER_LEN || h[..8] != META_MAGIC {
        return Err(ArchiveError::BadHeader);
    }
    let v = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if ![META_VERSION, META_VERSION_PER_BYTE_PRF, META_VERSION_KEYED].contains(&v) {
        return Err(ArchiveError::UnsupportedVersion(v));
    }
    Ok(())
}

/// Encodes one record: u32 body length, then the body.
pub(crate) fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(e.kind.code());
    for v in [e.mode, e.uid, e.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for t in [e.mtime, e.ctime] {
        out.extend_from_slice(&t.sec.to_le_bytes());
        out.extend_from_slice(&t.nsec.to_le_bytes());
    }
    out.extend_from_slice(&e.inode.to_le_bytes());
    out.extend_from_slice(&(e.path.len() as u16).to_le_bytes());
    out.extend_from_slice(&e.path);
    match e.kind {
        EntryKind::File => {
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.payload_offset.to_le_bytes());
        }
        EntryKind::Symlink | EntryKind::Hardlink => {
            out.extend_from_slice(&(e.target.len() as u16).to_le_bytes());
            out.extend_from_slice(&e.target);
        }
        EntryKind::CharDev | EntryKind::BlockDev => out.extend_from_slice(&e.rdev.to_le_bytes()),
        EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
    }
    out.extend_from_slice(&(e.xattrs.len() as u16).to_le_bytes());
    for (name, value) in &e.xattrs {
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    let body = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&body.to_le_bytes());
}

/// Whether an entry can be encoded within the format's limits.
pub(crate) fn fits_format(e: &Entry) -> Result<(), String> {
    if e.path.len() > MAX_PATH || e.target.len() > MAX_PATH {
        return Err(format!("path or link target longer than {MAX_PATH} bytes"));
    }
    if e.xattrs.len() > MAX_XATTRS {
        return Err(format!("more than {MAX_XATTRS} extended attributes"));
    }
    if let Some((n, _)) = e
        .xattrs
        .iter()
        .find(|(n, v)| n.len() > MAX_XATTR_NAME || v.len() > MAX_XATTR_VALUE)
    {
        return Err(format!(
            "extended attribute {} too large",
            String::from_utf8_lossy(n)
        ));
    }
    Ok(())
}

/// Decodes one record body (without its length prefix). `offset` is where
/// the record starts in the stream, for messages.
pub(crate) fn decode_entry(body: &[u8], offset: u64) -> Result<Entry, ArchiveError> {
    let bad = |reason: &str| ArchiveError::BadRecord {
        offset,
        reason: reason.into(),
    };
    let mut r = Cursor { b: body, at: 0 };
    let kind =
        EntryKind::from_code(r.u8().ok_or_else(|| bad("empty"))?).ok_or_else(|| bad("unknown entry kind"))?;
    let mut e = Entry::new(Vec::new(), kind);
    let short = || bad("record too short");
    e.mode = r.u32().ok_or_else(short)?;
    e.uid = r.u32().ok_or_else(short)?;
    e.gid = r.u32().ok_or_else(short)?;
    e.mtime = r.time().ok_or_else(short)?;
    e.ctime = r.time().ok_or_else(short)?;
    e.inode = r.u64().ok_or_else(short)?;
    let n = r.u16().ok_or_else(short)? as usize;
    e.path = r.bytes(n).ok_or_else(short)?.to_vec();
    check_path(&e.path).map_err(|m| bad(&m))?;
    if e.mode & !0o7777 != 0 {
        return Err(bad("mode has bits beyond 0o7777"));
    }
    if e.path.is_empty() && kind != EntryKind::Dir {
        return Err(bad("the root entry must be a directory"));
    }
    match kind {
        EntryKind::File => {
            e.size = r.u64().ok_or_else(short)?;
            e.payload_offset = r.u64().ok_or_else(short)?;
            if e.payload_offset.checked_add(e.size).is_none() {
                return Err(bad("payload range overflows"));
            }
        }
        EntryKind::Symlink | EntryKind::Hardlink => {
            let n = r.u16().ok_or_else(short)? as usize;
            e.target = r.bytes(n).ok_or_else(short)?.to_vec();
            if e.target.is_empty() || e.target.contains(&0) || n > MAX_PATH {
                return Err(bad("empty or invalid link target"));
            }
            if kind == EntryKind::Hardlink {
                check_path(&e.target).map_err(|m| bad(&format!("hardlink target: {m}")))?;
                if e.target.is_empty() || path_cmp(&e.target, &e.path) != Ordering::Less {
                    return Err(bad("hardlink target is not an earlier entry"));
                }
            }
        }
        EntryKind::CharDev | EntryKind::BlockDev => e.rdev = r.u64().ok_or_else(short)?,
        EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
    }
    let count = r.u16().ok_or_else(short)? as usize;
    if count > MAX_XATTRS {
        return Err(bad("too many extended attributes"));
    }
    for _ in 0..count {
        let n = r.u8().ok_or_else(short)? as usize;
        let name = r.bytes(n).ok_or_else(short)?.to_vec();
        let v = r.u32().ok_or_else(short)? as usize;
        if v > MAX_XATTR_VALUE {
            return Err(bad("extended attribute value too large"));
        }
        let value = r.bytes(v).ok_or_else(short)?.to_vec();
        if name.is_empty() || name.contains(&0) {
            return Err(bad("invalid extended attribute name"));
        }
        e.xattrs.push((name, value));
    }
    if r.at != body.len() {
        return Err(bad("trailing bytes in record"));
    }
    Ok(e)
}

/// A path inside the archive: relative, no empty, `.` or `..` components,
/// no NUL, at most [`MAX_PATH`] bytes. The empty path is the root.
pub(crate) fn check_path(p: &[u8]) -> Result<(), String> {
    if p.len() > MAX_PATH {
        return Err("path too long".into());
    }
    if p.is_empty() {
        return Ok(());
    }
    if p.contains(&0) {
        return Err("path contains NUL".into());
    }
    for c in p.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(format!(
                "path {:?} is absolute or has an empty, . or .. component",
                String::from_utf8_lossy(p)
            ));
        }
    }
    Ok(())
}

/// Depth-first order with children sorted by name bytes: compare paths
/// component by component. Entries of an archive are strictly increasing.
pub(crate) fn path_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let mut x = a.split(|c| *c == b'/').filter(|c| !c.is_empty());
    let mut y = b.split(|c| *c == b'/').filter(|c| !c.is_empty());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => match p.cmp(q) {
                Ordering::Equal => continue,
                o => return o,
            },
        }
    }
}

/// Whether `path` is `dir` or inside it.
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// Reads records from a metadata stream, checking order and structure: the
/// first entry is the root directory, every later one sorts after the one
/// before, and its parent is a directory seen before.
pub struct EntryReader<R> {
    r: R,
    offset: u64,
    last: Option<Vec<u8>>,
    /// Directories on the path to the current entry.
    open_dirs: Vec<Vec<u8>>,
}

impl<R: std::io::Read> EntryReader<R> {
    pub fn new(mut r: R) -> Result<EntryReader<R>, ArchiveError> {
        let mut h = [0u8; META_HEADER_LEN];
        r.read_exact(&mut h).map_err(|_| ArchiveError::BadHeader)?;
        check_header(&h)?;
        Ok(EntryReader {
            r,
            offset: META_HEADER_LEN as u64,
            last: None,
            open_dirs: Vec::new(),
        })
    }

    /// The next entry, None at the end of the stream.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ArchiveError> {
        let at = self.offset;
        let mut len = [0u8; 4];
        match read_full(&mut self.r, &mut len)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(ArchiveError::Truncated(at)),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_RECORD {
            return Err(ArchiveError::BadRecord {
                offset: at,
                reason: format!("record of {n} bytes"),
            });
        }
        let mut body = vec![0u8; n];
        if read_full(&mut self.r, &mut body)? != n {
            return Err(ArchiveError::Truncated(at));
        }
        self.offset += 4 + n as u64;
        let e = decode_entry(&body, at)?;
        let bad = |reason: String| ArchiveError::BadRecord { offset: at, reason };
        match &self.last {
            None if !e.path.is_empty() => {
                return Err(bad("the first entry must be the root directory".into()))
            }
            Some(last) if path_cmp(last, &e.path) != Ordering::Less => {
                return Err(bad(format!(
                    "{} does not sort after the entry before it",
                    e.display()
                )))
            }
            _ => {}
        }
        if !e.path.is_empty() {
            while self
                .open_dirs
                .last()
                .is_some_and(|d| !is_within(&e.path, d) || *d == e.path)
            {
                self.open_dirs.pop();
            }
            let parent = parent_of(&e.path);
            if self.open_dirs.last().map(Vec::as_slice) != Some(parent) {
                return Err(bad(format!(
                    "{}: parent is not a directory of the archive",
                    e.display()
                )));
            }
        }
        if e.kind == EntryKind::Dir {
            self.open_dirs.push(e.path.clone());
        }
        self.last = Some(e.path.clone());
        Ok(Some(e))
    }
}

/// The parent directory of a non-root path ("" for top-level entries).
pub(crate) fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, ArchiveError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::Read(e.to_string())),
        }
    }
    Ok(done)
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn time(&mut self) -> Option<Time> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        (nsec < 1_000_000_000).then_some(Time { sec, nsec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_stream() -> Vec<u8> {
        let mut s = encode_header().to_vec();
        let mut root = Entry::new(Vec::new(), EntryKind::Dir);
        root.mode = 0o755;
        encode_entry(&root, &mut s);
        let mut f = Entry::new(b"a".to_vec(), EntryKind::File);
        f.size = 5;
        f.xattrs.push((b"user.x".to_vec(), b"1".to_vec()));
        encode_entry(&f, &mut s);
        encode_entry(&Entry::new(b"d".to_vec(), EntryKind::Dir), &mut s);
        let mut l = Entry::new(b"d/l".to_vec(), EntryKind::Symlink);
        l.target = b"../a".to_vec();
        encode_entry(&l, &mut s);
        let mut h = Entry::new(b"d/m".to_vec(), EntryKind::Hardlink);
        h.target = b"a".to_vec();
        encode_entry(&h, &mut s);
        s
    }

    /// Keyed archives are written as version 3; version 2 (cut by the
    /// keyed chunker's earlier rule) is still read; others are refused.
    #[test]
    fn header_versions() {
        assert_eq!(encode_header_for(false)[8..12], 1u32.to_le_bytes());
        assert_eq!(encode_header_for(true)[8..12], 3u32.to_le_bytes());
        for (v, ok) in [(1u32, true), (2, true), (3, true), (0, false), (4, false)] {
            let mut h = encode_header();
            h[8..12].copy_from_slice(&v.to_le_bytes());
            assert_eq!(check_header(&h).is_ok(), ok, "version {v}");
        }
    }

    fn read_all(s: &[u8]) -> Result<Vec<Entry>, ArchiveError> {
        let mut r = EntryReader::new(s)?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let all = read_all(&sample_stream()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].xattrs, vec![(b"user.x".to_vec(), b"1".to_vec())]);
        assert_eq!(all[3].target, b"../a");
    }

    #[test]
    fn hostile_paths_and_order_are_refused() {
        for p in [&b"/etc"[..], b"../x", b"a/../b", b"a//b", b"./a", b"a/"] {
            assert!(check_path(p).is_err(), "{p:?}");
        }
        let enc = |entries: &[Entry]| {
            let mut s = encode_header().to_vec();
            for e in entries {
                encode_entry(e, &mut s);
            }
            s
        };
        let root = Entry::new(Vec::new(), EntryKind::Dir);
        let f = |p: &[u8]| Entry::new(p.to_vec(), EntryKind::File);
        // Out of order, duplicate, parent missing or not a directory.
        assert!(read_all(&enc(&[root.clone(), f(b"b"), f(b"a")])).is_err());
        assert!(read_all(&enc(&[root.clone(), f(b"a"), f(b"a")])).is_err());
        assert!(read_all(&enc(&[root.clone(), f(b"x/y")])).is_err());
        assert!(read_all(&enc(&[root.clone(), f(b"x"), f(b"x/y")])).is_err());
        assert!(read_all(&enc(&[f(b"a")])).is_err());
        let mut h = Entry::new(b"a".to_vec(), EntryKind::Hardlink);
        h.target = b"b".to_vec();
        assert!(read_all(&enc(&[root.clone(), h])).is_err(), "hardlink forward");
        assert!(read_all(&enc(&[root, f(b"a"), f(b"a-"), f(b"b")])).is_ok());
    }

    #[test]
    fn component_order_is_depth_first() {
        assert_eq!(path_cmp(b"a/b", b"a-c"), Ordering::Less);
        assert_eq!(path_cmp(b"a", b"a/b"), Ordering::Less);
        assert_eq!(path_cmp(b"", b"a"), Ordering::Less);
        assert!(is_within(b"a/b", b"a") && !is_within(b"ab", b"a") && is_within(b"x", b""));
    }
}
