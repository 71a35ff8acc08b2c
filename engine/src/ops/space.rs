//! Space accounting: what each snapshot and group references, what only it
//! holds (what forgetting it, then gc, would free), and the store's
//! deduplication and compression factors. Computed from the index files
//! and the chunk index alone: no pack is read.
//!
//! Uniqueness is counted against every published snapshot, as gc counts
//! references, whichever snapshots are reported.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use serde::Serialize;

use crate::chunking::digest::{Digest, DigestHasher};
use crate::format::snapshot::{Manifest, SnapshotName};
use crate::store::{Repository, StoreError};

/// The chunks of a snapshot, a group or the store, and what they cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Space {
    /// What the archives hold: images' sizes (zeros included), trees'
    /// files' bytes.
    pub logical_bytes: u64,
    /// Uncompressed bytes of every chunk reference, repeats counted (zero
    /// chunks of images are never stored and not counted).
    pub referenced_bytes: u64,
    /// Distinct chunks referenced, their uncompressed and stored bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub stored_bytes: u64,
    /// Of those, the chunks nothing else references: what forgetting it
    /// (and the second gc after) frees.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    pub unique_stored_bytes: u64,
    /// Referenced chunks the chunk index does not list (a damaged store:
    /// `hoard check`, `hoard index rebuild`); their sizes are unknown.
    pub missing_chunks: u64,
}

impl Space {
    /// Logical bytes per stored byte: what deduplication, zero chunks and
    /// compression achieve together (PBS's deduplication factor is the
    /// same ratio); 0 when nothing is stored.
    pub fn saving_factor(&self) -> f64 {
        ratio(self.logical_bytes, self.stored_bytes)
    }

    /// Uncompressed bytes of distinct chunks per stored byte.
    pub fn compression_factor(&self) -> f64 {
        ratio(self.chunk_bytes, self.stored_bytes)
    }

    /// Referenced bytes per distinct chunk byte.
    pub fn dedup_factor(&self) -> f64 {
        ratio(self.referenced_bytes, self.chunk_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotSpace {
    pub snapshot: String,
    #[serde(flatten)]
    pub space: Space,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupSpace {
    pub group: String,
    #[serde(rename = "snapshot_count")]
    pub snapshots: u64,
    #[serde(flatten)]
    pub space: Space,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpaceReport {
    pub snapshots: Vec<SnapshotSpace>,
    pub groups: Vec<GroupSpace>,
    /// The whole store: every published snapshot.
    pub store: Space,
}

/// Who references one chunk, and its sizes from the chunk index.
#[derive(Clone, Copy)]
struct Refs {
    snapshots: u32,
    last_snapshot: u32,
    groups: u32,
    last_group: u32,
    /// None: not in the chunk index.
    len: Option<(u32, u32)>,
}

type RefMap = HashMap<Digest, Refs, BuildHasherDefault<DigestHasher>>;

/// Looked up in batches: one multi-get per this many new chunks.
const LOOKUP_BATCH: usize = 4096;

/// What every published snapshot references (the report lists those
/// `wanted` accepts; the store's total covers all of them).
pub fn space(store: &dyn Repository, wanted: impl Fn(&SnapshotName) -> bool) -> crate::Result<SpaceReport> {
    Ok(account(store, wanted)?)
}

fn account(
    store: &dyn Repository,
    wanted: impl Fn(&SnapshotName) -> bool,
) -> Result<SpaceReport, StoreError> {
    let catalog = store.catalogue();
    let mut names = catalog.list()?;
    names.sort_by(|a, b| (a.kind.as_str(), &a.id, &a.time).cmp(&(b.kind.as_str(), &b.id, &b.time)));
    let manifests = names
        .iter()
        .map(|n| catalog.load_manifest(n))
        .collect::<Result<Vec<Manifest>, _>>()?;

    // Pass 1: how many snapshots and groups reference each chunk.
    let mut refs = RefMap::default();
    let mut pending = Vec::new();
    let mut group = 0u32;
    for (i, (n, m)) in names.iter().zip(&manifests).enumerate() {
        if i > 0 && (names[i - 1].kind, &names[i - 1].id) != (n.kind, &n.id) {
            group += 1;
        }
        let snap = i as u32 + 1;
        catalog.for_each_chunk::<StoreError>(n, m, |_, _, d| {
            let r = refs.entry(d).or_insert_with(|| {
                pending.push(d);
                Refs {
                    snapshots: 0,
                    last_snapshot: 0,
                    groups: 0,
                    last_group: u32::MAX,
                    len: None,
                }
            });
            if r.last_snapshot != snap {
                r.last_snapshot = snap;
                r.snapshots += 1;
            }
            if r.last_group != group {
                r.last_group = group;
                r.groups += 1;
            }
            if pending.len() >= LOOKUP_BATCH {
                look_up(store, &mut refs, &mut pending)?;
            }
            Ok(())
        })?;
    }
    look_up(store, &mut refs, &mut pending)?;

    // Pass 2: each snapshot's and group's sums.
    let mut report = SpaceReport {
        snapshots: Vec::new(),
        groups: Vec::new(),
        store: Space::default(),
    };
    for r in refs.values() {
        add_chunk(&mut report.store, r, true);
    }
    let mut group_seen = RefSet::default();
    for (i, (n, m)) in names.iter().zip(&manifests).enumerate() {
        let logical = logical_bytes(m);
        report.store.logical_bytes += logical;
        let new_group = i == 0 || (names[i - 1].kind, &names[i - 1].id) != (n.kind, &n.id);
        if new_group {
            group_seen.clear();
            if wanted_group(&names, i, &wanted) {
                report.groups.push(GroupSpace {
                    group: format!("{}/{}", n.kind, n.id),
                    snapshots: 0,
                    space: Space::default(),
                });
            }
        }
        let mut seen = RefSet::default();
        let mut s = Space {
            logical_bytes: logical,
            ..Space::default()
        };
        let mut g = report
            .groups
            .last_mut()
            .filter(|g| g.group == format!("{}/{}", n.kind, n.id));
        if let Some(g) = g.as_mut() {
            g.snapshots += 1;
            g.space.logical_bytes += logical;
        }
        catalog.for_each_chunk::<StoreError>(n, m, |_, _, d| {
            let r = refs[&d];
            let raw = r.len.map_or(0, |(raw, _)| raw as u64);
            report.store.referenced_bytes += raw;
            s.referenced_bytes += raw;
            if seen.insert(d) {
                add_chunk(&mut s, &r, r.snapshots == 1);
            }
            if let Some(g) = g.as_mut() {
                g.space.referenced_bytes += raw;
                if group_seen.insert(d) {
                    add_chunk(&mut g.space, &r, r.groups == 1);
                }
            }
            Ok(())
        })?;
        if wanted(n) {
            report.snapshots.push(SnapshotSpace {
                snapshot: n.to_string(),
                space: s,
            });
        }
    }
    Ok(report)
}

type RefSet = std::collections::HashSet<Digest, BuildHasherDefault<DigestHasher>>;

/// Whether any snapshot of the group that starts at `names[i]` is wanted.
fn wanted_group(names: &[SnapshotName], i: usize, wanted: &impl Fn(&SnapshotName) -> bool) -> bool {
    names[i..]
        .iter()
        .take_while(|n| (n.kind, &n.id) == (names[i].kind, &names[i].id))
        .any(wanted)
}

fn add_chunk(s: &mut Space, r: &Refs, unique: bool) {
    let Some((raw, stored)) = r.len else {
        s.missing_chunks += 1;
        return;
    };
    s.chunks += 1;
    s.chunk_bytes += raw as u64;
    s.stored_bytes += stored as u64;
    if unique {
        s.unique_chunks += 1;
        s.unique_bytes += raw as u64;
        s.unique_stored_bytes += stored as u64;
    }
}

fn look_up(store: &dyn Repository, refs: &mut RefMap, pending: &mut Vec<Digest>) -> Result<(), StoreError> {
    for (d, sizes) in pending.iter().zip(store.chunk_sizes(pending)?) {
        if let (Some(sizes), Some(r)) = (sizes, refs.get_mut(d)) {
            r.len = Some(sizes);
        }
    }
    pending.clear();
    Ok(())
}

fn logical_bytes(m: &Manifest) -> u64 {
    m.archives.iter().map(|a| a.logical_size()).sum()
}
