//! Content-defined chunking of byte streams (FastCDC 2020, `fastcdc` crate).
//!
//! Data is pushed in pieces of any size; a chunk is cut only when at least
//! `max` bytes are buffered (or at a forced cut / the end), so the cut points
//! depend on the bytes alone, never on how they were pushed. That is what
//! makes chunks of unchanged data dedup across backups; a golden test pins
//! the cut points.

use std::sync::Arc;

use fastcdc::v2020::FastCDC;

use super::keyed_cdc::ChunkerKey;

/// Chunk size parameters: `min = avg / 4`, `max = avg * 4`, as in the
/// FastCDC paper. The average is stored with each archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdcParams {
    pub avg: u32,
}

impl CdcParams {
    /// The default average, chosen from measurements (format-spec/tree-archive.md).
    pub(crate) const DEFAULT_AVG: u32 = 1 << 20;

    pub fn new(avg: u32) -> Option<CdcParams> {
        (avg.is_power_of_two() && (1 << 12..=1 << 22).contains(&avg)).then_some(CdcParams { avg })
    }

    pub fn min(&self) -> u32 {
        self.avg / 4
    }

    pub fn max(&self) -> u32 {
        self.avg * 4
    }
}

impl Default for CdcParams {
    fn default() -> Self {
        CdcParams {
            avg: Self::DEFAULT_AVG,
        }
    }
}

/// Cuts a pushed byte stream into chunks.
pub(crate) struct StreamChunker {
    params: CdcParams,
    /// A protected store's chunker key: cut points from the keyed chunker
    /// (`keyed_cdc`) instead of FastCDC's public gear table.
    key: Option<Arc<ChunkerKey>>,
    /// Bytes `start..` of `buf` are pending; the consumed front is dropped
    /// only when it is large, so a cut does not move the bytes after it.
    buf: Vec<u8>,
    start: usize,
}

impl StreamChunker {
    pub(crate) fn new(params: CdcParams, key: Option<Arc<ChunkerKey>>) -> StreamChunker {
        StreamChunker {
            params,
            key,
            buf: Vec::with_capacity(4 * params.max() as usize),
            start: 0,
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds bytes; calls `emit` with every chunk that is now complete.
    pub(crate) fn push<E>(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let max = self.params.max() as usize;
        while !data.is_empty() {
            if self.start >= 2 * max {
                let cut = self.start;
                self.buf.drain(..cut);
                self.start = 0;
            }
            let take = (2 * max - self.pending()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while self.pending() >= max {
                self.cut_one(emit)?;
            }
        }
        Ok(())
    }

    /// Emits everything buffered (as content-defined chunks, the last one
    /// possibly short): the end of the stream, or a point where the stream
    /// continues with chunks taken from elsewhere.
    pub(crate) fn flush<E>(&mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while self.pending() > 0 {
            self.cut_one(emit)?;
        }
        self.buf.clear();
        self.start = 0;
        Ok(())
    }

    fn cut_one<E>(&mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let p = self.params;
        let pending = &self.buf[self.start..];
        let end = match &self.key {
            Some(key) => key.cut(pending, p.min() as usize, p.avg as usize, p.max() as usize),
            None => {
                FastCDC::new(pending, p.min(), p.avg, p.max())
                    .cut(0, pending.len())
                    .1
            }
        };
        let end = end.clamp(1, pending.len());
        emit(&pending[..end])?;
        self.start += end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def1u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect()
    }

    fn cuts(params: CdcParams, input: &[u8], piece: usize) -> Vec<usize> {
        keyed_cuts(params, None, input, piece)
    }

    fn keyed_cuts(params: CdcParams, key: Option<Arc<ChunkerKey>>, input: &[u8], piece: usize) -> Vec<usize> {
        let mut c = StreamChunker::new(params, key);
        let mut out = Vec::new();
        let mut at = 0;
        let mut emit = |chunk: &[u8]| {
            at += chunk.len();
            out.push(at);
            Ok::<_, ()>(())
        };
        for p in input.chunks(piece) {
            c.push(p, &mut emit).unwrap();
        }
        c.flush(&mut emit).unwrap();
        out
    }

    /// Golden cut points: a change here breaks dedup against every existing
    /// store, so it needs a new chunker id in the format.
    #[test]
    fn golden_cut_points() {
        let input = data(1 << 20);
        let got = cuts(CdcParams::new(65536).unwrap(), &input, 4096);
        assert_eq!(got.len(), GOLDEN.len(), "{got:?}");
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: &[usize] = &[
        39079, 103068, 171611, 270743, 351779, 377091, 473077, 684333, 781240, 815694, 836386, 867028,
        885790, 978314, 1048576,
    ];

    #[test]
    fn cuts_do_not_depend_on_how_data_is_pushed() {
        let input = data(3 << 20);
        let p = CdcParams::new(65536).unwrap();
        let a = cuts(p, &input, 1);
        assert_eq!(a, cuts(p, &input, 7777));
        assert_eq!(a, cuts(p, &input, input.len()));
        assert!(a.windows(2).all(|w| w[1] - w[0] <= p.max() as usize));
        // An insertion moves only the cuts near it.
        let mut shifted = input[..100_000].to_vec();
        shifted.extend_from_slice(b"inserted");
        shifted.extend_from_slice(&input[100_000..]);
        let b = cuts(p, &shifted, 65536);
        let same = b
            .iter()
            .filter(|c| **c > 400_000 && a.contains(&(**c - 8)))
            .count();
        assert!(same * 10 >= a.iter().filter(|c| **c > 400_000).count() * 9);
    }

    /// The keyed chunker's stream cuts exactly where its rule,
    /// `ChunkerKey::cut`, does, however the bytes are pushed, and around
    /// flushes.
    #[test]
    fn keyed_stream_cuts_where_the_rule_does() {
        let key = Arc::new(ChunkerKey::new(&[9; 32]));
        let input = data(3 << 20);
        for avg in [4096, 65536] {
            let p = CdcParams::new(avg).unwrap();
            let (min, max) = (p.min() as usize, p.max() as usize);
            let mut rule = Vec::new();
            let mut at = 0;
            while at < input.len() {
                at += key.cut(&input[at..], min, avg as usize, max);
                rule.push(at);
            }
            for piece in [1000, 65536, 1 << 20, input.len()] {
                assert_eq!(
                    keyed_cuts(p, Some(key.clone()), &input, piece),
                    rule,
                    "avg {avg}, pieces of {piece}"
                );
            }
        }
        // A flush starts the stream over: its first chunk is cut as if
        // the stream began there.
        let p = CdcParams::new(4096).unwrap();
        let mut c = StreamChunker::new(p, Some(key.clone()));
        let mut got = Vec::new();
        let mut emit = |chunk: &[u8]| {
            got.push(chunk.len());
            Ok::<_, ()>(())
        };
        c.push(&input[..5000], &mut emit).unwrap();
        c.flush(&mut emit).unwrap();
        c.push(&input[5000..100_000], &mut emit).unwrap();
        c.flush(&mut emit).unwrap();
        let mut want = keyed_cuts(p, Some(key.clone()), &input[..5000], 5000);
        let second = keyed_cuts(p, Some(key), &input[5000..100_000], 95_000);
        want.extend(second.iter().map(|c| c + 5000));
        let got: Vec<usize> = got
            .iter()
            .scan(0, |at, n| {
                *at += n;
                Some(*at)
            })
            .collect();
        assert_eq!(got, want);
    }
}
