//! `hoard job`: backup jobs as vzdump runs them, from job files
//! (format-spec/job-file.md), scheduled by systemd timers.

mod maintenance;
mod notify;
mod plan;
mod run;
mod status;
mod summary;
mod systemd;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hoard_engine::{job_file, job_file::Job};
use serde_json::json;

use crate::open::StoreArgs;

/// Backup jobs from job files (/etc/hoard/jobs/NAME.toml), as vzdump
/// runs them: which guests, which mode, when, how long kept, who is told.
///
/// `hoard job run NAME` backs up every guest of the job and applies its
/// retention; `hoard job install NAME` schedules it with a systemd timer;
/// `hoard job check` checks every job file. The file format, field by
/// field: format-spec/job-file.md (packaged as
/// /usr/share/doc/hoard/job-file.md), with every field in
/// /usr/share/doc/hoard/examples/reference.toml.
#[derive(Args)]
pub(crate) struct JobArgs {
    /// Directory of the job files (NAME.toml).
    #[arg(
        long,
        env = "HOARD_JOBS_DIR",
        default_value = "/etc/hoard/jobs",
        global = true
    )]
    jobs_dir: PathBuf,
    /// Where the jobs' systemd units are (install, uninstall, and what
    /// list and show report).
    #[arg(
        long,
        env = "HOARD_UNIT_DIR",
        default_value = "/etc/systemd/system",
        global = true
    )]
    unit_dir: PathBuf,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run a job now: back up each of its guests, apply its retention, tell
    /// whom it names.
    ///
    /// Guests are backed up one at a time (or max-workers at once), never two
    /// backups of one guest at once (a lock per guest, also across jobs); a
    /// guest that fails does not stop the others. Ends with a summary table;
    /// exit status 0 if every guest was backed up, 3 if some were, 1 if none.
    /// A second run of a job that is running is refused (or waits, --wait).
    /// Each guest's log is stored with its snapshot (`hoard show`).
    Run {
        /// The job: NAME of JOBS_DIR/NAME.toml.
        name: String,
        /// Wait for a run of this job that is in progress instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Print the summary as JSON (the webhook's body).
        #[arg(long)]
        json: bool,
    },
    /// List the jobs: schedule, whether the timer is installed and
    /// enabled, its next run (only when it is), and the last run's time
    /// and outcome.
    List {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Show a job: its guests, mode, store, retention, schedule and next run.
    Show {
        /// The job: NAME of JOBS_DIR/NAME.toml.
        name: String,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Check every job file (or the named ones): every problem of every
    /// file in one pass, including sources, the store and sendmail that do
    /// not exist; exit status 1 if one is bad.
    Check {
        /// Jobs to check (default: every NAME.toml of JOBS_DIR).
        names: Vec<String>,
    },
    /// Schedule a job: write hoard-job@NAME.service and .timer and enable the timer.
    Install {
        /// The job: NAME of JOBS_DIR/NAME.toml.
        name: String,
        /// Write the units only; do not enable or start the timer.
        #[arg(long)]
        no_enable: bool,
        /// The hoard the timer runs (default: this one, unless it lies in
        /// a build tree, which `cargo clean` or a rebuild would pull from
        /// under the timer).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Stop and remove a job's timer and service units.
    Uninstall {
        /// The job whose units are removed.
        name: String,
    },
}

pub(crate) fn run(at: &StoreArgs, a: JobArgs) -> Result<()> {
    if at.cache_dir.is_some() || at.keyfile.is_some() {
        bail!("a job names its own cache directory and key file (in its file); do not give --cache-dir or --keyfile to `hoard job`");
    }
    if at.store.is_some() {
        eprintln!("hoard: note: --store (HOARD_STORE) is not used by `hoard job`: a job names its own store");
    }
    let dir = &a.jobs_dir;
    let unit_dir = &a.unit_dir;
    match a.command {
        JobCommand::Run { name, wait, json } => run::run(&load(dir, &name)?.0, wait, json),
        JobCommand::List { json } => list(dir, unit_dir, json),
        JobCommand::Show { name, json } => {
            let (job, next) = load(dir, &name)?;
            show(&job, next, unit_dir, json)
        }
        JobCommand::Check { names } => check(dir, &names),
        JobCommand::Install {
            name,
            no_enable,
            binary,
        } => {
            let (job, next) = load(dir, &name)?;
            let exe = match binary {
                Some(b) => std::path::absolute(&b)?,
                None => installed_binary()?,
            };
            systemd::install(&job, next, &exe, unit_dir, !no_enable)
        }
        JobCommand::Uninstall { name } => systemd::uninstall(&name, unit_dir),
    }
}

/// The hoard a timer should run: this one, unless it lies in a cargo build
/// tree (a directory holding CACHEDIR.TAG), which a rebuild or `cargo
/// clean` changes or removes under the timer.
fn installed_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the hoard binary")?;
    if let Some(tree) = exe.ancestors().find(|d| d.join("CACHEDIR.TAG").exists()) {
        bail!(
            "{} lies in the build tree {}: the timer would run whatever a rebuild or `cargo clean` leaves there. Install the package (or copy the binary), or name it with --binary PATH",
            exe.display(),
            tree.display()
        );
    }
    Ok(exe)
}

/// Job `name` of `dir`, checked in full (its schedule too), and when its
/// timer fires next if it is scheduled.
fn load(dir: &Path, name: &str) -> Result<(Job, Option<String>)> {
    if !job_file::valid_job_name(name) {
        bail!("{name:?} is not a job name (A-Z a-z 0-9 . _ -, not starting with . or -, no @)");
    }
    let path = job_file::job_path(dir, name);
    if !path.exists() {
        bail!(
            "no job {name}: {} does not exist (jobs: {})",
            path.display(),
            names(dir).map(|n| n.join(", ")).unwrap_or_default()
        );
    }
    let job = job_file::load(&path)?;
    let next = systemd::check_times(&job)?;
    Ok((job, next))
}

/// The names of the job files in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("reading jobs directory {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("reading jobs directory {}", dir.display()))?;
        if let Some(n) = e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")) {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn check(dir: &Path, only: &[String]) -> Result<()> {
    let all = if only.is_empty() {
        names(dir)?
    } else {
        only.to_vec()
    };
    if all.is_empty() {
        bail!("no job files in {}", dir.display());
    }
    let mut bad = 0;
    for name in &all {
        match load(dir, name) {
            Ok((job, _)) => {
                let mut missing = status::missing_paths(&job);
                missing.extend(plan::unparsed(&plan::describe(&job)));
                if missing.is_empty() {
                    println!("ok      {} ({})", name, job.path.display());
                    continue;
                }
                bad += 1;
                println!("invalid {} ({}):", name, job.path.display());
                for m in missing {
                    println!("          {m}");
                }
            }
            Err(e) => {
                bad += 1;
                println!("invalid {}", crate::exit::error_chain(&e));
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} job files are invalid", all.len());
    }
    Ok(())
}

fn list(dir: &Path, unit_dir: &Path, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in names(dir)? {
        let timer = status::Timer::of(&name, unit_dir);
        let last = status::LastRun::load(&name);
        let row = match load(dir, &name) {
            // A next run only where a timer will make it.
            Ok((job, next)) => json!({
                "name": name,
                "store": job.store,
                "schedule": job.schedule.as_ref().map(|s| &s.value),
                "timer": timer,
                "next": next.filter(|_| timer.enabled),
                "last": last,
                "guests": plan::describe(&job).len(),
            }),
            Err(e) => {
                json!({"name": name, "error": crate::exit::error_chain(&e), "timer": timer, "last": last})
            }
        };
        rows.push((row, timer));
    }
    if json {
        let rows: Vec<_> = rows.into_iter().map(|(row, _)| row).collect();
        return crate::output::print_json(json!({"jobs": rows}));
    }
    println!(
        "{:20} {:24} {:24} {:28} {:30} STORE",
        "JOB", "SCHEDULE", "TIMER", "NEXT RUN", "LAST RUN"
    );
    for (r, timer) in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let last = match &r["last"] {
            serde_json::Value::Null => "never".to_string(),
            l => format!(
                "{} {}",
                l["time"].as_str().unwrap_or("?"),
                l["status"].as_str().unwrap_or("?")
            ),
        };
        match r.get("error") {
            Some(e) => println!("{:20} invalid: {}", s("name"), e.as_str().unwrap_or("")),
            None => println!(
                "{:20} {:24} {:24} {:28} {:30} {}",
                s("name"),
                s("schedule"),
                timer.describe(),
                s("next"),
                last,
                s("store")
            ),
        }
    }
    Ok(())
}

fn show(job: &Job, next: Option<String>, unit_dir: &Path, json: bool) -> Result<()> {
    let guests = plan::describe(job);
    let timer = status::Timer::of(&job.name, unit_dir);
    let next = next.filter(|_| timer.enabled);
    let notify = job.notify.as_ref().map(|n| {
        json!({"when": format!("{:?}", n.when).to_lowercase(), "mailto": n.mailto, "from": n.from,
            "sendmail": n.sendmail, "webhook": n.webhook})
    });
    let maintenance = job.maintenance.as_ref().map(|m| {
        json!({"prune": m.prune, "gc": m.gc, "verify": m.verify, "verify_outdated_after": m.verify_outdated_after})
    });
    let keep = job.keep.as_ref().map(|k| {
        json!({"last": k.last, "hourly": k.hourly, "daily": k.daily, "weekly": k.weekly, "monthly": k.monthly, "yearly": k.yearly})
    });
    if json {
        let v = json!({
            "name": job.name,
            "file": job.path,
            "store": job.store,
            "schedule": job.schedule.as_ref().map(|s| &s.value),
            "randomized_delay": job.randomized_delay.as_ref().map(|s| &s.value),
            "next": next,
            "max_workers": job.max_workers,
            "bwlimit": job.bwlimit,
            "keep": keep,
            "notify": notify,
            "maintenance": maintenance,
            "timer": timer,
            "last": status::LastRun::load(&job.name),
            "guests": guests,
        });
        return crate::output::print_json(v);
    }
    println!("job       {} ({})", job.name, job.path.display());
    println!("store     {}", job.store);
    match (&job.schedule, &next) {
        (Some(s), Some(next)) => println!("schedule  {} (next run {next})", s.value),
        (Some(s), None) => println!(
            "schedule  {} (timer {}: `hoard job install {}`)",
            s.value,
            timer.describe(),
            job.name
        ),
        (None, _) => println!("schedule  none (run by hand with `hoard job run {}`)", job.name),
    }
    match status::LastRun::load(&job.name) {
        Some(l) => println!("last run  {} {} in {:.1} s", l.time, l.status, l.duration_secs),
        None => println!("last run  never"),
    }
    println!(
        "workers   {}{}",
        job.max_workers,
        job.bwlimit
            .map_or(String::new(), |b| format!(", reading at most {} MiB/s", b >> 20))
    );
    match &job.keep {
        Some(k) => {
            let parts: Vec<String> = [
                ("last", k.last),
                ("hourly", k.hourly),
                ("daily", k.daily),
                ("weekly", k.weekly),
                ("monthly", k.monthly),
                ("yearly", k.yearly),
            ]
            .iter()
            .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
            .collect();
            println!("keep      {}", parts.join(", "));
        }
        None => println!("keep      everything (no [keep])"),
    }
    match &job.notify {
        Some(n) => println!(
            "notify    {} to {}{}",
            format!("{:?}", n.when).to_lowercase(),
            if n.mailto.is_empty() {
                "nobody by mail".into()
            } else {
                n.mailto.join(", ")
            },
            n.webhook
                .as_ref()
                .map_or(String::new(), |w| format!(", webhook {w}"))
        ),
        None => println!("notify    nobody (no [notify])"),
    }
    if let Some(m) = &job.maintenance {
        let steps: Vec<&str> = [("prune", m.prune), ("gc", m.gc), ("verify", m.verify)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        println!("store     maintenance after the guests: {}", steps.join(", "));
    }
    for g in guests {
        println!("guest     {:20} {:9} {}", g.label, g.mode, g.source);
    }
    Ok(())
}
