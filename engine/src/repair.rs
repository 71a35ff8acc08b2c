//! Repair: rebuild the chunk index from the packs alone, and check every
//! stored record.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::chunk::ChunkDecoder;
use crate::pack::{self, PackError, PackId};
use crate::progress::Progress;
use crate::store::index::{self, IndexBuilder};
use crate::store::session::{live_sessions, MaintenanceLock};
use crate::store::{io_err, read_config, ChunkLocation, Store, StoreError};

#[derive(Debug, Default, Serialize)]
pub struct RebuildReport {
    pub packs: u64,
    pub records: u64,
    /// Distinct chunks now indexed.
    pub chunks: u64,
    /// Records whose digest an earlier pack already held.
    pub duplicates: u64,
    /// One line per pack that could not be read to its end.
    pub damaged: Vec<String>,
    pub stale_sessions_removed: Vec<String>,
}

/// Rebuilds `STORE/index` from the sealed packs. Refuses while backups run
/// (their index readers would lose their database) or while other
/// maintenance holds the store.
pub fn rebuild_index(root: &Path, progress: &dyn Progress) -> Result<RebuildReport, StoreError> {
    read_config(root)?;
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
    let fresh = root.join("index.rebuild");
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(io_err(&fresh))?;
    }
    let mut builder = IndexBuilder::create(&fresh)?;
    let mut report = RebuildReport {
        stale_sessions_removed: sessions.removed_stale,
        ..Default::default()
    };
    let packs = pack::list_sealed(&root.join("packs"))?;
    progress.begin("index rebuild", packs.len() as u64);
    for (id, path) in &packs {
        let (records, damage) = match pack::scan_until_damage(path) {
            Ok(scan) => (scan.records, scan.damage),
            Err(e) => (Vec::new(), Some(e)),
        };
        if let Some(d) = damage {
            report.damaged.push(d.to_string());
        }
        for (offset, h) in records {
            let loc = ChunkLocation {
                pack: *id,
                offset,
                record_len: h.record_len() as u32,
                raw_len: h.raw_len,
            };
            report.records += 1;
            if builder.add(h.digest, loc)? {
                report.chunks += 1;
            } else {
                report.duplicates += 1;
            }
        }
        report.packs += 1;
        progress.advance(1);
    }
    progress.end();
    builder.finish()?;
    // Swap the new index in; the old one (if any) is removed afterwards.
    let live = root.join("index");
    let old = root.join(format!("index.old-{}", uuid::Uuid::new_v4()));
    if live.exists() {
        fs::rename(&live, &old).map_err(io_err(&live))?;
    }
    fs::rename(&fresh, &live).map_err(io_err(&fresh))?;
    pack::sync_dir(root).map_err(io_err(root))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(report)
}

#[derive(Debug, Serialize)]
pub struct Damage {
    pub pack: PathBuf,
    pub offset: Option<u64>,
    pub digest: Option<String>,
    pub reason: String,
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
pub fn check_store(
    store: &Store,
    threads: usize,
    progress: &dyn Progress,
) -> Result<CheckReport, StoreError> {
    let packs = pack::list_sealed(&store.packs_dir())?;
    let total: u64 = packs
        .iter()
        .map(|(_, p)| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let report = Mutex::new(CheckReport::default());
    let next = AtomicUsize::new(0);
    let threads = crate::worker_threads(threads);
    progress.begin("check", total);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut decoder = ChunkDecoder::new().expect("zstd context");
                let mut record = Vec::new();
                let mut out = Vec::new();
                while let Some((_, path)) = packs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (records, bytes, damaged) = check_pack(path, &mut decoder, &mut record, &mut out);
                    let mut r = report.lock().expect("lock poisoned");
                    r.packs += 1;
                    r.records += records;
                    r.bytes += bytes;
                    r.damaged.extend(damaged);
                    progress.advance(fs::metadata(path).map_or(0, |m| m.len()));
                }
            });
        }
    });
    progress.end();
    let mut report = report.into_inner().expect("lock poisoned");
    let present: std::collections::HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
    let mut missing: HashMap<PackId, u64> = HashMap::new();
    store.index().for_each_entry(|_, e| {
        report.index_entries += 1;
        if !present.contains(&e.loc.pack) {
            *missing.entry(e.loc.pack).or_default() += 1;
        }
    })?;
    report.missing_packs = missing
        .into_iter()
        .map(|(id, n)| (id.path(&store.packs_dir()).display().to_string(), n))
        .collect();
    report.missing_packs.sort();
    Ok(report)
}

fn check_pack(
    path: &Path,
    decoder: &mut ChunkDecoder,
    record: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (u64, u64, Vec<Damage>) {
    let mut damaged = Vec::new();
    let (records, damage) = match pack::scan_until_damage(path) {
        Ok(scan) => (scan.records, scan.damage),
        Err(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = damage {
        let offset = match &e {
            PackError::Record { offset, .. } => Some(*offset),
            _ => None,
        };
        damaged.push(Damage {
            pack: path.into(),
            offset,
            digest: None,
            reason: e.to_string(),
        });
    }
    let Ok(file) = File::open(path) else {
        return (0, 0, damaged);
    };
    let mut bytes = 0;
    for (offset, h) in &records {
        let result = pack::read_record_into(&file, path, *offset, h.record_len() as u32, record)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                out.resize(h.raw_len as usize, 0);
                decoder
                    .decode_to_slice(record, &h.digest, out)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(_) => bytes += h.raw_len as u64,
            Err(reason) => damaged.push(Damage {
                pack: path.into(),
                offset: Some(*offset),
                digest: Some(h.digest.to_hex()),
                reason,
            }),
        }
    }
    (records.len() as u64, bytes, damaged)
}
