//! Which backups a job makes: its guests, found (VM socket directories,
//! `lxc-ls` for `all`), each as the typed arguments of the user's backup
//! command (`backup-vm`, `backup-ct`, `backup`), which [`argv`] writes as
//! the command line of the child `hoard` that backs it up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use hoard_engine::{job_file::CtMode, job_file::Job, job_file::VmMode, Kind};

use crate::args::WriteArgs;
use crate::argv::{command, line};
use crate::backup::Backup;
use crate::ct::{self, BackupCt};
use crate::qemu::{self, BackupVm};
use crate::tree::TreeArgs;
use serde::Serialize;

/// One guest of a job and how to back it up.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Task {
    /// `KIND/ID`, the snapshot group.
    pub label: String,
    #[serde(skip)]
    pub kind: Kind,
    pub id: String,
    pub mode: String,
    /// What is backed up: a QMP socket, a container, a path.
    pub source: String,
    /// Names what two backups must not share (a QEMU, a container, a
    /// file), for the per-guest lock.
    #[serde(skip)]
    pub lock_key: String,
    /// `hoard` arguments after the global ones.
    #[serde(skip)]
    pub args: Vec<OsString>,
}

impl Task {
    /// Stands for the guests a job finds when it runs (`dirs`, `all`).
    fn found_later(kind: Kind, mode: &str, source: String) -> Task {
        Task {
            label: format!("{}/*", kind.as_str()),
            kind,
            id: "*".into(),
            mode: mode.into(),
            source,
            lock_key: String::new(),
            args: Vec::new(),
        }
    }
}

/// The guests as far as the job file names them (without looking for
/// sockets or containers): for `hoard job show` and `list`.
pub(crate) fn describe(job: &Job) -> Vec<Task> {
    let mut tasks = Vec::new();
    if let Some(v) = &job.vms {
        for g in &v.guests {
            let g = g.get_ref();
            tasks.push(vm_task(
                job,
                &g.id,
                &g.qmp,
                g.qga.as_deref(),
                g.mode.unwrap_or(v.mode),
                &g.config,
            ));
        }
        for d in &v.dirs {
            tasks.push(Task::found_later(
                Kind::Vm,
                vm_mode(v.mode),
                format!("every ID.qmp in {}", d.display()),
            ));
        }
    }
    if let Some(c) = &job.containers {
        for g in &c.guests {
            let g = g.get_ref();
            tasks.push(ct_task(
                job,
                &g.name,
                g.id.as_deref(),
                g.mode.unwrap_or(c.mode),
                &g.include_mounts,
            ));
        }
        if c.all {
            tasks.push(Task::found_later(
                Kind::Ct,
                ct_mode(c.mode),
                format!("every container of {}", c.lxcpath.display()),
            ));
        }
    }
    for i in job.images.iter().map(|i| i.get_ref()) {
        tasks.push(plain_task(job, i.kind, &i.id, &i.name, &i.path, |_| {}));
    }
    for t in job.trees.iter().map(|t| t.get_ref()) {
        tasks.push(plain_task(job, t.kind, &t.id, &t.name, &t.path, |tree| {
            tree.exclude = t.exclude.clone();
            tree.one_file_system = t.one_file_system;
            tree.tree_chunk_avg = job.tree_chunk_avg;
        }));
    }
    tasks
}

/// Every guest the job backs up now, in order: VMs, containers, images,
/// trees.
pub(crate) fn resolve(job: &Job) -> Result<Vec<Task>> {
    let mut tasks: Vec<Task> = describe(job).into_iter().filter(|t| t.id != "*").collect();
    // A guest found in a directory or by `all` that the file names too
    // (same group, or same QEMU or container) is backed up as named.
    let add = |tasks: &mut Vec<Task>, found: Task| {
        if !tasks
            .iter()
            .any(|t| t.lock_key == found.lock_key || (t.kind == found.kind && t.id == found.id))
        {
            tasks.push(found);
        }
    };
    if let Some(v) = &job.vms {
        for dir in &v.dirs {
            for (id, qmp) in sockets(dir)? {
                if v.exclude.contains(&id) {
                    continue;
                }
                let qga = qmp.with_extension("qga");
                let qga = qga.exists().then_some(qga);
                let conf = qmp.with_extension("conf");
                let conf: Vec<_> = conf.exists().then_some(conf).into_iter().collect();
                add(&mut tasks, vm_task(job, &id, &qmp, qga.as_deref(), v.mode, &conf));
            }
        }
    }
    if let Some(c) = &job.containers {
        if c.all {
            for name in containers(&c.lxcpath)? {
                if !c.exclude.contains(&name) {
                    add(&mut tasks, ct_task(job, &name, None, c.mode, &[]));
                }
            }
        }
    }
    // Keep the job file's order: VMs, containers, then the plain ones.
    tasks.sort_by_key(|t| match t.kind {
        Kind::Vm => 0,
        Kind::Ct => 1,
        Kind::Host => 2,
    });
    let unparsed = unparsed(&tasks);
    if !unparsed.is_empty() {
        bail!("job {}: {}", job.name, unparsed.join("; "));
    }
    // A job of [maintenance] alone backs nothing up, on purpose.
    if tasks.is_empty() && job.maintenance.is_none() {
        bail!(
            "job {}: no guest to back up (no VM socket in its dirs, no container)",
            job.name
        );
    }
    Ok(tasks)
}

/// What a task's command line does not pass: each is read by the parser
/// that reads a user's (`hoard backup-vm ...`), so a value it refuses (or
/// a command line [`crate::argv::line`] wrote wrong) is reported by
/// `hoard job check` and before a run starts, never half-way through one.
pub(crate) fn unparsed(tasks: &[Task]) -> Vec<String> {
    use clap::Parser;
    tasks
        .iter()
        .filter(|t| t.id != "*")
        .filter_map(|t| {
            let argv = std::iter::once(OsString::from("hoard")).chain(t.args.iter().cloned());
            let e = crate::Cli::try_parse_from(argv).err()?;
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            Some(format!("{}: its backup command is refused: {first}", t.label))
        })
        .collect()
}

/// The `ID.qmp` sockets of a directory, sorted by id.
fn sockets(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("VM socket directory {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("VM socket directory {}", dir.display()))?;
        let path = e.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".qmp"))
        else {
            continue;
        };
        if e.file_type().is_ok_and(|t| t.is_socket()) {
            found.push((id.to_string(), path));
        }
    }
    found.sort();
    Ok(found)
}

/// The containers of an LXC path (`lxc-ls -1`).
fn containers(lxcpath: &Path) -> Result<Vec<String>> {
    let out = Command::new("lxc-ls")
        .arg("-P")
        .arg(lxcpath)
        .arg("-1")
        .output()
        .context("running lxc-ls (is LXC installed?)")?;
    if !out.status.success() {
        bail!(
            "lxc-ls -P {}: {}",
            lxcpath.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    names.sort();
    Ok(names)
}

fn vm_mode(m: VmMode) -> &'static str {
    match m {
        VmMode::Snapshot => "snapshot",
        VmMode::Suspend => "suspend",
        VmMode::Stop => "stop",
    }
}

fn ct_mode(m: CtMode) -> &'static str {
    match m {
        CtMode::Snapshot => "snapshot",
        CtMode::Suspend => "suspend",
        CtMode::Stop => "stop",
    }
}

/// What every backup of the job is given: compression, threads, bandwidth,
/// a JSON report.
fn common(job: &Job, write: &mut WriteArgs) {
    write.json = true;
    if let Some(c) = job.compress {
        write.compression = c;
    }
    write.threads = job.threads;
    // The job's whole limit: its backups share one bucket (job run names
    // it in HOARD_BWLIMIT_SHARED), so their total stays under it.
    write.bwlimit.bwlimit = job.bwlimit;
}

fn vm_task(job: &Job, id: &str, qmp: &Path, qga: Option<&Path>, mode: VmMode, config: &[PathBuf]) -> Task {
    let v = job.vms.as_ref().expect("a VM task comes from [vms]");
    let mut a: BackupVm = command("backup-vm");
    a.live.qmp = qmp.to_path_buf();
    a.live.id = id.into();
    a.mode = match mode {
        VmMode::Snapshot => qemu::ModeArg::Snapshot,
        VmMode::Suspend => qemu::ModeArg::Suspend,
        VmMode::Stop => qemu::ModeArg::Stop,
    };
    a.qga = qga.map(Path::to_path_buf);
    a.live.config_files = config.to_vec();
    a.no_fsfreeze = !v.fsfreeze;
    a.stop_timeout = v.stop_timeout;
    a.force_stop = v.force_stop;
    a.live.fleece_dir = v.fleece_dir.clone();
    if let Some(c) = job.chunk_size {
        a.live.chunk_size = c;
    }
    common(job, &mut a.live.write);
    a.hook = job.hook.clone();
    a.hook_timeout = job.hook_timeout;
    let canonical = std::fs::canonicalize(qmp).unwrap_or_else(|_| qmp.to_path_buf());
    Task {
        label: format!("vm/{id}"),
        kind: Kind::Vm,
        id: id.into(),
        mode: vm_mode(mode).into(),
        source: qmp.display().to_string(),
        lock_key: format!("qemu:{}", canonical.display()),
        args: line("backup-vm", &a),
    }
}

fn ct_task(job: &Job, name: &str, id: Option<&str>, mode: CtMode, mounts: &[String]) -> Task {
    let c = job
        .containers
        .as_ref()
        .expect("a container task comes from [containers]");
    let id = id.unwrap_or(name);
    let mut a: BackupCt = command("backup-ct");
    a.name = name.into();
    a.id = Some(id.into());
    a.lxcpath = c.lxcpath.clone();
    a.mode = match mode {
        CtMode::Snapshot => ct::ModeArg::Snapshot,
        CtMode::Suspend => ct::ModeArg::Suspend,
        CtMode::Stop => ct::ModeArg::Stop,
    };
    a.include_mounts = mounts.to_vec();
    a.tmpdir = c.tmpdir.clone();
    a.stop_timeout = c.stop_timeout;
    a.tree_chunk_avg = job.tree_chunk_avg;
    common(job, &mut a.write);
    a.hook = job.hook.clone();
    a.hook_timeout = job.hook_timeout;
    let lxcpath = std::fs::canonicalize(&c.lxcpath).unwrap_or_else(|_| c.lxcpath.clone());
    Task {
        label: format!("ct/{id}"),
        kind: Kind::Ct,
        id: id.into(),
        mode: ct_mode(mode).into(),
        source: format!("{name} in {}", c.lxcpath.display()),
        lock_key: format!("lxc:{}/{name}", lxcpath.display()),
        args: line("backup-ct", &a),
    }
}

/// A backup of one image or tree (`tree` sets its tree options).
fn plain_task(
    job: &Job,
    kind: Kind,
    id: &str,
    name: &str,
    path: &Path,
    tree: impl FnOnce(&mut TreeArgs),
) -> Task {
    let mut a: Backup = command("backup");
    a.kind = kind;
    a.id = id.into();
    if !name.ends_with(".tree") {
        a.chunk_size = job.chunk_size;
    }
    common(job, &mut a.write);
    tree(&mut a.tree);
    // Job files are TOML: their paths are UTF-8.
    a.images = vec![format!("{name}:{}", path.to_string_lossy())];
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Task {
        label: format!("{}/{id}", kind.as_str()),
        kind,
        id: id.into(),
        mode: if name.ends_with(".tree") { "tree" } else { "image" }.into(),
        source: path.display().to_string(),
        lock_key: format!("path:{}", canonical.display()),
        args: line("backup", &a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoard_engine::job_file::parse;

    #[test]
    fn vms_are_found_in_socket_directories_less_the_excluded_and_the_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let _s: Vec<_> = ["100", "101", "102"]
            .iter()
            .map(|id| std::os::unix::net::UnixListener::bind(d.join(format!("{id}.qmp"))).unwrap())
            .collect();
        std::fs::write(d.join("103.qmp"), b"a file, not a socket").unwrap();
        std::fs::write(d.join("100.qga"), b"").unwrap();
        let text = format!(
            "store = \"/s\"\n[vms]\ndirs = [\"{0}\"]\nexclude = [\"102\"]\nguests = [{{ id = \"101\", qmp = \"{0}/101.qmp\", mode = \"stop\" }}]\n",
            d.display()
        );
        let job = parse(Path::new("/j/vms.toml"), text.as_bytes()).unwrap();
        let tasks = resolve(&job).unwrap();
        let got: Vec<(&str, &str)> = tasks
            .iter()
            .map(|t| (t.label.as_str(), t.mode.as_str()))
            .collect();
        assert_eq!(got, [("vm/101", "stop"), ("vm/100", "snapshot")]);
        // The agent's socket beside it is passed on.
        let args: Vec<String> = tasks[1]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--qga" && w[1].ends_with("100.qga")),
            "{args:?}"
        );
        // A directory that is not there is an error naming it.
        let text = "store = \"/s\"\n[vms]\ndirs = [\"/nonexistent/vms\"]\n";
        let job = parse(Path::new("/j/vms.toml"), text.as_bytes()).unwrap();
        let e = resolve(&job).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/vms"), "{e:#}");
    }

    /// Every option a job file can give a backup reaches it through flags
    /// the command-line parser takes, with the values it was given.
    #[test]
    fn every_job_option_becomes_a_command_the_parser_takes() {
        let text = r#"
store = "/s"
compress = "zstd:3"
threads = 3
bwlimit = "64M"
chunk-size = "1M"
tree-chunk-avg = "256K"
hook = "/etc/hoard/hook.sh"
hook-timeout = 30
[vms]
mode = "stop"
fsfreeze = false
stop-timeout = 9
force-stop = true
fleece-dir = "/fast"
guests = [{ id = "100", qmp = "/run/100.qmp", qga = "/run/100.qga", config = ["/etc/100.conf"] }]
[containers]
mode = "suspend"
tmpdir = "/tmp/ct"
stop-timeout = 7
guests = [{ name = "db", id = "101", include-mounts = ["/srv"] }]
[[images]]
id = "img"
path = "/dev/vdb"
[[trees]]
id = "etc"
path = "/etc"
exclude = ["*.bak"]
one-file-system = false
"#;
        let job = parse(Path::new("/j/all.toml"), text.as_bytes()).unwrap();
        let tasks = describe(&job);
        assert_eq!(tasks.len(), 4);
        assert!(unparsed(&tasks).is_empty(), "{:?}", unparsed(&tasks));
        let line = |t: &Task| {
            t.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        for t in &tasks {
            let l = line(t);
            for want in ["--compress zstd:3", "--threads 3", "--json", "--bwlimit 67108864"] {
                assert!(l.contains(want), "{}: {want} in {l}", t.label);
            }
        }
        for want in [
            "--no-fsfreeze",
            "--force-stop",
            "--fleece-dir /fast",
            "--chunk-size 1M",
            "--hook-timeout 30",
            "--qga /run/100.qga",
            "--config /etc/100.conf",
        ] {
            assert!(line(&tasks[0]).contains(want), "{want}");
        }
        for want in [
            "--tmpdir /tmp/ct",
            "--include-mount /srv",
            "--tree-chunk-avg 262144",
        ] {
            assert!(line(&tasks[1]).contains(want), "{want}");
        }
        assert!(line(&tasks[3]).contains("--one-file-system false"));

        // A flag the parser does not take is caught before any backup runs.
        let mut bad = tasks[0].clone();
        bad.args.push("--compres".into());
        let why = unparsed(&[bad]);
        assert!(why.len() == 1 && why[0].contains("--compres"), "{why:?}");
    }

    /// Each backup gets the job's whole limit: they share one bucket (job
    /// run names it), so their total stays under it (throttle.rs).
    #[test]
    fn the_bandwidth_limit_goes_whole_to_the_shared_bucket() {
        let text =
            "store = \"/s\"\nmax-workers = 4\nbwlimit = \"100M\"\n[[images]]\nid = \"a\"\npath = \"/a\"\n";
        let job = parse(Path::new("/j/bw.toml"), text.as_bytes()).unwrap();
        let args: Vec<String> = describe(&job)[0]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--bwlimit").unwrap();
        assert_eq!(args[at + 1], (100u64 << 20).to_string());
    }
}
