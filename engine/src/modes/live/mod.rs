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
//! The protocol, whose steps undo each other on every path, is this file
//! (`LiveCopy`): its failure paths are checked by reading it in one place.
//! Beside it: `base` (which earlier backup a bitmap is measured against),
//! `block_jobs` (the QMP steps and the removal of a killed run's
//! leftovers), `options` and `error`.

mod base;
mod block_jobs;
mod error;
mod options;

pub use block_jobs::lock_work_dir;
pub(crate) use block_jobs::PREFIX;
pub(crate) use error::LiveError;
pub(crate) use options::BitmapStatus;
pub use options::{DiskReport, LiveDisk, LiveOptions};

use std::path::PathBuf;

use base::{choose_base, newest_snapshot, tidy_bitmaps, NodeInfo};
use block_jobs::{cancel_job, create_fleece_image, delete_export, delete_node, remove_leftovers};

use serde_json::{json, Value};

use crate::chunking::chunker::ChunkSize;
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::Manifest;
use crate::format::snapshot::{BitmapRecord, Kind};
use crate::ops::backup::{back_up_images, BackupOptions, ChunkRanges, ImageInput, ReadPlan};
use crate::progress::Progress;
use crate::source::nbd::{Address, NbdClient, STATE_DIRTY, STATE_ZERO};
use crate::source::qmp::{Qmp, QmpError};
use crate::store::Repository;

/// A plain live backup: nothing happens around the point in time.
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

/// No hooks: the snapshot point alone (tests, `backup-qemu`).
pub struct NoHooks;

impl PointHooks for NoHooks {}

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

impl<'q> LiveCopy<'q> {
    /// Sets up the snapshot point of all `disks` at once. `previous` is the
    /// newest earlier snapshot of the same group, if any, and `chunk_size`
    /// the one this backup uses. On error everything inserted is removed.
    pub(crate) fn start(
        qmp: &'q mut Qmp,
        store: &dyn Repository,
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
    pub(crate) fn inputs(
        &mut self,
        chunk_size: ChunkSize,
    ) -> Result<(Vec<ImageInput>, Vec<DiskReport>), LiveError> {
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
    pub(crate) fn finish(mut self, success: bool) -> Result<(), LiveError> {
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
    store: &dyn Repository,
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
    store: &dyn Repository,
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
