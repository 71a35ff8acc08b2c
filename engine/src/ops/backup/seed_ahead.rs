//! Seeding a backup session from an earlier index, one segment ahead of
//! the workers.
//!
//! A backup asks the session about every chunk it reads; most of an
//! image's chunks are the earlier backup's again, at the same offsets. So
//! a thread asks the index about the earlier digests in batches (PBS's
//! "known chunks"), segment after segment, while the workers read: their
//! questions are answered from memory, and nobody waits for one long
//! up-front lookup. A worker that would ask about an unread chunk the
//! seeder has not reached yet waits for it, so every answer the plan
//! expects comes from the seed.

use std::ops::Range;
use std::sync::{Condvar, Mutex};

use super::chunk_ranges::ChunkRanges;
use crate::chunking::digest::{Digest, ZeroChunks};
use crate::format::fixed_index::FixedIndex;
use crate::store::ChunkSink;
use crate::store::StoreError;

/// Chunks per segment: 128 MiB of 64 KiB chunks, one batched read.
const SEGMENT: u64 = 2048;

pub(super) struct SeedAhead<'a> {
    index: &'a FixedIndex,
    /// Chunks not to seed (the changed ones of a bitmap base).
    skip: Option<&'a ChunkRanges>,
    zeros: ZeroChunks,
    segment: u64,
    /// How many chunks from the start are seeded (u64::MAX once finished,
    /// successfully or not).
    done: Mutex<u64>,
    moved: Condvar,
}

impl<'a> SeedAhead<'a> {
    pub(super) fn new(index: &'a FixedIndex, skip: Option<&'a ChunkRanges>) -> SeedAhead<'a> {
        SeedAhead {
            index,
            skip,
            zeros: ZeroChunks::new(index.header().image_size, index.chunk_size().bytes()),
            segment: SEGMENT,
            done: Mutex::new(0),
            moved: Condvar::new(),
        }
    }

    /// Seeds every segment in order (the seeding thread's body).
    pub(super) fn run(&self, session: &dyn ChunkSink) -> Result<(), StoreError> {
        // However this ends, no worker is left waiting.
        struct Finished<'b, 'c>(&'b SeedAhead<'c>);
        impl Drop for Finished<'_, '_> {
            fn drop(&mut self) {
                self.0.publish(u64::MAX);
            }
        }
        let _finished = Finished(self);
        let count = self.index.chunk_count();
        for start in (0..count).step_by(self.segment as usize) {
            let range = start..(start + self.segment).min(count);
            session.seed(&mut self.digests(range.clone()))?;
            self.publish(range.end);
        }
        Ok(())
    }

    /// Waits until chunk `i` is seeded (or seeding ended).
    pub(super) fn wait_for(&self, i: u64) {
        let mut done = self.done.lock().expect("lock poisoned");
        while *done <= i {
            done = self.moved.wait(done).expect("lock poisoned");
        }
    }

    fn publish(&self, done: u64) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = done;
        self.moved.notify_all();
    }

    fn digests(&self, range: Range<u64>) -> impl Iterator<Item = Digest> + '_ {
        range
            .filter(|&i| !self.skip.is_some_and(|s| s.contains(i)))
            .map(|i| self.index.digest(i))
            .filter(|d| !self.zeros.is_zero_digest(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::snapshot::Kind;
    use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
    use crate::progress::NoProgress;
    use crate::source::FileSource;
    use crate::store::backup_session::BackupSession;
    use crate::store::{ChunkSink, Store};

    const CHUNK: usize = 64 * 1024;

    fn image(dir: &std::path::Path, chunks: u32) -> std::path::PathBuf {
        let data: Vec<u8> = (0..chunks * CHUNK as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let path = dir.join("d.img");
        std::fs::write(&path, data).unwrap();
        path
    }

    fn back_up(store: &Store, path: &std::path::Path) -> crate::format::snapshot::Manifest {
        let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(path).unwrap()));
        backup_images(
            store,
            &BackupOptions::new(Kind::Host, "a"),
            vec![input],
            &NoProgress,
        )
        .unwrap()
    }

    #[test]
    fn segments_are_seeded_in_order_and_waiters_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), ChunkSize::new(CHUNK as u64).unwrap()).unwrap();
        let m = back_up(&store, &image(dir.path(), 5));
        let fidx = store.catalog().open_image_index(&m.name(), "d.img").unwrap();
        let skip = ChunkRanges::touching(
            [(CHUNK as u64, CHUNK as u64)],
            ChunkSize::new(CHUNK as u64).unwrap(),
        );
        let mut ahead = SeedAhead::new(&fidx, Some(&skip));
        ahead.segment = 2;
        let session = BackupSession::begin(&store, "test").unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| ahead.wait_for(4));
            ahead.run(&session).unwrap();
            waiter.join().unwrap();
        });
        // Chunk 1 was skipped: its entry removed, only the seeded ones stay known.
        let (d0, d1) = (fidx.digest(0), fidx.digest(1));
        for d in [d0, d1] {
            let loc = store.index().lookup(&d).unwrap().unwrap();
            store.index().remove(&[(d, loc)]).unwrap();
        }
        store.index().refresh().unwrap();
        assert!(session.is_known(&d0).unwrap());
        assert!(!session.is_known(&d1).unwrap());
    }

    #[test]
    fn a_rebackup_seeded_from_the_previous_one_still_stores_what_the_index_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), ChunkSize::new(CHUNK as u64).unwrap()).unwrap();
        let path = image(dir.path(), 6);
        let first = back_up(&store, &path);
        let fidx = store.catalog().open_image_index(&first.name(), "d.img").unwrap();
        let lost = fidx.digest(3);
        let loc = store.index().lookup(&lost).unwrap().unwrap();
        store.index().remove(&[(lost, loc)]).unwrap();
        let second = back_up(&store, &path);
        let stats = &second.archives[0].stats;
        assert_eq!((stats.new_chunks, stats.reused_chunks), (1, 5));
        assert!(store.index().lookup(&lost).unwrap().is_some());
    }
}
