//! The QMP steps a live copy is built from and undone with: deleting nodes
//! and exports, cancelling jobs, the fleecing image, the work directory's
//! lock, and the removal of what a killed run left in QEMU.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::error::LiveError;
use super::options::LiveOptions;
use crate::source::qmp::{Qmp, QmpError};

/// Names of everything hoard inserts start with this, so that a later run
/// can recognise and remove what a killed run left behind.
pub(crate) const PREFIX: &str = "hoard-";

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
pub(super) fn remove_leftovers(qmp: &mut Qmp, opts: &LiveOptions) -> Result<(), LiveError> {
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

pub(super) fn delete_node(qmp: &mut Qmp, name: &str) -> Result<(), LiveError> {
    qmp.execute_value("blockdev-del", json!({ "node-name": name }))?;
    Ok(())
}

/// Deletes an export and waits until QEMU has let go of it. `hard` because
/// by now no client of ours reads it, yet QEMU may not have processed our
/// disconnect: the default mode then refuses with "still in use" (seen in
/// CI right after a clean backup).
pub(super) fn delete_export(qmp: &mut Qmp, id: &str, timeout: Duration) -> Result<(), LiveError> {
    match qmp.execute_value("block-export-del", json!({"id": id, "mode": "hard"})) {
        Err(QmpError::Command { desc, .. }) if desc.contains("not found") => return Ok(()),
        r => r?,
    };
    qmp.wait_event("BLOCK_EXPORT_DELETED", timeout, |d| d["id"] == id)?;
    Ok(())
}

/// Cancels a backup job (which removes its filter) and dismisses it.
pub(super) fn cancel_job(qmp: &mut Qmp, id: &str, timeout: Duration) -> Result<(), LiveError> {
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

/// The temporary image that receives old data before the guest overwrites it.
pub(super) fn create_fleece_image(path: &Path, size: u64) -> Result<(), LiveError> {
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
