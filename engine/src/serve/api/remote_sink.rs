//! A backup through the server ([`ChunkSink`]): what is known is what the
//! session may name without uploading (the chunks of the base indexes its
//! client fetched, and what it uploaded); every other chunk goes up, in
//! batches on [`UPLOADERS`] threads while the backup goes on.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use reqwest::Method;

use super::client::Client;
use super::server_objects::ServerObjects;
use super::{store_error, wire, ApiError};
use crate::chunking::digest::{ChunkHasher, Digest, DigestSet};
use crate::chunking::keyed_cdc::ChunkerKey;
use crate::crypto::keys::StoreKeys;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::snapshot::{Kind, Manifest, SnapshotName};
use crate::store::catalog::Catalog;
use crate::store::seam::{Catalogue, ChunkSink};
use crate::store::StoreError;

/// Upload threads per backup: enough to keep one batch on the wire while
/// the next is checked and stored by the server.
const UPLOADERS: usize = 2;

/// A backup through the server. What is known is what this session may
/// name without uploading: the chunks of the base indexes it fetched and
/// those it uploaded. There is no asking the server what it has.
pub(super) struct RemoteSink<'a> {
    pub(super) client: Arc<Client>,
    /// The store's keys, when it is protected and unlocked.
    pub(super) keys: Option<Arc<StoreKeys>>,
    /// The client's copy of the catalogue, which publishes through
    /// `objects` to the server.
    pub(super) catalog: &'a Catalog,
    pub(super) objects: &'a ServerObjects,
    pub(super) known: RwLock<DigestSet>,
    /// The server's session id and this snapshot's directory in the copy.
    pub(super) session: Mutex<Option<(u64, SnapshotName, PathBuf)>>,
    pub(super) batch: Mutex<Vec<u8>>,
    pub(super) uploads: Uploads,
}

impl ChunkSink for RemoteSink<'_> {
    fn hasher(&self) -> ChunkHasher {
        self.keys.as_ref().map_or(ChunkHasher::PLAIN, |k| k.hasher())
    }

    fn chunker(&self) -> Option<Arc<ChunkerKey>> {
        self.keys.as_ref().and_then(|k| k.chunker())
    }

    /// Sealed here, with the store's keys, when it encrypts: the server
    /// stores what it cannot open.
    fn encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError> {
        Ok(ChunkEncoder::new(compression)
            .map_err(|source| StoreError::Io {
                path: PathBuf::from("zstd"),
                source,
            })?
            .with_keys(self.keys.as_ref()))
    }

    fn is_known(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.known.read().expect("lock poisoned").contains(d))
    }

    fn known(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let known = self.known.read().expect("lock poisoned");
        Ok(digests.iter().map(|d| known.contains(d)).collect())
    }

    /// The digests of a base index this session fetched: the server made
    /// them known to the session when it served that index.
    fn seed(&self, digests: &mut dyn Iterator<Item = Digest>) -> Result<usize, StoreError> {
        let mut known = self.known.write().expect("lock poisoned");
        let before = known.len();
        known.extend(digests);
        Ok(known.len() - before)
    }

    fn add_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, StoreError> {
        if !self.known.write().expect("lock poisoned").insert(d) {
            return Ok(false);
        }
        let full = {
            let mut batch = self.batch.lock().expect("lock poisoned");
            wire::push_upload(&mut batch, &d, raw_len, record);
            (batch.len() >= wire::BATCH_TARGET).then(|| std::mem::take(&mut *batch))
        };
        if let Some(batch) = full {
            self.uploads.send(self.session_id()?, batch)?;
        }
        Ok(true)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut *self.batch.lock().expect("lock poisoned"));
        if !batch.is_empty() {
            self.uploads.send(self.session_id()?, batch)?;
        }
        self.uploads.wait()
    }

    /// Opens the server's session for a snapshot dated now; a group whose
    /// newest snapshot has this second waits for the next.
    fn create_snapshot(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), StoreError> {
        let client = &self.client;
        let mut attempt = 0;
        let answer = loop {
            let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let body = serde_json::json!({ "kind": kind.as_str(), "id": id, "time": time });
            match client.json(Method::POST, "backup", body.to_string().into_bytes()) {
                Err(ApiError::Remote {
                    kind: crate::error::ErrorKind::Busy,
                    ..
                }) if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1000));
                }
                other => break other.map_err(store_error)?,
            }
        };
        let sid = answer["session"].as_u64();
        let name = answer["snapshot"].as_str().and_then(|s| s.parse().ok());
        let (Some(sid), Some(crate::format::snapshot::SnapshotRef::Exact(name))) = (sid, name) else {
            return Err(store_error(ApiError::Invalid(format!(
                "backup: a malformed answer {answer}"
            ))));
        };
        let dir = self.catalog.dir(&name);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        self.objects.begin_session(&name, sid);
        *self.session.lock().expect("lock poisoned") = Some((sid, name.clone(), dir.clone()));
        Ok((name, dir))
    }

    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.flush()?;
        let dir = self.session_dir()?;
        self.catalog.publish(&dir, manifest)?;
        self.session.lock().expect("lock poisoned").take();
        Ok(())
    }

    fn abort(&self) {
        if let Some((sid, name, dir)) = self.session.lock().expect("lock poisoned").take() {
            let _ = self
                .client
                .call(Method::DELETE, &format!("backup/{sid}"), Vec::new());
            self.objects.end_session(&name);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RemoteSink<'_> {
    fn session_id(&self) -> Result<u64, StoreError> {
        Ok(self.session_entry()?.0)
    }

    fn session_dir(&self) -> Result<PathBuf, StoreError> {
        Ok(self.session_entry()?.2)
    }

    fn session_entry(&self) -> Result<(u64, SnapshotName, PathBuf), StoreError> {
        self.session
            .lock()
            .expect("lock poisoned")
            .clone()
            .ok_or_else(|| {
                store_error(ApiError::Invalid(
                    "no backup session: create_snapshot comes first".into(),
                ))
            })
    }
}

/// Batches sent and not yet answered, and the first failure.
#[derive(Default)]
struct InFlight {
    batches: usize,
    failure: Option<String>,
}

/// Batches on their way to the server, on [`UPLOADERS`] threads.
pub(super) struct Uploads {
    queue: Option<crossbeam_channel::Sender<(u64, Vec<u8>)>>,
    state: Arc<(Mutex<InFlight>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Uploads {
    pub(super) fn start(client: Arc<Client>) -> Uploads {
        // Bounded: at most this many batches wait, which bounds memory.
        let (queue, batches) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(UPLOADERS);
        let state = Arc::new((Mutex::new(InFlight::default()), Condvar::new()));
        let threads = (0..UPLOADERS)
            .map(|_| {
                let (batches, state, client) = (batches.clone(), state.clone(), client.clone());
                std::thread::spawn(move || {
                    for (sid, batch) in batches {
                        // Once one batch failed the backup has: the rest
                        // are dropped, not retried one after another.
                        let failed = state.0.lock().expect("lock poisoned").failure.is_some();
                        let sent = match failed {
                            true => Ok(Default::default()),
                            false => client.call(Method::POST, &format!("backup/{sid}/chunks"), batch),
                        };
                        let (lock, done) = &*state;
                        let mut s = lock.lock().expect("lock poisoned");
                        s.batches -= 1;
                        if let Err(e) = sent {
                            s.failure.get_or_insert(e.to_string());
                        }
                        done.notify_all();
                    }
                })
            })
            .collect();
        Uploads {
            queue: Some(queue),
            state,
            threads,
        }
    }

    fn failed(&self) -> Result<(), StoreError> {
        match &self.state.0.lock().expect("lock poisoned").failure {
            Some(e) => Err(StoreError::Remote(std::io::Error::other(e.clone()))),
            None => Ok(()),
        }
    }

    fn send(&self, sid: u64, batch: Vec<u8>) -> Result<(), StoreError> {
        self.failed()?;
        self.state.0.lock().expect("lock poisoned").batches += 1;
        let queue = self.queue.as_ref().expect("open until dropped");
        queue
            .send((sid, batch))
            .expect("the uploaders live as long as the queue");
        Ok(())
    }

    /// Waits for every batch sent; the first failure, if any.
    fn wait(&self) -> Result<(), StoreError> {
        let (lock, done) = &*self.state;
        let mut s = lock.lock().expect("lock poisoned");
        while s.batches > 0 {
            s = done.wait(s).expect("lock poisoned");
        }
        drop(s);
        self.failed()
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.queue.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
