//! What the server does with a request, once its token is authenticated
//! and its body read (format-spec/server.md, "Endpoints"): the route, the
//! role and namespace it needs, and the reads and writes of the catalogue.
//! Blocking work on the store the server owns; `http` runs it off the
//! async threads. Backup sessions are `backups`', clients' state
//! `clients`'.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::{Method, StatusCode};

use super::answer::{bad, refuse, snapshot_name, Refusal, Reply, MAX_SMALL_BODY};
use super::backups::{add_chunks, begin_backup, chunks_of, publish, put_index, session, session_id};
use super::clients::{Backup, ClientState, Served};
use super::wire;
use crate::chunking::digest::Digest;
use crate::format::notes::NOTES_FILE;
use crate::format::snapshot::{validate_id, Kind, SnapshotName, MANIFEST_FILE};
use crate::format::task_log::{TASK_LOG_FILE, TASK_LOG_MAX};
use crate::format::token_list::{Role, Token};
use crate::format::verify_state::VERIFY_FILE;
use crate::store::objects::ObjectKind;
use crate::store::snapshot_dir::PROTECTED_FILE;
use crate::store::{ChunkReader, ChunkSink, StoreError};

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
        .filter(|b| b.bases.lock().expect("lock poisoned").insert(name.clone()))
        .cloned()
        .collect();
    let reads = matches!(token.role, Role::Reader | Role::Admin);
    let newly_readable = reads && conn.opened.lock().expect("lock poisoned").insert(name.clone());
    if newly_readable || !base_of.is_empty() {
        // One walk of the indexes, whoever it is for.
        let digests = chunks_of(catalog, name, &manifest)?;
        for backup in &base_of {
            backup
                .known
                .lock()
                .expect("lock poisoned")
                .extend(digests.iter().copied());
        }
        if newly_readable {
            conn.readable.lock().expect("lock poisoned").extend(digests);
        }
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
    let mut ok: Vec<bool> = {
        let readable = conn.readable.lock().expect("lock poisoned");
        digests.iter().map(|d| readable.contains(d)).collect()
    };
    let sessions: Vec<Arc<Backup>> = conn
        .sessions
        .lock()
        .expect("lock poisoned")
        .values()
        .cloned()
        .collect();
    for backup in sessions {
        let known = backup.known.lock().expect("lock poisoned");
        for (ok, d) in ok.iter_mut().zip(digests) {
            *ok = *ok || known.contains(d);
        }
    }
    ok
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
    let _ = serde_json::from_slice::<super::backups::BeginBackup>(body)
        .map(|b| snapshot_name(&b.kind, &b.id, &b.time));
    let _ = session_id(path);
    let _ = std::str::from_utf8(body).map(super::clients::valid_client_id);
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
