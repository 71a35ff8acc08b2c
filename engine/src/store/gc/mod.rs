//! Garbage collection, safe next to running backups: the store's half
//! ([`Collection`]); `ops::gc` walks the snapshots for the marks.
//!
//! Two-phase removal with epochs (format-spec/gc.md has the argument):
//! 1. **Mark** every chunk that a published snapshot references, into a
//!    scratch RocksDB (sequential index-file reads, sequential writes).
//! 2. **Sweep** the chunk index in digest order against the marks:
//!    - marked but condemned → revived;
//!    - unmarked and live → *condemned* with this run's epoch (backups now
//!      treat it as absent and store their own copy);
//!    - unmarked and condemned by an earlier epoch that is *ripe* (every
//!      backup session alive now started after that condemnation was
//!      committed) → entry removed.
//!
//!    Each change is a conditional write in a short locked commit.
//! 3. **Packs** (`packs`) that no live entry points into are deleted, and
//!    packs whose live share is below the threshold rewritten, but only
//!    after a walk of the pack proves every other record unreferenced: the
//!    index alone is never trusted. Packs, partial packs and unfinished
//!    snapshot directories (`leftovers`) younger than the oldest live
//!    session (or than this GC) are never touched: their owners may still
//!    commit.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::chunking::digest::Digest;
use crate::format::pack::PackId;
use crate::format::snapshot::Manifest;
use crate::store::index::{ensure_free_space, EntryUpdate, IndexEntry, GC_STATE_KEY};
use crate::store::scratch::ScratchSet;
use crate::store::session::{live_sessions, now_ns, MaintenanceLock};
use crate::store::Store;

/// How much older than the oldest writer a file must be before GC may
/// delete it as abandoned.
pub(crate) const FILE_TIME_GRACE_NS: u64 = 1_000_000_000;

pub(crate) const GC_STATE_VERSION: u32 = 1;

/// The GC's own record in the chunk index (key `g/state`, JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GcState {
    pub version: u32,
    pub next_epoch: u32,
    pub epochs: Vec<EpochRecord>,
}

impl Default for GcState {
    fn default() -> Self {
        GcState {
            version: GC_STATE_VERSION,
            next_epoch: 1,
            epochs: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct EpochRecord {
    pub epoch: u32,
    /// When its condemnations were all committed (ns since the Unix epoch).
    pub condemned_ns: u64,
}

mod leftovers;
mod packs;
mod report;

pub use report::GcOptions;
pub(crate) use report::{GcError, GcReport};

/// A garbage collection in progress, in bupstash's phases: [`begin`]
/// takes the maintenance lock and saves this run's epoch; the caller
/// [`mark`]s every chunk a published snapshot references; [`sweep`]
/// condemns, revives and removes index entries against the marks, then
/// deletes or rewrites packs and removes leftovers.
///
/// [`begin`]: Collection::begin
/// [`mark`]: Collection::mark
/// [`sweep`]: Collection::sweep
pub(crate) struct Collection<'a> {
    store: &'a Store,
    maintenance: MaintenanceLock,
    started: Instant,
    t0: u64,
    oldest_session_ns: Option<u64>,
    state: GcState,
    ripe: HashSet<u32>,
    epoch: u32,
    marks: ScratchSet,
    report: GcReport,
}

impl<'a> Collection<'a> {
    pub(crate) fn begin(store: &'a Store) -> Result<Collection<'a>, GcError> {
        let started = Instant::now();
        let t0 = now_ns();
        let root = store.root();
        let maintenance = MaintenanceLock::acquire(root, "gc")?;
        store.begin_writing("gc")?;
        // GC writes RocksDB databases (marks, index); refuse up front on a full disk.
        ensure_free_space(root)?;
        let sessions = live_sessions(root)?;
        store.index().refresh()?;
        let mut state = load_state(store)?;
        let mut report = GcReport {
            packs_missing: store.forget_missing_packs()?,
            stale_sessions_removed: sessions.removed_stale,
            ..Default::default()
        };
        let ripe: HashSet<u32> = state
            .epochs
            .iter()
            .filter(|e| sessions.oldest_start_ns.is_none_or(|s| s > e.condemned_ns))
            .map(|e| e.epoch)
            .collect();
        report.postponed_epochs = state
            .epochs
            .iter()
            .map(|e| e.epoch)
            .filter(|e| !ripe.contains(e))
            .collect();
        let epoch = state.next_epoch.max(1);
        report.epoch = epoch;
        // Persist the epoch number first, so a crash never lets it be reused.
        state.next_epoch = epoch + 1;
        save_state(store, &state)?;
        crate::failpoint::hit("gc-epoch-saved");
        let marks = ScratchSet::create(&root.join("tmp").join(format!("gc-mark-{}", uuid::Uuid::new_v4())))?;
        Ok(Collection {
            store,
            maintenance,
            started,
            t0,
            oldest_session_ns: sessions.oldest_start_ns,
            state,
            ripe,
            epoch,
            marks,
            report,
        })
    }

    /// Marks chunk `d` as referenced.
    pub(crate) fn mark(&mut self, d: &Digest) -> Result<(), GcError> {
        Ok(self.marks.insert(&d.0, &[])?)
    }

    /// Counts a snapshot whose chunks were all marked.
    pub(crate) fn marked_snapshot(&mut self, manifest: &Manifest) {
        self.report.logical_bytes += manifest.archives.iter().map(|a| a.size).sum::<u64>();
        self.report.snapshots += 1;
    }

    /// Sweeps the index and the packs against the marks.
    pub(crate) fn sweep(self, opts: &GcOptions) -> Result<GcReport, GcError> {
        let Collection {
            store,
            maintenance,
            started,
            t0,
            oldest_session_ns,
            mut state,
            ripe,
            epoch,
            mut marks,
            mut report,
        } = self;
        marks.flush()?;
        crate::failpoint::hit("gc-marked");
        crate::failpoint::pause("gc-after-mark");
        // Every chunk of a snapshot listed while marking was committed before
        // its manifest appeared: with a view at least this new, a marked chunk
        // the sweep does not meet is really missing from the index.
        store.index().refresh()?;
        let pack_live = sweep(store, &marks, epoch, &ripe, &state, &mut report)?;
        // The new epoch counts from the moment all its condemnations are visible.
        state.epochs.retain(|e| !ripe.contains(&e.epoch));
        if report.chunks_condemned > 0 {
            state.epochs.push(EpochRecord {
                epoch,
                condemned_ns: now_ns(),
            });
        }
        save_state(store, &state)?;
        crate::failpoint::hit("gc-state-saved");
        crate::failpoint::pause("gc-after-sweep");

        // Anything written after this instant may belong to a writer that has
        // not committed yet. File times come from the kernel's coarse clock,
        // which lags the clock sessions are stamped with by up to a tick: hence
        // the grace period.
        let cutoff = oldest_session_ns
            .map_or(t0, |s| s.min(t0))
            .saturating_sub(FILE_TIME_GRACE_NS);
        packs::sweep_packs(store, &maintenance, &marks, &pack_live, cutoff, opts, &mut report)?;
        drop(marks);
        leftovers::remove_leftovers(store, cutoff, &mut report)?;
        report.dedup_factor = if report.bytes_kept > 0 {
            report.logical_bytes as f64 / report.bytes_kept as f64
        } else {
            0.0
        };
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

pub(crate) fn load_state(store: &Store) -> Result<GcState, GcError> {
    match store.index().get_raw(GC_STATE_KEY)? {
        None => Ok(GcState::default()),
        Some(v) => GcState::from_bytes(&v),
    }
}

impl GcState {
    /// Parses the `g/state` record; also the fuzz target.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<GcState, GcError> {
        let state: GcState = serde_json::from_slice(bytes).map_err(|e| GcError::BadState(e.to_string()))?;
        if state.version != GC_STATE_VERSION {
            return Err(GcError::BadState(format!(
                "version {} (this hoard reads {GC_STATE_VERSION})",
                state.version
            )));
        }
        Ok(state)
    }
}

fn save_state(store: &Store, state: &GcState) -> Result<(), GcError> {
    let bytes = serde_json::to_vec(state).expect("state serialises");
    store.index().put_record(GC_STATE_KEY, &bytes)?;
    Ok(())
}

enum Op {
    Condemn,
    Revive,
    Remove,
}

/// Walks the chunk index against the marks; returns live record bytes per pack.
fn sweep(
    store: &Store,
    marks: &ScratchSet,
    epoch: u32,
    ripe: &HashSet<u32>,
    state: &GcState,
    report: &mut GcReport,
) -> Result<HashMap<PackId, u64>, GcError> {
    let known_epochs: HashSet<u32> = state.epochs.iter().map(|e| e.epoch).collect();
    let mut marked = marks.iter().map(|r| r.map(|(k, _)| k));
    let mut next_mark: Option<Box<[u8]>> = None;
    let mut marks_done = false;
    let mut next_met = false;
    let mut pack_live: HashMap<PackId, u64> = HashMap::new();
    let mut ops: Vec<(Digest, IndexEntry, Op)> = Vec::new();
    let mut failure = None;
    store.index().for_each_entry(|d, e| {
        if failure.is_some() {
            return;
        }
        // Merge join: advance the sorted marks up to this digest. A mark
        // passed over without meeting its entry is a referenced chunk the
        // index does not list.
        while !marks_done && next_mark.as_deref().is_none_or(|m| m < &d.0[..]) {
            if next_mark.take().is_some() && !next_met {
                report.chunks_missing += 1;
            }
            next_met = false;
            match marked.next() {
                Some(Ok(k)) => next_mark = Some(k),
                Some(Err(err)) => {
                    failure = Some(err.into());
                    return;
                }
                None => {
                    marks_done = true;
                    next_mark = None;
                }
            }
        }
        let is_marked = next_mark.as_deref() == Some(&d.0[..]);
        next_met |= is_marked;
        let bytes = e.loc.record_len as u64;
        let op = match (is_marked, e.condemned) {
            (true, 0) => None,
            (true, _) => Some(Op::Revive),
            (false, c) if c != 0 && ripe.contains(&c) => Some(Op::Remove),
            // Condemned by an epoch the state does not know (a crash before
            // the state was saved): condemn again, under this epoch.
            (false, c) if c == 0 || !known_epochs.contains(&c) => Some(Op::Condemn),
            (false, _) => None, // condemned, waiting to ripen
        };
        match (&op, is_marked) {
            (Some(Op::Remove), _) => {}
            (_, true) => {
                report.chunks_referenced += 1;
                report.bytes_kept += bytes;
                *pack_live.entry(e.loc.pack).or_default() += bytes;
            }
            (_, false) => {
                report.chunks_pending += 1;
                report.bytes_pending += bytes;
                *pack_live.entry(e.loc.pack).or_default() += bytes;
            }
        }
        if let Some(op) = op {
            ops.push((d, e, op));
        }
        if ops.len() >= 10_000 {
            if let Err(err) = apply(store, &mut ops, epoch, report) {
                failure = Some(err);
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if next_mark.is_some() && !next_met {
        report.chunks_missing += 1;
    }
    for m in marked {
        m?;
        report.chunks_missing += 1;
    }
    apply(store, &mut ops, epoch, report)?;
    Ok(pack_live)
}

/// Applies sweep decisions, each only if the entry is still what the sweep
/// saw: a backup may have stored a new copy of a condemned chunk meanwhile.
fn apply(
    store: &Store,
    ops: &mut Vec<(Digest, IndexEntry, Op)>,
    epoch: u32,
    report: &mut GcReport,
) -> Result<(), GcError> {
    if ops.is_empty() {
        return Ok(());
    }
    let updates: Vec<EntryUpdate> = ops
        .iter()
        .map(|(digest, seen, op)| EntryUpdate {
            digest: *digest,
            seen: *seen,
            new: match op {
                Op::Condemn => Some(IndexEntry {
                    loc: seen.loc,
                    condemned: epoch,
                }),
                Op::Revive => Some(IndexEntry::live(seen.loc)),
                Op::Remove => None,
            },
        })
        .collect();
    let applied = store.index().update_if_unchanged(&updates)?;
    let (mut condemned, mut revived, mut removed) = (0, 0, 0);
    for ((_, _, op), done) in ops.iter().zip(applied) {
        if done {
            match op {
                Op::Condemn => condemned += 1,
                Op::Revive => revived += 1,
                Op::Remove => removed += 1,
            }
        }
    }
    crate::failpoint::hit("gc-batch-applied");
    report.chunks_condemned += condemned;
    report.chunks_revived += revived;
    report.chunks_removed += removed;
    ops.clear();
    Ok(())
}
