//! What a job run tells: one outcome per guest, the summary table, and the
//! JSON document that `--json` prints and the webhook receives.

use std::time::SystemTime;

use hoard_engine::job_file::Job;
use serde::Serialize;
use serde_json::{json, Value};

use super::plan::Task;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Backed up (and retention applied).
    Ok,
    /// Backed up, but not all of it could be read, or retention failed.
    Warning,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "failed",
        }
    }
}

/// How one guest's backup went.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Outcome {
    pub guest: String,
    pub mode: String,
    pub status: Status,
    pub duration_secs: f64,
    pub snapshot: Option<String>,
    pub bytes_read: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    /// How long the guest did not run (VMs and containers).
    pub downtime_secs: Option<f64>,
    /// Snapshots of its group that retention removed.
    pub pruned: u64,
    pub error: Option<String>,
    pub log: String,
}

impl Outcome {
    pub fn new(task: &Task) -> Outcome {
        Outcome::named(&task.label, &task.mode)
    }

    /// An outcome of `guest` in `mode` before it ran: failed until it has.
    pub fn named(guest: &str, mode: &str) -> Outcome {
        Outcome {
            guest: guest.into(),
            mode: mode.into(),
            status: Status::Failed,
            duration_secs: 0.0,
            snapshot: None,
            bytes_read: 0,
            new_bytes: 0,
            stored_bytes: 0,
            downtime_secs: None,
            pruned: 0,
            error: None,
            log: String::new(),
        }
    }

    /// Takes the figures of a backup command's JSON report.
    pub fn record(&mut self, report: &Value) {
        self.snapshot = report["snapshot"].as_str().map(String::from);
        let archives = report["archives"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let sum = |key: &str| {
            archives
                .iter()
                .filter_map(|a| a["stats"][key].as_u64())
                .sum::<u64>()
        };
        self.bytes_read = sum("bytes_read");
        self.new_bytes = sum("new_bytes");
        self.stored_bytes = sum("stored_bytes");
        self.downtime_secs = report["vm"]["downtime_secs"]
            .as_f64()
            .or_else(|| report["ct"]["downtime_secs"].as_f64());
    }

    /// The log lines of a finished backup: its snapshot, figures, and what
    /// the mode did to each disk or volume.
    pub fn describe(&self, report: &Value) -> String {
        let mut text = format!(
            "snapshot {}: {:.1} MiB read, {:.1} MiB new, {:.1} MiB stored{}",
            self.snapshot.as_deref().unwrap_or("?"),
            self.bytes_read as f64 / MIB,
            self.new_bytes as f64 / MIB,
            self.stored_bytes as f64 / MIB,
            self.downtime_secs
                .map_or(String::new(), |d| format!(", downtime {d:.3} s"))
        );
        for d in report["disks"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  {} (node {}): {}",
                d["archive"].as_str().unwrap_or("?"),
                d["node"].as_str().unwrap_or("?"),
                d["bitmap"].as_str().unwrap_or("?")
            ));
        }
        let ct = &report["ct"];
        for v in ct["volumes"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  {} <- {} ({})",
                v["archive"].as_str().unwrap_or("?"),
                v["mount_point"].as_str().unwrap_or("?"),
                v["source"].as_str().unwrap_or("?")
            ));
        }
        for s in ct["skipped_mounts"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  skipped {} ({}): {}",
                s["mount_point"].as_str().unwrap_or("?"),
                s["source"].as_str().unwrap_or("?"),
                s["why"].as_str().unwrap_or("?")
            ));
        }
        text
    }
}

pub(crate) struct Summary {
    pub job: String,
    pub store: String,
    pub started: SystemTime,
    pub duration_secs: f64,
    pub guests: Vec<Outcome>,
    /// The steps of `[maintenance]`: prune, gc, verify of the store.
    pub maintenance: Vec<Outcome>,
}

impl Summary {
    pub fn new(
        job: &Job,
        started: SystemTime,
        duration_secs: f64,
        guests: Vec<Outcome>,
        maintenance: Vec<Outcome>,
    ) -> Summary {
        Summary {
            job: job.name.clone(),
            store: job.store.clone(),
            started,
            duration_secs,
            guests,
            maintenance,
        }
    }

    /// Every outcome: the guests', then the store's steps.
    pub fn all(&self) -> impl Iterator<Item = &Outcome> {
        self.guests.iter().chain(&self.maintenance)
    }

    fn count(&self, status: Status) -> usize {
        self.all().filter(|g| g.status == status).count()
    }

    /// `ok` (every guest backed up in full, every store step done),
    /// `partial` (some), `failed` (none).
    pub fn status(&self) -> &'static str {
        let failed = self.count(Status::Failed);
        if failed == self.all().count() {
            "failed"
        } else if failed == 0 && self.count(Status::Warning) == 0 {
            "ok"
        } else {
            "partial"
        }
    }

    /// "3 of 4 guests backed up, 1 failed (vm/100); store: prune ok, gc ok".
    pub fn headline(&self) -> String {
        let failed: Vec<&str> = self
            .guests
            .iter()
            .filter(|g| g.status == Status::Failed)
            .map(|g| g.guest.as_str())
            .collect();
        let warned = self.guests.iter().filter(|g| g.status == Status::Warning).count();
        let mut text = String::new();
        if !self.guests.is_empty() {
            text = format!(
                "{} of {} guests backed up",
                self.guests.len() - failed.len(),
                self.guests.len()
            );
            if warned > 0 {
                text.push_str(&format!(", {warned} with warnings"));
            }
            if !failed.is_empty() {
                text.push_str(&format!(", {} failed ({})", failed.len(), failed.join(", ")));
            }
        }
        if !self.maintenance.is_empty() {
            let steps: Vec<String> = self
                .maintenance
                .iter()
                .map(|m| format!("{} {}", m.mode, m.status.as_str()))
                .collect();
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&format!("store: {}", steps.join(", ")));
        }
        text
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "job {}: {} in {}\n{:<24} {:<9} {:<8} {:>9} {:>11} {:>11} {:>11} {:>10}\n",
            self.job,
            self.headline(),
            duration(self.duration_secs),
            "GUEST",
            "MODE",
            "STATUS",
            "DURATION",
            "READ",
            "NEW",
            "STORED",
            "DOWNTIME"
        );
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
        for g in self.all() {
            t.push_str(&format!(
                "{:<24} {:<9} {:<8} {:>9} {:>11} {:>11} {:>11} {:>10}\n",
                g.guest,
                g.mode,
                g.status.as_str(),
                duration(g.duration_secs),
                mib(g.bytes_read),
                mib(g.new_bytes),
                mib(g.stored_bytes),
                g.downtime_secs.map_or("-".into(), |d| format!("{d:.3} s"))
            ));
            if let Some(e) = &g.error {
                t.push_str(&format!("  {}: {e}\n", g.guest));
            }
        }
        t
    }

    pub fn to_json(&self) -> Value {
        json!({
            "job": self.job,
            "host": hoard_engine::host_name(),
            "store": self.store,
            "started": humantime::format_rfc3339_seconds(self.started).to_string(),
            "duration_secs": self.duration_secs,
            "status": self.status(),
            "summary": self.headline(),
            "guests": self.guests,
            "maintenance": self.maintenance,
        })
    }
}

fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let s = secs.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
