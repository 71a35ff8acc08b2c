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

pub(crate) fn run(job: &Job, children: &Children) -> Vec<Outcome> {
    let Some(m) = &job.maintenance else {
        return Vec::new();
    };
    let mut steps: Vec<(&str, Vec<String>)> = Vec::new();
    if m.prune {
        let mut args = vec!["prune".to_string()];
        if let Some(k) = &job.keep {
            for (flag, n) in [
                ("--keep-last", k.last),
                ("--keep-hourly", k.hourly),
                ("--keep-daily", k.daily),
                ("--keep-weekly", k.weekly),
                ("--keep-monthly", k.monthly),
                ("--keep-yearly", k.yearly),
            ] {
                if let Some(n) = n {
                    args.extend([flag.to_string(), n.to_string()]);
                }
            }
        }
        steps.push(("prune", args));
    }
    if m.gc {
        steps.push(("gc", vec!["gc".into()]));
    }
    if m.verify {
        steps.push((
            "verify",
            vec![
                "verify".into(),
                "--ignore-verified".into(),
                "--outdated-after".into(),
                m.verify_outdated_after.to_string(),
            ],
        ));
    }
    let mut done = Vec::new();
    for (what, mut args) in steps {
        let mut outcome = Outcome::named(&format!("store {what}"), what);
        if signals::pending() {
            outcome.error = Some("not started: the job was interrupted".into());
            done.push(outcome);
            continue;
        }
        args.push("--json".into());
        let clock = Instant::now();
        let log = Log::default();
        log.line(&format!("job {}: {what} of store {}", job.name, job.store));
        let args: Vec<OsString> = args.into_iter().map(OsString::from).collect();
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
