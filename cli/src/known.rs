//! This host's memory of the stores it uses (engine `store::known_stores`):
//! checked on every open, moved forward after each authenticated look,
//! and `hoard known-stores` to show or forget it.

use anyhow::Result;
use clap::Subcommand;
use hoard_engine::{
    known_stores, known_stores::default_state_dir, known_stores::KnownStores, Protection, SnapshotName, Store,
};

fn memory() -> KnownStores {
    KnownStores::new(&default_state_dir())
}

/// What a failed write of the memory costs: a warning, not the run. The
/// memory only ever adds checks; a host that cannot keep it (a read-only
/// home) works as a new host would.
fn warn_unwritable(r: Result<(), hoard_engine::StoreError>) {
    if let Err(e) = r {
        eprintln!("hoard: warning: cannot update this host's memory of the store: {e}");
    }
}

/// Fails if the store is not the one this host remembers at its location
/// (uuid, protection mode, key).
pub(crate) fn check(store: &Store) -> Result<()> {
    match memory().check(store) {
        Err(e @ hoard_engine::StoreError::StoreChanged { .. }) => Err(e.into()),
        // A memory this user cannot read (another user's HOME) or that is
        // damaged: this run works as a new host would, and says why.
        Err(e) => {
            eprintln!("hoard: warning: cannot read this host's memory of the store: {e}");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Whether what this run knows of the store is authenticated: a plain
/// store (nothing to authenticate), or a protected one unlocked, whose
/// config MAC and manifests' MACs checked. Only then is a store new here
/// remembered, and the memory moved forward.
fn authenticated(store: &Store) -> bool {
    store.protection() == Protection::None || store.keys().is_some()
}

/// A store just made at its location: whatever was remembered there
/// before belonged to another store.
pub(crate) fn remember_new(store: &Store) {
    let known = memory();
    warn_unwritable(known.forget(&store.location()).map(drop));
    warn_unwritable(known.update(store, true, |_| {}));
}

/// Looks at the newest snapshot of each group: warns about newer ones that
/// do not count (planted, future-dated, failing their MAC) and about
/// remembered ones that are gone; moves the memory forward when what it
/// saw was authenticated (a plain store, or an unlocked one).
pub(crate) fn observe(store: &Store) -> Result<()> {
    let (newest, passed_over) = store.catalog().newest_counted()?;
    for r in &passed_over {
        eprintln!(
            "hoard: warning: {} does not count as a snapshot: {}",
            r.name, r.why
        );
    }
    let authenticated = authenticated(store);
    let mut warnings = Vec::new();
    warn_unwritable(memory().update(store, authenticated, |k| {
        warnings = known_stores::observe(k, &newest, authenticated);
    }));
    for w in warnings {
        eprintln!("hoard: warning: {w}");
    }
    Ok(())
}

/// This host forgot `name`: the memory's newest of its group moves back.
pub(crate) fn forgot(store: &Store, name: &SnapshotName) {
    let next = store.catalog().newest_counted().ok().and_then(|(newest, _)| {
        newest
            .into_iter()
            .find(|n| n.kind == name.kind && n.id == name.id)
    });
    warn_unwritable(memory().update(store, false, |k| known_stores::forgotten(k, name, next.as_ref())));
}

/// The key slot that opened the store last time, if remembered.
pub(crate) fn last_slot(store: &Store) -> Option<String> {
    memory().load(&store.location()).ok().flatten()?.last_slot
}

pub(crate) fn opened_with_slot(store: &Store, slot: &str) {
    warn_unwritable(memory().update(store, false, |k| k.last_slot = Some(slot.to_string())));
}

#[derive(Subcommand)]
pub(crate) enum KnownStoresCommand {
    /// Every store this host remembers: location, uuid, protection, key
    /// fingerprint and the newest snapshot of each group seen.
    List {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Forget a store (a directory or a bucket URL), after re-creating or
    /// re-keying it on purpose: the next use remembers it as it is then.
    Forget {
        /// The store: a directory or a bucket URL, as `list` shows it.
        location: String,
    },
}

pub(crate) fn run(command: KnownStoresCommand) -> Result<()> {
    let known = memory();
    match command {
        KnownStoresCommand::List { json } => {
            let all = known.list()?;
            if json {
                crate::output::print_json(serde_json::json!({"stores": all}))?;
                return Ok(());
            }
            for k in &all {
                println!(
                    "{}  uuid {}  {}{}  since {}",
                    k.location,
                    k.uuid,
                    k.encryption,
                    k.key_fingerprint
                        .as_deref()
                        .map_or(String::new(), |f| format!(" (key {f})")),
                    k.first_seen
                );
                for (group, time) in &k.newest {
                    println!("  newest {group}/{time}");
                }
            }
            if all.is_empty() {
                println!(
                    "no stores remembered (in {})",
                    default_state_dir().join("stores").display()
                );
            }
            Ok(())
        }
        KnownStoresCommand::Forget { location } => {
            let location = match std::fs::canonicalize(&location) {
                Ok(p) if !hoard_engine::is_url(&location) => p.display().to_string(),
                _ => location.trim_end_matches('/').to_string(),
            };
            if known.forget(&location)? {
                println!("forgot store {location}: its next use is remembered as it is then");
            } else {
                println!("this host remembers no store at {location}");
            }
            Ok(())
        }
    }
}
