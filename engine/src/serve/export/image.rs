//! An image archive as a [`BlockDevice`]: its fixed index, the shared chunk
//! cache, and (for `--writable`) a copy-on-write overlay.

use std::sync::Mutex;

use super::device::{BlockDevice, Extent, Fault, Piece};
use super::overlay::Overlay;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::ZeroChunks;
use crate::format::fixed_index::FixedIndex;
use crate::format::nbd_wire::{STATE_HOLE, STATE_ZERO};
use crate::store::chunk_cache::{CacheStats, ChunkCache};
use crate::store::Store;

pub struct ImageOptions {
    /// Bytes of decoded chunks kept in memory.
    pub cache_bytes: usize,
    /// How far ahead of a sequential reader chunks are loaded, in bytes.
    pub read_ahead: u64,
    /// Writes go to this overlay instead of being refused.
    pub overlay: Option<Overlay>,
    /// Who reads ("export", "mount"): the device's read session names it
    /// with the label, in GC's messages.
    pub reader: &'static str,
}

/// Recently seen readers: where each one's last read ended, how often it
/// was continued, and up to which chunk read-ahead was already asked for.
#[derive(Clone, Copy, Default)]
struct Stream {
    end: u64,
    continued: u32,
    prefetched_to: u64,
}

const STREAMS: usize = 8;

pub struct ImageDevice<'s> {
    index: FixedIndex,
    label: String,
    size: u64,
    chunk_size: ChunkSize,
    zeros: ZeroChunks,
    cache: ChunkCache<'s>,
    read_ahead: u64,
    overlay: Option<Overlay>,
    streams: Mutex<([Stream; STREAMS], usize)>,
}

impl<'s> ImageDevice<'s> {
    /// Serves `index` (named `label` in log messages) from `store`.
    pub fn new(store: &'s Store, index: FixedIndex, label: String, opts: ImageOptions) -> ImageDevice<'s> {
        let size = index.header().image_size;
        let chunk_size = index.chunk_size();
        let chunk = chunk_size.bytes() as usize;
        ImageDevice {
            size,
            chunk_size,
            zeros: ZeroChunks::new(size, chunk_size.bytes()),
            cache: ChunkCache::new(
                store,
                opts.cache_bytes.max(chunk),
                &format!("{} {label}", opts.reader),
            ),
            read_ahead: opts.read_ahead,
            overlay: opts.overlay,
            streams: Mutex::new(([Stream::default(); STREAMS], 0)),
            index,
            label,
        }
    }

    pub fn cache(&self) -> &ChunkCache<'s> {
        &self.cache
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Chunk `i` of the image, verified; `None` for a zero chunk.
    fn chunk(&self, i: u64) -> Result<Option<std::sync::Arc<Vec<u8>>>, Fault> {
        let (offset, len) = self.chunk_size.span(i, self.size);
        let digest = self.index.digest(i);
        if self.zeros.is_zero_digest(&digest) {
            return Ok(None);
        }
        self.cache
            .get(&digest, len)
            .map(Some)
            .map_err(|e| Fault::io(format!("{}: chunk {digest} at offset {offset}: {e}", self.label)))
    }

    /// The base image's bytes `offset..offset + len` (within one chunk).
    fn base_piece(&self, offset: u64, len: usize) -> Result<Piece, Fault> {
        let cs = self.chunk_size.bytes();
        let within = (offset % cs) as usize;
        Ok(match self.chunk(offset / cs)? {
            Some(data) => Piece::Chunk(data, within..within + len),
            None => Piece::Zero(len),
        })
    }

    /// Notes a read of `offset..end` and, when it continues an earlier one,
    /// asks for the chunks ahead of it.
    fn read_ahead(&self, offset: u64, end: u64) {
        if self.read_ahead == 0 {
            return;
        }
        let cs = self.chunk_size.bytes();
        let (from, to) = {
            let mut guard = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let (streams, next) = &mut *guard;
            // Clients keep several requests in flight, so a sequential
            // reader's requests arrive a little out of order.
            let near = streams.iter_mut().find(|s| {
                s.end != 0
                    && offset <= s.end.saturating_add(self.read_ahead)
                    && offset.saturating_add(self.read_ahead) >= s.end
            });
            let Some(stream) = near else {
                streams[*next] = Stream {
                    end,
                    continued: 0,
                    prefetched_to: end.div_ceil(cs),
                };
                *next = (*next + 1) % STREAMS;
                return;
            };
            stream.end = stream.end.max(end);
            stream.continued += 1;
            // A random reader lands near an earlier read now and then; only
            // a reader that keeps going is worth loading chunks ahead for.
            if stream.continued < 2 {
                return;
            }
            let to = stream
                .end
                .saturating_add(self.read_ahead)
                .div_ceil(cs)
                .min(self.chunk_size.count(self.size));
            let from = stream.prefetched_to.max(stream.end.div_ceil(cs));
            stream.prefetched_to = stream.prefetched_to.max(to);
            (from, to)
        };
        for i in from..to {
            let digest = self.index.digest(i);
            if !self.zeros.is_zero_digest(&digest) {
                self.cache.prefetch(&digest, self.chunk_size.span(i, self.size).1);
            }
        }
    }
}

impl BlockDevice for ImageDevice<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<Piece>, Fault> {
        let end = offset + len as u64;
        let cs = self.chunk_size.bytes();
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let piece_end = end.min((pos / cs + 1) * cs);
            let n = (piece_end - pos) as usize;
            match &self.overlay {
                Some(o) if o.any_written(pos, piece_end) => {
                    o.read(pos, n, &mut pieces, |at, len| self.base_piece(at, len))?
                }
                _ => pieces.push(self.base_piece(pos, n)?),
            }
            pos = piece_end;
        }
        self.read_ahead(offset, end);
        Ok(pieces)
    }

    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let end = (offset + len).min(self.size);
        let cs = self.chunk_size.bytes();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = pos / cs;
            let piece_end = end.min((i + 1) * cs);
            let zero = self.zeros.is_zero_digest(&self.index.digest(i))
                && !self
                    .overlay
                    .as_ref()
                    .is_some_and(|o| o.any_written(pos, piece_end));
            let flags = if zero { STATE_HOLE | STATE_ZERO } else { 0 };
            match out.last_mut() {
                // Extent lengths travel as u32.
                Some(last) if last.flags == flags && last.len + (piece_end - pos) <= u32::MAX as u64 => {
                    last.len += piece_end - pos
                }
                _ => out.push(Extent {
                    len: piece_end - pos,
                    flags,
                }),
            }
            pos = piece_end;
        }
        out
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Fault> {
        match &self.overlay {
            Some(o) => o.write(offset, data, |at, buf| {
                // The overlay fills the rest of a block it copies from the base.
                let mut filled = 0;
                let cs = self.chunk_size.bytes();
                while filled < buf.len() {
                    let pos = at + filled as u64;
                    let n = (buf.len() - filled).min(((pos / cs + 1) * cs - pos) as usize);
                    match self.base_piece(pos, n)? {
                        Piece::Chunk(c, r) => buf[filled..filled + n].copy_from_slice(&c[r]),
                        _ => buf[filled..filled + n].fill(0),
                    }
                    filled += n;
                }
                Ok(())
            }),
            None => Err(Fault {
                errno: crate::format::nbd_wire::EPERM,
                message: format!("{}: export is read-only", self.label),
            }),
        }
    }

    fn flush(&self) -> Result<(), Fault> {
        match &self.overlay {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn cache(&self, offset: u64, len: u64) {
        let end = (offset + len).min(self.size);
        let cs = self.chunk_size.bytes();
        for i in offset / cs..end.div_ceil(cs) {
            let digest = self.index.digest(i);
            if !self.zeros.is_zero_digest(&digest) {
                self.cache.prefetch(&digest, self.chunk_size.span(i, self.size).1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::export::testing::backed_up;

    const C: u64 = 64 << 10;

    fn device_test(reads: &[u64], expect_prefetched: bool) {
        let data: Vec<u8> = (0..10 * C as u32).map(|i| (i / 7 % 249) as u8 + 1).collect();
        let (_dir, store, fidx) = backed_up(&data);
        let opts = ImageOptions {
            cache_bytes: 1 << 20,
            read_ahead: 2 * C,
            overlay: None,
            reader: "test",
        };
        let dev = ImageDevice::new(&store, fidx, "t".into(), opts);
        std::thread::scope(|s| {
            s.spawn(|| dev.cache().run_prefetcher());
            for &chunk in reads {
                let pieces = dev.read(chunk * C + 100, 4096).unwrap();
                assert_eq!(
                    pieces[0].data().unwrap(),
                    &data[(chunk * C + 100) as usize..(chunk * C + 4196) as usize]
                );
            }
            let t = std::time::Instant::now();
            while expect_prefetched && dev.stats().prefetched < 2 && t.elapsed().as_secs() < 10 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            dev.cache().stop();
        });
        assert_eq!(
            dev.stats().prefetched >= 2,
            expect_prefetched,
            "{:?}",
            dev.stats()
        );
    }

    #[test]
    fn a_reader_that_keeps_going_gets_read_ahead() {
        device_test(&[0, 1, 2], true);
    }

    #[test]
    fn random_reads_get_no_read_ahead() {
        device_test(&[0, 6, 3, 9, 1, 5], false);
    }

    #[test]
    fn extents_merge_and_stay_within_the_request() {
        let data = crate::serve::export::testing::sample_image();
        let (_dir, store, fidx) = backed_up(&data);
        let opts = ImageOptions {
            cache_bytes: 1 << 20,
            read_ahead: 0,
            overlay: None,
            reader: "test",
        };
        let dev = ImageDevice::new(&store, fidx, "t".into(), opts);
        let e = |o, l| {
            dev.extents(o, l)
                .iter()
                .map(|e| (e.len, e.flags))
                .collect::<Vec<_>>()
        };
        assert_eq!(e(100, 200), vec![(200, 0)]);
        assert_eq!(e(C - 10, C + 20), vec![(10, 0), (C, 3), (10, 0)]);
        assert_eq!(e(C, 10), vec![(10, 3)]);
        // A zero chunk reads as a hole without touching the store.
        let pieces = dev.read(C + 5, 100).unwrap();
        assert!(matches!(pieces.as_slice(), [Piece::Zero(100)]));
        assert_eq!(dev.stats().loads, 0);
    }
}
