//! Sets of chunk numbers kept as sorted ranges, so that a read plan's
//! memory follows the fragmentation of a disk's map, not its size.

use crate::chunking::chunker::ChunkSize;

/// A sorted set of disjoint chunk ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRanges(Vec<std::ops::Range<u64>>);

impl ChunkRanges {
    /// Chunks that overlap any of the byte extents `(offset, len)` (sorted).
    pub fn touching(extents: impl IntoIterator<Item = (u64, u64)>, chunk_size: ChunkSize) -> ChunkRanges {
        let cs = chunk_size.bytes();
        let mut r = ChunkRanges::default();
        for (offset, len) in extents.into_iter().filter(|e| e.1 > 0) {
            r.push(offset / cs..(offset + len).div_ceil(cs));
        }
        r
    }

    /// Chunks lying entirely inside the byte extents `(offset, len)` (sorted);
    /// the image's short last chunk counts as inside if the extent reaches
    /// the end of the image.
    pub fn inside(
        extents: impl IntoIterator<Item = (u64, u64)>,
        chunk_size: ChunkSize,
        size: u64,
    ) -> ChunkRanges {
        let cs = chunk_size.bytes();
        let mut r = ChunkRanges::default();
        for (offset, len) in extents {
            let end = offset + len;
            let last = if end >= size {
                chunk_size.count(size)
            } else {
                end / cs
            };
            r.push(offset.div_ceil(cs)..last);
        }
        r
    }

    fn push(&mut self, range: std::ops::Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => self.0.push(range),
        }
    }

    pub fn contains(&self, i: u64) -> bool {
        let at = self.0.partition_point(|r| r.end <= i);
        self.0.get(at).is_some_and(|r| r.start <= i)
    }

    /// The chunks in either set.
    pub(super) fn union(&self, other: &ChunkRanges) -> ChunkRanges {
        let mut all: Vec<_> = self.0.iter().chain(&other.0).cloned().collect();
        all.sort_unstable_by_key(|r| r.start);
        let mut r = ChunkRanges::default();
        for range in all {
            r.push(range);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_union_of_chunk_ranges_merges_overlaps_and_neighbours() {
        let cs = ChunkSize::new(64 * 1024).unwrap();
        let a = ChunkRanges::inside([(0, 3 * 65536), (10 * 65536, 65536)], cs, 1 << 30);
        let b = ChunkRanges::inside([(2 * 65536, 2 * 65536), (20 * 65536, 65536)], cs, 1 << 30);
        let u = a.union(&b);
        assert_eq!(u, ChunkRanges(vec![0..4, 10..11, 20..21]));
        assert_eq!(u, b.union(&a));
        assert_eq!(a.union(&ChunkRanges::default()), a);
    }
}
