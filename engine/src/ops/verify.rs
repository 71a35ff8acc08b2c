//! Verify: read back every chunk that the selected snapshots reference, each
//! once even when shared, and check it (CRC, decompression, digest).
//!
//! The outcome is recorded per snapshot in `verify.json` beside the manifest
//! (the manifest, and so what its checksums cover, is never rewritten).
//! Damaged chunks are dropped from the chunk index, so that no later backup
//! deduplicates against them: the next backup of the same data stores a good
//! copy, which also heals the older snapshots that reference it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::chunking::digest::Digest;
use crate::error::{Classify, Context, ErrorKind};
use crate::format::snapshot::{SnapshotError, SnapshotName};
use crate::progress::Progress;
use crate::store::catalog::Catalog;
use crate::store::scratch::{ScratchError, ScratchSet};
use crate::store::{ChunkLocation, ChunkReader, Store, StoreError};

pub use crate::format::verify_state::{Verdict, VerifyState, VERIFY_FILE, VERIFY_STATE_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Fidx(#[from] crate::format::fixed_index::FidxError),
    #[error(transparent)]
    Didx(#[from] crate::format::dynamic_index::DidxError),
    #[error(transparent)]
    Index(#[from] crate::store::IndexError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
}

impl Classify for VerifyError {
    fn kind(&self) -> ErrorKind {
        match self {
            VerifyError::Store(e) => e.kind(),
            VerifyError::Snapshot(e) => e.kind(),
            VerifyError::Fidx(e) => e.kind(),
            VerifyError::Didx(e) => e.kind(),
            VerifyError::Index(e) => e.kind(),
            VerifyError::Scratch(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            VerifyError::Store(e) => e.context(),
            VerifyError::Snapshot(e) => e.context(),
            VerifyError::Fidx(e) => e.context(),
            VerifyError::Didx(e) => e.context(),
            VerifyError::Index(e) => e.context(),
            VerifyError::Scratch(e) => e.context(),
        }
    }
}

pub struct VerifyOptions {
    /// Skip snapshots whose last verification passed...
    pub ignore_verified: bool,
    /// ...and is younger than this (None: however old).
    pub outdated_after: Option<Duration>,
    /// Workers; 0 means one per core.
    pub threads: usize,
}

/// A damaged or missing chunk and every place that references it.
#[derive(Debug, Serialize)]
pub struct BadChunk {
    pub digest: String,
    pub reason: String,
    /// "SNAPSHOT ARCHIVE @OFFSET" for each reference.
    pub referenced_by: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots_verified: Vec<String>,
    pub snapshots_skipped: Vec<String>,
    pub snapshots_failed: Vec<String>,
    /// "SNAPSHOT: why" for each failed snapshot whose manifest or index
    /// files could not be read or do not match.
    pub unreadable: Vec<String>,
    /// Distinct chunks read and checked.
    pub chunks: u64,
    /// Uncompressed bytes checked.
    pub bytes: u64,
    pub bad_chunks: Vec<BadChunk>,
    #[serde(rename = "duration_secs")]
    pub seconds: f64,
    /// Snapshots forgotten (by a prune or forget beside this verify) before
    /// their result was recorded: not verified, not failed.
    pub snapshots_forgotten: Vec<String>,
    /// "SNAPSHOT: why" for each result that could not be recorded in its
    /// `verify.json` (a full disk): the report still has it.
    pub not_recorded: Vec<String>,
    /// A protected store verified without its key: records were checked
    /// by their CRCs (bit rot), not decrypted or hashed, and manifests not
    /// authenticated.
    pub crc_only: bool,
    /// Packs the index listed that are gone: their entries were dropped,
    /// so their chunks count as missing and no backup reuses them.
    pub packs_missing: Vec<String>,
}

/// Verifies `selected` snapshots (every snapshot if empty).
pub fn verify(
    store: &Store,
    selected: &[SnapshotName],
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> crate::Result<VerifyReport> {
    let started = std::time::Instant::now();
    let catalog = store.catalog();
    let all = if selected.is_empty() {
        catalog.list()?
    } else {
        selected.to_vec()
    };
    let mut report = VerifyReport {
        crc_only: store.protection() != crate::crypto::Protection::None && store.keys().is_none(),
        packs_missing: store.forget_missing_packs()?,
        ..VerifyReport::default()
    };
    let mut todo = Vec::new();
    for name in all {
        if opts.ignore_verified && recently_verified(catalog, &name, opts.outdated_after) {
            report.snapshots_skipped.push(name.to_string());
        } else {
            todo.push(name);
        }
    }
    // Each distinct chunk once, read in pack order: the work list is an
    // on-disk sorted set keyed by location, so memory does not grow with it.
    // On a full store disk it goes to the system's temporary directory.
    let name = format!("verify-{}-{}", std::process::id(), uuid::Uuid::new_v4());
    let mut work = ScratchSet::create_in(&[&store.root().join("tmp"), &std::env::temp_dir()], &name)?;
    let mut references_per_snapshot = Vec::with_capacity(todo.len());
    // Snapshots whose manifest or index files cannot be read, or do not
    // match: they fail, and the others are still verified.
    let mut unreadable: HashMap<SnapshotName, String> = HashMap::new();
    for name in &todo {
        let mut references = 0u64;
        let walked = for_each_chunk(catalog, name, |_, _, d| {
            references += 1;
            let key = match store.index().lookup(&d)? {
                Some(loc) => work_key(&loc, &d),
                None => [&[MISSING][..], &d.0].concat(),
            };
            work.insert(&key, &[])?;
            Ok(())
        });
        match walked {
            Ok(()) => {}
            Err(VerifyError::Snapshot(e)) => {
                unreadable.insert(name.clone(), e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
        references_per_snapshot.push(references);
    }
    work.flush()?;
    let mut missing = HashMap::new();
    let mut total = 0u64;
    for item in work.iter() {
        let (key, _) = item?;
        match parse_work_key(&key) {
            Some(WorkItem::Present(loc, _)) => {
                report.chunks += 1;
                total += loc.raw_len as u64;
            }
            Some(WorkItem::Missing(d)) => {
                missing.insert(d, "not in the chunk index".to_string());
            }
            None => {}
        }
    }
    report.bytes = total;
    let damaged = check_chunks(store, &work, total, opts.threads, progress)?;
    drop(work);
    crate::failpoint::pause("verify-after-check");
    let mut bad: HashMap<Digest, String> = missing;
    bad.extend(damaged.iter().map(|(d, _, why, _)| (*d, why.clone())));

    // Drop damaged chunks from the index so no backup dedups against them.
    let to_drop: Vec<(Digest, ChunkLocation)> = damaged
        .iter()
        .filter(|(_, _, _, definite)| *definite)
        .map(|(d, loc, _, _)| (*d, *loc))
        .collect();
    store.index().remove(&to_drop)?;
    crate::failpoint::hit("verify-dropped");

    let mut references: HashMap<Digest, Vec<String>> = HashMap::new();
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for (name, references_checked) in todo.iter().zip(references_per_snapshot) {
        let mut own_bad = Vec::new();
        let error = unreadable.remove(name);
        if forgotten(catalog, name) {
            report.snapshots_forgotten.push(name.to_string());
            continue;
        }
        // The index files are walked again only to name where bad chunks are used.
        if !bad.is_empty() && error.is_none() {
            let walked = for_each_chunk(catalog, name, |archive, offset, d| {
                if bad.contains_key(&d) {
                    references
                        .entry(d)
                        .or_default()
                        .push(format!("{name} {archive} @{offset}"));
                    own_bad.push(d.to_hex());
                }
                Ok(())
            });
            match walked {
                Err(_) if forgotten(catalog, name) => {
                    report.snapshots_forgotten.push(name.to_string());
                    continue;
                }
                other => other?,
            }
        }
        own_bad.sort();
        own_bad.dedup();
        let state = VerifyState {
            version: VERIFY_STATE_VERSION,
            state: if own_bad.is_empty() && error.is_none() {
                Verdict::Ok
            } else {
                Verdict::Failed
            },
            time: now.clone(),
            chunks: references_checked,
            bad_chunks: own_bad,
            error: error.clone(),
        };
        if let Err(e) = catalog.save_verify_state(name, &state) {
            if forgotten(catalog, name) {
                report.snapshots_forgotten.push(name.to_string());
                continue;
            }
            if !e.is_disk_full() {
                return Err(e.into());
            }
            report.not_recorded.push(format!("{name}: {e}"));
        }
        if state.ok() {
            report.snapshots_verified.push(name.to_string());
        } else {
            report.snapshots_failed.push(name.to_string());
        }
        if let Some(e) = error {
            report.unreadable.push(format!("{name}: {e}"));
        }
    }
    report.bad_chunks = bad
        .into_iter()
        .map(|(d, reason)| BadChunk {
            digest: d.to_hex(),
            reason,
            referenced_by: references.remove(&d).unwrap_or_default(),
        })
        .collect();
    report.bad_chunks.sort_by(|a, b| a.digest.cmp(&b.digest));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Whether `--ignore-verified` may skip `name`. With the key, only a
/// state written with the key counts: a planted "ok" never hides damage.
fn recently_verified(catalog: &Catalog, name: &SnapshotName, outdated_after: Option<Duration>) -> bool {
    let Some((state, authentic)) = catalog.verify_state_checked(name) else {
        return false;
    };
    if catalog.authenticates() && !authentic {
        return false;
    }
    let age = humantime::parse_rfc3339(&state.time)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(Duration::MAX);
    state.ok() && outdated_after.is_none_or(|max| age < max)
}

/// Whether `name` was forgotten since verify listed it (its manifest is
/// gone): a prune or forget beside verify, not a failure.
fn forgotten(catalog: &Catalog, name: &SnapshotName) -> bool {
    !catalog.is_published(name)
}

/// Calls `f(archive name, offset, digest)` for every non-zero chunk of a snapshot.
fn for_each_chunk(
    catalog: &Catalog,
    name: &SnapshotName,
    mut f: impl FnMut(&str, u64, Digest) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    let manifest = catalog.load_manifest(name)?;
    catalog.for_each_chunk(name, &manifest, |a, offset, d| f(&a.name, offset, d))
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
                pack: crate::format::pack::PackId(k[1..17].try_into().ok()?),
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
) -> Result<Vec<Failed>, VerifyError> {
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
        Ok::<_, VerifyError>(())
    });
    progress.end();
    fed?;
    if let Some(e) = failure.into_inner().expect("lock poisoned") {
        return Err(e.into());
    }
    Ok(damaged.into_inner().expect("lock poisoned"))
}
