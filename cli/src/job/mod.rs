//! `hoard job`: backup jobs as vzdump runs them, from job files
//! (format-spec/job-file.md), scheduled by systemd timers.

mod maintenance;
mod notify;
mod plan;
mod run;
mod summary;
mod systemd;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hoard_engine::format::job_file::{self, Job};
use serde_json::json;

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
    /// List the jobs, their schedules and next run times.
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
    /// Check every job file (or the named ones); exit status 1 if one is bad.
    Check {
        /// Jobs to check (default: every NAME.toml of JOBS_DIR).
        names: Vec<String>,
    },
    /// Schedule a job: write hoard-job@NAME.service and .timer and enable the timer.
    Install {
        /// The job: NAME of JOBS_DIR/NAME.toml.
        name: String,
        /// Where the units go.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Write the units only; do not enable or start the timer.
        #[arg(long)]
        no_enable: bool,
    },
    /// Stop and remove a job's timer and service units.
    Uninstall {
        /// The job whose units are removed.
        name: String,
        /// Where the systemd units were installed (default: /etc/systemd/system).
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
}

pub(crate) fn run(cli_store: &Option<PathBuf>, a: JobArgs) -> Result<()> {
    if cli_store.is_some() {
        eprintln!("hoard: note: --store (HOARD_STORE) is not used by `hoard job`: a job names its own store");
    }
    let dir = &a.jobs_dir;
    match a.command {
        JobCommand::Run { name, wait, json } => run::run(&load(dir, &name)?.0, wait, json),
        JobCommand::List { json } => list(dir, json),
        JobCommand::Show { name, json } => {
            let (job, next) = load(dir, &name)?;
            show(&job, next, json)
        }
        JobCommand::Check { names } => check(dir, &names),
        JobCommand::Install {
            name,
            unit_dir,
            no_enable,
        } => {
            let (job, next) = load(dir, &name)?;
            systemd::install(&job, next, &unit_dir, !no_enable)
        }
        JobCommand::Uninstall { name, unit_dir } => systemd::uninstall(&name, &unit_dir),
    }
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
            Ok((job, _)) => println!("ok      {} ({})", name, job.path.display()),
            Err(e) => {
                bad += 1;
                println!("invalid {}", crate::error_chain(&e));
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} job files are invalid", all.len());
    }
    Ok(())
}

fn list(dir: &Path, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in names(dir)? {
        let row = match load(dir, &name) {
            Ok((job, next)) => json!({
                "name": name,
                "store": job.store,
                "schedule": job.schedule.as_ref().map(|s| &s.value),
                "next": next,
                "guests": plan::describe(&job).len(),
            }),
            Err(e) => json!({"name": name, "error": crate::error_chain(&e)}),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:20} {:24} {:28} STORE", "JOB", "SCHEDULE", "NEXT RUN");
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        match r.get("error") {
            Some(e) => println!("{:20} invalid: {}", s("name"), e.as_str().unwrap_or("")),
            None => println!(
                "{:20} {:24} {:28} {}",
                s("name"),
                s("schedule"),
                s("next"),
                s("store")
            ),
        }
    }
    Ok(())
}

fn show(job: &Job, next: Option<String>, json: bool) -> Result<()> {
    let guests = plan::describe(job);
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
            "guests": guests,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("job       {} ({})", job.name, job.path.display());
    println!("store     {}", job.store);
    match &job.schedule {
        Some(s) => println!(
            "schedule  {} (next run {})",
            s.value,
            next.as_deref().unwrap_or("?")
        ),
        None => println!("schedule  none (run by hand with `hoard job run {}`)", job.name),
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
    for g in guests {
        println!("guest     {:20} {:9} {}", g.label, g.mode, g.source);
    }
    Ok(())
}
