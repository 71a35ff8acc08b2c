//! What the server does with a request, once its token is authenticated
//! and its body read (format-spec/server.md, "Endpoints"). Blocking work
//! on the store the server owns; `http` runs it off the async threads.
//!
//! State lives with the client: each client process names itself with a
//! random id (the `hoard-client` header), and its backup sessions and the
//! chunks it may read (those of the indexes it downloaded) are kept under
//! that id, so a client whose connection broke retries on a new one. A
//! client that says goodbye, or is silent for the idle timeout (it pings
//! while it lives), is forgotten, and every session it left unpublished
//! is aborted: a dead client never leaves a visible snapshot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::{Method, StatusCode};

use super::wire;
use super::ServerDir;
use crate::chunking::digest::{Digest, DigestSet};
use crate::error::{Classify, ErrorKind};
use crate::format::chunk::RecordHeader;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::notes::NOTES_FILE;
use crate::format::snapshot::{
    split_mac, valid_time, validate_id, Kind, Manifest, SnapshotName, MANIFEST_FILE,
};
use crate::format::task_log::{TASK_LOG_FILE, TASK_LOG_MAX};
use crate::format::token_list::{Role, Token};
use crate::format::verify_state::VERIFY_FILE;
use crate::store::backup_session::BackupSession;
use crate::store::objects::ObjectKind;
use crate::store::seam::FUTURE_SKEW;
use crate::store::snapshot_dir::PROTECTED_FILE;
use crate::store::{ChunkReader, ChunkSink, Store, StoreError};

/// The largest manifest or small object a client may send.
const MAX_SMALL_BODY: usize = 16 << 20;

/// What the server serves: its one store (it is the store's only writer),
/// and its directory (tokens, identity).
pub(super) struct Served {
    pub store: &'static Store,
    pub dir: ServerDir,
    /// The store as the user named it, for `whoami` and the log.
    pub label: String,
    next_session: AtomicU64,
    clients: Mutex<HashMap<String, Arc<ClientState>>>,
    idle_timeout: std::time::Duration,
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
    fn forget_client(&self, id: &str) {
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
    token: String,
    last_used: Mutex<std::time::Instant>,
    sessions: Mutex<HashMap<u64, Arc<Backup>>>,
    /// Chunks this connection may read: those of the indexes it downloaded.
    readable: Mutex<DigestSet>,
    /// Snapshots whose chunks are in `readable` (each registered once).
    opened: Mutex<HashSet<SnapshotName>>,
    /// Snapshots whose index files this client fetched: bases of its
    /// backups of their groups.
    fetched: Mutex<HashSet<SnapshotName>>,
    /// Chunk readers between this client's reads.
    readers: Mutex<Vec<ChunkReader<'static>>>,
    /// Snapshots published by this client, by session: their task log
    /// may follow, and a repeated publish is answered again.
    published: Mutex<HashMap<u64, SnapshotName>>,
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
struct Backup {
    session: BackupSession<'static>,
    token: String,
    name: SnapshotName,
    dir: PathBuf,
    /// What the client may name without uploading: the chunks of the base
    /// snapshots' indexes it downloaded in this session, and what it
    /// uploaded (format-spec/server.md, "Known chunks").
    known: Mutex<DigestSet>,
    bases: Mutex<HashSet<SnapshotName>>,
}

/// A successful answer.
pub(super) enum Reply {
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// A refused request: its status and why.
#[derive(Debug)]
pub(super) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, message)
}

impl<E: Classify> From<E> for Refusal {
    fn from(e: E) -> Refusal {
        let status = match e.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Auth => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        refuse(status, e.to_string())
    }
}

/// A request, authenticated and read whole.
pub(super) struct Call<'a> {
    pub method: &'a Method,
    /// Below `/api/v1/`.
    pub path: &'a str,
    /// The namespace the client asked for (`hoard-namespace`).
    pub namespace: &'a str,
    /// The client's id (`hoard-client`), if it sent one.
    pub client: Option<&'a str>,
    pub token: &'a Token,
    pub body: &'a [u8],
}

/// Answers one request.
pub(super) fn route(served: &Served, conn: &ClientState, call: &Call) -> Result<Reply, Refusal> {
    let token = call.token;
    if call.path == "whoami" {
        return Ok(Reply::Json(serde_json::json!({
            "name": token.name,
            "role": token.role.name(),
            "namespace": token.namespace,
            "store": served.label,
        })));
    }
    check_namespace(token, call.namespace)?;
    let parts: Vec<&str> = call.path.split('/').collect();
    match (call.method, parts.as_slice()) {
        (&Method::POST, ["ping"]) => Ok(Reply::Json(serde_json::json!({}))),
        (&Method::DELETE, ["client"]) => {
            if let Some(id) = call.client {
                served.forget_client(id);
            }
            Ok(Reply::Json(serde_json::json!({})))
        }
        (&Method::GET, ["store"]) => Ok(Reply::Json(serde_json::json!({
            "chunk_size": served.store.default_chunk_size().bytes(),
            "protection": served.store.protection().to_string(),
            "ping_every_ms": (served.idle_timeout / 4).as_millis() as u64,
        }))),
        (&Method::GET, ["catalogue"]) => catalogue(served),
        (&Method::GET, ["store", "keys"]) => key_bundle(served),
        (&Method::GET, ["snapshot", kind, id, time, file]) => {
            index_file(served, conn, token, &snapshot_name(kind, id, time)?, file)
        }
        (&Method::DELETE, ["snapshot", kind, id, time]) => {
            require(token, &[Role::Admin], "forgetting a snapshot")?;
            served.store.catalog().forget(&snapshot_name(kind, id, time)?)?;
            Ok(Reply::Json(serde_json::json!({})))
        }
        // A backup reads only chunks its sessions know (a tree's base
        // metadata, which its incremental compares against).
        (&Method::POST, ["chunks"]) => read_chunks(served, conn, call.body),
        (&Method::POST, ["chunk-sizes"]) => {
            require(token, &[Role::Reader, Role::Admin], "reading chunks")?;
            chunk_sizes(served, conn, call.body)
        }
        (&Method::POST, ["backup"]) => {
            require(token, &[Role::Backup, Role::Admin], "backing up")?;
            begin_backup(served, conn, token, call.body)
        }
        (method, ["backup", sid, rest @ ..]) => {
            require(token, &[Role::Backup, Role::Admin], "backing up")?;
            if let (&Method::POST, ["publish"]) = (method, rest) {
                // A publish repeated after its answer was lost.
                if let Some(name) = conn
                    .published
                    .lock()
                    .expect("lock poisoned")
                    .get(&session_id(sid)?)
                {
                    return Ok(Reply::Json(serde_json::json!({ "snapshot": name.to_string() })));
                }
            }
            let backup = session(conn, sid)?;
            match (method, rest) {
                (&Method::POST, ["chunks"]) => add_chunks(served, &backup, call.body),
                (&Method::PUT, ["file", file]) => put_index(&backup, file, call.body),
                (&Method::POST, ["publish"]) => publish(conn, &backup, sid, call.body),
                (&Method::DELETE, []) => {
                    if let Some(b) = conn
                        .sessions
                        .lock()
                        .expect("lock poisoned")
                        .remove(&session_id(sid)?)
                    {
                        b.session.abort();
                    }
                    Ok(Reply::Json(serde_json::json!({})))
                }
                _ => Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!("no endpoint {method} {}", call.path),
                )),
            }
        }
        (&Method::PUT | &Method::DELETE, ["object", "snapshots", rest @ ..]) => put_object(
            served,
            conn,
            token,
            rest,
            call.method == Method::DELETE,
            call.body,
        ),
        (method, _) => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no endpoint {method} /api/v1/{}", call.path),
        )),
    }
}

/// Namespaces separate tenants: a token reaches its own and those below it.
fn check_namespace(token: &Token, ns: &str) -> Result<(), Refusal> {
    let within = token.namespace.is_empty()
        || ns == token.namespace
        || ns
            .strip_prefix(token.namespace.as_str())
            .is_some_and(|r| r.starts_with('/'));
    if !within {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} is for namespace {:?}, not {ns:?}",
                token.name, token.namespace
            ),
        ));
    }
    if !ns.is_empty() {
        return Err(refuse(
            StatusCode::NOT_IMPLEMENTED,
            format!("namespace {ns:?}: this server serves the root namespace only, so far"),
        ));
    }
    Ok(())
}

fn require(token: &Token, roles: &[Role], what: &str) -> Result<(), Refusal> {
    if roles.contains(&token.role) {
        return Ok(());
    }
    Err(refuse(
        StatusCode::FORBIDDEN,
        format!(
            "token {:?} has role {}; {what} needs role {}",
            token.name,
            token.role.name(),
            roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(" or ")
        ),
    ))
}

fn snapshot_name(kind: &str, id: &str, time: &str) -> Result<SnapshotName, Refusal> {
    let kind: Kind = kind
        .parse()
        .map_err(|_| bad(format!("{kind:?} is not a snapshot kind")))?;
    validate_id(id)?;
    if !valid_time(time) {
        return Err(bad(format!(
            "{time:?} is not a snapshot time (YYYY-MM-DDTHH:MM:SSZ)"
        )));
    }
    Ok(SnapshotName {
        kind,
        id: id.to_string(),
        time: time.to_string(),
    })
}

/// The store's config and key slots: a client unlocks them itself with
/// its passphrase (or brings its key file); the server never holds a key.
fn key_bundle(served: &Served) -> Result<Reply, Refusal> {
    let root = served.store.root();
    let mut out = Vec::new();
    let read = |path: PathBuf| std::fs::read(&path).map_err(|source| StoreError::Io { path, source });
    wire::push_file(&mut out, "config.json", &read(root.join("config.json"))?);
    if let Ok(slots) = std::fs::read_dir(root.join("keys")) {
        for slot in slots.flatten() {
            let name = format!("keys/{}", slot.file_name().to_string_lossy());
            if wire::key_bundle_path(&name) {
                wire::push_file(&mut out, &name, &read(slot.path())?);
            }
        }
    }
    Ok(Reply::Bytes(out))
}

/// Every published snapshot's small files (manifest, verify state, task
/// log, notes, protection marker) and every group's notes, as one bundle:
/// what a client's catalogue is made of (index files come on demand).
fn catalogue(served: &Served) -> Result<Reply, Refusal> {
    let catalog = served.store.catalog();
    let mut out = Vec::new();
    let mut groups = HashSet::new();
    for name in catalog.list()? {
        let dir = catalog.dir(&name);
        for file in [
            MANIFEST_FILE,
            VERIFY_FILE,
            TASK_LOG_FILE,
            NOTES_FILE,
            PROTECTED_FILE,
        ] {
            if let Ok(bytes) = std::fs::read(dir.join(file)) {
                wire::push_file(&mut out, &format!("{name}/{file}"), &bytes);
            }
        }
        if groups.insert((name.kind, name.id.clone())) {
            if let Some(group) = dir.parent() {
                if let Ok(bytes) = std::fs::read(group.join(NOTES_FILE)) {
                    wire::push_file(
                        &mut out,
                        &format!("{}/{}/{NOTES_FILE}", name.kind, name.id),
                        &bytes,
                    );
                }
            }
        }
    }
    Ok(Reply::Bytes(out))
}

/// An index file of a published snapshot. Its chunks become readable by
/// this client (reader, admin), and known to this client's backup of the
/// same group, open now or later (the base of an incremental). A backup
/// token reads the index, never the chunks, of a snapshot in its
/// namespace.
fn index_file(
    served: &Served,
    conn: &ClientState,
    token: &Token,
    name: &SnapshotName,
    file: &str,
) -> Result<Reply, Refusal> {
    let catalog = served.store.catalog();
    let manifest = catalog.load_manifest(name)?;
    let named = manifest
        .archives
        .iter()
        .any(|a| a.index == file || a.payload.as_ref().is_some_and(|p| p.index == file));
    if !named {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("{name} has no index file {file:?}"),
        ));
    }
    let digests = || -> Result<Vec<Digest>, Refusal> {
        let mut all = Vec::new();
        catalog.for_each_chunk(name, &manifest, |_, _, d| {
            all.push(d);
            Ok::<_, StoreError>(())
        })?;
        Ok(all)
    };
    // A base may be fetched before its backup's session opens (a live
    // backup chooses it first): the session that opens later for the
    // group knows it too (see `begin_backup`).
    conn.fetched.lock().expect("lock poisoned").insert(name.clone());
    let base_of: Vec<Arc<Backup>> = conn
        .sessions
        .lock()
        .expect("lock poisoned")
        .values()
        .filter(|b| b.name.kind == name.kind && b.name.id == name.id)
        .cloned()
        .collect();
    for backup in &base_of {
        if backup.bases.lock().expect("lock poisoned").insert(name.clone()) {
            backup.known.lock().expect("lock poisoned").extend(digests()?);
        }
    }
    let reads = matches!(token.role, Role::Reader | Role::Admin);
    if reads && conn.opened.lock().expect("lock poisoned").insert(name.clone()) {
        conn.readable.lock().expect("lock poisoned").extend(digests()?);
    }
    let path = catalog.dir(name).join(file);
    let bytes = std::fs::read(&path).map_err(|source| StoreError::Io { path, source })?;
    Ok(Reply::Bytes(bytes))
}

/// Records of chunks this connection may read, in the order asked; a
/// chunk it may not read is answered with why, as a missing one is.
fn read_chunks(served: &Served, conn: &ClientState, body: &[u8]) -> Result<Reply, Refusal> {
    let digests = wire::parse_digests(body).map_err(bad)?;
    let allowed = allowed(conn, &digests);
    let mut out = Vec::new();
    let mut wanted = Vec::with_capacity(digests.len());
    let mut at = Vec::with_capacity(digests.len());
    for (i, (d, ok)) in digests.iter().zip(allowed).enumerate() {
        if ok {
            wanted.push(*d);
            at.push(i as u32);
        } else {
            wire::push_answer(&mut out, i as u32, Err(NOT_OPENED));
        }
    }
    // Readers are kept per client: each holds its read session (which
    // keeps GC from removing what it may read) and its open packs.
    let pooled = conn.readers.lock().expect("lock poisoned").pop();
    let mut reader = match pooled {
        Some(r) => r,
        None => ChunkReader::new(served.store)?,
    };
    reader.read_records(&wanted, |k, record| match record {
        Ok(record) => wire::push_answer(&mut out, at[k], Ok(record)),
        Err(e) => wire::push_answer(&mut out, at[k], Err(&e.to_string())),
    });
    conn.readers.lock().expect("lock poisoned").push(reader);
    Ok(Reply::Bytes(out))
}

const NOT_OPENED: &str = "not a chunk of an index this connection opened";

/// Which of `digests` this client may read: those of the indexes it
/// opened, and those its backup sessions know.
fn allowed(conn: &ClientState, digests: &[Digest]) -> Vec<bool> {
    let readable = conn.readable.lock().expect("lock poisoned");
    let sessions: Vec<Arc<Backup>> = conn
        .sessions
        .lock()
        .expect("lock poisoned")
        .values()
        .cloned()
        .collect();
    digests
        .iter()
        .map(|d| {
            readable.contains(d)
                || sessions
                    .iter()
                    .any(|b| b.known.lock().expect("lock poisoned").contains(d))
        })
        .collect()
}

/// Each readable chunk's size before and after encoding (null: not stored).
fn chunk_sizes(served: &Served, conn: &ClientState, body: &[u8]) -> Result<Reply, Refusal> {
    let digests = wire::parse_digests(body).map_err(bad)?;
    if allowed(conn, &digests).contains(&false) {
        return Err(refuse(StatusCode::FORBIDDEN, NOT_OPENED));
    }
    let sizes = crate::store::Repository::chunk_sizes(served.store, &digests)?;
    Ok(Reply::Json(serde_json::json!(sizes)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BeginBackup {
    kind: String,
    id: String,
    time: String,
}

/// Opens a backup session for snapshot `kind/id/time`. The time must not
/// be ahead of the server's clock by more than the allowed skew, and must
/// be newer than every snapshot of the group: a client cannot plant
/// snapshots that would win or lose a retention rule.
fn begin_backup(served: &Served, conn: &ClientState, token: &Token, body: &[u8]) -> Result<Reply, Refusal> {
    let b: BeginBackup = serde_json::from_slice(body).map_err(|e| bad(format!("backup request: {e}")))?;
    let name = snapshot_name(&b.kind, &b.id, &b.time)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if name.unix_time() > now + FUTURE_SKEW.as_secs() as i64 {
        return Err(bad(format!(
            "{name} is dated in the future, more than {} minutes ahead of the server's clock",
            FUTURE_SKEW.as_secs() / 60
        )));
    }
    // A request repeated after its answer was lost gets the same session.
    if let Some((sid, _)) = conn
        .sessions
        .lock()
        .expect("lock poisoned")
        .iter()
        .find(|(_, b)| b.name == name)
    {
        return Ok(Reply::Json(
            serde_json::json!({ "session": sid, "snapshot": name.to_string() }),
        ));
    }
    let catalog = served.store.catalog();
    if let Some(newest) = catalog
        .list()?
        .into_iter()
        .rfind(|n| n.kind == name.kind && n.id == name.id)
    {
        if newest.time >= name.time {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("{name} is not newer than the group's newest snapshot {newest}"),
            ));
        }
    }
    let session =
        BackupSession::begin_for_server(served.store, &format!("backup {name} for token {}", token.name))?;
    let dir = session.create_named(&name).map_err(|e| match &e {
        StoreError::Snapshot(crate::format::snapshot::SnapshotError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            refuse(StatusCode::CONFLICT, format!("{name} is being written or exists"))
        }
        _ => e.into(),
    })?;
    let mut known = DigestSet::default();
    let bases: HashSet<SnapshotName> = conn
        .fetched
        .lock()
        .expect("lock poisoned")
        .iter()
        .filter(|n| n.kind == name.kind && n.id == name.id)
        .cloned()
        .collect();
    for base in &bases {
        let manifest = catalog.load_manifest(base)?;
        catalog.for_each_chunk(base, &manifest, |_, _, d| {
            known.insert(d);
            Ok::<_, StoreError>(())
        })?;
    }
    let sid = served.next_session.fetch_add(1, Ordering::Relaxed);
    tracing::info!(snapshot = %name, token = %token.name, session = sid, "backup started");
    let snapshot = name.to_string();
    conn.sessions.lock().expect("lock poisoned").insert(
        sid,
        Arc::new(Backup {
            session,
            token: token.name.clone(),
            name,
            dir,
            known: Mutex::new(known),
            bases: Mutex::new(bases),
        }),
    );
    Ok(Reply::Json(
        serde_json::json!({ "session": sid, "snapshot": snapshot }),
    ))
}

fn session_id(sid: &str) -> Result<u64, Refusal> {
    sid.parse().map_err(|_| bad(format!("{sid:?} is not a session")))
}

fn session(conn: &ClientState, sid: &str) -> Result<Arc<Backup>, Refusal> {
    let id = session_id(sid)?;
    conn.sessions
        .lock()
        .expect("lock poisoned")
        .get(&id)
        .cloned()
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("no backup session {id} on this connection"),
            )
        })
}

/// Stores a batch of chunks after checking each: a plain store's digest
/// is recomputed from the content, a sealed record's CRCs and lengths are
/// checked (the server has no key to open it).
fn add_chunks(served: &Served, backup: &Backup, body: &[u8]) -> Result<Reply, Refusal> {
    let items = wire::parse_upload(body).map_err(|e| bad(format!("chunk batch: {e}")))?;
    let mut decoder = ChunkDecoder::for_store(served.store.protection(), None)
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut scratch = Vec::new();
    let mut added = 0u64;
    for item in &items {
        let header =
            RecordHeader::decode(item.record).map_err(|e| bad(format!("chunk {}: {e}", item.digest)))?;
        if header.raw_len != item.raw_len {
            return Err(bad(format!(
                "chunk {}: its record holds {} bytes, not the {} announced",
                item.digest, header.raw_len, item.raw_len
            )));
        }
        decoder
            .check(item.record, &item.digest, &mut scratch)
            .map_err(|e| bad(format!("chunk {}: {e}", item.digest)))?;
        if backup.session.add_chunk(item.digest, item.record, item.raw_len)? {
            added += 1;
        }
        backup.known.lock().expect("lock poisoned").insert(item.digest);
    }
    Ok(Reply::Json(
        serde_json::json!({ "chunks": items.len(), "added": added }),
    ))
}

/// One index file of the snapshot being written.
fn put_index(backup: &Backup, file: &str, body: &[u8]) -> Result<Reply, Refusal> {
    let named_well =
        crate::format::snapshot::safe_component(file) && (file.ends_with(".fidx") || file.ends_with(".didx"));
    if !named_well {
        return Err(bad(format!(
            "{file:?} is not an index file's name (NAME.fidx, NAME.didx)"
        )));
    }
    crate::store::write_durably(&backup.dir.join(file), body)?;
    Ok(Reply::Json(serde_json::json!({})))
}

/// Publishes the session's snapshot with the client's manifest, once every
/// index file it names checks against it and every chunk they name is
/// known to the session: the client cannot reference a chunk it neither
/// uploaded nor read in a base index, which is what keeps one client from
/// learning what another stored.
fn publish(conn: &ClientState, backup: &Backup, sid: &str, body: &[u8]) -> Result<Reply, Refusal> {
    if body.len() > MAX_SMALL_BODY {
        return Err(bad("a manifest larger than 16 MiB"));
    }
    let (_, text) = split_mac(body);
    let path = backup.dir.join(MANIFEST_FILE);
    let manifest = Manifest::from_bytes(&path, &text)?;
    if manifest.name() != backup.name {
        return Err(bad(format!(
            "the manifest names {}, not this session's {}",
            manifest.name(),
            backup.name
        )));
    }
    {
        let known = backup.known.lock().expect("lock poisoned");
        crate::store::snapshot_dir::for_each_chunk(&backup.dir, &manifest, |a, _, d| {
            if known.contains(&d) {
                return Ok(());
            }
            Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "archive {} names chunk {d}, which this session neither uploaded nor read in a base snapshot's index",
                    a.name
                ),
            ))
        })?;
    }
    backup.session.publish_verbatim(body)?;
    let sid = session_id(sid)?;
    conn.sessions.lock().expect("lock poisoned").remove(&sid);
    conn.published
        .lock()
        .expect("lock poisoned")
        .insert(sid, backup.name.clone());
    tracing::info!(snapshot = %backup.name, token = %backup.token, "backup published");
    Ok(Reply::Json(
        serde_json::json!({ "snapshot": backup.name.to_string() }),
    ))
}

/// What a client may write below `snapshots/`: a group's notes
/// (`KIND/ID/notes`), or a snapshot's verify state, task log, notes or
/// protection marker (`KIND/ID/TIME/FILE`).
fn object_kind(rel: &[&str]) -> Result<(ObjectKind, Option<SnapshotName>), Refusal> {
    match rel {
        [k, id, file] if *file == NOTES_FILE => {
            k.parse::<Kind>()
                .map_err(|_| bad(format!("{k:?} is not a snapshot kind")))?;
            validate_id(id)?;
            Ok((ObjectKind::GroupNotes, None))
        }
        [k, id, time, file] => {
            let kind = match *file {
                VERIFY_FILE => ObjectKind::VerifyState,
                TASK_LOG_FILE => ObjectKind::TaskLog,
                NOTES_FILE => ObjectKind::Notes,
                PROTECTED_FILE => ObjectKind::Protected,
                _ => return Err(bad(format!("{file:?} is not an object a client may write"))),
            };
            Ok((kind, Some(snapshot_name(k, id, time)?)))
        }
        _ => Err(bad(format!(
            "snapshots/{} is not an object a client may write",
            rel.join("/")
        ))),
    }
}

/// What the server decodes of a request before it touches the store:
/// the path's snapshot name or object, a backup request's JSON, a client
/// id. For the fuzz target `api_paths`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_request(path: &str, body: &[u8]) {
    let parts: Vec<&str> = path.split('/').collect();
    if let [kind, id, time, ..] = parts.as_slice() {
        let _ = snapshot_name(kind, id, time);
    }
    let _ = object_kind(&parts);
    let _ = serde_json::from_slice::<BeginBackup>(body).map(|b| snapshot_name(&b.kind, &b.id, &b.time));
    let _ = session_id(path);
    let _ = std::str::from_utf8(body).map(valid_client_id);
}

/// A client id: 32 hex digits (format-spec/server.md, "Requests").
fn valid_client_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes or removes one of the small objects beside snapshots: verify
/// state, task log, notes, protection marker. Only an admin changes them,
/// except the task log of a snapshot this connection just published.
fn put_object(
    served: &Served,
    conn: &ClientState,
    token: &Token,
    rel: &[&str],
    remove: bool,
    body: &[u8],
) -> Result<Reply, Refusal> {
    let (kind, name) = object_kind(rel)?;
    let file = rel.last().copied().unwrap_or_default();
    let own_log = kind == ObjectKind::TaskLog
        && !remove
        && name.as_ref().is_some_and(|n| {
            conn.published
                .lock()
                .expect("lock poisoned")
                .values()
                .any(|p| p == n)
        });
    if !own_log {
        require(token, &[Role::Admin], kind.writing(remove))?;
    }
    if let Some(n) = &name {
        if !served.store.catalog().is_published(n) {
            return Err(refuse(StatusCode::NOT_FOUND, format!("no snapshot {n}")));
        }
    }
    if body.len() > TASK_LOG_MAX.max(MAX_SMALL_BODY / 4) {
        return Err(bad(format!("{file}: {} bytes, too large", body.len())));
    }
    let object = format!("snapshots/{}", rel.join("/"));
    if remove {
        served.store.objects().delete(kind, &object)?;
    } else {
        served.store.objects().put(kind, &object, body, false)?;
    }
    tracing::info!(object = %object, token = %token.name, remove, "object written");
    Ok(Reply::Json(serde_json::json!({})))
}
