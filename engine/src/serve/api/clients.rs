//! The server's clients: each client process names itself with a random
//! id (the `hoard-client` header), and its backup sessions and the chunks
//! it may read (those of the indexes it downloaded) are kept under that
//! id, so a client whose connection broke retries on a new one. A client
//! that says goodbye, or is silent for the idle timeout (it pings while it
//! lives), is forgotten, and every session it left unpublished is
//! aborted: a dead client never leaves a visible snapshot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;

use super::answer::{bad, refuse, Refusal};
use super::ServerDir;
use crate::chunking::digest::DigestSet;
use crate::format::snapshot::SnapshotName;
use crate::store::backup_session::BackupSession;
use crate::store::{ChunkReader, ChunkSink, Store};

/// What the server serves: its one store (it is the store's only writer),
/// and its directory (tokens, identity).
pub(super) struct Served {
    pub store: &'static Store,
    pub dir: ServerDir,
    /// The store as the user named it, for `whoami` and the log.
    pub label: String,
    pub(super) next_session: AtomicU64,
    pub(super) clients: Mutex<HashMap<String, Arc<ClientState>>>,
    pub(super) idle_timeout: std::time::Duration,
}

impl Served {
    pub(super) fn new(
        store: &'static Store,
        dir: ServerDir,
        label: String,
        idle_timeout: std::time::Duration,
    ) -> Served {
        Served {
            store,
            dir,
            label,
            next_session: AtomicU64::new(1),
            clients: Mutex::default(),
            idle_timeout,
        }
    }

    /// The state of client `id` as token `token` (made on its first
    /// request); another token's client is refused. A request without an
    /// id gets a state of its own, forgotten after it.
    pub(super) fn client(&self, id: Option<&str>, token: &str) -> Result<Arc<ClientState>, Refusal> {
        let Some(id) = id else {
            return Ok(Arc::new(ClientState::new(token)));
        };
        if !valid_client_id(id) {
            return Err(bad("the hoard-client header must be 32 hex digits"));
        }
        let mut clients = self.clients.lock().expect("lock poisoned");
        let conn = clients
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(ClientState::new(token)))
            .clone();
        if conn.token != token {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "this client id belongs to another token",
            ));
        }
        *conn.last_used.lock().expect("lock poisoned") = std::time::Instant::now();
        Ok(conn)
    }

    /// Forgets client `id` (it said goodbye).
    pub(super) fn forget_client(&self, id: &str) {
        self.clients.lock().expect("lock poisoned").remove(id);
    }

    /// Forgets every client silent for `idle`: their unpublished backups
    /// are aborted once no request of theirs is running.
    pub(super) fn reap(&self, idle: std::time::Duration) {
        self.clients
            .lock()
            .expect("lock poisoned")
            .retain(|_, c| c.last_used.lock().expect("lock poisoned").elapsed() < idle);
    }

    /// Forgets every client: the server is stopping.
    pub(super) fn forget_all(&self) {
        self.clients.lock().expect("lock poisoned").clear();
    }
}

/// One client's state.
pub(super) struct ClientState {
    pub(super) token: String,
    pub(super) last_used: Mutex<std::time::Instant>,
    pub(super) sessions: Mutex<HashMap<u64, Arc<Backup>>>,
    /// Chunks this connection may read: those of the indexes it downloaded.
    pub(super) readable: Mutex<DigestSet>,
    /// Snapshots whose chunks are in `readable` (each registered once).
    pub(super) opened: Mutex<HashSet<SnapshotName>>,
    /// Snapshots whose index files this client fetched: bases of its
    /// backups of their groups.
    pub(super) fetched: Mutex<HashSet<SnapshotName>>,
    /// Chunk readers between this client's reads.
    pub(super) readers: Mutex<Vec<ChunkReader<'static>>>,
    /// Snapshots published by this client, by session: their task log
    /// may follow, and a repeated publish is answered again.
    pub(super) published: Mutex<HashMap<u64, SnapshotName>>,
}

impl ClientState {
    fn new(token: &str) -> ClientState {
        ClientState {
            token: token.to_string(),
            last_used: Mutex::new(std::time::Instant::now()),
            sessions: Mutex::default(),
            readable: Mutex::default(),
            opened: Mutex::default(),
            fetched: Mutex::default(),
            readers: Mutex::default(),
            published: Mutex::default(),
        }
    }
}

impl Drop for ClientState {
    /// The client is gone: what it did not publish never becomes visible.
    fn drop(&mut self) {
        for (_, backup) in self.sessions.get_mut().expect("lock poisoned").drain() {
            tracing::info!(snapshot = %backup.name, token = %backup.token, "backup aborted: the client is gone");
            backup.session.abort();
        }
    }
}

/// A backup session: one snapshot being written.
pub(super) struct Backup {
    pub(super) session: BackupSession<'static>,
    pub(super) token: String,
    pub(super) name: SnapshotName,
    pub(super) dir: PathBuf,
    /// What the client may name without uploading: the chunks of the base
    /// snapshots' indexes it downloaded in this session, and what it
    /// uploaded (format-spec/server.md, "Known chunks").
    pub(super) known: Mutex<DigestSet>,
    pub(super) bases: Mutex<HashSet<SnapshotName>>,
}

/// A client id: 32 hex digits (format-spec/server.md, "Requests").
pub(super) fn valid_client_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
