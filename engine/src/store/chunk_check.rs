//! Verify's half in the local store: each referenced chunk once, read in
//! the order it lies in the packs, and the damaged ones dropped from the
//! index.
//!
//! The work list is an on-disk sorted set keyed by location, so memory does
//! not grow with it; on a full store disk it goes to the system's
//! temporary directory.

use std::sync::Mutex;

use super::chunk_reader::ChunkReader;
use super::datastore::Store;
use super::error::StoreError;
use super::index::ChunkLocation;
use super::scratch::ScratchSet;
use super::seam::{CheckOutcome, ChunkCheck};
use crate::chunking::digest::Digest;
use crate::format::pack::PackId;
use crate::progress::Progress;

pub(crate) struct LocalCheck<'a> {
    store: &'a Store,
    work: ScratchSet,
    packs_missing: Vec<String>,
}

impl<'a> LocalCheck<'a> {
    /// Entries of packs that are gone are dropped first: their chunks count
    /// as missing, and no backup reuses them.
    pub(crate) fn begin(store: &'a Store) -> Result<LocalCheck<'a>, StoreError> {
        let packs_missing = store.forget_missing_packs()?;
        let name = format!("verify-{}-{}", std::process::id(), uuid::Uuid::new_v4());
        let work = ScratchSet::create_in(&[&store.root().join("tmp"), &std::env::temp_dir()], &name)?;
        Ok(LocalCheck {
            store,
            work,
            packs_missing,
        })
    }
}

impl ChunkCheck for LocalCheck<'_> {
    fn add(&mut self, d: Digest) -> Result<(), StoreError> {
        let key = match self.store.index().lookup(&d)? {
            Some(loc) => work_key(&loc, &d),
            None => [&[MISSING][..], &d.0].concat(),
        };
        Ok(self.work.insert(&key, &[])?)
    }

    fn run(mut self: Box<Self>, threads: usize, progress: &dyn Progress) -> Result<CheckOutcome, StoreError> {
        self.work.flush()?;
        let mut outcome = CheckOutcome {
            packs_missing: std::mem::take(&mut self.packs_missing),
            ..CheckOutcome::default()
        };
        for item in self.work.iter() {
            let (key, _) = item?;
            match parse_work_key(&key) {
                Some(WorkItem::Present(loc, _)) => {
                    outcome.chunks += 1;
                    outcome.bytes += loc.raw_len as u64;
                }
                Some(WorkItem::Missing(d)) => {
                    outcome.bad.insert(d, "not in the chunk index".to_string());
                }
                None => {}
            }
        }
        let damaged = check_chunks(self.store, &self.work, outcome.bytes, threads, progress)?;
        drop(self.work);
        crate::failpoint::pause("verify-after-check");
        outcome
            .bad
            .extend(damaged.iter().map(|(d, _, why, _)| (*d, why.clone())));
        // Dropped from the index, so that no backup deduplicates against them.
        let to_drop: Vec<(Digest, ChunkLocation)> = damaged
            .iter()
            .filter(|(_, _, _, definite)| *definite)
            .map(|(d, loc, _, _)| (*d, *loc))
            .collect();
        self.store.index().remove(&to_drop)?;
        crate::failpoint::hit("verify-dropped");
        Ok(outcome)
    }
}

/// A chunk that failed its check: digest, location, why, and whether the
/// failure is certain damage (bad bytes, lost pack) rather than, say, an I/O
/// error that may pass.
type Failed = (Digest, ChunkLocation, String, bool);

const PRESENT: u8 = 0;
const MISSING: u8 = 1;

/// Work-list key of a chunk: sorts by pack, then offset, so chunks are read
/// in the order they lie on disk.
fn work_key(loc: &ChunkLocation, d: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 16 + 8 + 4 + 4 + 32);
    k.push(PRESENT);
    k.extend_from_slice(&loc.pack.0);
    k.extend_from_slice(&loc.offset.to_be_bytes());
    k.extend_from_slice(&loc.record_len.to_be_bytes());
    k.extend_from_slice(&loc.raw_len.to_be_bytes());
    k.extend_from_slice(&d.0);
    k
}

pub(crate) enum WorkItem {
    Present(ChunkLocation, Digest),
    Missing(Digest),
}

pub(crate) fn parse_work_key(k: &[u8]) -> Option<WorkItem> {
    match *k.first()? {
        PRESENT if k.len() == 65 => {
            let loc = ChunkLocation {
                pack: PackId(k[1..17].try_into().ok()?),
                offset: u64::from_be_bytes(k[17..25].try_into().ok()?),
                record_len: u32::from_be_bytes(k[25..29].try_into().ok()?),
                raw_len: u32::from_be_bytes(k[29..33].try_into().ok()?),
            };
            Some(WorkItem::Present(loc, Digest::from_slice(&k[33..65])?))
        }
        MISSING => Some(WorkItem::Missing(Digest::from_slice(&k[1..])?)),
        _ => None,
    }
}

/// Reads and checks each chunk of the work list on all cores; returns the
/// failed ones.
fn check_chunks(
    store: &Store,
    work: &ScratchSet,
    total: u64,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Vec<Failed>, StoreError> {
    let threads = crate::worker_threads(threads);
    let (tx, rx) = crossbeam_channel::bounded::<(ChunkLocation, Digest)>(256);
    let damaged = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    progress.begin("verify", total);
    let fed = std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = rx.clone();
            let (damaged, failure) = (&damaged, &failure);
            s.spawn(move || {
                let mut reader = match ChunkReader::new(store) {
                    Ok(r) => r,
                    Err(e) => return *failure.lock().expect("lock poisoned") = Some(e),
                };
                for (loc, d) in rx.iter() {
                    if let Err(e) = reader.check(&d, &loc) {
                        let definite = e.means_chunk_lost();
                        damaged
                            .lock()
                            .expect("lock poisoned")
                            .push((d, loc, e.to_string(), definite));
                    }
                    progress.advance(loc.raw_len as u64);
                }
            });
        }
        drop(rx);
        for item in work.iter() {
            let (key, _) = item?;
            if let Some(WorkItem::Present(loc, d)) = parse_work_key(&key) {
                if tx.send((loc, d)).is_err() {
                    break; // every worker failed; the failure is reported below
                }
            }
        }
        drop(tx);
        Ok::<_, StoreError>(())
    });
    progress.end();
    fed?;
    if let Some(e) = failure.into_inner().expect("lock poisoned") {
        return Err(e);
    }
    Ok(damaged.into_inner().expect("lock poisoned"))
}
