//! Scheduling with systemd: a job's schedule and delay checked by systemd
//! itself (`systemd-analyze calendar` / `timespan`, so what hoard accepts is
//! exactly what the timer will run), and its `hoard-job@NAME.service` and
//! `.timer` units written, enabled and removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use hoard_engine::{job_file::Job, job_file::JobFileError, job_file::Located};

/// Checks the job's schedule and randomized delay with systemd-analyze; an
/// error names the file and line. Returns when the timer fires next
/// (systemd's `Next elapse`), if the job is scheduled.
pub(crate) fn check_times(job: &Job) -> Result<Option<String>> {
    let invalid = |l: &Located<String>, field: &str, message: String| JobFileError::Invalid {
        path: job.path.clone(),
        line: l.line,
        field: field.into(),
        message,
    };
    let next = match &job.schedule {
        Some(s) => {
            let out =
                analyze(&["calendar", &s.value]).map_err(|e| invalid(s, "schedule", format!("{e:#}")))?;
            out.lines()
                .find_map(|l| l.trim().strip_prefix("Next elapse:"))
                .map(|t| t.trim().to_string())
        }
        None => None,
    };
    if let Some(d) = &job.randomized_delay {
        if job.schedule.is_none() {
            return Err(invalid(
                d,
                "randomized-delay",
                "applies to a schedule; give schedule".into(),
            )
            .into());
        }
        analyze(&["timespan", &d.value]).map_err(|e| invalid(d, "randomized-delay", format!("{e:#}")))?;
    }
    Ok(next)
}

fn analyze(args: &[&str]) -> Result<String> {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .context("running systemd-analyze (schedules are systemd calendar events; install systemd)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("systemd does not accept {:?}: {}", args[1], err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn unit_names(name: &str) -> (String, String) {
    (
        format!("hoard-job@{name}.service"),
        format!("hoard-job@{name}.timer"),
    )
}

/// The two units of a job. ExecStart names this binary and the job's
/// directory, so the units run what `hoard job run` would run now.
pub(crate) fn units(job: &Job, exe: &Path) -> Result<(String, String)> {
    let Some(schedule) = &job.schedule else {
        bail!(
            "job {} has no schedule ({}): add `schedule = \"*-*-* 02:00\"` (a systemd calendar event)",
            job.name,
            job.path.display()
        );
    };
    let dir = job.path.parent().unwrap_or(Path::new("."));
    let exe = std::path::absolute(exe)?;
    let dir = std::path::absolute(dir)?;
    for p in [&exe, &dir] {
        // systemd splits ExecStart at spaces and expands % and $.
        if p.to_string_lossy()
            .contains([' ', '%', '$', '"', '\'', '\\', '\n'])
        {
            bail!(
                "{}: a path with spaces, quotes, % or $ cannot go into a unit",
                p.display()
            );
        }
    }
    // The packaged template, for this job and this binary.
    let template = include_str!("../../../packaging/hoard-job@.service");
    let body = template
        .split_once("[Unit]")
        .map_or(template, |(_, rest)| rest)
        .replace(
            "ExecStart=/usr/bin/hoard job run %i",
            &format!(
                "ExecStart={} job run --jobs-dir {} %i",
                exe.display(),
                dir.display()
            ),
        )
        .replace("%i", &job.name);
    let service = format!(
        "# Written by `hoard job install {name}`; `hoard job uninstall {name}` removes it.\n[Unit]{body}",
        name = job.name
    );
    let mut timer = format!(
        "# Written by `hoard job install {name}`; `hoard job uninstall {name}` removes it.\n\
         [Unit]\n\
         Description=hoard backup job {name} ({schedule})\n\
         Documentation=man:hoard-job(1)\n\
         \n\
         [Timer]\n\
         OnCalendar={schedule}\n\
         Persistent=true\n",
        name = job.name,
        schedule = schedule.value
    );
    if let Some(d) = &job.randomized_delay {
        timer.push_str(&format!("RandomizedDelaySec={}\n", d.value));
    }
    timer.push_str("\n[Install]\nWantedBy=timers.target\n");
    Ok((service, timer))
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the job's units; with `enable`, enables (and where systemd runs,
/// starts) the timer, which fires next at `next`.
pub(crate) fn install(
    job: &Job,
    next: Option<String>,
    exe: &Path,
    unit_dir: &Path,
    enable: bool,
) -> Result<()> {
    let (service, timer) = units(job, exe)?;
    let (service_name, timer_name) = unit_names(&job.name);
    std::fs::create_dir_all(unit_dir).with_context(|| format!("unit directory {}", unit_dir.display()))?;
    for (name, text) in [(&service_name, &service), (&timer_name, &timer)] {
        write_unit(&unit_dir.join(name), text)?;
        println!("wrote {}", unit_dir.join(name).display());
    }
    if !enable {
        return Ok(());
    }
    // What `systemctl enable` does for WantedBy=timers.target, done here so
    // that it works the same with any --unit-dir and without a running
    // systemd (a chroot, an image being built).
    let wants = unit_dir.join("timers.target.wants");
    std::fs::create_dir_all(&wants).with_context(|| format!("{}", wants.display()))?;
    let link = wants.join(&timer_name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(unit_dir.join(&timer_name), &link)
        .with_context(|| format!("enabling: {}", link.display()))?;
    println!("enabled {timer_name}");
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["restart", &timer_name])?;
        println!("started {timer_name}; next run {}", next.unwrap_or_default());
    } else {
        eprintln!("hoard: note: systemd is not running here; the timer starts at the next boot");
    }
    Ok(())
}

pub(crate) fn uninstall(name: &str, unit_dir: &Path) -> Result<()> {
    if !hoard_engine::job_file::valid_job_name(name) {
        bail!("{name:?} is not a job name");
    }
    let (service_name, timer_name) = unit_names(name);
    let paths: Vec<PathBuf> = vec![
        unit_dir.join("timers.target.wants").join(&timer_name),
        unit_dir.join(&timer_name),
        unit_dir.join(&service_name),
    ];
    if !paths.iter().any(|p| p.symlink_metadata().is_ok()) {
        bail!("job {name} is not installed in {}", unit_dir.display());
    }
    if systemd_running() {
        // A timer that is not loaded is fine: it is being removed anyway.
        let _ = systemctl(&["stop", &timer_name]);
    }
    for p in &paths {
        match std::fs::remove_file(p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if systemd_running() {
        systemctl(&["daemon-reload"])?;
    }
    Ok(())
}

/// Writes a unit file whole (temporary file, rename): systemd never reads
/// half of one.
fn write_unit(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp-hoard");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
