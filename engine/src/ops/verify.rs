//! Verify: read back every chunk that the selected snapshots reference, each
//! once even when shared, and check it (CRC, decompression, digest).
//!
//! The outcome is recorded per snapshot in `verify.json` beside the manifest
//! (the manifest, and so what its checksums cover, is never rewritten).
//! The reading is the store's ([`crate::store::ChunkCheck`]): it drops
//! damaged chunks from what backups reuse, so that the next backup of the
//! same data stores a good copy, which also heals the older snapshots that
//! reference it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::chunking::digest::Digest;
use crate::error::{Classify, Context, ErrorKind};
use crate::format::snapshot::{SnapshotError, SnapshotName};
use crate::progress::Progress;
use crate::store::{Catalogue, Repository, StoreError};

pub(crate) use crate::format::verify_state::{Verdict, VerifyState, VERIFY_STATE_VERSION};

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Fidx(#[from] crate::format::fixed_index::FidxError),
    #[error(transparent)]
    Didx(#[from] crate::format::dynamic_index::DidxError),
}

impl Classify for VerifyError {
    fn kind(&self) -> ErrorKind {
        match self {
            VerifyError::Store(e) => e.kind(),
            VerifyError::Snapshot(e) => e.kind(),
            VerifyError::Fidx(e) => e.kind(),
            VerifyError::Didx(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            VerifyError::Store(e) => e.context(),
            VerifyError::Snapshot(e) => e.context(),
            VerifyError::Fidx(e) => e.context(),
            VerifyError::Didx(e) => e.context(),
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
    /// `verify.json` (a full disk, a server token that may not write
    /// it): the report still has it.
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
    store: &dyn Repository,
    selected: &[SnapshotName],
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> crate::Result<VerifyReport> {
    let started = std::time::Instant::now();
    let catalog = store.catalogue();
    let all = if selected.is_empty() {
        catalog.list()?
    } else {
        selected.to_vec()
    };
    let mut check = store.begin_check()?;
    let mut report = VerifyReport {
        crc_only: store.checks_crc_only(),
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
    let mut references_per_snapshot = Vec::with_capacity(todo.len());
    // Snapshots whose manifest or index files cannot be read, or do not
    // match: they fail, and the others are still verified.
    let mut unreadable: HashMap<SnapshotName, String> = HashMap::new();
    for name in &todo {
        let mut references = 0u64;
        let walked = for_each_chunk(catalog, name, |_, _, d| {
            references += 1;
            Ok(check.add(d)?)
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
    let outcome = check.run(opts.threads, progress)?;
    report.chunks = outcome.chunks;
    report.bytes = outcome.bytes;
    report.packs_missing = outcome.packs_missing;
    let bad = outcome.bad;

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
            if !e.is_disk_full() && !e.is_refused() {
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
fn recently_verified(catalog: &dyn Catalogue, name: &SnapshotName, outdated_after: Option<Duration>) -> bool {
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
fn forgotten(catalog: &dyn Catalogue, name: &SnapshotName) -> bool {
    !catalog.is_published(name)
}

/// Calls `f(archive name, offset, digest)` for every non-zero chunk of a snapshot.
fn for_each_chunk(
    catalog: &dyn Catalogue,
    name: &SnapshotName,
    mut f: impl FnMut(&str, u64, Digest) -> Result<(), VerifyError>,
) -> Result<(), VerifyError> {
    let manifest = catalog.load_manifest(name)?;
    catalog.for_each_chunk(name, &manifest, |a, offset, d| f(&a.name, offset, d))
}
