//! `hoard snapshots [GROUP|SNAPSHOT ...]`: what each snapshot holds, what it
//! added, whether it is protected, when it was verified and how its job
//! ended; a table for people, `--json` for scripts.

use anyhow::Result;
use hoard_engine::{
    ArchiveEntry, Catalogue, Manifest, NotesOf, Protected, Repository, SealedText, SnapshotName, SnapshotRef,
};
use serde_json::{json, Value};

use crate::output::iec;

/// List snapshots, each with its size (an image's bytes, a tree's
/// files' bytes), the bytes it added, protection, last verification and
/// how its job ended: with a key source, only those whose manifest passes
/// its MAC; none dated more than 15 minutes ahead. The others are named
/// on stderr ("does not count as a snapshot").
#[derive(clap::Args)]
pub(crate) struct Snapshots {
    /// Only these groups (KIND/ID, e.g. vm/100) or snapshots
    /// (KIND/ID/TIME).
    #[arg(value_name = "GROUP")]
    pub(crate) groups: Vec<String>,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Show a snapshot's archives, sizes and chunk counts, and the log of
/// the job run that made it (`hoard job run`).
#[derive(clap::Args)]
pub(crate) struct Show {
    /// KIND/ID/TIME, or KIND/ID for the newest of that group.
    pub(crate) snapshot: String,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

/// An archive's chunks: a tree's two streams together.
pub(crate) fn chunk_count(a: &ArchiveEntry) -> u64 {
    a.chunk_count + a.payload.as_ref().map_or(0, |p| p.chunk_count)
}

/// How the job that made a snapshot ended, from its stored log (the last
/// line: `TIME ok in 12.3 s`); None for a snapshot no job made.
fn job_outcome(log: Option<SealedText>) -> Option<&'static str> {
    let Some(SealedText::Text(text)) = log else {
        return None;
    };
    let last = text.lines().last()?;
    ["ok", "warning", "failed"]
        .into_iter()
        .find(|s| last.contains(&format!(" {s} in ")))
}

/// Which snapshots GROUP (KIND/ID) and SNAPSHOT (KIND/ID/TIME) arguments
/// name; none: all.
pub(crate) fn matcher(refs: &[String]) -> Result<impl Fn(&SnapshotName) -> bool> {
    let refs = refs
        .iter()
        .map(|r| r.parse::<SnapshotRef>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(move |n: &SnapshotName| {
        refs.is_empty()
            || refs.iter().any(|r| match r {
                SnapshotRef::Exact(e) => e == n,
                SnapshotRef::Newest { kind, id } => n.kind == *kind && n.id == *id,
            })
    })
}

/// The snapshots that count (catalog's `authentic`), each of the others
/// named on stderr with why.
pub(crate) fn counted(catalog: &dyn Catalogue) -> Result<Vec<SnapshotName>> {
    let (names, rejected) = catalog.authentic()?;
    for r in &rejected {
        eprintln!(
            "hoard: warning: {} does not count as a snapshot: {}",
            r.name, r.why
        );
    }
    Ok(names)
}

pub(crate) fn snapshots(store: &dyn Repository, refs: &[String], json: bool) -> Result<()> {
    let catalog = store.catalogue();
    let names = counted(catalog)?;
    let wanted = matcher(refs)?;
    let mut rows = Vec::new();
    for n in names.iter().filter(|n| wanted(n)) {
        let m: Manifest = catalog.load_manifest(n)?;
        let protected = catalog.protection(n);
        if let Protected::Ignored(why) = &protected {
            eprintln!("hoard: warning: {n}: {why}");
        }
        let verify = catalog.verify_state(n);
        rows.push(json!({
            "snapshot": n.to_string(),
            "kind": n.kind, "id": n.id, "time": n.time,
            "archives": m.archives.iter().map(|a| json!({
                "name": a.name,
                "type": a.archive_type,
                "size": a.logical_size(),
            })).collect::<Vec<_>>(),
            "size": m.archives.iter().map(ArchiveEntry::logical_size).sum::<u64>(),
            "new_bytes": m.archives.iter().map(|a| a.stats.new_bytes).sum::<u64>(),
            "protected": protected == Protected::Yes,
            "verify": verify.map(|v| json!({"state": v.state, "time": v.time})),
            "job": job_outcome(catalog.task_log(n)),
            "notes": crate::notes::shown(&catalog.notes(&NotesOf::Snapshot(n.clone()))).0,
        }));
    }
    if json {
        return crate::output::print_json(json!({"snapshots": rows}));
    }
    if rows.is_empty() {
        eprintln!(
            "hoard: no snapshot{}",
            if refs.is_empty() { "" } else { " of those" }
        );
        return Ok(());
    }
    println!(
        "{:<34} {:>10} {:>10}  {:<9} {:<26} {:<8} ARCHIVES",
        "SNAPSHOT", "SIZE", "NEW", "PROTECTED", "VERIFIED", "JOB"
    );
    for r in &rows {
        let verified = match &r["verify"] {
            Value::Null => "never".to_string(),
            v => format!(
                "{} {}",
                v["state"].as_str().unwrap_or("?"),
                v["time"].as_str().unwrap_or("")
            ),
        };
        let archives: Vec<&str> = r["archives"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["name"].as_str())
            .collect();
        println!(
            "{:<34} {:>10} {:>10}  {:<9} {:<26} {:<8} {}",
            r["snapshot"].as_str().unwrap_or(""),
            iec(r["size"].as_u64().unwrap_or(0)),
            iec(r["new_bytes"].as_u64().unwrap_or(0)),
            if r["protected"] == true { "yes" } else { "no" },
            verified,
            r["job"].as_str().unwrap_or("-"),
            archives.join(", ")
        );
    }
    Ok(())
}

/// `hoard show SNAPSHOT`: the manifest, its protection, verification,
/// notes (the snapshot's and its group's) and the log of the job run.
pub(crate) fn show(store: &dyn Repository, snapshot: &str, json: bool) -> Result<()> {
    let catalog = store.catalogue();
    let name = catalog.find(snapshot)?;
    let m = catalog.load_manifest(&name)?;
    let state = catalog.verify_state(&name);
    let log = catalog.task_log(&name);
    let notes = catalog.notes(&NotesOf::Snapshot(name.clone()));
    let group_notes = catalog.notes(&NotesOf::Group(name.kind, name.id.clone()));
    let protected = catalog.protection(&name);
    if let Protected::Ignored(why) = &protected {
        eprintln!("hoard: warning: {name}: {why}");
    }
    let protected = protected == Protected::Yes;
    if json {
        let mut v = serde_json::to_value(&m)?;
        v["snapshot"] = json!(name.to_string());
        v["protected"] = json!(protected);
        v["verify"] = serde_json::to_value(&state)?;
        for (key, text) in [("log", &log), ("notes", &notes), ("group_notes", &group_notes)] {
            let (text, state) = crate::notes::shown(text);
            v[key] = json!(text);
            v[format!("{key}_state")] = json!(state);
        }
        return crate::output::print_json(v);
    }
    crate::output::print_show(&m, state, protected);
    for (what, text) in [
        ("notes", &notes),
        ("group notes", &group_notes),
        ("log of the job run that made it", &log),
    ] {
        match crate::notes::shown(text) {
            (Some(t), _) => {
                println!("{what}:");
                for line in t.lines() {
                    println!("  {line}");
                }
            }
            (None, Some("sealed")) => println!("{what}: sealed (an encrypted store's): give the key to read them (HOARD_PASSWORD_FILE, --keyfile, ...)"),
            (None, Some("damaged")) => println!("{what}: damaged: they do not open with this store's key"),
            (None, Some(_)) => println!("{what}: not shown: plain text, but this store seals them (not written by hoard)"),
            (None, None) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_outcome_is_the_logs_last_word() {
        let log = |t: &str| Some(SealedText::Text(t.into()));
        assert_eq!(
            job_outcome(log("x\n2026-12-07T02:00:09Z ok in 9.1 s\n")),
            Some("ok")
        );
        assert_eq!(
            job_outcome(log("2026-12-07T02:00:09Z warning in 1.0 s")),
            Some("warning")
        );
        assert_eq!(job_outcome(log("")), None);
        assert_eq!(job_outcome(None), None);
    }
}
