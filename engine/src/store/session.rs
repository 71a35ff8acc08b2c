//! Live-process records: backup sessions and the maintenance lock.
//!
//! A backup registers `sessions/PID-UUID.session` and holds an exclusive
//! flock on it for its lifetime. The kernel drops the flock when the process
//! dies, so anyone can tell a live session from a stale one by trying the
//! lock: a file whose lock can be taken belongs to a dead process and is
//! removed. Maintenance that must run alone (index rebuild, later GC) takes
//! `maintenance.lock` with a non-blocking flock, so a second one is refused
//! at once instead of queueing.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::{io_err, StoreError};

pub(crate) const SESSIONS_DIR: &str = "sessions";
pub(crate) const MAINTENANCE_LOCK: &str = "maintenance.lock";

/// A registered backup session; unregistered on drop.
pub struct Session {
    path: PathBuf,
    _file: File,
}

impl Session {
    pub fn register(store_root: &Path, what: &str) -> Result<Session, StoreError> {
        let dir = store_root.join(SESSIONS_DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{}-{}.session", std::process::id(), uuid::Uuid::new_v4()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        let started = humantime::format_rfc3339_seconds(SystemTime::now());
        writeln!(
            file,
            "pid={} start_ns={} started={started} {what}",
            std::process::id(),
            now_ns()
        )
        .map_err(io_err(&path))?;
        crate::failpoint::hit("session-registered");
        Ok(Session { path, _file: file })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Nanoseconds since the Unix epoch: the clock that orders sessions and GC
/// condemnations (one machine, one clock).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What `live_sessions` found.
#[derive(Debug, Default)]
pub(crate) struct SessionScan {
    /// Contents of each live session record.
    pub live: Vec<String>,
    /// Start of the oldest live session (a record without a readable start
    /// counts as the oldest possible).
    pub oldest_start_ns: Option<u64>,
    /// One message per stale record removed.
    pub removed_stale: Vec<String>,
}

/// Lists live sessions and removes the records of dead processes.
pub(crate) fn live_sessions(store_root: &Path) -> Result<SessionScan, StoreError> {
    let dir = store_root.join(SESSIONS_DIR);
    let mut scan = SessionScan::default();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().is_none_or(|e| e != "session") {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue }; // it just ended
                                                            // A record is one short line; more is not read.
        let mut text = String::new();
        let _ = io::Read::read_to_string(&mut io::Read::take(&file, 4096), &mut text);
        let text = text.trim().to_string();
        match file.try_lock() {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                scan.removed_stale
                    .push(format!("removed stale session of a dead process: {text}"));
            }
            Err(TryLockError::WouldBlock) => {
                let start = start_ns(&text);
                scan.oldest_start_ns = Some(scan.oldest_start_ns.map_or(start, |o| o.min(start)));
                scan.live.push(text);
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
    Ok(scan)
}

/// A session record's start (`start_ns=`); 0, the oldest possible, when it
/// has none. Also the fuzz target.
pub(crate) fn start_ns(record: &str) -> u64 {
    record
        .split_whitespace()
        .find_map(|w| w.strip_prefix("start_ns=")?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// A reader's session (restore, export, mount): while it lives, GC removes
/// no chunk condemned after it started, so a snapshot forgotten meanwhile
/// stays readable to the end. A store whose session record cannot be
/// written (a full or read-only backup disk) must still be readable, so
/// that is a warning, not an error.
pub struct ReadSession {
    _registered: Option<Session>,
}

impl ReadSession {
    pub fn begin(store_root: &Path, what: &str) -> ReadSession {
        match Session::register(store_root, what) {
            Ok(s) => ReadSession { _registered: Some(s) },
            Err(e) => {
                eprintln!("hoard: warning: {e}; a garbage collection now could remove chunks of a snapshot forgotten meanwhile");
                ReadSession { _registered: None }
            }
        }
    }
}

/// Held while a maintenance operation runs; released on drop (or death).
pub struct MaintenanceLock {
    _file: File,
}

impl MaintenanceLock {
    /// Takes the lock or fails at once, naming the holder.
    pub fn acquire(store_root: &Path, what: &str) -> Result<MaintenanceLock, StoreError> {
        let path = store_root.join(MAINTENANCE_LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                return Err(StoreError::Busy {
                    what: what.into(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        writeln!(file, "pid={} {what}", std::process::id()).map_err(io_err(&path))?;
        Ok(MaintenanceLock { _file: file })
    }
}

/// Removes what a killed rebuild left: `index.rebuild/` (half built, or the
/// old index it had swapped out but not yet deleted), and `index.old-*`
/// (the same, from hoard versions that swapped by two renames).
pub(crate) fn remove_rebuild_leftovers(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for e in fs::read_dir(root).map_err(io_err(root))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "index.rebuild" || name.starts_with("index.old-") {
            fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
            removed.push(format!("removed {name}/, left by a killed index rebuild"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_stale_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Session::register(dir.path(), "backup host/a").unwrap();
        let scan = live_sessions(dir.path()).unwrap();
        assert_eq!(scan.live.len(), 1);
        assert!(scan.live[0].contains("backup host/a"));
        // A record nobody holds a lock on: its process died.
        fs::write(
            dir.path().join(SESSIONS_DIR).join("999999-x.session"),
            "pid=999999 backup host/b",
        )
        .unwrap();
        let scan = live_sessions(dir.path()).unwrap();
        assert_eq!(scan.live.len(), 1);
        assert_eq!(scan.removed_stale.len(), 1);
        assert!(scan.removed_stale[0].contains("pid=999999"));
        drop(s);
        assert!(live_sessions(dir.path()).unwrap().live.is_empty());
    }

    #[test]
    fn maintenance_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = MaintenanceLock::acquire(dir.path(), "gc").unwrap();
        let err = MaintenanceLock::acquire(dir.path(), "index rebuild")
            .err()
            .unwrap();
        assert!(err.to_string().contains("gc"), "{err}");
        drop(held);
        MaintenanceLock::acquire(dir.path(), "index rebuild").unwrap();
    }
}
