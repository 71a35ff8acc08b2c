//! The stores this host has used, as it remembers them
//! (format-spec/known-store.md): a store whose uuid, protection mode or
//! key changed since is refused until the user says the change is theirs
//! (`hoard known-stores forget`), and a group whose newest snapshot
//! disappeared is reported, so that whoever holds a store can neither
//! switch its encryption off nor roll it back unnoticed.
//!
//! One file per store location, `STATE/stores/HASH.json`, where STATE is
//! `$HOARD_STATE_DIR`, `$XDG_STATE_HOME/hoard`, `~/.local/state/hoard`, or
//! `/var/lib/hoard` when there is no home. Updates are read, changed and
//! replaced under an flock, so concurrent hoard runs merge, never undo,
//! each other's memory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg, OFlag};

use super::{datastore::Store, error::io_err, error::StoreError};
use crate::crypto::Protection;
use crate::format::known_store::{KnownStore, KNOWN_STORE_FORMAT, KNOWN_STORE_VERSION};
use crate::format::snapshot::SnapshotName;
use crate::private_fs::{open_in, private_dir_all};

pub struct KnownStores {
    dir: PathBuf,
}

/// Where this user's memory of stores lives.
pub fn default_state_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HOARD_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("hoard")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/hoard")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/hoard"))
}

impl KnownStores {
    pub fn new(state_dir: &Path) -> KnownStores {
        KnownStores {
            dir: state_dir.join("stores"),
        }
    }

    /// The file that remembers `location`.
    pub fn file(&self, location: &str) -> PathBuf {
        self.dir.join(file_name(location))
    }

    /// What this host remembers of `location`, if anything.
    pub fn load(&self, location: &str) -> Result<Option<KnownStore>, StoreError> {
        let path = self.file(location);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let known = KnownStore::parse(&bytes).map_err(|message| StoreError::BadConfig {
            path: path.clone(),
            message,
        })?;
        Ok(Some(known))
    }

    /// Fails if `store` is not the store this host remembers at its
    /// location: another uuid, protection mode or key.
    pub fn check(&self, store: &Store) -> Result<Option<KnownStore>, StoreError> {
        let location = store.location();
        let Some(known) = self.load(&location)? else {
            return Ok(None);
        };
        let config = store.config();
        let mut changes = Vec::new();
        if known.uuid != config.uuid {
            changes.push(format!("its uuid was {}, now {}", known.uuid, config.uuid));
        }
        if known.encryption != config.encryption {
            changes.push(format!(
                "it was {}, its config.json now says {}",
                describe(known.encryption),
                describe(config.encryption)
            ));
        } else if known.key_fingerprint != config.key_fingerprint {
            changes.push(format!(
                "its key fingerprint was {}, now {}",
                known.key_fingerprint.as_deref().unwrap_or("none"),
                config.key_fingerprint.as_deref().unwrap_or("none")
            ));
        }
        if changes.is_empty() {
            return Ok(Some(known));
        }
        Err(StoreError::StoreChanged {
            location,
            changes: changes.join("; "),
            since: known.first_seen,
            memory: self.file(&store.location()),
        })
    }

    /// Changes what this host remembers of `store` with `f`, under the
    /// memory's lock. With `create`, a store not remembered yet is
    /// remembered as its config says now (given to `f` new); without, only
    /// an existing record is changed.
    pub fn update(
        &self,
        store: &Store,
        create: bool,
        f: impl FnOnce(&mut KnownStore),
    ) -> Result<(), StoreError> {
        let location = store.location();
        let config = store.config();
        self.locked(&location, |current| {
            if current.is_none() && !create {
                return None;
            }
            let mut known = current.unwrap_or_else(|| KnownStore {
                format: KNOWN_STORE_FORMAT.into(),
                version: KNOWN_STORE_VERSION,
                location: location.clone(),
                uuid: config.uuid.clone(),
                encryption: config.encryption,
                key_fingerprint: config.key_fingerprint.clone(),
                first_seen: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                last_slot: None,
                newest: BTreeMap::new(),
            });
            f(&mut known);
            Some(known)
        })
    }

    /// Forgets `location`; false if nothing was remembered.
    pub fn forget(&self, location: &str) -> Result<bool, StoreError> {
        let mut existed = false;
        self.locked(location, |current| {
            existed = current.is_some();
            None
        })?;
        Ok(existed)
    }

    /// Every remembered store.
    pub fn list(&self) -> Result<Vec<KnownStore>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let bytes = fs::read(&path).map_err(io_err(&path))?;
                out.push(
                    KnownStore::parse(&bytes).map_err(|message| StoreError::BadConfig {
                        path: path.clone(),
                        message,
                    })?,
                );
            }
        }
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Runs `f` on the record of `location` with the memory locked, and
    /// stores what it returns (None removes the record).
    fn locked(
        &self,
        location: &str,
        f: impl FnOnce(Option<KnownStore>) -> Option<KnownStore>,
    ) -> Result<(), StoreError> {
        let dir = private_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let name = file_name(location);
        let lock_path = self.dir.join(format!("{name}.lock"));
        let lock = open_in(&dir, &format!("{name}.lock"), OFlag::empty()).map_err(io_err(&lock_path))?;
        let _lock =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io_err(&lock_path)(e.into()))?;
        let current = self.load(location)?;
        let before = current.clone();
        match f(current) {
            // Most runs change nothing: no write, no fsync.
            Some(known) if Some(&known) == before.as_ref() => Ok(()),
            Some(known) => write_replacing(&dir, &self.dir, &name, &known.to_bytes()),
            None => match fs::remove_file(self.dir.join(&name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.dir.join(&name))(e)),
                _ => Ok(()),
            },
        }
    }
}

/// `HASH.json`: the first 32 hex digits of BLAKE3 of the location.
fn file_name(location: &str) -> String {
    format!("{}.json", &blake3::hash(location.as_bytes()).to_hex()[..32])
}

fn describe(p: Protection) -> String {
    match p {
        Protection::None => "plain (no key)".into(),
        p => format!("{p}ed"),
    }
}

fn write_replacing(dir: &OwnedFd, dir_path: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    crate::private_fs::replace_in(dir, name, bytes).map_err(io_err(&dir_path.join(name)))
}

/// What the newest snapshots of `store` say against what this host
/// remembers in `known`: a warning for each group whose remembered newest
/// snapshot is gone with nothing newer in its place (hidden, rolled back,
/// or forgotten by another host). `counted` are the snapshots that count
/// (`Catalog::authentic`); the memory moves forward only when they were
/// authenticated (`authenticated`: a plain store, or an unlocked one).
pub fn observe(known: &mut KnownStore, counted: &[SnapshotName], authenticated: bool) -> Vec<String> {
    let mut newest: BTreeMap<String, &str> = BTreeMap::new();
    for n in counted {
        let group = format!("{}/{}", n.kind, n.id);
        let e = newest.entry(group).or_insert(&n.time);
        if n.time.as_str() > *e {
            *e = &n.time;
        }
    }
    let mut warnings = Vec::new();
    for (group, time) in &known.newest {
        if newest.get(group).is_none_or(|t| *t < time.as_str()) {
            warnings.push(format!(
                "snapshot {group}/{time}, the newest of its group when this host last looked, is gone and nothing newer is there: hidden or rolled back by whoever holds the store, or forgotten by another host"
            ));
        }
    }
    if authenticated {
        for (group, time) in newest {
            let e = known.newest.entry(group).or_default();
            if time > e.as_str() {
                *e = time.to_string();
            }
        }
    }
    warnings
}

/// This host forgot `name` itself: if it was the newest of its group that
/// the memory holds, the group's newest is now `next` (the newest left).
pub fn forgotten(known: &mut KnownStore, name: &SnapshotName, next: Option<&SnapshotName>) {
    let group = format!("{}/{}", name.kind, name.id);
    if known.newest.get(&group) == Some(&name.time) {
        match next {
            Some(n) => known.newest.insert(group, n.time.clone()),
            None => known.newest.remove(&group),
        };
    }
}
