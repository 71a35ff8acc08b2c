//! The packs GC may delete or rewrite, and how it makes sure: a pack is
//! walked, record by record, before anything in it goes (format-spec/gc.md,
//! "What GC may delete").

use std::collections::HashMap;

use super::report::{GcError, GcOptions, GcReport};
use crate::format::chunk::RecordHeader;
use crate::format::pack::{PackId, PACK_HEADER_LEN};
use crate::store::index::{EntryUpdate, IndexEntry};
use crate::store::packs::{self, PackWriter};
use crate::store::scratch::ScratchSet;
use crate::store::session::MaintenanceLock;
use crate::store::{ChunkLocation, ChunkReader, Store};

pub(super) fn sweep_packs(
    store: &Store,
    maintenance: &MaintenanceLock,
    marks: &ScratchSet,
    pack_live: &HashMap<PackId, u64>,
    cutoff: u64,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<(), GcError> {
    let mut reader = ChunkReader::for_maintenance(store, maintenance)?;
    let packs = store.packs();
    for (id, object) in packs::list_sealed(packs)? {
        if object.modified_ns >= cutoff {
            continue;
        }
        let path = packs.location(&object.name);
        let size = object.size;
        let live = pack_live.get(&id).copied().unwrap_or(0);
        let sparse = (live as f64) < opts.repack_below * (size - PACK_HEADER_LEN) as f64;
        if live > 0 && !sparse {
            continue;
        }
        let records = match classify(store, marks, &mut reader, id)? {
            Classified::Live(records) => records,
            Classified::Kept(why) => {
                report.packs_kept.push(format!("{}: {why}", path.display()));
                continue;
            }
            Classified::NeedsKey(n) => {
                report.packs_kept_for_key.push(format!(
                    "{}: {n} chunks that snapshots reference, whose indexed copy elsewhere cannot be fully checked without the store's key",
                    path.display()
                ));
                continue;
            }
        };
        if records.is_empty() {
            packs.delete(&object.name).map_err(packs::io_err(&path))?;
            crate::failpoint::hit("gc-pack-deleted");
            store.index().forget_pack_notes(&[id])?;
            report.packs_deleted += 1;
            report.bytes_freed += size;
        } else if let Some(new_size) = rewrite_pack(store, id, records, live)? {
            report.packs_rewritten += 1;
            report.bytes_freed += size.saturating_sub(new_size);
        }
    }
    Ok(())
}

/// A record of a pack and the index entry that points at it.
type LiveRecord = (u64, RecordHeader, IndexEntry);

/// What a dead or sparse pack turned out to hold.
enum Classified {
    /// The records the index points at; the rest is proven unreferenced.
    Live(Vec<LiveRecord>),
    /// Left alone, and why: damaged, or it holds referenced chunks the
    /// index does not point at.
    Kept(String),
    /// Left alone: it holds this many referenced chunks whose indexed
    /// copy elsewhere a keyless GC cannot prove genuine.
    NeedsKey(u64),
}

/// Establishes, record by record, what a pack that the index calls dead or
/// sparse really holds (format-spec/gc.md, "What GC may delete"). Returns
/// the records the index points at (to keep; the rest of the pack is
/// proven unreferenced), or why the pack must be left alone: it is
/// damaged, so some of its bytes cannot be accounted for, or it holds a
/// chunk that a snapshot references and whose only intact copy it may be.
fn classify(
    store: &Store,
    marks: &ScratchSet,
    reader: &mut ChunkReader,
    id: PackId,
) -> Result<Classified, GcError> {
    let scan = packs::scan(store.packs(), id)?;
    if !scan.is_clean() {
        return Ok(Classified::Kept(format!(
            "damaged ({} bad byte ranges, first at offset {}): kept; `hoard index rebuild` rescues its intact records and quarantines it",
            scan.damaged.len(),
            scan.damaged[0].start
        )));
    }
    // Only a full check (tag opened, keyed digest) proves another copy
    // genuine: without a protected store's key a record with valid CRCs
    // may still be garbage planted under a real digest.
    let full_check = store.protection() == crate::crypto::Protection::None || store.keys().is_some();
    let mut live = Vec::new();
    let mut needed = 0u64;
    for (offset, h) in scan.records {
        let entry = store.index().entry(&h.digest)?;
        if let Some(e) = entry.filter(|e| e.loc.pack == id && e.loc.offset == offset) {
            live.push((offset, h, e));
            continue;
        }
        // Referenced by no snapshot and unreachable through the index: no
        // backup can claim it. Referenced: a copy elsewhere serves the
        // snapshots only if it is provably intact.
        if marks.contains(&h.digest.0)?
            && !entry.is_some_and(|e| full_check && reader.check(&h.digest, &e.loc).is_ok())
        {
            needed += 1;
        }
    }
    if needed > 0 && !full_check {
        return Ok(Classified::NeedsKey(needed));
    }
    if needed > 0 {
        return Ok(Classified::Kept(format!(
            "holds {needed} chunks that snapshots reference and the index does not point at: kept; run `hoard index rebuild`"
        )));
    }
    Ok(Classified::Live(live))
}

/// Copies a pack's live records into a new pack, repoints their entries, and
/// deletes the old pack. Returns the new pack's size, or None if a record
/// fails its check or the index changed meanwhile (left alone for `hoard
/// check` / `verify`).
fn rewrite_pack(
    store: &Store,
    id: PackId,
    records: Vec<LiveRecord>,
    live: u64,
) -> Result<Option<u64>, GcError> {
    let packs = store.packs();
    let name = id.name();
    let path = packs.location(&name);
    let obj = packs.open(&name).map_err(packs::io_err(&path))?;
    // Keyless: a locked store's records are checked by CRC, as verify does.
    let mut decoder = store.chunk_decoder()?;
    let mut writer = PackWriter::create(packs)?;
    let (mut rec, mut out) = (Vec::new(), Vec::new());
    let mut moves = Vec::new();
    for (offset, h, entry) in records {
        packs::read_record_into(obj.as_ref(), &path, offset, h.record_len() as u32, &mut rec)?;
        if decoder.check(&rec, &h.digest, &mut out).is_err() {
            writer.abort();
            return Ok(None);
        }
        let new_offset = writer.append(&rec, h.digest, h.raw_len)?;
        let loc = ChunkLocation {
            offset: new_offset,
            pack: writer.id(),
            ..entry.loc
        };
        moves.push((h.digest, entry, loc));
    }
    // Every entry that pointed into this pack during the sweep must have a
    // record to move; if not, the index and the pack disagree: keep the pack.
    let moved: u64 = moves.iter().map(|(_, e, _)| e.loc.record_len as u64).sum();
    if moved < live {
        writer.abort();
        return Ok(None);
    }
    let new_size = writer.len();
    writer.seal()?;
    let updates: Vec<EntryUpdate> = moves
        .iter()
        .map(|(digest, seen, loc)| EntryUpdate {
            digest: *digest,
            seen: *seen,
            new: Some(IndexEntry {
                loc: *loc,
                condemned: seen.condemned,
            }),
        })
        .collect();
    let applied = store.index().update_if_unchanged(&updates)?;
    let repointed = applied.iter().filter(|a| **a).count();
    // An entry changed meanwhile still points here (a new copy replaced a
    // condemned one, or another GC moved it): the next run decides again.
    crate::failpoint::hit("gc-repack-repointed");
    if repointed < moves.len() {
        return Ok(None);
    }
    packs.delete(&name).map_err(packs::io_err(&path))?;
    crate::failpoint::hit("gc-repack-old-deleted");
    store.index().forget_pack_notes(&[id])?;
    Ok(Some(new_size))
}
