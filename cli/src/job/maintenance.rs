//! A job's `[maintenance]`: what a run does for its store after the
//! guests, each step a child `hoard` as a backup is (prune over every
//! group, gc, verify of what is not verified lately), in that order: gc
//! frees what prune removed, verify reads what is left.

use std::ffi::OsString;
use std::time::Instant;

use hoard_engine::{job_file::Job, signals};
use serde_json::Value;

use super::run::{close, failed, Children, Log};
use super::summary::Outcome;
use crate::argv::{command, line};
use crate::maintenance::{Gc, Prune, Verify};

pub(crate) fn run(job: &Job, children: &Children) -> Vec<Outcome> {
    let Some(m) = &job.maintenance else {
        return Vec::new();
    };
    // Each step is the user's command, typed (see `argv`).
    let mut steps: Vec<(&str, Vec<OsString>)> = Vec::new();
    if m.prune {
        let mut a: Prune = command("prune");
        if let Some(k) = &job.keep {
            a.keep_last = k.last;
            a.keep_hourly = k.hourly;
            a.keep_daily = k.daily;
            a.keep_weekly = k.weekly;
            a.keep_monthly = k.monthly;
            a.keep_yearly = k.yearly;
        }
        a.json = true;
        steps.push(("prune", line("prune", &a)));
    }
    if m.gc {
        let mut a: Gc = command("gc");
        a.json = true;
        steps.push(("gc", line("gc", &a)));
    }
    if m.verify {
        let mut a: Verify = command("verify");
        a.ignore_verified = true;
        a.outdated_after = Some(m.verify_outdated_after.into());
        a.json = true;
        steps.push(("verify", line("verify", &a)));
    }
    let mut done = Vec::new();
    for (what, args) in steps {
        let mut outcome = Outcome::named(&format!("store {what}"), what);
        if signals::pending() {
            outcome.error = Some("not started: the job was interrupted".into());
            done.push(outcome);
            continue;
        }
        let clock = Instant::now();
        let log = Log::default();
        log.line(&format!("job {}: {what} of store {}", job.name, job.store));
        match children.run(&args, &format!("store {what}"), &log, None) {
            Ok((status, report)) => {
                outcome.status = status;
                log.line(&describe(what, &report));
            }
            Err(e) => failed(&mut outcome, &log, &e),
        }
        close(&mut outcome, clock, &log);
        eprintln!("hoard: store {what}: {}", outcome.status.as_str());
        done.push(outcome);
    }
    done
}

/// One line of what a step's JSON report says.
fn describe(what: &str, r: &Value) -> String {
    let n = |key: &str| r[key].as_u64().unwrap_or(0);
    match what {
        "prune" => format!("prune: kept {}, removed {}", n("kept"), n("removed")),
        "gc" => format!(
            "gc: {} chunks removed, {} packs deleted; {} condemned chunks ({} bytes) go at the next gc",
            n("chunks_removed"),
            n("packs_deleted"),
            n("chunks_pending"),
            n("bytes_pending")
        ),
        _ => {
            let len = |key: &str| r[key].as_array().map_or(0, Vec::len);
            format!(
                "verify: {} snapshots verified, {} skipped (verified lately), {} failed",
                len("snapshots_verified"),
                len("snapshots_skipped"),
                len("snapshots_failed")
            )
        }
    }
}
