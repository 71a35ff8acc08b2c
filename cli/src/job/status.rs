//! What `job list` and `job show` say about a job beyond its file: whether
//! its timer is installed and enabled, and how its last run ended (kept in
//! the state directory by `job run`).

use std::path::{Path, PathBuf};

use hoard_engine::job_file::Job;
use serde::{Deserialize, Serialize};

use super::systemd::unit_names;

/// A job's timer in a unit directory.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Timer {
    pub installed: bool,
    pub enabled: bool,
}

impl Timer {
    pub fn of(job: &str, unit_dir: &Path) -> Timer {
        let (_, timer) = unit_names(job);
        Timer {
            installed: unit_dir.join(&timer).exists(),
            enabled: unit_dir.join("timers.target.wants").join(&timer).exists(),
        }
    }

    pub fn describe(self) -> &'static str {
        match (self.installed, self.enabled) {
            (true, true) => "enabled",
            (true, false) => "installed, not enabled",
            _ => "not installed",
        }
    }
}

/// How a job's last run ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LastRun {
    pub time: String,
    pub status: String,
    pub duration_secs: f64,
}

fn last_run_file(job: &str) -> PathBuf {
    hoard_engine::known_stores::default_state_dir()
        .join("jobs")
        .join(format!("{job}.last.json"))
}

impl LastRun {
    pub fn load(job: &str) -> Option<LastRun> {
        serde_json::from_slice(&std::fs::read(last_run_file(job)).ok()?).ok()
    }

    /// Records a run; a failure to record is a warning, not the run's.
    pub fn save(job: &Job, last: &LastRun) {
        let path = last_run_file(&job.name);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(last).expect("serialises"))?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            eprintln!("hoard: warning: cannot record the run in {}: {e}", path.display());
        }
    }
}

/// What a job's file cannot show by itself: paths it names that do not
/// exist here. Every one is listed (`job check` reports all of them).
pub(crate) fn missing_paths(job: &Job) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |what: &str, path: &Path, ok: bool| {
        if !ok {
            problems.push(format!("{what} {} does not exist", path.display()));
        }
    };
    if !hoard_engine::is_url(&job.store) && !job.create_store {
        let store = Path::new(&job.store);
        need("store", store, store.join("config.json").exists());
    }
    for (what, path) in [
        ("keyfile", &job.keyfile),
        ("password-file", &job.password_file),
        ("hook", &job.hook),
        ("aws-credentials-file", &job.aws_credentials_file),
    ] {
        if let Some(p) = path {
            need(what, p, p.exists());
        }
    }
    for i in &job.images {
        let p = &i.get_ref().path;
        need("image", p, p.exists());
    }
    for t in &job.trees {
        let p = &t.get_ref().path;
        need("tree", p, p.is_dir());
    }
    if let Some(v) = &job.vms {
        for g in &v.guests {
            let g = g.get_ref();
            need("QMP socket", &g.qmp, g.qmp.exists());
            for p in g.qga.iter().chain(&g.config) {
                need("file", p, p.exists());
            }
        }
        for d in &v.dirs {
            need("socket directory", d, d.is_dir());
        }
    }
    if let Some(c) = &job.containers {
        need("lxcpath", &c.lxcpath, c.lxcpath.is_dir());
        for g in &c.guests {
            let config = c.lxcpath.join(&g.get_ref().name).join("config");
            need("container config", &config, config.exists());
        }
    }
    if let Some(n) = job.notify.as_ref().filter(|n| !n.mailto.is_empty()) {
        let sendmail = n
            .sendmail
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/sendmail"));
        need("sendmail", &sendmail, sendmail.exists());
    }
    problems
}
