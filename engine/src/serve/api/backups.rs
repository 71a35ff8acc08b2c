//! Backup sessions on the server (format-spec/server.md, "Backup
//! sessions"): opened under the backup-time rule, fed checked chunks and
//! index files, published only when every chunk the indexes name is known
//! to the session.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;

use super::answer::{bad, refuse, snapshot_name, Refusal, Reply, MAX_SMALL_BODY};
use super::clients::{Backup, ClientState, Served};
use super::wire;
use crate::chunking::digest::{Digest, DigestSet};
use crate::format::chunk::RecordHeader;
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::snapshot::{split_mac, Manifest, SnapshotName, MANIFEST_FILE};
use crate::format::token_list::Token;
use crate::store::backup_session::BackupSession;
use crate::store::seam::{Catalogue, FUTURE_SKEW};
use crate::store::{ChunkSink, StoreError};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BeginBackup {
    pub(super) kind: String,
    pub(super) id: String,
    pub(super) time: String,
}

/// Opens a backup session for snapshot `kind/id/time`. The time must not
/// be ahead of the server's clock by more than the allowed skew, and must
/// be newer than every snapshot of the group: a client cannot plant
/// snapshots that would win or lose a retention rule.
pub(super) fn begin_backup(
    served: &Served,
    conn: &ClientState,
    token: &Token,
    body: &[u8],
) -> Result<Reply, Refusal> {
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
        known.extend(chunks_of(catalog, base, &catalog.load_manifest(base)?)?);
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

/// Every chunk snapshot `name`'s index files name (checked against its
/// `manifest`): what fetching its index makes known or readable.
pub(super) fn chunks_of(
    catalog: &dyn Catalogue,
    name: &SnapshotName,
    manifest: &Manifest,
) -> Result<Vec<Digest>, StoreError> {
    let mut all = Vec::new();
    catalog.for_each_chunk(name, manifest, |_, _, d| {
        all.push(d);
        Ok::<_, StoreError>(())
    })?;
    Ok(all)
}

pub(super) fn session_id(sid: &str) -> Result<u64, Refusal> {
    sid.parse().map_err(|_| bad(format!("{sid:?} is not a session")))
}

pub(super) fn session(conn: &ClientState, sid: &str) -> Result<Arc<Backup>, Refusal> {
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
pub(super) fn add_chunks(served: &Served, backup: &Backup, body: &[u8]) -> Result<Reply, Refusal> {
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
pub(super) fn put_index(backup: &Backup, file: &str, body: &[u8]) -> Result<Reply, Refusal> {
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
pub(super) fn publish(conn: &ClientState, backup: &Backup, sid: &str, body: &[u8]) -> Result<Reply, Refusal> {
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
