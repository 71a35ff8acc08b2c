//! What crashed or killed processes left: `.partial` packs, snapshot
//! directories without a manifest, a killed verify's `verify.tmp`, scratch
//! directories of dead processes, a killed index rebuild's directories.

use std::fs;
use std::path::Path;

use std::time::UNIX_EPOCH;

use super::report::{GcError, GcReport};
use crate::format::pack::PACKS_PREFIX;
use crate::format::snapshot::MANIFEST_FILE;
use crate::store::{io_err, remove_rebuild_leftovers, Store};

/// Scratch directories of processes that are gone: index readers and verify
/// work lists of dead PIDs, mark sets of killed GCs (this GC holds the
/// maintenance lock and has dropped its own), and snapshots a killed
/// `forget` had already hidden.
///
/// On a full store disk, index readers and verify put their scratch in the
/// system's temporary directory instead: those of dead PIDs are removed
/// there too, if they belong to this user.
fn remove_stale_scratch(tmp: &Path, report: &mut GcReport) {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let system_tmp = std::env::temp_dir();
    for (dir, ours_only) in [(tmp, false), (system_tmp.as_path(), true)] {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner_pid = name
                .strip_prefix("index-reader-")
                .or_else(|| name.strip_prefix("verify-"));
            let stale = match owner_pid.and_then(|rest| rest.split('-').next()) {
                Some(pid) => !pid.is_empty() && !Path::new("/proc").join(pid).exists(),
                None => !ours_only && (name.starts_with("gc-mark-") || name.starts_with("forget-")),
            };
            let mine = || fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
            if stale && (!ours_only || mine()) && fs::remove_dir_all(e.path()).is_ok() {
                report.leftovers_removed += 1;
            }
        }
    }
}

/// Removes what crashed writers left: `.partial` packs and snapshot
/// directories without a manifest (in the cache and, for a store in a
/// bucket, in the bucket), if older than the cutoff.
pub(super) fn remove_leftovers(store: &Store, cutoff: u64, report: &mut GcReport) -> Result<(), GcError> {
    remove_stale_scratch(&store.root().join("tmp"), report);
    // This GC holds the maintenance lock, so no rebuild runs.
    report.leftovers_removed += remove_rebuild_leftovers(store.root())?.len() as u64;
    let packs = store.packs();
    let unfinished = packs
        .remove_unfinished(PACKS_PREFIX, cutoff)
        .map_err(io_err(&packs.location(PACKS_PREFIX)))?;
    for (_, size) in unfinished {
        report.bytes_freed += size;
        report.leftovers_removed += 1;
        crate::failpoint::hit("gc-partial-removed");
    }
    report.leftovers_removed += store.objects().remove_unpublished(cutoff)?;
    let snaps = store.snapshot_dirs().root();
    for kind in ["vm", "ct", "host"] {
        let Ok(ids) = fs::read_dir(snaps.join(kind)) else {
            continue;
        };
        for id in ids.flatten() {
            let Ok(times) = fs::read_dir(id.path()) else {
                continue;
            };
            for t in times.flatten() {
                let dir = t.path();
                if dir.is_dir() && !dir.join(MANIFEST_FILE).exists() && older_than(&dir, cutoff) {
                    fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
                    crate::failpoint::hit("gc-unfinished-snapshot-removed");
                    report.leftovers_removed += 1;
                    continue;
                }
                // The temporary file of a verify.json write that was killed.
                let Ok(files) = fs::read_dir(&dir) else { continue };
                for f in files.flatten() {
                    let p = f.path();
                    if p.extension().is_some_and(|e| e == "tmp") && older_than(&p, cutoff) {
                        fs::remove_file(&p).map_err(io_err(&p))?;
                        report.leftovers_removed += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether the file or directory at `path` was last changed before `cutoff_ns`.
fn older_than(path: &Path, cutoff_ns: u64) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|d| (d.as_nanos() as u64) < cutoff_ns)
}
