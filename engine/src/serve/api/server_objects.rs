//! The objects of a store behind `hoard serve`, as the client's catalogue
//! writes them: each write goes to the server first and to the client's
//! copy after, as a bucket store's go to the bucket first and to its
//! cache after. Publishing a snapshot uploads its index files and then
//! its manifest into the backup session that made it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reqwest::Method;

use super::client::Client;
use super::store_error;
use crate::format::snapshot::SnapshotName;
use crate::store::backend::ObjectBackend;
use crate::store::index::ChunkIndex;
use crate::store::local_dir::LocalDir;
use crate::store::objects::{LocalObjects, ObjectKind, StoreObjects};
use crate::store::StoreError;

pub(super) struct ServerObjects {
    client: Arc<Client>,
    /// The client's copy of the catalogue.
    copy: LocalObjects,
    root: PathBuf,
    /// Open backup sessions, by the snapshot they write.
    sessions: Mutex<HashMap<SnapshotName, u64>>,
}

impl ServerObjects {
    pub(super) fn new(client: Arc<Client>, root: &Path) -> ServerObjects {
        ServerObjects {
            client,
            copy: LocalObjects::new(root, Arc::new(LocalDir::new(root))),
            root: root.to_path_buf(),
            sessions: Mutex::default(),
        }
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn begin_session(&self, name: &SnapshotName, sid: u64) {
        self.sessions
            .lock()
            .expect("lock poisoned")
            .insert(name.clone(), sid);
    }

    pub(super) fn end_session(&self, name: &SnapshotName) {
        self.sessions.lock().expect("lock poisoned").remove(name);
    }

    /// The snapshot whose directory is `rel` (`snapshots/KIND/ID/TIME`).
    fn snapshot_at(rel: &str) -> Option<SnapshotName> {
        match rel.strip_prefix("snapshots/")?.parse().ok()? {
            crate::format::snapshot::SnapshotRef::Exact(name) => Some(name),
            _ => None,
        }
    }
}

impl StoreObjects for ServerObjects {
    fn address(&self) -> String {
        let repo = self.client.repo();
        match repo.namespace.as_str() {
            "" => repo.server.clone(),
            ns => format!("{}/{ns}", repo.server),
        }
    }

    fn packs(&self) -> Arc<dyn ObjectBackend> {
        self.copy.packs()
    }

    fn put(&self, kind: ObjectKind, name: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError> {
        self.client
            .call(Method::PUT, &format!("object/{name}"), bytes.to_vec())
            .map_err(store_error)?;
        self.copy.put(kind, name, bytes, create_only)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        self.client
            .call(Method::DELETE, &format!("object/{name}"), Vec::new())
            .map_err(store_error)?;
        self.copy.delete(kind, name)
    }

    /// Uploads the index files the backup wrote into the copy's directory
    /// `rel`, then publishes with `manifest`: the server checks them
    /// against it, and every chunk they name against the session's known
    /// set, before the snapshot becomes visible.
    fn publish_snapshot(&self, rel: &str, manifest: &[u8]) -> Result<(), StoreError> {
        let name = ServerObjects::snapshot_at(rel).ok_or_else(|| {
            store_error(super::ApiError::Invalid(format!(
                "{rel} is not a snapshot's directory"
            )))
        })?;
        let sid = *self
            .sessions
            .lock()
            .expect("lock poisoned")
            .get(&name)
            .ok_or_else(|| store_error(super::ApiError::Invalid(format!("{name}: no backup session"))))?;
        let dir = self.root.join(rel);
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if !(file.ends_with(".fidx") || file.ends_with(".didx")) {
                continue;
            }
            let bytes = std::fs::read(entry.path()).map_err(io)?;
            self.client
                .call(Method::PUT, &format!("backup/{sid}/file/{file}"), bytes)
                .map_err(store_error)?;
        }
        self.client
            .call(Method::POST, &format!("backup/{sid}/publish"), manifest.to_vec())
            .map_err(store_error)?;
        self.end_session(&name);
        self.copy.publish_snapshot(rel, manifest)
    }

    fn forget_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError> {
        self.client
            .call(
                Method::DELETE,
                &format!("snapshot/{}/{}/{}", name.kind, name.id, name.time),
                Vec::new(),
            )
            .map_err(store_error)?;
        std::fs::create_dir_all(self.root.join("tmp")).map_err(|source| StoreError::Io {
            path: self.root.join("tmp"),
            source,
        })?;
        self.copy.forget_snapshot(name)
    }

    fn begin_writing(&self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn refresh(&self, _: &ChunkIndex) -> Result<(), StoreError> {
        Ok(())
    }

    fn forget_missing_packs(&self, _: &ChunkIndex) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    fn remove_unpublished(&self, _: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
}
