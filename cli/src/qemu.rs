//! `hoard backup-qemu` (live backup of a running QEMU's disks) and
//! `hoard backup-vm` (the same in one of vzdump's VM modes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use hoard_engine::{
    backup_live, backup_vm, lock_work_dir, validate_archive_name, BackupOptions, ChunkSize, DiskReport, Kind,
    LiveDisk, LiveOptions, Manifest, NoHooks, Qmp, VmMode as Mode, VmOptions,
};
use serde::Deserialize;
use serde_json::json;

use crate::open::{open_repo_with_scratch, StoreArgs};
use crate::output::print_backup;
use crate::progress::Bar;

/// Back up the disks of a running QEMU, live, with point-in-time
/// semantics and dirty-bitmap incrementals.
///
/// One QMP transaction is the snapshot point for all disks: a
/// copy-before-write filter keeps the old data of blocks the guest
/// overwrites, and the dirty bitmap since the last backup is frozen while
/// a new one starts. hoard reads the point-in-time view over NBD, only
/// the chunks that changed when the previous snapshot of the same id is
/// a valid base, then removes everything it inserted. The VM keeps
/// running throughout.
///
/// This is `backup-vm --mode snapshot` without the guest agent and
/// hooks (a crash-consistent point in time); `backup-vm` is the command
/// a vzdump user wants.
#[derive(Args)]
pub(crate) struct BackupQemu {
    #[command(flatten)]
    live: LiveArgs,
}

#[derive(Clone, Copy, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ModeArg {
    /// The guest runs throughout; with a guest agent its file systems are
    /// frozen only around the point in time.
    Snapshot,
    /// Paused around the point in time (compatibility; snapshot is better).
    Suspend,
    /// Orderly shutdown, point in time on the powered-off disks, guest
    /// booted again right after it (QEMU must run with -no-shutdown).
    Stop,
}

/// Back up a running VM's disks in one of vzdump's modes (the VM command).
///
/// snapshot (default): the guest keeps running; with its agent
/// (--qga), its file systems are frozen just before the point in time
/// and thawed right after it (always, also on error or Ctrl-C).
/// suspend: the VM is paused just before the point in time and resumed
/// right after it; kept for compatibility, snapshot mode gives the same
/// point in time without the pause. stop: ACPI shutdown, the point in
/// time on the powered-off disks, then the guest boots again at once
/// while hoard reads (QEMU must run with -no-shutdown). The mode, the agent's state, the
/// downtime and each disk's bitmap state go into the manifest.
#[derive(Args, serde::Serialize)]
pub(crate) struct BackupVm {
    #[command(flatten)]
    pub(crate) live: LiveArgs,
    /// snapshot: the guest keeps running (recommended); suspend: paused
    /// from just before the point in time to just after it; stop: shut
    /// down in order, booted again right after the point in time.
    #[arg(long, value_enum, default_value = "snapshot")]
    pub(crate) mode: ModeArg,
    /// Stop mode: seconds the guest may take to shut down after the power
    /// button; past them the backup is aborted and the guest left as it is.
    #[arg(long, default_value_t = 600)]
    pub(crate) stop_timeout: u64,
    /// Stop mode: if the guest has not shut down by then, stop it hard
    /// (its CPUs stop as if the plug were pulled; it boots again right
    /// after the point in time) and back up its crash-consistent disks.
    #[arg(long)]
    pub(crate) force_stop: bool,
    /// The guest agent's socket on the host (the chardev of the
    /// org.qemu.guest_agent.0 port). Without it, or if the agent does not
    /// answer, a snapshot backup is crash-consistent only.
    #[arg(long, value_name = "SOCKET")]
    pub(crate) qga: Option<PathBuf>,
    /// Do not freeze the guest's file systems (crash-consistent).
    #[arg(long)]
    pub(crate) no_fsfreeze: bool,
    /// Seconds the agent may take to freeze the file systems; then hoard
    /// thaws and goes on crash-consistent.
    #[arg(long, default_value_t = 30)]
    pub(crate) freeze_timeout: u64,
    /// Seconds the agent may take to answer a ping or a thaw.
    #[arg(long, default_value_t = 5)]
    pub(crate) agent_timeout: u64,
    /// Script called with the phase (job-start, pre-stop, pre-snapshot,
    /// post-snapshot, backup-end, job-abort) as argument, and HOARD_PHASE,
    /// HOARD_KIND, HOARD_ID, HOARD_MODE in the environment. A failing call
    /// aborts the backup (job-abort's failure is ignored). Its output goes
    /// to standard error.
    #[arg(long, value_name = "SCRIPT")]
    pub(crate) hook: Option<PathBuf>,
    /// Seconds one hook call may run; then it is killed and fails.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub(crate) hook_timeout: u64,
}

#[derive(Args, serde::Serialize)]
pub(crate) struct LiveArgs {
    /// QMP unix socket of the running QEMU (qemu-system or qemu-storage-daemon).
    #[arg(long, value_name = "SOCKET")]
    pub(crate) qmp: PathBuf,
    /// Backup group id (for example the VM id).
    #[arg(long)]
    pub(crate) id: String,
    /// Block node to back up, as NODE=NAME.img; repeat for more disks.
    /// Default: every writable disk attached to a device (query-block).
    #[arg(long = "disk", value_name = "NODE=NAME.img")]
    pub(crate) disks: Vec<String>,
    /// Unix socket of an NBD server this QEMU already runs (QEMU has only
    /// one); by default hoard starts one on a private socket and stops it.
    #[arg(long, value_name = "SOCKET")]
    pub(crate) nbd_socket: Option<PathBuf>,
    /// Directory for the temporary fleecing images, which receive the old
    /// data of blocks the guest overwrites during the backup (default: the
    /// store's tmp/). Local, fast storage.
    #[arg(long, value_name = "DIR")]
    pub(crate) fleece_dir: Option<PathBuf>,
    /// Seconds to wait for any answer from QEMU.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
    /// Chunk size. The default, 64K, matches QEMU's bitmap granularity: a
    /// day-2 incremental then reads and stores about what changed
    /// (docs/vms.md: measured table), where 4M chunks would read most of the disk.
    #[arg(long, default_value = "64K", value_parser = crate::args::parse_chunk_size)]
    #[serde(serialize_with = "crate::argv::as_text")]
    pub(crate) chunk_size: ChunkSize,
    #[command(flatten)]
    pub(crate) write: crate::args::WriteArgs,
    /// A configuration file of the guest (a Proxmox qemu-server conf, a
    /// libvirt domain XML, a script with the QEMU command line), stored with
    /// the snapshot in archive config.tree; repeatable. `hoard restore SNAP
    /// config.tree DIR` gives the files back.
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) config_files: Vec<PathBuf>,
}

/// What both commands need before the backup: options, disks, the QMP
/// connection and the work-dir lock.
struct Prepared {
    live: LiveOptions,
    disks: Vec<LiveDisk>,
    qmp: Qmp,
    opts: BackupOptions,
    _lock: std::fs::File,
}

fn prepare(scratch: &Path, a: &LiveArgs) -> Result<Prepared> {
    let opts = BackupOptions {
        chunk_size: Some(a.chunk_size),
        config_files: a.config_files.clone(),
        ..a.write.begin(Kind::Vm, a.id.clone())?
    };
    let timeout = Duration::from_secs(a.timeout.max(1));
    // One work dir per QMP socket, so that a later run finds what a killed
    // run left (its NBD server marker).
    let tag = &hoard_engine::Digest::of(a.qmp.to_string_lossy().as_bytes()).to_hex()[..16];
    let work_dir = a
        .fleece_dir
        .clone()
        .unwrap_or_else(|| scratch.to_path_buf())
        .join(format!("qemu-{tag}"));
    // QEMU resolves paths from its own working directory.
    let absolute = |p: &PathBuf| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let live = LiveOptions {
        work_dir: absolute(&work_dir)?,
        nbd_socket: a.nbd_socket.as_ref().map(absolute).transpose()?,
        timeout,
    };
    let named = a
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>>>()?;
    let lock = lock_work_dir(&live.work_dir)?;
    let mut qmp = Qmp::connect(&a.qmp, timeout)?;
    let disks = if named.is_empty() {
        default_disks(&mut qmp)?
    } else {
        named
    };
    Ok(Prepared {
        live,
        disks,
        qmp,
        opts,
        _lock: lock,
    })
}

pub(crate) fn run(at: &StoreArgs, a: BackupQemu) -> Result<()> {
    let (store, scratch) = open_repo_with_scratch(at)?;
    let store = &*store;
    let mut p = prepare(&scratch, &a.live)?;
    let progress = Bar::new(a.live.write.json);
    let (manifest, reports) = backup_live(
        store,
        &mut p.qmp,
        &p.disks,
        &p.live,
        &p.opts,
        &mut NoHooks,
        &progress,
    )?;
    print_live(&manifest, &reports, a.live.write.json)
}

pub(crate) fn run_vm(at: &StoreArgs, a: BackupVm) -> Result<()> {
    let (store, scratch) = open_repo_with_scratch(at)?;
    let store = &*store;
    let mut p = prepare(&scratch, &a.live)?;
    let vm = VmOptions {
        mode: match a.mode {
            ModeArg::Snapshot => Mode::Snapshot,
            ModeArg::Suspend => Mode::Suspend,
            ModeArg::Stop => Mode::Stop,
        },
        qga: a.qga.clone(),
        fsfreeze: !a.no_fsfreeze,
        agent_timeout: Duration::from_secs(a.agent_timeout.max(1)),
        freeze_timeout: Duration::from_secs(a.freeze_timeout.max(1)),
        hook: a.hook.clone().map(|script| hoard_engine::Hook {
            script,
            timeout: std::time::Duration::from_secs(a.hook_timeout),
        }),
        stop_timeout: Duration::from_secs(a.stop_timeout.max(1)),
        force_stop: a.force_stop,
    };
    let progress = Bar::new(a.live.write.json);
    let (manifest, reports, warnings) =
        backup_vm(store, &mut p.qmp, &p.disks, &p.live, &p.opts, &vm, &progress)?;
    for w in &warnings {
        eprintln!("hoard: warning: {w}");
    }
    print_live(&manifest, &reports, a.live.write.json)
}

fn print_live(manifest: &Manifest, reports: &[DiskReport], json: bool) -> Result<()> {
    if json {
        let disks = json!(reports.iter().map(report_json).collect::<Vec<_>>());
        return crate::output::print_json(crate::output::backup_json(manifest, Some(disks)));
    }
    if let Some(vm) = &manifest.vm {
        eprintln!(
            "  mode {}: guest agent {}, downtime {:.3} s, frozen {:.3} s",
            manifest.mode.as_deref().unwrap_or("?"),
            vm.guest_agent,
            vm.downtime_secs,
            vm.frozen_secs
        );
    }
    for r in reports {
        eprintln!("  {} (node {}): {}", r.archive, r.node, r.bitmap);
    }
    print_backup(manifest, false)
}

fn report_json(r: &DiskReport) -> serde_json::Value {
    json!({"node": r.node, "archive": r.archive, "size": r.size, "bitmap": r.bitmap.to_string()})
}

fn parse_disk(spec: &str) -> Result<LiveDisk> {
    let (node, archive) = spec
        .split_once('=')
        .with_context(|| format!("--disk {spec:?}: expected NODE=NAME.img"))?;
    validate_archive_name(archive)?;
    if node.is_empty() {
        bail!("--disk {spec:?}: empty node name");
    }
    Ok(LiveDisk {
        node: node.into(),
        archive: archive.into(),
    })
}

/// Every writable disk attached to a device, named after the device.
fn default_disks(qmp: &mut Qmp) -> Result<Vec<LiveDisk>> {
    #[derive(Deserialize)]
    struct Block {
        #[serde(default)]
        device: String,
        #[serde(default)]
        qdev: String,
        inserted: Option<Inserted>,
    }
    #[derive(Deserialize)]
    struct Inserted {
        #[serde(rename = "node-name")]
        node_name: String,
        ro: bool,
    }
    let blocks: Vec<Block> = qmp.execute("query-block", json!({}))?;
    let mut disks = Vec::new();
    for b in blocks {
        let Some(ins) = b.inserted.filter(|i| !i.ro) else {
            continue;
        };
        let dev = if b.qdev.is_empty() { b.device } else { b.qdev };
        let dev = dev
            .trim_start_matches("/machine/peripheral/")
            .split('/')
            .next()
            .unwrap_or("");
        let base: String = dev
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = if base.is_empty() {
            ins.node_name.clone()
        } else {
            base
        };
        disks.push(LiveDisk {
            node: ins.node_name,
            archive: format!("{}.img", base.trim_start_matches('.')),
        });
    }
    if disks.is_empty() {
        bail!(
            "{}: no writable disk attached to a device (query-block); name the nodes with --disk NODE=NAME.img",
            qmp.path().display()
        );
    }
    Ok(disks)
}
