//! The local store's [`Catalogue`]: snapshots as directories under
//! `STORE/snapshots`, written through the store's objects (so a bucket
//! store's go to the bucket first).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::objects::{ObjectKind, StoreObjects};
use super::seam::{Catalogue, Protected};
use super::snapshot_dir::{self, ManifestAuth, PROTECTED_FILE};
use crate::crypto::keys::{AuthFailed, Derivation, StoreKeys};
use crate::crypto::Protection;
use crate::format::notes::{self, NotesOf, NOTES_FILE, NOTES_MAX};
use crate::format::protect_marker;
use crate::format::sealed_text::SealedText;
use crate::format::snapshot::{split_mac, with_mac, Kind, Manifest, SnapshotError, SnapshotName};
use crate::format::task_log::{self, TASK_LOG_FILE};
use crate::format::verify_state::{self, VerifyState, VERIFY_FILE};
use crate::store::error::StoreError;

pub(crate) struct Catalog {
    /// `STORE/snapshots`
    dir: PathBuf,
    auth: ManifestAuth,
    /// Where every write goes; reads come from `dir`.
    objects: Arc<dyn StoreObjects>,
}

impl Catalog {
    pub(crate) fn new(root: &Path, protection: Protection, objects: Arc<dyn StoreObjects>) -> Catalog {
        Catalog {
            dir: root.join("snapshots"),
            auth: ManifestAuth {
                protection,
                keys: None,
            },
            objects,
        }
    }

    /// The object name of a snapshot's (or a group's) directory, or of
    /// `file` in it: `snapshots/KIND/ID/TIME[/FILE]`.
    fn object(&self, dir: &Path, file: &str) -> String {
        let rel = dir.strip_prefix(&self.dir).unwrap_or(dir);
        match file {
            "" => format!("snapshots/{}", rel.display()),
            _ => format!("snapshots/{}/{file}", rel.display()),
        }
    }

    /// From now on manifests are checked against, and written with, a MAC
    /// of these keys.
    pub(crate) fn unlock(&mut self, keys: Arc<crate::crypto::StoreKeys>) {
        self.auth.keys = Some(keys);
    }

    /// Creates the directory of a new snapshot of group `kind/id`, named
    /// for the current second (waiting for the next one if a snapshot of
    /// the group has it). Nothing lists it until [`publish`](Self::publish).
    pub(crate) fn create(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), SnapshotError> {
        snapshot_dir::create(&self.dir, kind, id)
    }

    /// Creates the directory of snapshot `name` as a client of the server
    /// named it (see [`snapshot_dir::create_named`]).
    pub(crate) fn create_named(&self, name: &SnapshotName) -> Result<PathBuf, SnapshotError> {
        snapshot_dir::create_named(&self.dir, name)
    }

    /// Publishes manifest bytes a client made (with its MAC, where its
    /// store has them): the server holds no key to make them itself.
    pub(crate) fn publish_verbatim(&self, dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.objects.publish_snapshot(&self.object(dir, ""), bytes)
    }

    /// Makes a snapshot created by [`create`](Self::create) visible: its
    /// manifest is written last, durably. Every chunk it references must be
    /// sealed and committed, and its index files synced, before.
    pub(crate) fn publish(&self, dir: &Path, manifest: &Manifest) -> Result<(), StoreError> {
        let bytes = match (&self.auth.keys, self.auth.protection) {
            (Some(k), _) => manifest.to_bytes_with_mac(|text| k.mac(text)),
            (None, Protection::None) => manifest.to_bytes(),
            (None, protection) => {
                return Err(StoreError::Locked {
                    store: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
                    protection,
                    what: "publishing a snapshot".into(),
                })
            }
        };
        self.objects.publish_snapshot(&self.object(dir, ""), &bytes)
    }

    /// A small sealed text (task.log, notes) as this reader can read it.
    fn read_sealed(
        &self,
        path: &Path,
        decode: impl FnOnce(&[u8], bool, Option<&StoreKeys>) -> SealedText,
    ) -> Option<SealedText> {
        let bytes = std::fs::read(path).ok()?;
        Some(decode(
            &bytes,
            self.auth.protection == Protection::Encrypt,
            self.auth.keys.as_deref(),
        ))
    }

    /// The bytes `encode` makes with this catalogue's keys: sealed in an
    /// encrypted store, which must be unlocked for `what`.
    fn sealed(
        &self,
        what: &str,
        encode: impl FnOnce(Option<&StoreKeys>) -> Result<Vec<u8>, AuthFailed>,
    ) -> Result<Vec<u8>, StoreError> {
        let keys = self.auth.keys.as_deref();
        let locked = || StoreError::Locked {
            store: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
            protection: self.auth.protection,
            what: what.into(),
        };
        if self.auth.protection == Protection::Encrypt && keys.is_none() {
            return Err(locked());
        }
        encode(keys).map_err(|_| locked())
    }

    /// `STORE/snapshots`, for the modules that walk it themselves (GC's
    /// leftovers, verify's state files).
    pub(crate) fn root(&self) -> &Path {
        &self.dir
    }
}

impl Catalogue for Catalog {
    /// Every finished snapshot, sorted by kind, id and time.
    fn list(&self) -> Result<Vec<SnapshotName>, SnapshotError> {
        snapshot_dir::list(&self.dir)
    }

    /// Whether `name` is published: its manifest is in place (a forget
    /// removes it first).
    fn is_published(&self, name: &SnapshotName) -> bool {
        snapshot_dir::is_published(&self.dir, name)
    }

    fn load_manifest(&self, name: &SnapshotName) -> Result<Manifest, SnapshotError> {
        snapshot_dir::load_manifest(&self.dir, name, &self.auth)
    }

    /// Where a snapshot's index files are.
    fn dir(&self, name: &SnapshotName) -> PathBuf {
        name.dir(&self.dir)
    }

    /// Whether a snapshot is protected, as far as this reader may believe
    /// its marker (format-spec/store.md, "What a reader believes"):
    /// without the key any marker counts (keeping is the safe side); with
    /// the key a version 3 store's marker counts only when its MAC checks,
    /// and one that does not is ignored and comes back with why.
    fn protection(&self, name: &SnapshotName) -> Protected {
        let Ok(bytes) = std::fs::read(self.dir(name).join(PROTECTED_FILE)) else {
            return Protected::No;
        };
        let Some(keys) = &self.auth.keys else {
            return Protected::Yes;
        };
        let input = protect_marker::mac_input(&name.to_string());
        match protect_marker::decode(&bytes) {
            Some(mac) if keys.verify_mac(&input, &mac) => Protected::Yes,
            // Version 2 stores' markers predate MACs: presence, as before.
            _ if keys.derivation() == Derivation::Shared => Protected::Yes,
            _ => Protected::Ignored(
                "its protected marker does not authenticate (planted, or not written by `hoard protect` with the key): ignored".into(),
            ),
        }
    }

    /// Protects or unprotects a snapshot. In a protected store protecting
    /// needs the key: the marker carries a MAC, or keyed readers would
    /// ignore it.
    fn set_protected(&self, name: &SnapshotName, protect: bool) -> Result<(), StoreError> {
        if !self.is_published(name) {
            return Err(SnapshotError::NotFound(name.to_string()).into());
        }
        let object = self.object(&self.dir(name), PROTECTED_FILE);
        if !protect {
            return self.objects.delete(ObjectKind::Protected, &object);
        }
        let marker = match (&self.auth.keys, self.auth.protection) {
            (Some(k), _) => {
                protect_marker::encode(Some(&k.mac(&protect_marker::mac_input(&name.to_string()))))
            }
            (None, Protection::None) => protect_marker::encode(None),
            (None, protection) => {
                return Err(StoreError::Locked {
                    store: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
                    protection,
                    what: "protecting a snapshot".into(),
                })
            }
        };
        self.objects.put(ObjectKind::Protected, &object, &marker, false)
    }

    /// Removes a snapshot (refused for a protected one). It disappears at
    /// once; a crash never leaves half of it visible.
    fn forget(&self, name: &SnapshotName) -> Result<(), StoreError> {
        if self.protection(name) == Protected::Yes {
            return Err(SnapshotError::Protected(name.to_string()).into());
        }
        self.objects.forget_snapshot(name)
    }

    /// A snapshot's last verification, and whether it is authenticated: in
    /// an unlocked protected store, whether its MAC checks (a state written
    /// with the key). Without a key nothing is authenticated.
    fn verify_state_checked(&self, name: &SnapshotName) -> Option<(VerifyState, bool)> {
        let bytes = std::fs::read(self.dir(name).join(VERIFY_FILE)).ok()?;
        let (mac, text) = split_mac(&bytes);
        let state = VerifyState::from_bytes(&text)?;
        let authentic = match (&self.auth.keys, mac) {
            (Some(k), Some(mac)) => k.verify_mac(&verify_state::mac_input(&name.to_string(), &text), &mac),
            _ => false,
        };
        Some((state, authentic))
    }

    /// Records a snapshot's verification (never in its manifest, whose
    /// checksums stay as they were); with a MAC when unlocked.
    fn save_verify_state(&self, name: &SnapshotName, state: &VerifyState) -> Result<(), StoreError> {
        let text = state.to_bytes();
        let bytes = match &self.auth.keys {
            Some(k) => with_mac(&text, &k.mac(&verify_state::mac_input(&name.to_string(), &text))),
            None => text,
        };
        let object = self.object(&self.dir(name), VERIFY_FILE);
        self.objects.put(ObjectKind::VerifyState, &object, &bytes, false)
    }

    /// The log of the job run that made a snapshot, if it has one (a
    /// sealed one is read with the keys this catalogue was unlocked with).
    fn task_log(&self, name: &SnapshotName) -> Option<SealedText> {
        self.read_sealed(
            &self.dir(name).join(TASK_LOG_FILE),
            |bytes, sealed_store, keys| task_log::decode(bytes, &name.to_string(), sealed_store, keys),
        )
    }

    /// Stores a job run's log beside the snapshot it made (not covered by
    /// the manifest, as verify.json); sealed in an encrypted store, which
    /// must be unlocked for it.
    fn save_task_log(&self, name: &SnapshotName, log: &str) -> Result<(), StoreError> {
        if !self.is_published(name) {
            return Err(SnapshotError::NotFound(name.to_string()).into());
        }
        let bytes = self.sealed("storing a task log", |keys| {
            task_log::encode(log, &name.to_string(), keys)
        })?;
        let object = self.object(&self.dir(name), TASK_LOG_FILE);
        self.objects.put(ObjectKind::TaskLog, &object, &bytes, false)
    }

    /// The notes on a snapshot or a group, if it has any (a sealed note is
    /// read with the keys this catalogue was unlocked with).
    fn notes(&self, of: &NotesOf) -> Option<SealedText> {
        self.read_sealed(
            &of.dir(&self.dir).join(NOTES_FILE),
            |bytes, sealed_store, keys| notes::decode(bytes, &of.to_string(), sealed_store, keys),
        )
    }

    /// Sets (or with an empty text, removes) the notes on a snapshot or a
    /// group that has snapshots; sealed in an encrypted store, which must be
    /// unlocked for it. Not covered by the manifest: notes change after it.
    fn set_notes(&self, of: &NotesOf, text: &str) -> Result<(), StoreError> {
        let exists = match of {
            NotesOf::Snapshot(name) => self.is_published(name),
            NotesOf::Group(kind, id) => self.list()?.iter().any(|n| n.kind == *kind && n.id == *id),
        };
        if !exists {
            return Err(SnapshotError::NotFound(of.to_string()).into());
        }
        if text.len() > NOTES_MAX {
            return Err(StoreError::NotesTooLong { len: text.len() });
        }
        let object = self.object(&of.dir(&self.dir), NOTES_FILE);
        let kind = match of {
            NotesOf::Group(..) => ObjectKind::GroupNotes,
            NotesOf::Snapshot(_) => ObjectKind::Notes,
        };
        if text.is_empty() {
            return self.objects.delete(kind, &object);
        }
        let bytes = self.sealed("writing notes", |keys| notes::encode(text, &of.to_string(), keys))?;
        self.objects.put(kind, &object, &bytes, false)
    }

    /// Whether this catalogue checks MACs (an unlocked protected store).
    fn authenticates(&self) -> bool {
        self.auth.keys.is_some()
    }
}
