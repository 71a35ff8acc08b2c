//! `hoard notes TARGET [--set TEXT | --file FILE | --clear]`: what a user
//! wrote about a snapshot or a group, as PBS keeps both.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hoard_engine::{Catalogue, NotesOf, SealedText, SnapshotRef};
use serde_json::json;

/// Read or write the notes of a snapshot or a group.
///
/// Without --set, --file or --clear, prints them. Notes are kept beside
/// the snapshot (not in its manifest, so they can change); in an
/// encrypted store they are sealed with its key.
#[derive(Args)]
pub(crate) struct Notes {
    /// KIND/ID for the group's notes; KIND/ID/TIME or KIND/ID/latest for a
    /// snapshot's.
    target: String,
    /// Replace the notes with TEXT.
    #[arg(long, value_name = "TEXT", group = "change")]
    set: Option<String>,
    /// Replace the notes with FILE's text (`-`: standard input).
    #[arg(long, value_name = "FILE", group = "change")]
    file: Option<PathBuf>,
    /// Remove the notes.
    #[arg(long, group = "change")]
    clear: bool,
    /// Print {"target": ..., "notes": TEXT or null, "state": ...}.
    #[arg(long)]
    json: bool,
}

/// What TARGET names: a bare `KIND/ID` is the group here (elsewhere it
/// means the group's newest snapshot).
fn target(catalog: &dyn Catalogue, target: &str) -> Result<NotesOf> {
    let group = target.trim_end_matches('/').matches('/').count() == 1;
    match target.parse::<SnapshotRef>()? {
        SnapshotRef::Newest { kind, id } if group => Ok(NotesOf::Group(kind, id)),
        _ => Ok(NotesOf::Snapshot(catalog.find(target)?)),
    }
}

/// A stored note as a reader sees it: the text, or why it is not shown.
pub(crate) fn shown(notes: &Option<SealedText>) -> (Option<&str>, Option<&'static str>) {
    match notes {
        None => (None, None),
        Some(SealedText::Text(t)) => (Some(t), Some("text")),
        Some(SealedText::Sealed) => (None, Some("sealed")),
        Some(SealedText::Damaged) => (None, Some("damaged")),
        Some(SealedText::Unsealed) => (None, Some("unsealed")),
    }
}

impl Notes {
    pub(crate) fn changes(&self) -> bool {
        self.set.is_some() || self.file.is_some() || self.clear
    }
}

pub(crate) fn run(catalog: &dyn Catalogue, a: Notes) -> Result<()> {
    let of = target(catalog, &a.target)?;
    let text = match (&a.set, &a.file) {
        (Some(t), _) => Some(t.clone()),
        (_, Some(f)) if f.as_os_str() == "-" => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .context("reading notes from standard input")?;
            Some(t)
        }
        (_, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading notes from {}", f.display()))?)
        }
        _ if a.clear => Some(String::new()),
        _ => None,
    };
    if let Some(text) = text {
        catalog.set_notes(&of, &text)?;
        if !a.json {
            eprintln!(
                "notes of {of} {}",
                if text.is_empty() { "removed" } else { "set" }
            );
            return Ok(());
        }
    }
    let notes = catalog.notes(&of);
    let (text, state) = shown(&notes);
    if a.json {
        crate::output::print_json(json!({"target": of.to_string(), "notes": text, "state": state}))?;
        return Ok(());
    }
    match (text, state) {
        (Some(t), _) => print!("{t}{}", if t.ends_with('\n') { "" } else { "\n" }),
        (None, Some("sealed")) => eprintln!("hoard: the notes of {of} are sealed: give the key to read them (HOARD_PASSWORD_FILE, --keyfile, ...)"),
        (None, Some(why)) => eprintln!("hoard: the notes of {of} are {why}: not shown"),
        (None, None) => eprintln!("hoard: {of} has no notes"),
    }
    Ok(())
}
