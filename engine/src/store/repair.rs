//! Repair: rebuild the chunk index from the packs alone, and check every
//! stored record.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::crypto::StoreKeys;
use crate::format::chunk::RecordHeader;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::pack::{self, PackId, PACKS_PREFIX};
use crate::progress::Progress;
use crate::store::backend::{ObjectBackend, ObjectInfo};
use crate::store::index::{self, IndexBuilder};
use crate::store::packs::{self, PackMap, PackWriter};
use crate::store::session::{live_sessions, MaintenanceLock};
use crate::store::{io_err, read_config, remove_rebuild_leftovers, ChunkLocation, Store, StoreError};

#[derive(Debug, Default, Serialize)]
pub struct RebuildReport {
    pub packs: u64,
    /// Intact records indexed (or copied out of damaged packs and indexed).
    pub records: u64,
    /// Distinct chunks now indexed.
    pub chunks: u64,
    /// Records whose digest an earlier pack already held.
    pub duplicates: u64,
    /// Every byte range that was skipped: no intact record there, or a
    /// record that failed its check. Nothing in them is indexed.
    pub damaged: Vec<Damage>,
    /// Intact records of damaged packs, copied into new packs and indexed there.
    pub records_rescued: u64,
    /// Damaged packs renamed to `PACKID.pack.bad` (kept, never deleted).
    pub quarantined: Vec<String>,
    /// What killed rebuilds left (`index.rebuild/`, `index.old-*`), removed.
    pub leftovers_removed: Vec<String>,
    pub stale_sessions_removed: Vec<String>,
}

/// Rebuilds `STORE/index` from the sealed packs. Refuses while backups run
/// (their index readers would lose their database) or while other
/// maintenance holds the store.
///
/// Every record is checked in full (CRCs, decompression, digest) before it
/// is indexed, and the walk resynchronises past damage, so every intact
/// record is kept and no damaged one comes back. A damaged pack's intact
/// records are copied into a new pack, and the pack itself is quarantined
/// as `PACKID.pack.bad`: kept for forensics, out of GC's reach.
///
/// The cache of a store in a bucket is rebuilt from the bucket's packs,
/// under the writer lease (the rescue pack is written there).
///
/// With `keys` (a protected store's, from [`crate::store::config_keys`])
/// every record is checked in full, tag and keyed digest: a record planted
/// under a real digest with valid CRCs is damage, never indexed. Without,
/// a protected store's records are checked by CRC, and the first intact
/// copy of a digest (in pack name order) is indexed.
pub fn rebuild_index(
    root: &Path,
    keys: Option<Arc<StoreKeys>>,
    progress: &dyn Progress,
) -> crate::Result<RebuildReport> {
    let objects = crate::store::address::open(root)?;
    objects.begin_writing("index rebuild")?;
    Ok(rebuild_index_with(
        root,
        objects.packs().as_ref(),
        keys.as_ref(),
        progress,
    )?)
}

/// [`rebuild_index`] of the store at `root` whose packs are in `packs`.
pub(crate) fn rebuild_index_with(
    root: &Path,
    packs_backend: &dyn ObjectBackend,
    keys: Option<&Arc<StoreKeys>>,
    progress: &dyn Progress,
) -> Result<RebuildReport, StoreError> {
    let protection = read_config(root)?.encryption;
    let _maintenance = MaintenanceLock::acquire(root, "index rebuild")?;
    let sessions = live_sessions(root)?;
    if !sessions.live.is_empty() {
        return Err(StoreError::Busy {
            what: "index rebuild".into(),
            holder: sessions.live.join("; "),
        });
    }
    // No commit can start while we hold the writer lock.
    let _writer = index::lock_writer(&root.join("index.lock"))?;
    let mut report = RebuildReport {
        stale_sessions_removed: sessions.removed_stale,
        leftovers_removed: remove_rebuild_leftovers(root)?,
        ..Default::default()
    };
    let fresh = root.join("index.rebuild");
    let mut builder = IndexBuilder::create(&fresh)?;
    let packs = packs::list_sealed(packs_backend)?;
    let total: u64 = packs.iter().map(|(_, o)| o.size).sum();
    let mut rescue: Option<PackWriter> = None;
    let mut damaged_packs = Vec::new();
    progress.begin("index rebuild", total);
    inspect_in_order(packs_backend, &packs, 0, protection, keys, |i, found| {
        let (id, object) = &packs[i];
        let found = found?;
        let damaged = !found.damaged.is_empty();
        for (offset, h) in &found.intact {
            let loc = if damaged {
                let record = found.map.record(*offset, h.record_len() as u32)?;
                report.records_rescued += 1;
                rescue_record(packs_backend, &mut rescue, record, h)?
            } else {
                ChunkLocation {
                    pack: *id,
                    offset: *offset,
                    record_len: h.record_len() as u32,
                    raw_len: h.raw_len,
                }
            };
            report.records += 1;
            if builder.add(h.digest, loc)? {
                report.chunks += 1;
            } else {
                report.duplicates += 1;
            }
        }
        if damaged {
            damaged_packs.push(object.name.clone());
            report.damaged.extend(found.damaged);
        }
        report.packs += 1;
        progress.advance(object.size);
        Ok(())
    })?;
    progress.end();
    // Rescued records are durable before any index entry names them.
    if let Some(w) = rescue.take() {
        w.seal()?;
    }
    builder.finish()?;
    // Swap the new index in with one atomic exchange, so that a crash at
    // any point leaves a whole index under `index` (the old or the new
    // one); the old one, then at `index.rebuild`, is removed afterwards.
    let live = root.join("index");
    if live.exists() {
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, &fresh, AT_FDCWD, &live, RenameFlags::RENAME_EXCHANGE)
            .map_err(|e| io_err(&live)(e.into()))?;
    } else {
        fs::rename(&fresh, &live).map_err(io_err(&fresh))?;
    }
    crate::failpoint::hit("rebuild-swapped");
    crate::store::local_dir::sync_dir(root).map_err(io_err(root))?;
    crate::failpoint::hit("rebuild-synced");
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(io_err(&fresh))?;
        crate::failpoint::hit("rebuild-old-removed");
    }
    // Only now, with no entry pointing into them, are damaged packs moved aside.
    for name in damaged_packs {
        let location = packs_backend.location(&name);
        let aside = packs_backend
            .set_aside(&name, ".bad")
            .map_err(io_err(&location))?;
        report
            .quarantined
            .push(packs_backend.location(&aside).display().to_string());
        crate::failpoint::hit("rebuild-quarantined");
    }
    Ok(report)
}

/// Appends an intact record of a damaged pack to the rescue pack (sealed
/// and replaced at the size bound); returns where it now lies.
fn rescue_record(
    packs: &dyn ObjectBackend,
    rescue: &mut Option<PackWriter>,
    record: &[u8],
    h: &RecordHeader,
) -> Result<ChunkLocation, StoreError> {
    if rescue.as_ref().is_some_and(|w| w.len() >= pack::PACK_TARGET_SIZE) {
        if let Some(full) = rescue.take() {
            full.seal()?;
        }
    }
    let w = match rescue {
        Some(w) => w,
        None => rescue.insert(PackWriter::create(packs)?),
    };
    let offset = w.append(record, h.digest, h.raw_len)?;
    Ok(ChunkLocation {
        pack: w.id(),
        offset,
        record_len: h.record_len() as u32,
        raw_len: h.raw_len,
    })
}

/// One place in a pack that holds no intact record, or a record that failed
/// its check (`digest` then names the chunk its header claims).
#[derive(Debug, Serialize)]
pub struct Damage {
    pub pack: PathBuf,
    /// Byte range `offset..end` of the pack.
    pub offset: u64,
    pub end: u64,
    pub digest: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes {}..{}: {}",
            self.pack.display(),
            self.offset,
            self.end,
            self.reason
        )?;
        if let Some(d) = &self.digest {
            write!(f, " (chunk {d})")?;
        }
        Ok(())
    }
}

/// Inspects `packs` on `threads` workers (0: one per core) and hands each
/// result to `f` in the packs' order, so that what `f` builds does not
/// depend on which worker finished first. Stops at `f`'s first error.
fn inspect_in_order(
    backend: &dyn ObjectBackend,
    packs: &[(PackId, ObjectInfo)],
    threads: usize,
    protection: crate::crypto::Protection,
    keys: Option<&Arc<StoreKeys>>,
    mut f: impl FnMut(usize, Result<PackInspection, StoreError>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let next = AtomicUsize::new(0);
    let decoders = (0..crate::worker_threads(threads))
        .map(|_| ChunkDecoder::for_store(protection, keys))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(&backend.location(PACKS_PREFIX)))?;
    let (tx, rx) = crossbeam_channel::bounded(decoders.len());
    std::thread::scope(|s| {
        for mut decoder in decoders {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, _)) = packs.get(i) else { return };
                    if tx.send((i, inspect_pack(backend, *id, &mut decoder))).is_err() {
                        return; // the consumer stopped
                    }
                }
            });
        }
        drop(tx);
        // Results arrive at most `threads` out of order.
        let mut waiting = std::collections::BTreeMap::new();
        let mut want = 0;
        for (i, found) in rx {
            waiting.insert(i, found);
            while let Some(found) = waiting.remove(&want) {
                f(want, found)?;
                want += 1;
            }
        }
        Ok(())
    })
}

/// A pack walked and every record in it checked in full.
pub(crate) struct PackInspection {
    pub map: PackMap,
    /// Records that passed every check, in order.
    pub intact: Vec<(u64, RecordHeader)>,
    pub damaged: Vec<Damage>,
    /// Content bytes of the intact records.
    pub bytes: u64,
}

pub(crate) fn inspect_pack(
    backend: &dyn ObjectBackend,
    id: PackId,
    decoder: &mut ChunkDecoder,
) -> Result<PackInspection, StoreError> {
    let map = PackMap::open(backend, id)?;
    let path = map.path().to_path_buf();
    let scan = pack::scan_bytes(map.bytes(), Some(id));
    let mut damaged: Vec<Damage> = scan
        .damaged
        .into_iter()
        .map(|r| Damage {
            pack: path.clone(),
            offset: r.start,
            end: r.end,
            digest: None,
            reason: r.reason,
        })
        .collect();
    let mut intact = Vec::with_capacity(scan.records.len());
    let mut scratch = Vec::new();
    let mut bytes = 0;
    for (offset, h) in scan.records {
        let len = h.record_len() as u32;
        let checked = map
            .record(offset, len)
            .map_err(|e| e.to_string())
            .and_then(|rec| {
                decoder
                    .check(rec, &h.digest, &mut scratch)
                    .map_err(|e| e.to_string())
            });
        map.release(offset, len);
        match checked {
            Ok(()) => {
                bytes += h.raw_len as u64;
                intact.push((offset, h));
            }
            Err(reason) => damaged.push(Damage {
                pack: path.clone(),
                offset,
                end: offset + len as u64,
                digest: Some(h.digest.to_hex()),
                reason,
            }),
        }
    }
    damaged.sort_by_key(|d| d.offset);
    Ok(PackInspection {
        map,
        intact,
        damaged,
        bytes,
    })
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub packs: u64,
    pub records: u64,
    pub bytes: u64,
    pub index_entries: u64,
    /// Damaged records and unreadable packs.
    pub damaged: Vec<Damage>,
    /// Index entries whose pack file is gone, per missing pack.
    pub missing_packs: Vec<(String, u64)>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.missing_packs.is_empty()
    }
}

/// Reads and fully verifies every record of every sealed pack (CRCs,
/// decompression, digest), and checks that every index entry's pack exists.
/// Packs are checked in parallel, one per worker.
pub fn check_store(store: &Store, threads: usize, progress: &dyn Progress) -> crate::Result<CheckReport> {
    let backend = store.packs();
    let packs = packs::list_sealed(backend)?;
    let total: u64 = packs.iter().map(|(_, o)| o.size).sum();
    let mut report = CheckReport::default();
    progress.begin("check", total);
    // With the key every record is checked in full (tag, keyed digest):
    // a planted record with valid CRCs is damage, not a chunk.
    inspect_in_order(
        backend,
        &packs,
        threads,
        store.protection(),
        store.keys(),
        |i, found| {
            let object = &packs[i].1;
            report.packs += 1;
            match found {
                Ok(found) => {
                    report.records += found.intact.len() as u64;
                    report.bytes += found.bytes;
                    report.damaged.extend(found.damaged);
                }
                Err(e) => report.damaged.push(Damage {
                    pack: backend.location(&object.name),
                    offset: 0,
                    end: object.size,
                    digest: None,
                    reason: e.to_string(),
                }),
            }
            progress.advance(object.size);
            Ok(())
        },
    )?;
    progress.end();
    let present: std::collections::HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
    let mut missing: HashMap<PackId, u64> = HashMap::new();
    store.index().for_each_entry(|_, e| {
        report.index_entries += 1;
        if !present.contains(&e.loc.pack) {
            *missing.entry(e.loc.pack).or_default() += 1;
        }
    })?;
    // Entries of a lost pack are dropped, so no backup reuses their chunks.
    let gone: std::collections::HashSet<PackId> = missing.keys().copied().collect();
    if !gone.is_empty() {
        store.index().forget_packs(&gone)?;
    }
    report.missing_packs = missing
        .into_iter()
        .map(|(id, n)| (backend.location(&id.name()).display().to_string(), n))
        .collect();
    report.missing_packs.sort();
    Ok(report)
}
