//! Point-in-time live copy of the disks of a running QEMU, with persistent
//! dirty bitmaps for incremental backups.
//!
//! Per disk node, one QMP `transaction` is the snapshot point: it starts a
//! `blockdev-backup` job with `sync: none`, which inserts a copy-before-write
//! filter above the node (old data goes to a temporary fleecing image before
//! the guest overwrites it), freezes the bitmap that tracked changes since the
//! last backup and starts a fresh one. A `snapshot-access` node on the filter
//! shows the disk as it was at that point; it is exported read-only over NBD
//! with the frozen bitmap, and hoard reads the dirty, non-zero chunks from it.
//! Everything inserted is removed again, on success and on failure; on
//! failure the fresh bitmap is merged back into the frozen one, so no write
//! is ever lost from tracking. Protocol and reasoning: format-spec/live-copy.md.
//!
//! One file of ~780 lines, on purpose: the snapshot point, the exports and
//! the clean-up on every path are one protocol whose steps undo each other,
//! and reading them in one place is how its failure paths are checked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::chunking::chunker::ChunkSize;
use crate::error::{Classify, Context, ErrorKind};
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::Manifest;
use crate::format::snapshot::{BitmapRecord, Kind, SnapshotName};
use crate::ops::backup::{back_up_images, BackupOptions, ChunkRanges, ImageInput, ReadPlan};
use crate::progress::Progress;
use crate::source::nbd::{Address, NbdClient, NbdError, STATE_DIRTY, STATE_ZERO};
use crate::source::qmp::{Qmp, QmpError};
use crate::store::Store;

/// Names of everything hoard inserts start with this, so that a later run
/// can recognise and remove what a killed run left behind.
pub(crate) const PREFIX: &str = "hoard-";

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Nbd(#[from] NbdError),
    #[error("no block node {0:?} in QEMU (see query-named-block-nodes)")]
    NoSuchNode(String),
    #[error("disk node {node}: {detail}")]
    Disk { node: String, detail: String },
    #[error("{path}: {detail}")]
    Fleece { path: PathBuf, detail: String },
    #[error("QEMU already runs an NBD server: pass its unix socket with --nbd-socket")]
    NbdServerRunning,
    #[error(transparent)]
    Snapshot(#[from] crate::format::snapshot::SnapshotError),
    #[error(transparent)]
    Backup(#[from] crate::ops::backup::BackupError),
    /// A step of the backup mode around the point in time failed.
    #[error("{0}")]
    Step(Box<crate::error::Error>),
    /// The backup failed and so did putting QEMU back as it was.
    #[error("{backup}; cleaning up in QEMU also failed: {cleanup}")]
    CleanupAfter {
        backup: Box<LiveError>,
        cleanup: Box<LiveError>,
    },
}

impl Classify for LiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            LiveError::Qmp(e) => e.kind(),
            LiveError::Nbd(e) => e.kind(),
            LiveError::NoSuchNode(_) => ErrorKind::NotFound,
            LiveError::Disk { .. } => ErrorKind::Source,
            LiveError::Fleece { .. } => ErrorKind::Io,
            LiveError::NbdServerRunning => ErrorKind::Busy,
            LiveError::Snapshot(e) => e.kind(),
            LiveError::Backup(e) => e.kind(),
            LiveError::Step(e) => e.kind(),
            LiveError::CleanupAfter { backup, .. } => backup.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            LiveError::Qmp(e) => e.context(),
            LiveError::Nbd(e) => e.context(),
            LiveError::Fleece { path, .. } => Context::path(path),
            LiveError::Snapshot(e) => e.context(),
            LiveError::Backup(e) => e.context(),
            LiveError::Step(e) => e.context().clone(),
            LiveError::CleanupAfter { backup, .. } => backup.context(),
            _ => Context::default(),
        }
    }
}

/// What a backup mode does around the snapshot point of all disks.
pub trait PointHooks {
    /// Right before the point in time (freeze the guest's file systems,
    /// pause the VM). An error aborts the backup before the point.
    fn before_point(&mut self, _qmp: &mut Qmp) -> Result<(), LiveError> {
        Ok(())
    }
    /// Right after it, also when taking it failed (thaw, resume).
    fn after_point(&mut self, _qmp: &mut Qmp) -> Result<(), LiveError> {
        Ok(())
    }
    /// The mode and how it went, for the manifest.
    fn record(&self, _disks: &[DiskReport]) -> (Option<String>, Option<crate::format::snapshot::VmRecord>) {
        (None, None)
    }
}

/// A plain live backup: nothing happens around the point in time.
pub struct NoHooks;

impl PointHooks for NoHooks {}

/// One disk to back up: block node and archive name.
#[derive(Clone, Debug)]
pub struct LiveDisk {
    pub node: String,
    pub archive: String,
}

pub struct LiveOptions {
    /// Fleecing images (and hoard's own NBD socket) go here.
    pub work_dir: PathBuf,
    /// The unix socket of an NBD server QEMU already runs; None: hoard
    /// starts one on a private socket in `work_dir` and stops it after.
    pub nbd_socket: Option<PathBuf>,
    pub timeout: Duration,
}

/// What the bitmap of a disk allowed, in vzdump's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapStatus {
    /// No earlier backup with a bitmap: a full read, tracking starts now.
    New,
    /// Only the dirty chunks were read.
    Dirty { dirty_bytes: u64, size: u64 },
    /// Nothing changed since the last backup.
    Clean,
    /// The bitmap could not be trusted: a full read.
    Invalid(String),
}

impl std::fmt::Display for BitmapStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = 1048576.0;
        match self {
            BitmapStatus::New => write!(f, "new bitmap"),
            BitmapStatus::Clean => write!(f, "clean"),
            BitmapStatus::Dirty { dirty_bytes, size } => write!(
                f,
                "OK ({:.1} of {:.1} MiB dirty)",
                *dirty_bytes as f64 / MIB,
                *size as f64 / MIB
            ),
            BitmapStatus::Invalid(why) => write!(f, "bitmap invalid: {why}, full read"),
        }
    }
}

#[derive(Debug, Deserialize)]
struct NodeInfo {
    #[serde(rename = "node-name")]
    node_name: String,
    image: ImageInfo,
    #[serde(default, rename = "dirty-bitmaps")]
    dirty_bitmaps: Vec<BitmapInfo>,
}

#[derive(Debug, Deserialize)]
struct ImageInfo {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

#[derive(Clone, Debug, Deserialize)]
struct BitmapInfo {
    name: String,
    #[serde(default)]
    recording: bool,
    #[serde(default)]
    inconsistent: bool,
}

/// The previous backup of a disk that a bitmap may be measured against.
struct Base {
    bitmap: String,
    fidx: FixedIndex,
}

/// One disk's state during a live copy.
struct Prepared {
    disk: LiveDisk,
    size: u64,
    /// The bitmap frozen for this backup, when the previous backup is a
    /// valid base...
    frozen: Option<String>,
    /// ...and that backup's index, until `inputs` hands it to the plan.
    base_index: Option<FixedIndex>,
    status: BitmapStatus,
    /// The bitmap started at this snapshot point.
    fresh: String,
    n: usize,
    fleece: PathBuf,
    /// Steps done, so that teardown undoes exactly those.
    fleece_node: bool,
    job: bool,
    access: bool,
    export: bool,
}

impl Prepared {
    fn names(&self) -> (String, String, String, String, String) {
        let n = self.n;
        (
            format!("{PREFIX}fleece-{n}"),
            format!("{PREFIX}job-{n}"),
            format!("{PREFIX}cbw-{n}"),
            format!("{PREFIX}access-{n}"),
            format!("{PREFIX}export-{n}"),
        )
    }
}

/// An established point-in-time view of every disk, exported over NBD.
pub(crate) struct LiveCopy<'q> {
    qmp: &'q mut Qmp,
    opts: &'q LiveOptions,
    disks: Vec<Prepared>,
    started_server: bool,
}

/// The per-disk result, for the report.
#[derive(Clone, Debug)]
pub struct DiskReport {
    pub node: String,
    pub archive: String,
    pub size: u64,
    pub bitmap: BitmapStatus,
}

impl<'q> LiveCopy<'q> {
    /// Sets up the snapshot point of all `disks` at once. `previous` is the
    /// newest earlier snapshot of the same group, if any, and `chunk_size`
    /// the one this backup uses. On error everything inserted is removed.
    pub fn start(
        qmp: &'q mut Qmp,
        store: &Store,
        group: (Kind, &str),
        disks: &[LiveDisk],
        chunk_size: ChunkSize,
        opts: &'q LiveOptions,
        hooks: &mut dyn PointHooks,
    ) -> Result<LiveCopy<'q>, LiveError> {
        remove_leftovers(qmp, opts)?;
        let nodes: Vec<NodeInfo> = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
        let previous = newest_snapshot(store, group)?;
        let mut prepared = Vec::new();
        for (n, disk) in disks.iter().enumerate() {
            let info = nodes
                .iter()
                .find(|i| i.node_name == disk.node)
                .ok_or_else(|| LiveError::NoSuchNode(disk.node.clone()))?;
            let (base, status) = choose_base(store, previous.as_ref(), disk, info, chunk_size);
            tidy_bitmaps(qmp, &disk.node, info, base.as_ref().map(|b| b.bitmap.as_str()))?;
            let (frozen, base_index) = base.map(|b| (b.bitmap, b.fidx)).unzip();
            prepared.push(Prepared {
                disk: disk.clone(),
                size: info.image.virtual_size,
                frozen,
                base_index,
                status,
                fresh: format!("{PREFIX}{}", uuid::Uuid::new_v4()),
                n,
                fleece: opts.work_dir.join(format!("fleece-{n}.qcow2")),
                fleece_node: false,
                job: false,
                access: false,
                export: false,
            });
        }
        let mut live = LiveCopy {
            qmp,
            opts,
            disks: prepared,
            started_server: false,
        };
        match live.set_up(hooks) {
            Ok(()) => Ok(live),
            Err(e) => {
                let _ = live.tear_down(false);
                Err(e)
            }
        }
    }

    fn set_up(&mut self, hooks: &mut dyn PointHooks) -> Result<(), LiveError> {
        std::fs::create_dir_all(&self.opts.work_dir).map_err(|e| LiveError::Fleece {
            path: self.opts.work_dir.clone(),
            detail: e.to_string(),
        })?;
        for d in &mut self.disks {
            create_fleece_image(&d.fleece, d.size)?;
            let (fleece, ..) = d.names();
            self.qmp.execute_value(
                "blockdev-add",
                json!({"driver": "qcow2", "node-name": fleece, "discard": "unmap",
                       "file": {"driver": "file", "filename": d.fleece}}),
            )?;
            d.fleece_node = true;
        }
        // The snapshot point: every disk's filter and bitmap swap at once.
        let mut actions = Vec::new();
        for d in &self.disks {
            let (fleece, job, cbw, ..) = d.names();
            actions.push(json!({"type": "blockdev-backup", "data": {
                "device": d.disk.node, "target": fleece, "sync": "none", "job-id": job,
                "filter-node-name": cbw, "auto-dismiss": false}}));
            actions.push(json!({"type": "block-dirty-bitmap-add", "data": {
                "node": d.disk.node, "name": d.fresh, "persistent": true}}));
            if let Some(frozen) = &d.frozen {
                actions.push(json!({"type": "block-dirty-bitmap-disable", "data": {
                    "node": d.disk.node, "name": frozen}}));
            }
        }
        // after_point runs whatever happened: it thaws and resumes.
        let point = hooks
            .before_point(self.qmp)
            .and_then(|()| Ok(self.qmp.transaction(actions)?));
        let after = hooks.after_point(self.qmp);
        point?;
        for d in &mut self.disks {
            d.job = true;
        }
        after?;
        crate::failpoint::pause("live-after-snapshot-point");
        if self.opts.nbd_socket.is_none() {
            let s = self.opts.work_dir.join("nbd.sock");
            let _ = std::fs::remove_file(&s);
            let started = self.qmp.execute_value(
                "nbd-server-start",
                json!({"addr": {"type": "unix", "data": {"path": s}}}),
            );
            match started {
                Err(QmpError::Command { desc, .. }) if desc.contains("already running") => {
                    return Err(LiveError::NbdServerRunning)
                }
                r => r?,
            };
            self.started_server = true;
            let _ = std::fs::write(self.opts.work_dir.join("nbd-started"), b"");
        }
        for d in &mut self.disks {
            let (_, _, cbw, access, export) = d.names();
            self.qmp.execute_value(
                "blockdev-add",
                json!({"driver": "snapshot-access", "node-name": access, "file": cbw}),
            )?;
            d.access = true;
            let mut args = json!({"type": "nbd", "id": export, "node-name": access,
                                  "name": export, "writable": false});
            if let Some(frozen) = &d.frozen {
                args["bitmaps"] = json!([{"node": d.disk.node, "name": frozen}]);
            }
            self.qmp.execute_value("block-export-add", args)?;
            d.export = true;
        }
        crate::failpoint::pause("live-exported");
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        self.opts
            .nbd_socket
            .clone()
            .unwrap_or_else(|| self.opts.work_dir.join("nbd.sock"))
    }

    /// Connects to every export and plans what to read; returns the inputs
    /// for the backup and the per-disk report.
    pub fn inputs(&mut self, chunk_size: ChunkSize) -> Result<(Vec<ImageInput>, Vec<DiskReport>), LiveError> {
        let addr = Address::Unix(self.socket());
        let mut inputs = Vec::new();
        let mut reports = Vec::new();
        for d in &mut self.disks {
            let (.., export) = d.names();
            let dirty_ctx = d.frozen.as_ref().map(|b| format!("qemu:dirty-bitmap:{b}"));
            let mut contexts = vec!["base:allocation"];
            contexts.extend(dirty_ctx.as_deref());
            let client = NbdClient::connect(&addr, &export, &contexts, self.opts.timeout)?;
            if client.size() != d.size {
                return Err(LiveError::Disk {
                    node: d.disk.node.clone(),
                    detail: format!("export is {} bytes, node {}", client.size(), d.size),
                });
            }
            let mut plan = ReadPlan::default();
            if let Some(id) = client.context_id("base:allocation") {
                let zeros = client.map(id)?;
                let zeros = zeros
                    .iter()
                    .filter(|e| e.flags & STATE_ZERO != 0)
                    .map(|e| (e.offset, e.len));
                plan.zero = ChunkRanges::inside(zeros, chunk_size, d.size);
            }
            if let (Some(base), Some(ctx)) = (d.base_index.take(), dirty_ctx) {
                let id = client.context_id(&ctx).ok_or_else(|| LiveError::Disk {
                    node: d.disk.node.clone(),
                    detail: format!("NBD server did not offer {ctx}"),
                })?;
                let dirty: Vec<(u64, u64)> = client
                    .map(id)?
                    .iter()
                    .filter(|e| e.flags & STATE_DIRTY != 0)
                    .map(|e| (e.offset, e.len))
                    .collect();
                let dirty_bytes = dirty.iter().map(|e| e.1).sum();
                d.status = if dirty_bytes == 0 {
                    BitmapStatus::Clean
                } else {
                    BitmapStatus::Dirty {
                        dirty_bytes,
                        size: d.size,
                    }
                };
                plan.base = Some((base, ChunkRanges::touching(dirty, chunk_size)));
            }
            reports.push(DiskReport {
                node: d.disk.node.clone(),
                archive: d.disk.archive.clone(),
                size: d.size,
                bitmap: d.status.clone(),
            });
            inputs.push(ImageInput {
                name: d.disk.archive.clone(),
                origin: format!("QEMU block node {}", d.disk.node),
                source: Box::new(client),
                plan,
                bitmap: Some(BitmapRecord {
                    node: d.disk.node.clone(),
                    name: d.fresh.clone(),
                }),
            });
        }
        Ok((inputs, reports))
    }

    /// Removes everything inserted. With `success`, the frozen bitmaps are
    /// dropped (the fresh ones track from this snapshot on); otherwise each
    /// fresh bitmap is merged back into its frozen one, which records again.
    pub fn finish(mut self, success: bool) -> Result<(), LiveError> {
        self.tear_down(success)
    }

    fn tear_down(&mut self, success: bool) -> Result<(), LiveError> {
        let mut first_error: Option<LiveError> = None;
        let mut note = |r: Result<(), LiveError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        let timeout = self.opts.timeout;
        for d in &mut self.disks {
            let (fleece, job, _, access, export) = d.names();
            if d.export {
                note(delete_export(self.qmp, &export, timeout));
                d.export = false;
            }
            if d.access {
                note(delete_node(self.qmp, &access));
                d.access = false;
            }
            if d.job {
                note(cancel_job(self.qmp, &job, timeout));
                d.job = false;
            }
            if d.fleece_node {
                note(delete_node(self.qmp, &fleece));
                d.fleece_node = false;
            }
            let _ = std::fs::remove_file(&d.fleece);
        }
        if self.started_server {
            note(
                self.qmp
                    .execute_value("nbd-server-stop", json!({}))
                    .map(drop)
                    .map_err(Into::into),
            );
            self.started_server = false;
            let _ = std::fs::remove_file(self.opts.work_dir.join("nbd-started"));
            let _ = std::fs::remove_file(self.opts.work_dir.join("nbd.sock"));
        }
        for d in &self.disks {
            let node = &d.disk.node;
            let r = match (&d.frozen, success) {
                (Some(frozen), true) => self.qmp.execute_value(
                    "block-dirty-bitmap-remove",
                    json!({"node": node, "name": frozen}),
                ),
                (Some(frozen), false) => self.qmp.execute_value(
                    "transaction",
                    json!({"actions": [
                        {"type": "block-dirty-bitmap-merge", "data": {"node": node, "target": frozen, "bitmaps": [d.fresh]}},
                        {"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": frozen}},
                        {"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": d.fresh}}]}),
                ),
                // A full read that failed: nothing refers to the fresh bitmap.
                (None, false) => self
                    .qmp
                    .execute_value("block-dirty-bitmap-remove", json!({"node": node, "name": d.fresh})),
                (None, true) => Ok(Value::Null),
            };
            // Before the transaction ran, the fresh bitmap does not exist.
            match r {
                Err(QmpError::Command { ref desc, .. }) if desc.contains("not found") => {}
                r => note(r.map(drop).map_err(Into::into)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Backs up `disks` of the QEMU behind `qmp` as one snapshot: snapshot
/// point (with `hooks` around it), incremental read plan, backup, teardown. Returns the manifest and
/// what each disk's bitmap allowed.
pub fn backup_live(
    store: &Store,
    qmp: &mut Qmp,
    disks: &[LiveDisk],
    live: &LiveOptions,
    opts: &BackupOptions,
    hooks: &mut dyn PointHooks,
    progress: &dyn Progress,
) -> crate::Result<(Manifest, Vec<DiskReport>)> {
    Ok(copy_live(store, qmp, disks, live, opts, hooks, progress)?)
}

/// [`backup_live`] for the VM modes, which wrap its error in their own.
pub(crate) fn copy_live(
    store: &Store,
    qmp: &mut Qmp,
    disks: &[LiveDisk],
    live: &LiveOptions,
    opts: &BackupOptions,
    hooks: &mut dyn PointHooks,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<DiskReport>), LiveError> {
    let chunk_size = opts.chunk_size.unwrap_or_else(|| store.default_chunk_size());
    let mut copy = LiveCopy::start(qmp, store, (opts.kind, &opts.id), disks, chunk_size, live, hooks)?;
    let result = copy.inputs(chunk_size).and_then(|(inputs, reports)| {
        let (mode, vm) = hooks.record(&reports);
        let opts = BackupOptions {
            mode,
            vm,
            ..opts.clone()
        };
        Ok((back_up_images(store, &opts, inputs, progress)?, reports))
    });
    let cleanup = copy.finish(result.is_ok());
    match (result, cleanup) {
        (Ok(r), Ok(())) => Ok(r),
        // The snapshot is complete; what QEMU kept is removed by the next run.
        (Ok(_), Err(e)) | (Err(e), Ok(())) => Err(e),
        (Err(backup), Err(cleanup)) => Err(LiveError::CleanupAfter {
            backup: Box::new(backup),
            cleanup: Box::new(cleanup),
        }),
    }
}

/// One hoard at a time per QEMU: a second one would take the first one's
/// nodes for leftovers. Callers take this lock on the work dir before they
/// connect to QMP (QEMU serves one QMP client per socket at a time); the
/// kernel drops it with the process.
pub fn lock_work_dir(dir: &Path) -> Result<std::fs::File, LiveError> {
    let err = |detail: String| LiveError::Fleece {
        path: dir.to_path_buf(),
        detail,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    }
    // The NBD socket and fleecing images in here serve the disks' contents:
    // for hoard only, in a directory nobody else owns or can write.
    let fd = crate::private_fs::private_dir(dir).map_err(|e| err(e.to_string()))?;
    let file = crate::private_fs::open_in(&fd, "lock", nix::fcntl::OFlag::empty())
        .map_err(|e| err(format!("lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(
            "another hoard backup of this QEMU is running (its lock file is held)".into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e.to_string())),
    }
}

/// Removes what a killed run of hoard left in QEMU: exports, snapshot-access
/// nodes, backup jobs (whose removal takes the filter out) and fleecing
/// nodes, all recognised by [`PREFIX`]; and the NBD server hoard started,
/// recognised by its marker file in the work dir.
fn remove_leftovers(qmp: &mut Qmp, opts: &LiveOptions) -> Result<(), LiveError> {
    #[derive(Deserialize)]
    struct Export {
        id: String,
    }
    #[derive(Deserialize)]
    struct Job {
        id: String,
    }
    #[derive(Deserialize)]
    struct Node {
        #[serde(rename = "node-name")]
        node_name: String,
    }
    let ours = |name: &str| name.starts_with(PREFIX);
    let exports: Vec<Export> = qmp.execute("query-block-exports", json!({}))?;
    for e in exports.iter().filter(|e| ours(&e.id)) {
        delete_export(qmp, &e.id, opts.timeout)?;
    }
    let nodes: Vec<Node> = qmp.execute("query-named-block-nodes", json!({"flat": true}))?;
    for n in nodes
        .iter()
        .filter(|n| n.node_name.starts_with(&format!("{PREFIX}access-")))
    {
        delete_node(qmp, &n.node_name)?;
    }
    let jobs: Vec<Job> = qmp.execute("query-jobs", json!({}))?;
    for j in jobs.iter().filter(|j| ours(&j.id)) {
        cancel_job(qmp, &j.id, opts.timeout)?;
    }
    for n in nodes
        .iter()
        .filter(|n| n.node_name.starts_with(&format!("{PREFIX}fleece-")))
    {
        delete_node(qmp, &n.node_name)?;
    }
    let marker = opts.work_dir.join("nbd-started");
    if opts.nbd_socket.is_none() && marker.exists() {
        match qmp.execute_value("nbd-server-stop", json!({})) {
            Ok(_) | Err(QmpError::Command { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_file(marker);
    }
    Ok(())
}

fn delete_node(qmp: &mut Qmp, name: &str) -> Result<(), LiveError> {
    qmp.execute_value("blockdev-del", json!({ "node-name": name }))?;
    Ok(())
}

/// Deletes an export and waits until QEMU has let go of it. `hard` because
/// by now no client of ours reads it, yet QEMU may not have processed our
/// disconnect: the default mode then refuses with "still in use" (seen in
/// CI right after a clean backup).
fn delete_export(qmp: &mut Qmp, id: &str, timeout: Duration) -> Result<(), LiveError> {
    match qmp.execute_value("block-export-del", json!({"id": id, "mode": "hard"})) {
        Err(QmpError::Command { desc, .. }) if desc.contains("not found") => return Ok(()),
        r => r?,
    };
    qmp.wait_event("BLOCK_EXPORT_DELETED", timeout, |d| d["id"] == id)?;
    Ok(())
}

/// Cancels a backup job (which removes its filter) and dismisses it.
fn cancel_job(qmp: &mut Qmp, id: &str, timeout: Duration) -> Result<(), LiveError> {
    #[derive(Deserialize)]
    struct Job {
        id: String,
        status: String,
    }
    let jobs: Vec<Job> = qmp.execute("query-jobs", json!({}))?;
    let Some(job) = jobs.into_iter().find(|j| j.id == id) else {
        return Ok(());
    };
    if job.status != "concluded" {
        qmp.execute_value("block-job-cancel", json!({"device": id, "force": true}))?;
        // The event may already be queued: wait_event looks there first.
        qmp.wait_event("JOB_STATUS_CHANGE", timeout, |d| {
            d["id"] == id && d["status"] == "concluded"
        })?;
    }
    qmp.execute_value("job-dismiss", json!({"id": id}))?;
    Ok(())
}

/// The newest finished snapshot of the group.
fn newest_snapshot(store: &Store, (kind, id): (Kind, &str)) -> Result<Option<SnapshotName>, LiveError> {
    Ok(store
        .catalog()
        .list()?
        .into_iter()
        .rfind(|n| n.kind == kind && n.id == id))
}

/// Whether the bitmap started by the previous backup of this disk may stand
/// for "everything that changed since": any doubt means a full read.
fn choose_base(
    store: &Store,
    previous: Option<&SnapshotName>,
    disk: &LiveDisk,
    node: &NodeInfo,
    chunk_size: ChunkSize,
) -> (Option<Base>, BitmapStatus) {
    let invalid = |why: String| (None, BitmapStatus::Invalid(why));
    let Some(prev) = previous else {
        return (None, BitmapStatus::New);
    };
    let catalog = store.catalog();
    let manifest = match catalog.load_manifest(prev) {
        Ok(m) => m,
        Err(e) => return invalid(format!("previous snapshot {prev} unreadable: {e}")),
    };
    let Ok(archive) = manifest.archive(&disk.archive) else {
        return (None, BitmapStatus::New);
    };
    let Some(record) = &archive.bitmap else {
        return invalid(format!(
            "previous snapshot {prev} has no bitmap for {}",
            disk.archive
        ));
    };
    if record.node != disk.node {
        return invalid(format!("previous bitmap was on node {}", record.node));
    }
    if !catalog.usable_as_base(prev) {
        return invalid(format!("previous snapshot {prev} failed verification"));
    }
    let Some(bitmap) = node.dirty_bitmaps.iter().find(|b| b.name == record.name) else {
        return invalid(format!("bitmap {} missing", record.name));
    };
    if bitmap.inconsistent {
        return invalid(format!(
            "bitmap {} inconsistent (QEMU was not shut down cleanly)",
            record.name
        ));
    }
    if archive.size != node.image.virtual_size {
        return invalid(format!(
            "disk size changed from {} to {}",
            archive.size, node.image.virtual_size
        ));
    }
    if archive.chunk_size != chunk_size.bytes() {
        return invalid(format!(
            "chunk size changed from {} to {}",
            archive.chunk_size,
            chunk_size.bytes()
        ));
    }
    let fidx = match catalog.open_fixed(prev, archive) {
        Ok(f) => f,
        Err(e) => return invalid(format!("previous index unusable: {e}")),
    };
    let h = fidx.header();
    if h.checksum.to_hex() != archive.index_checksum || h.image_size != archive.size {
        return invalid("previous index does not match its manifest".into());
    }
    (
        Some(Base {
            bitmap: record.name.clone(),
            fidx,
        }),
        BitmapStatus::New, // replaced by Dirty/Clean once the bitmap is read
    )
}

/// Puts a disk's hoard bitmaps in order before the snapshot point. With a
/// valid base, bitmaps of killed runs (started later than the base's) are
/// merged into it, and it records again: together they cover every write
/// since the base. Without one, every hoard bitmap goes.
fn tidy_bitmaps(qmp: &mut Qmp, node: &str, info: &NodeInfo, keep: Option<&str>) -> Result<(), LiveError> {
    let others: Vec<&BitmapInfo> = info
        .dirty_bitmaps
        .iter()
        .filter(|b| b.name.starts_with(PREFIX) && Some(b.name.as_str()) != keep)
        .collect();
    let mut actions = Vec::new();
    if let Some(keep) = keep {
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|b| b.name.as_str()).collect();
            actions.push(json!({"type": "block-dirty-bitmap-merge",
                "data": {"node": node, "target": keep, "bitmaps": names}}));
        }
        let kept = info.dirty_bitmaps.iter().find(|b| b.name == keep);
        if kept.is_some_and(|b| !b.recording) {
            actions.push(json!({"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": keep}}));
        }
    }
    for b in others {
        actions.push(json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": b.name}}));
    }
    if !actions.is_empty() {
        qmp.transaction(actions)?;
    }
    Ok(())
}

/// The temporary image that receives old data before the guest overwrites it.
fn create_fleece_image(path: &Path, size: u64) -> Result<(), LiveError> {
    let _ = std::fs::remove_file(path);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .output()
        .map_err(|e| LiveError::Fleece {
            path: path.into(),
            detail: format!("cannot run qemu-img: {e}"),
        })?;
    if !out.status.success() {
        return Err(LiveError::Fleece {
            path: path.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}
