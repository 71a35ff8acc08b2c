//! What changed between two archives of a tree or an image. Trees: the two
//! metadata streams walked side by side in their common order; a file's
//! content is compared through the payload chunk digests first and read
//! only where they cannot say "same". Images: chunk digests alone.

use std::cmp::Ordering;

use serde::Serialize;

use super::extract::{open_streams, ExtractError};
use super::stream::StreamReader;
use super::{path_cmp, Entry, EntryKind, EntryReader};
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::ArchiveEntry;
use crate::store::Repository;

/// One difference between two trees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TreeChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// The entry's type letter (as `hoard ls`): of the new entry, or the
    /// removed one.
    #[serde(rename = "type")]
    pub kind: char,
    /// For `changed`: what differs, of `type`, `content`, `size`, `mode`,
    /// `owner`, `xattrs`, `target`, `device`, `mtime`.
    pub what: Vec<&'static str>,
}

/// Counts of a tree diff, and what it had to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TreeDiffStats {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Files of equal size whose chunk digests could not show them equal:
    /// their contents were read and compared.
    pub files_read: u64,
    pub bytes_read: u64,
}

/// One tree archive of one snapshot: the snapshot's directory and entry.
pub struct TreeSide<'a> {
    pub dir: &'a std::path::Path,
    pub archive: &'a ArchiveEntry,
}

/// Calls `f` for every difference from `old` to `new`, in path order.
pub fn diff_trees(
    store: &dyn Repository,
    old: TreeSide,
    new: TreeSide,
    mut f: impl FnMut(TreeChange),
) -> Result<TreeDiffStats, ExtractError> {
    let (old_meta, mut old_payload) = open_streams(store, old.dir, old.archive)?;
    let (new_meta, mut new_payload) = open_streams(store, new.dir, new.archive)?;
    let mut a = EntryReader::new(old_meta)?;
    let mut b = EntryReader::new(new_meta)?;
    let mut stats = TreeDiffStats::default();
    let (mut x, mut y) = (a.next_entry()?, b.next_entry()?);
    loop {
        let order = match (&x, &y) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(o), Some(n)) => path_cmp(&o.path, &n.path),
        };
        match order {
            Ordering::Less => {
                let o = x.take().expect("present");
                stats.removed += 1;
                f(change(&o, "removed", Vec::new()));
                x = a.next_entry()?;
            }
            Ordering::Greater => {
                let n = y.take().expect("present");
                stats.added += 1;
                f(change(&n, "added", Vec::new()));
                y = b.next_entry()?;
            }
            Ordering::Equal => {
                let (o, n) = (x.take().expect("present"), y.take().expect("present"));
                let mut what = metadata_changes(&o, &n);
                if o.kind == EntryKind::File && n.kind == EntryKind::File && o.size == n.size {
                    let same = same_content(&o, &n, &mut old_payload, &mut new_payload, &mut stats)?;
                    if !same {
                        what.insert(0, "content");
                    }
                }
                if what.is_empty() {
                    stats.unchanged += 1;
                } else {
                    stats.changed += 1;
                    f(change(&n, "changed", what));
                }
                x = a.next_entry()?;
                y = b.next_entry()?;
            }
        }
    }
    Ok(stats)
}

fn change(e: &Entry, change: &'static str, what: Vec<&'static str>) -> TreeChange {
    TreeChange {
        path: e.display(),
        change,
        kind: e.kind.letter(),
        what,
    }
}

/// What differs besides a file's bytes (a size change is a content change).
fn metadata_changes(o: &Entry, n: &Entry) -> Vec<&'static str> {
    let mut what = Vec::new();
    if o.kind != n.kind {
        what.push("type");
    }
    if o.kind == EntryKind::File && n.kind == EntryKind::File && o.size != n.size {
        what.push("content");
        what.push("size");
    }
    for (differs, name) in [
        (o.mode != n.mode, "mode"),
        ((o.uid, o.gid) != (n.uid, n.gid), "owner"),
        (o.xattrs != n.xattrs, "xattrs"),
        (o.target != n.target, "target"),
        (o.rdev != n.rdev, "device"),
        (o.mtime != n.mtime && o.kind != EntryKind::Dir, "mtime"),
    ] {
        if differs {
            what.push(name);
        }
    }
    what
}

/// Whether two files of equal size hold the same bytes: yes without
/// reading when both ranges lie at the same offsets within identical
/// chunks; otherwise read and compared.
fn same_content(
    o: &Entry,
    n: &Entry,
    old: &mut StreamReader,
    new: &mut StreamReader,
    stats: &mut TreeDiffStats,
) -> Result<bool, ExtractError> {
    if o.size == 0 || same_chunks(o, n, old, new) {
        return Ok(true);
    }
    stats.files_read += 1;
    let mut done = 0u64;
    let mut buf = vec![0; 256 << 10];
    while done < o.size {
        let want = (o.size - done).min(buf.len() as u64) as usize;
        let got = old.read_at(o.payload_offset + done, &mut buf[..want])?;
        let theirs = new.slice_at(n.payload_offset + done)?;
        let k = got.min(theirs.len());
        if k == 0 {
            return Ok(false);
        }
        stats.bytes_read += 2 * k as u64;
        if buf[..k] != theirs[..k] {
            return Ok(false);
        }
        done += k as u64;
    }
    Ok(true)
}

/// Both files start at the same offset within chunks of the same digest
/// and run over the same sequence of chunks.
fn same_chunks(o: &Entry, n: &Entry, old: &StreamReader, new: &StreamReader) -> bool {
    let (oi, ni) = (old.index(), new.index());
    let (Some(mut i), Some(mut j)) = (oi.chunk_at(o.payload_offset), ni.chunk_at(n.payload_offset)) else {
        return false;
    };
    if o.payload_offset - oi.start(i) != n.payload_offset - ni.start(j) {
        return false;
    }
    let (o_end, n_end) = (o.payload_offset + o.size, n.payload_offset + n.size);
    loop {
        if oi.digest(i) != ni.digest(j) {
            return false;
        }
        // Same digest, same bytes, same length: both files end in this
        // chunk or both go on.
        if oi.end(i) >= o_end || ni.end(j) >= n_end {
            return oi.end(i) >= o_end && ni.end(j) >= n_end;
        }
        i += 1;
        j += 1;
        if i >= oi.chunk_count() || j >= ni.chunk_count() {
            return false;
        }
    }
}

/// The byte ranges `(offset, len)` where two images differ, chunk by chunk
/// (a size change adds the range past the shorter one's end). Both must
/// have the same chunk size.
pub fn diff_images(old: &FixedIndex, new: &FixedIndex) -> Option<Vec<(u64, u64)>> {
    let (ho, hn) = (old.header(), new.header());
    if ho.chunk_size != hn.chunk_size {
        return None;
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let (common, longer) = (ho.image_size.min(hn.image_size), ho.image_size.max(hn.image_size));
    let chunks = common.div_ceil(ho.chunk_size);
    for i in 0..chunks {
        let last_partial = (i + 1) * ho.chunk_size > common && ho.image_size != hn.image_size;
        if old.digest(i) == new.digest(i) && !last_partial {
            continue;
        }
        let start = i * ho.chunk_size;
        let end = ((i + 1) * ho.chunk_size).min(common);
        match ranges.last_mut() {
            Some((s, l)) if *s + *l == start => *l = end - *s,
            _ => ranges.push((start, end - start)),
        }
    }
    if longer > common {
        match ranges.last_mut() {
            Some((s, l)) if *s + *l == common => *l = longer - *s,
            _ => ranges.push((common, longer - common)),
        }
    }
    Some(ranges)
}
