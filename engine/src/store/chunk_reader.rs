//! Reading chunks back: one record at a time, or a batch whose records
//! are read from each pack in as few ranged reads as their neighbours allow.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use super::backend::ObjectRead;
use super::index::ChunkLocation;
use super::packs::{self, PackMap};
use super::seam::{BatchItem, ChunkSource};
use super::session::{MaintenanceLock, ReadSession};
use super::{datastore::Store, error::StoreError};
use crate::chunking::digest::Digest;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::pack::{PackError, PackId};

/// Reads verified chunks from a store. Keeps a few pack files open; one per thread.
///
/// A reader is safe from GC by construction: [`new`](Self::new) registers
/// its own read session (while it lives, GC removes no chunk condemned
/// after it started), and only GC itself, which holds the maintenance lock,
/// makes one without (`for_maintenance`).
pub(crate) struct ChunkReader<'a> {
    store: &'a Store,
    _session: Option<ReadSession>,
    decoder: ChunkDecoder,
    open_packs: HashMap<PackId, Box<dyn ObjectRead>>,
    /// Record bytes for `read_into`, decompressed content for `check`.
    buf: Vec<u8>,
    /// The pack [`check`](Self::check) walks: callers go in pack order.
    mapped: Option<(PackId, PackMap)>,
}

impl<'a> ChunkReader<'a> {
    pub(crate) fn new(store: &'a Store) -> Result<ChunkReader<'a>, StoreError> {
        let session = ReadSession::begin(store.root(), "reading chunks");
        ChunkReader::with_session(store, Some(session))
    }

    /// GC's reader: the maintenance lock it holds is what keeps other GCs
    /// away, and a session of its own would only postpone its own epochs.
    pub(crate) fn for_maintenance(
        store: &'a Store,
        _held: &MaintenanceLock,
    ) -> Result<ChunkReader<'a>, StoreError> {
        ChunkReader::with_session(store, None)
    }

    fn with_session(store: &'a Store, session: Option<ReadSession>) -> Result<ChunkReader<'a>, StoreError> {
        let decoder = store.chunk_decoder()?;
        Ok(ChunkReader {
            store,
            _session: session,
            decoder,
            open_packs: HashMap::new(),
            buf: Vec::new(),
            mapped: None,
        })
    }

    /// Checks the chunk at `loc` as [`read_into`](Self::read_into) would,
    /// without copying it out: the record is read through a map of its pack
    /// and a raw payload is hashed in place. Fastest when called in pack order.
    pub(crate) fn check(&mut self, digest: &Digest, loc: &ChunkLocation) -> Result<(), StoreError> {
        match self.try_check(digest, loc) {
            Err(StoreError::Pack(PackError::Io { source, .. }))
                if source.kind() == io::ErrorKind::NotFound =>
            {
                self.store.index.refresh()?;
                let moved = self
                    .store
                    .index
                    .lookup(digest)?
                    .ok_or(StoreError::ChunkMissing { digest: *digest })?;
                self.try_check(digest, &moved)
            }
            other => other,
        }
    }

    fn try_check(&mut self, digest: &Digest, loc: &ChunkLocation) -> Result<(), StoreError> {
        if self.mapped.as_ref().is_none_or(|(id, _)| *id != loc.pack) {
            self.mapped = None;
            let map = PackMap::open(self.store.packs(), loc.pack)?;
            self.mapped = Some((loc.pack, map));
        }
        let (_, map) = self.mapped.as_ref().expect("mapped above");
        let record = map.record(loc.offset, loc.record_len)?;
        let checked = self
            .decoder
            .check(record, digest, &mut self.buf)
            .map_err(|source| StoreError::ChunkDamaged {
                digest: *digest,
                pack: map.path().to_path_buf(),
                source,
            });
        map.release(loc.offset, loc.record_len);
        checked
    }

    fn try_read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError> {
        let path = self.try_read_record(digest)?;
        self.decoder
            .decode_to_slice(&self.buf, digest, out)
            .map_err(|source| StoreError::ChunkDamaged {
                digest: *digest,
                pack: path,
                source,
            })
    }

    /// Reads chunk `digest`'s record into `self.buf`; returns its pack's path.
    fn try_read_record(&mut self, digest: &Digest) -> Result<PathBuf, StoreError> {
        let loc = self
            .store
            .index
            .lookup(digest)?
            .ok_or(StoreError::ChunkMissing { digest: *digest })?;
        let path = self.store.packs().location(&loc.pack.name());
        let obj = open_pack(&mut self.open_packs, self.store, loc.pack)?;
        packs::read_record_into(obj, &path, loc.offset, loc.record_len, &mut self.buf)?;
        Ok(path)
    }
}

impl ChunkSource for ChunkReader<'_> {
    /// Reads chunk `digest` into the front of `out` (which must be large
    /// enough for it) after checking CRCs and digest; returns its length.
    fn read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError> {
        match self.try_read_into(digest, out) {
            // Garbage collection may have moved the chunk to a new pack after
            // this process last looked: look again, once.
            Err(StoreError::Pack(PackError::Io { source, .. }))
                if source.kind() == io::ErrorKind::NotFound =>
            {
                self.store.index.refresh()?;
                self.open_packs.clear();
                self.try_read_into(digest, out)
            }
            other => other,
        }
    }

    /// Reads a batch of chunks, each into `out[item.at..item.at + item.len]`,
    /// checked as [`read_into`](Self::read_into) checks them; returns each
    /// item's result in `items`' order. The batch is looked up in one index
    /// read, and the records of each pack are read in ranges of neighbours
    /// ([`COALESCE_GAP`], [`COALESCE_MAX`]): a restore of small chunks makes
    /// a few large reads, which a cold disk (or an object store) serves far
    /// faster than one small read per chunk.
    fn read_batch(&mut self, items: &[BatchItem], out: &mut [u8]) -> Vec<Result<usize, StoreError>> {
        let digests: Vec<Digest> = items.iter().map(|i| i.digest).collect();
        let mut results: Vec<Option<Result<usize, StoreError>>> = (0..items.len()).map(|_| None).collect();
        let decoder = &mut self.decoder;
        let packs = self.store.packs();
        let each = |i: usize, record: Result<(&[u8], PackId), StoreError>| {
            let item = items[i];
            results[i] = Some(record.and_then(|(record, pack)| {
                decoder
                    .decode_to_slice(record, &item.digest, &mut out[item.at..item.at + item.len])
                    .map_err(|source| StoreError::ChunkDamaged {
                        digest: item.digest,
                        pack: packs.location(&pack.name()),
                        source,
                    })
            }));
        };
        Self::for_each_record(&mut self.open_packs, &mut self.buf, self.store, &digests, each);
        results
            .into_iter()
            .map(|r| r.expect("every item is looked up, then read or failed"))
            .collect()
    }
}

impl ChunkReader<'_> {
    /// Calls `each(i, record)` for the stored record of every chunk
    /// `digests[i]`, unchecked, in the order the store keeps them: the
    /// batch is looked up in one index read and each pack's records are
    /// read in ranges of neighbours ([`COALESCE_GAP`], [`COALESCE_MAX`]),
    /// so a restore of small chunks makes a few large reads, which a cold
    /// disk (or an object store) serves far faster than one per chunk.
    /// A chunk missing or unreadable comes with why. What a server hands
    /// its clients (who check every record), and what `read_batch` decodes.
    pub(crate) fn read_records(
        &mut self,
        digests: &[Digest],
        each: impl FnMut(usize, Result<&[u8], StoreError>),
    ) {
        let mut each = each;
        Self::for_each_record(
            &mut self.open_packs,
            &mut self.buf,
            self.store,
            digests,
            |i, r| each(i, r.map(|(record, _)| record)),
        );
    }

    fn for_each_record(
        open_packs: &mut HashMap<PackId, Box<dyn ObjectRead>>,
        buf: &mut Vec<u8>,
        store: &Store,
        digests: &[Digest],
        mut each: impl FnMut(usize, Result<(&[u8], PackId), StoreError>),
    ) {
        let Ok(entries) = store.index.entries(digests) else {
            // Each chunk alone says what is wrong.
            for (i, d) in digests.iter().enumerate() {
                let pack = read_alone(open_packs, buf, store, d);
                each(i, pack.map(|p| (&buf[..], p)));
            }
            return;
        };
        let mut found: Vec<(usize, ChunkLocation)> = Vec::with_capacity(digests.len());
        for (i, entry) in entries.into_iter().enumerate() {
            match entry {
                Some(e) => found.push((i, e.loc)),
                None => each(i, Err(StoreError::ChunkMissing { digest: digests[i] })),
            }
        }
        found.sort_by_key(|(_, loc)| (loc.pack.0, loc.offset));
        for Run { members, start, end } in coalesce(&found) {
            let members = &found[members];
            let pack = members[0].1.pack;
            if read_range(open_packs, buf, store, pack, start, end).is_err() {
                // Moved by GC, truncated, unreadable: each chunk alone says
                // which, after a refresh of the index (GC may have moved it).
                let _ = store.index.refresh();
                open_packs.clear();
                for &(i, _) in members {
                    let pack = read_alone(open_packs, buf, store, &digests[i]);
                    each(i, pack.map(|p| (&buf[..], p)));
                }
                continue;
            }
            for &(i, loc) in members {
                let from = (loc.offset - start) as usize;
                each(i, Ok((&buf[from..from + loc.record_len as usize], pack)));
            }
        }
    }
}

/// Reads the record of chunk `digest` alone into `buf`, looked up afresh;
/// returns its pack.
fn read_alone(
    open_packs: &mut HashMap<PackId, Box<dyn ObjectRead>>,
    buf: &mut Vec<u8>,
    store: &Store,
    digest: &Digest,
) -> Result<PackId, StoreError> {
    let loc = store
        .index
        .lookup(digest)?
        .ok_or(StoreError::ChunkMissing { digest: *digest })?;
    let path = store.packs().location(&loc.pack.name());
    let obj = open_pack(open_packs, store, loc.pack)?;
    packs::read_record_into(obj, &path, loc.offset, loc.record_len, buf)?;
    Ok(loc.pack)
}

/// Reads bytes `start..end` of pack `id` into `buf`.
fn read_range(
    open_packs: &mut HashMap<PackId, Box<dyn ObjectRead>>,
    buf: &mut Vec<u8>,
    store: &Store,
    id: PackId,
    start: u64,
    end: u64,
) -> Result<(), StoreError> {
    let obj = open_pack(open_packs, store, id)?;
    buf.resize((end - start) as usize, 0);
    obj.read_at(buf, start).map_err(|source| {
        PackError::Io {
            path: store.packs().location(&id.name()),
            source,
        }
        .into()
    })
}

/// Pack `id` from `open`, opened now if it is not there (at most 64 stay open).
fn open_pack<'o>(
    open: &'o mut HashMap<PackId, Box<dyn ObjectRead>>,
    store: &Store,
    id: PackId,
) -> Result<&'o dyn ObjectRead, StoreError> {
    if !open.contains_key(&id) {
        if open.len() >= 64 {
            open.clear();
        }
        let obj = store.packs().open(&id.name()).map_err(|source| PackError::Io {
            path: store.packs().location(&id.name()),
            source,
        })?;
        open.insert(id, obj);
    }
    Ok(open[&id].as_ref())
}

/// Records of one pack at most this far apart are read in one request:
/// reading the gap costs less than another request (a seek on a disk, a
/// GET on an object store).
const COALESCE_GAP: u64 = 64 << 10;

/// The largest single read of a batch: bounds the reader's buffer.
const COALESCE_MAX: u64 = 8 << 20;

/// Records of one pack read in one request: `sorted[members]` lie in
/// `start..end`.
struct Run {
    members: std::ops::Range<usize>,
    start: u64,
    end: u64,
}

/// Splits locations sorted by (pack, offset) into runs read as one range.
fn coalesce(sorted: &[(usize, ChunkLocation)]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (k, (_, loc)) in sorted.iter().enumerate() {
        let rec_end = loc.offset + loc.record_len as u64;
        if let Some(run) = runs.last_mut() {
            let head = sorted[run.members.start].1;
            if loc.pack == head.pack
                && loc.offset <= run.end + COALESCE_GAP
                && rec_end.max(run.end) - run.start <= COALESCE_MAX
            {
                run.members.end = k + 1;
                run.end = run.end.max(rec_end);
                continue;
            }
        }
        runs.push(Run {
            members: k..k + 1,
            start: loc.offset,
            end: rec_end,
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;

    fn loc(pack: u8, offset: u64, record_len: u32) -> (usize, ChunkLocation) {
        let loc = ChunkLocation {
            pack: PackId([pack; 16]),
            offset,
            record_len,
            raw_len: record_len,
        };
        (0, loc)
    }

    /// A reader holds its own GC-safety session: while it lives, GC keeps
    /// the chunks of a snapshot forgotten after it started; once it is
    /// dropped, the next GC removes them.
    #[test]
    fn a_live_reader_keeps_gc_from_removing_what_it_may_read() {
        use crate::format::snapshot::Kind;
        use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
        use crate::ops::gc::{gc, GcOptions};
        use crate::progress::NoProgress;
        use crate::store::gc::FILE_TIME_GRACE_NS;
        use crate::store::memory::Memory;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        drop(Store::init(&root, ChunkSize::new(64 * 1024).unwrap()).unwrap());
        let memory = Memory::new();
        let store = Store::open_with_packs(&root, Arc::new(memory.clone())).unwrap();
        let image: Vec<u8> = (0..4u32 * 65536)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(dir.path().join("d.img"), &image).unwrap();
        let input = ImageInput::full(
            "d.img".into(),
            Box::new(crate::source::FileSource::open(&dir.path().join("d.img")).unwrap()),
        );
        let made = backup_images(
            &store,
            &BackupOptions::new(Kind::Host, "a"),
            vec![input],
            &NoProgress,
        )
        .unwrap();
        let fidx = store.catalog().open_image_index(&made.name(), "d.img").unwrap();
        let digest = fidx.digest(0);

        let mut reader = ChunkReader::new(&store).unwrap();
        store.catalog().forget(&made.name()).unwrap();
        let ripen = || memory.backdate(10 * FILE_TIME_GRACE_NS);
        ripen();
        assert_eq!(
            gc(&store, &GcOptions::default(), &NoProgress)
                .unwrap()
                .chunks_condemned,
            4
        );
        ripen();
        let held = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
        assert_eq!(
            held.chunks_removed, 0,
            "the reader's session holds GC off: {held:?}"
        );
        let mut out = vec![0u8; 65536];
        assert_eq!(reader.read_into(&digest, &mut out).unwrap(), 65536);
        assert!(out[..] == image[..65536]);

        drop(reader);
        ripen();
        let freed = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
        assert_eq!(freed.chunks_removed, 4, "{freed:?}");
    }

    #[test]
    fn neighbours_in_one_pack_make_one_read() {
        let gap = COALESCE_GAP;
        let sorted = [
            loc(1, 0, 100),
            loc(1, 100, 100),
            loc(1, 200 + gap, 100),           // a gap it is cheaper to read
            loc(1, 300 + 2 * gap + 1, 100),   // one byte too far
            loc(2, 0, 100),                   // another pack
            loc(2, 100, COALESCE_MAX as u32), // would make the read too long
        ];
        let runs: Vec<_> = coalesce(&sorted)
            .into_iter()
            .map(|r| (r.members, r.start, r.end))
            .collect();
        assert_eq!(
            runs,
            [
                (0..3, 0, 300 + gap),
                (3..4, 300 + 2 * gap + 1, 400 + 2 * gap + 1),
                (4..5, 0, 100),
                (5..6, 100, 100 + COALESCE_MAX),
            ]
        );
    }

    #[test]
    fn a_batch_reads_every_chunk_and_names_the_missing_one() {
        const CHUNK: usize = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("s"), ChunkSize::new(CHUNK as u64).unwrap()).unwrap();
        // 24 chunks; chunk 5 repeats chunk 2 (one record, read for both).
        let mut data: Vec<u8> = (0..24 * CHUNK as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        data.copy_within(2 * CHUNK..3 * CHUNK, 5 * CHUNK);
        let fidx = crate::ops::backup::back_up_bytes(&store, dir.path(), &data);

        // In reverse order, plus a digest the store never had.
        let mut items: Vec<BatchItem> = (0..24)
            .rev()
            .map(|i| BatchItem {
                digest: fidx.digest(i),
                at: i as usize * CHUNK,
                len: CHUNK,
            })
            .collect();
        let stranger = Digest::of(b"never stored");
        items.push(BatchItem {
            digest: stranger,
            at: 24 * CHUNK,
            len: CHUNK,
        });
        let mut out = vec![0u8; 25 * CHUNK];
        let results = ChunkReader::new(&store).unwrap().read_batch(&items, &mut out);
        assert_eq!(results.len(), 25);
        for r in &results[..24] {
            assert_eq!(*r.as_ref().unwrap(), CHUNK);
        }
        assert!(matches!(results[24], Err(StoreError::ChunkMissing { digest }) if digest == stranger));
        assert!(out[..24 * CHUNK] == data[..], "restored bytes differ");
    }
}
