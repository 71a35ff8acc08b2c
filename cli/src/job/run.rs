//! `hoard job run`: each guest backed up by a `hoard` child process (so one
//! guest's failure, even a crash, leaves the others alone), at most
//! max-workers at once, each under a lock of its guest; retention and the
//! stored log after each success; then the summary and the notifications.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use hoard_engine::{
    job_file::Job, prune, signals, signals::DeferSignals, Access, KeepOptions, Mark, Protection, Store,
};
use serde_json::Value;

use super::plan::{self, Task};
use super::summary::{Outcome, Status, Summary};
use crate::exit::Incomplete;

/// How a job run starts its child `hoard`s: with the bars of the running
/// backups on one board, when stderr is a terminal.
pub(super) struct Children {
    board: Option<Arc<crate::progress::Board>>,
}

/// How long a guest waits for another backup of it (another job's) to end.
const GUEST_LOCK_WAIT: Duration = Duration::from_secs(3600);

pub(crate) fn run(job: &Job, wait: bool, json: bool) -> Result<()> {
    let locks = LockDir::open()?;
    let _job_lock = lock_job(&locks, job, wait)?;
    export_settings(job);
    if job.bwlimit.is_some() {
        // One bucket for the job's backups, so that `bwlimit` is their
        // total however many run; emptied first (this run holds the job's
        // lock): a time left by a run before a reboot would stall them.
        let name = format!("bwlimit-{}", job.name);
        locks
            .file(&name)?
            .set_len(0)
            .context("emptying the bwlimit bucket")?;
        std::env::set_var(hoard_engine::throttle::SHARED_VAR, locks.path.join(name));
    }
    // Opened once, for retention and the logs; the children open it too
    // (a store serves many processes at once).
    let mut store = open_or_create(job)?;
    if store.protection() == Protection::Encrypt {
        // The logs it stores are sealed with the store's key.
        crate::keys::unlock(&mut store, job.keyfile.as_deref())
            .with_context(|| format!("store of job {}", job.name))?;
    }
    let tasks = plan::resolve(job)?;
    let started = SystemTime::now();
    let clock = Instant::now();
    eprintln!(
        "hoard: job {}: {} guests into {}, {} at a time{}",
        job.name,
        tasks.len(),
        job.store,
        job.max_workers.min(tasks.len()),
        job.maintenance
            .as_ref()
            .map_or("", |_| "; then the store's maintenance")
    );
    // Ctrl-C or systemd's SIGTERM reaches the backups too (same process
    // group, same cgroup), which undo what they hold and end; this process
    // starts no more, reports, notifies, and then ends by the signal.
    let held = DeferSignals::start();
    let children = Children {
        board: crate::progress::Board::new().map(Arc::new),
    };
    let outcomes = run_all(job, &store, &tasks, &locks, &children);
    let upkeep = super::maintenance::run(job, &children);
    let summary = Summary::new(job, started, clock.elapsed().as_secs_f64(), outcomes, upkeep);
    super::status::LastRun::save(
        job,
        &super::status::LastRun {
            time: humantime::format_rfc3339_seconds(started).to_string(),
            status: summary.status().into(),
            duration_secs: summary.duration_secs,
        },
    );
    if json {
        crate::output::print_json(summary.to_json())?;
    } else {
        print!("{}", summary.table());
        for o in summary.all().filter(|o| o.status == Status::Failed) {
            eprintln!("hoard: log of {} (failed):\n{}", o.guest, o.log);
        }
    }
    for warning in super::notify::send(job, &summary) {
        eprintln!("hoard: warning: {warning}");
    }
    drop(held);
    match summary.status() {
        "ok" => Ok(()),
        "partial" => Err(Incomplete(format!("job {}: {}", job.name, summary.headline())).into()),
        _ => bail!("job {}: {}", job.name, summary.headline()),
    }
}

/// The job's store, key and credential settings, in this process's
/// environment: the children read them there, as a user's shell would
/// pass them (and no secret appears on a command line).
fn export_settings(job: &Job) {
    let set = |key: &str, value: Option<&std::ffi::OsStr>| {
        if let Some(v) = value {
            std::env::set_var(key, v);
        }
    };
    set("HOARD_STORE", Some(job.store.as_ref()));
    set("HOARD_CACHE_DIR", job.cache_dir.as_deref().map(|p| p.as_os_str()));
    set("HOARD_KEYFILE", job.keyfile.as_deref().map(|p| p.as_os_str()));
    set(
        "HOARD_PASSWORD_FILE",
        job.password_file.as_deref().map(|p| p.as_os_str()),
    );
    set(
        "AWS_PROFILE",
        job.aws_profile.as_deref().map(std::ffi::OsStr::new),
    );
    set(
        "AWS_SHARED_CREDENTIALS_FILE",
        job.aws_credentials_file.as_deref().map(|p| p.as_os_str()),
    );
}

/// Opens the job's store, creating a plain local store first if the job
/// asks for it and there is none. A bucket's cache is the job's cache-dir
/// or the default, as its backups find them.
fn open_or_create(job: &Job) -> Result<Store> {
    let path = Path::new(&job.store);
    if job.create_store && !path.join("config.json").exists() {
        let size = hoard_engine::ChunkSize::new(hoard_engine::DEFAULT_CHUNK_SIZE)?;
        Store::init_with(path, size, Access::Private)
            .with_context(|| format!("creating the store of job {}", job.name))?;
        eprintln!("hoard: job {}: created store {}", job.name, path.display());
    }
    let at = crate::open::StoreArgs {
        store: Some(PathBuf::from(&job.store)),
        cache_dir: job.cache_dir.clone(),
        keyfile: job.keyfile.clone(),
        ..Default::default()
    };
    crate::open::open_store(&at).with_context(|| format!("store of job {}", job.name))
}

/// Runs the tasks on up to max-workers threads, each task in a child.
fn run_all(job: &Job, store: &Store, tasks: &[Task], locks: &LockDir, children: &Children) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; tasks.len()]);
    std::thread::scope(|s| {
        for _ in 0..job.max_workers.min(tasks.len()) {
            s.spawn(|| loop {
                if signals::pending() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(task) = tasks.get(i) else { break };
                eprintln!(
                    "hoard: [{}/{}] {} ({} mode) ...",
                    i + 1,
                    tasks.len(),
                    task.label,
                    task.mode
                );
                let outcome = back_up(job, store, task, locks, children);
                eprintln!(
                    "hoard: [{}/{}] {}: {} in {:.1} s",
                    i + 1,
                    tasks.len(),
                    task.label,
                    outcome.status.as_str(),
                    outcome.duration_secs
                );
                done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
            });
        }
    });
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.into_iter()
        .zip(tasks)
        .map(|(outcome, task)| {
            outcome.unwrap_or_else(|| {
                let mut o = Outcome::new(task);
                o.error = Some("not started: the job was interrupted".into());
                o
            })
        })
        .collect()
}

/// A task's log: timestamped lines, also written to standard error.
#[derive(Clone, Default)]
pub(super) struct Log(Arc<Mutex<String>>);

impl Log {
    pub(super) fn line(&self, text: &str) {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for l in text.lines() {
            log.push_str(&format!("{now} {l}\n"));
        }
    }

    pub(super) fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn back_up(job: &Job, store: &Store, task: &Task, locks: &LockDir, children: &Children) -> Outcome {
    let clock = Instant::now();
    let log = Log::default();
    log.line(&format!(
        "job {} on {}: {} in {} mode, from {}",
        job.name,
        hoard_engine::host_name(),
        task.label,
        task.mode,
        task.source
    ));
    let mut outcome = Outcome::new(task);
    match run_child(task, locks, &log, children) {
        Ok((status, report)) => {
            outcome.record(&report);
            log.line(&outcome.describe(&report));
            outcome.status = status;
            if status == Status::Ok {
                apply_retention(job, store, task, &log, &mut outcome);
            }
        }
        Err(e) => failed(&mut outcome, &log, &e),
    }
    close(&mut outcome, clock, &log);
    if let Some(snapshot) = &outcome.snapshot {
        if let Err(e) = store_log(store, snapshot, &outcome.log) {
            let text = format!(
                "the log could not be stored with {snapshot}: {}",
                crate::exit::error_chain(&e)
            );
            eprintln!("hoard: warning: {}: {text}", task.label);
            outcome.log.push_str(&text);
        }
    }
    outcome
}

/// Records why a task failed, in its outcome and its log.
pub(super) fn failed(outcome: &mut Outcome, log: &Log, e: &anyhow::Error) {
    let text = crate::exit::error_chain(e);
    log.line(&format!("FAILED: {text}"));
    outcome.status = Status::Failed;
    outcome.error = Some(text);
}

/// Ends a task's log with its status and time, and keeps the log.
pub(super) fn close(outcome: &mut Outcome, clock: Instant, log: &Log) {
    outcome.duration_secs = clock.elapsed().as_secs_f64();
    log.line(&format!(
        "{} in {:.1} s",
        outcome.status.as_str(),
        outcome.duration_secs
    ));
    outcome.log = log.text();
}

/// Backs the guest up in a child `hoard`; its status and JSON report.
fn run_child(task: &Task, locks: &LockDir, log: &Log, children: &Children) -> Result<(Status, Value)> {
    let guest = lock_guest(locks, task, log)?;
    children.run(&task.args, &task.label, log, Some(&guest))
}

impl Children {
    /// Runs `hoard ARGS` (with `--json`) as a child: its standard error into
    /// `log` (and ours, prefixed with `label`), its status and JSON report.
    /// The child holds `lock` too, if given, and dies with this process.
    pub(super) fn run(
        &self,
        args: &[std::ffi::OsString],
        label: &str,
        log: &Log,
        lock: Option<&File>,
    ) -> Result<(Status, Value)> {
        let exe = std::env::current_exe().context("finding the hoard binary")?;
        log.line(&format!(
            "running hoard {}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let mut command = Command::new(&exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.board.is_some() {
            command.env(crate::progress::LINES_VAR, "1");
        }
        let bar = self.board.as_ref().map(|b| b.guest(label));
        let board = self.board.clone();
        hold_lock_and_die_with_parent(&mut command, lock);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let (log2, label) = (log.clone(), label.to_string());
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if bar.as_ref().is_some_and(|b| b.update(&line)) {
                    continue;
                }
                match &board {
                    Some(b) => b.println(&format!("hoard: {label}: {line}")),
                    None => eprintln!("hoard: {label}: {line}"),
                }
                log2.line(&line);
                if let Some(e) = line.strip_prefix("hoard: error: ") {
                    last = e.to_string();
                }
            }
            last
        });
        let report_reader = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let status = wait_passing_signals(&mut child)?;
        let last_error = reader.join().unwrap_or_default();
        let out = report_reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader panicked")))
            .context("reading the child's report")?;
        let report: Option<Value> = serde_json::from_str(&out).ok();
        match (status.code(), report) {
            (Some(0), Some(r)) => Ok((Status::Ok, r)),
            (Some(3), Some(r)) => Ok((Status::Warning, r)),
            _ if !last_error.is_empty() => bail!("{last_error}"),
            (Some(code), _) => bail!("hoard exited with status {code}"),
            (None, _) => bail!("hoard was killed ({status})"),
        }
    }
}

/// The child backup holds the guest's lock too (the descriptor, which
/// shares the flock, stays open across its exec), and gets SIGTERM when
/// this process dies: a `kill -9` of the job run neither orphans a backup
/// nor lets the next run back the same guest up beside it.
fn hold_lock_and_die_with_parent(command: &mut Command, lock: Option<&File>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = lock.map(|l| l.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // prctl, getppid, kill), on this child's own descriptor and process.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would signal us.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// Waits for the child backup; a SIGINT, SIGTERM or SIGHUP this process
/// holds back is passed on to it at once (it undoes what it holds and
/// ends), so that `kill` of the job's pid stops the backup, not only the
/// tasks after it.
fn wait_passing_signals(child: &mut std::process::Child) -> Result<std::process::ExitStatus> {
    let mut passed = false;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the backup")? {
            return Ok(status);
        }
        if !passed && signals::pending() {
            // SAFETY: a signal to our own child, which we have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            passed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apply_retention(job: &Job, store: &Store, task: &Task, log: &Log, outcome: &mut Outcome) {
    let Some(k) = &job.keep else { return };
    let keep = KeepOptions {
        last: k.last,
        hourly: k.hourly,
        daily: k.daily,
        weekly: k.weekly,
        monthly: k.monthly,
        yearly: k.yearly,
    };
    match prune(store.catalog(), Some(task.kind), Some(&task.id), &keep, false) {
        Ok(report) => {
            let removed: Vec<String> = report
                .snapshots
                .iter()
                .filter(|e| e.mark == Mark::Remove)
                .map(|e| e.snapshot.clone())
                .collect();
            log.line(&format!(
                "retention: kept {}, removed {}{}",
                report.kept,
                report.removed,
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", removed.join(", "))
                }
            ));
            outcome.pruned = report.removed;
        }
        Err(e) => {
            let text = format!("retention failed: {e}");
            log.line(&text);
            outcome.status = Status::Warning;
            outcome.error = Some(text);
        }
    }
}

fn store_log(store: &Store, snapshot: &str, log: &str) -> Result<()> {
    let name = store.catalog().find(snapshot)?;
    store.catalog().save_task_log(&name, log)?;
    Ok(())
}

/// Where the job and guest locks live: HOARD_RUN_DIR, /run/hoard for root,
/// else $XDG_RUNTIME_DIR/hoard or /tmp/hoard-UID. Opened once as a private
/// directory (owned by this user, closed to others), so that nobody else
/// can plant or hold a lock; lock files are opened beneath that descriptor.
struct LockDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl LockDir {
    fn open() -> Result<LockDir> {
        let path = if let Some(d) = std::env::var_os("HOARD_RUN_DIR") {
            PathBuf::from(d)
        } else if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/hoard")
        } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            Path::new(&d).join("hoard")
        } else {
            PathBuf::from(format!("/tmp/hoard-{}", nix::unistd::geteuid()))
        };
        let fd =
            hoard_engine::private_dir(&path).with_context(|| format!("lock directory {}", path.display()))?;
        Ok(LockDir { path, fd })
    }

    fn file(&self, name: &str) -> Result<File> {
        hoard_engine::open_in(&self.fd, name, nix::fcntl::OFlag::empty())
            .with_context(|| format!("lock file {}", self.path.join(name).display()))
    }
}

/// Holds job `name`'s lock: refuses (or with `wait`, waits) while another
/// run holds it, naming that run.
fn lock_job(locks: &LockDir, job: &Job, wait: bool) -> Result<File> {
    let mut file = locks.file(&format!("job-{}.lock", job.name))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            if !wait {
                bail!(
                    "job {} is already running ({}); not started twice (`hoard job run --wait` waits for it)",
                    job.name,
                    if holder.is_empty() {
                        "its lock is held"
                    } else {
                        holder
                    }
                );
            }
            eprintln!(
                "hoard: job {}: waiting for the run in progress ({holder})",
                job.name
            );
            file.lock().context("waiting for the job's lock")?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).context("locking the job"),
    }
    file.set_len(0)?;
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    file.write_all(format!("pid {} since {now}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

/// Holds the lock of the guest `task` backs up, waiting (up to an hour)
/// while another job backs it up.
fn lock_guest(locks: &LockDir, task: &Task, log: &Log) -> Result<File> {
    let tag = &hoard_engine::Digest::of(task.lock_key.as_bytes()).to_hex()[..16];
    let file = locks.file(&format!("guest-{tag}.lock"))?;
    let end = Instant::now() + GUEST_LOCK_WAIT;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < end => {
                if !told {
                    let text = format!("waiting: another backup of {} is running", task.source);
                    eprintln!("hoard: {}: {text}", task.label);
                    log.line(&text);
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!(
                    "another backup of {} ran for over an hour; not backed up",
                    task.source
                )
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).context("locking the guest"),
        }
    }
}
