//! Prune: which snapshots a retention policy keeps, with Proxmox Backup
//! Server's semantics. Per group (KIND/ID), snapshots are walked newest
//! first; the options apply in the order last, hourly, daily, weekly,
//! monthly, yearly, each keeping the newest snapshot of each of its newest N
//! time buckets that no earlier option already covered. Protected snapshots
//! are always kept. Buckets are taken in UTC. Prune removes snapshots only;
//! garbage collection frees their chunks.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::format::snapshot::{self, SnapshotName};
use crate::store::seam::{Catalogue, Protected};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepOptions {
    pub last: Option<usize>,
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
    pub yearly: Option<usize>,
}

impl KeepOptions {
    pub fn any(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(Option::is_some)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    Keep,
    Protected,
    Remove,
}

/// Parsed `YYYY-MM-DDTHH:MM:SSZ`.
fn fields(time: &str) -> Option<(i64, u32, u32, u32)> {
    let num = |r: std::ops::Range<usize>| time.get(r)?.parse::<u32>().ok();
    Some((num(0..4)? as i64, num(5..7)?, num(8..10)?, num(11..13)?))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn year_of_days(days: i64) -> i64 {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// ISO 8601 week-numbering year and week of a date.
fn iso_week(y: i64, m: u32, d: u32) -> (i64, i64) {
    let days = days_from_civil(y, m, d);
    let weekday = (days + 3).rem_euclid(7); // Monday = 0; 1970-01-01 was a Thursday
    let thursday = days - weekday + 3;
    let year = year_of_days(thursday);
    (year, (thursday - days_from_civil(year, 1, 1)) / 7 + 1)
}

/// The bucket of a snapshot time for each option after `last`.
fn bucket(option: usize, time: &str) -> String {
    let Some((y, mo, d, h)) = fields(time) else {
        return time.to_string();
    };
    match option {
        1 => format!("{y}-{mo:02}-{d:02} {h:02}"),
        2 => format!("{y}-{mo:02}-{d:02}"),
        3 => {
            let (wy, w) = iso_week(y, mo, d);
            format!("{wy}/{w:02}")
        }
        4 => format!("{y}-{mo:02}"),
        _ => format!("{y}"),
    }
}

/// Marks each snapshot of ONE group (`list` newest first; `protected` says
/// which are protected) as kept, protected or removed.
pub(crate) fn plan_group(
    list: &[SnapshotName],
    protected: &HashSet<SnapshotName>,
    keep: &KeepOptions,
) -> Vec<Mark> {
    let mut marks: Vec<Option<Mark>> = vec![None; list.len()];
    let options = [
        keep.last,
        keep.hourly,
        keep.daily,
        keep.weekly,
        keep.monthly,
        keep.yearly,
    ];
    for (option, count) in options.iter().enumerate() {
        let Some(count) = *count else { continue };
        let select = |n: &SnapshotName| {
            if option == 0 {
                n.time.clone()
            } else {
                bucket(option, &n.time)
            }
        };
        let already: HashSet<String> = list
            .iter()
            .zip(&marks)
            .filter(|(_, m)| **m == Some(Mark::Keep))
            .map(|(n, _)| select(n))
            .collect();
        let mut included = HashSet::new();
        for (i, name) in list.iter().enumerate() {
            if marks[i].is_some() {
                continue;
            }
            if protected.contains(name) {
                marks[i] = Some(Mark::Protected);
                continue;
            }
            let id = select(name);
            if already.contains(&id) {
                continue;
            }
            if !included.contains(&id) {
                if included.len() >= count {
                    break;
                }
                included.insert(id);
                marks[i] = Some(Mark::Keep);
            } else {
                marks[i] = Some(Mark::Remove);
            }
        }
    }
    list.iter()
        .zip(marks)
        .map(|(n, m)| {
            m.unwrap_or(if protected.contains(n) {
                Mark::Protected
            } else {
                Mark::Remove
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct PruneEntry {
    pub snapshot: String,
    pub mark: Mark,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Every considered snapshot with its mark, newest first per group.
    pub snapshots: Vec<PruneEntry>,
    /// Snapshots removed: none in a dry run.
    pub removed: u64,
    /// Snapshots the policy removes: removed, or in a dry run would be.
    pub would_remove: u64,
    pub kept: u64,
    pub dry_run: bool,
    /// Snapshots that were neither counted nor removed, each with why:
    /// dated in the future, or a manifest that does not load (with the
    /// key: fails its MAC). They cannot push a real snapshot out.
    pub ignored: Vec<IgnoredEntry>,
    /// Snapshots whose protected marker this run did not believe (with the
    /// key, one whose MAC fails): prune treated them as unprotected.
    pub protection_ignored: Vec<IgnoredEntry>,
}

#[derive(Debug, Serialize)]
pub struct IgnoredEntry {
    pub snapshot: String,
    pub why: String,
}

/// Applies `keep` to every group of `kind` (all kinds if None) and `id`
/// (all ids if None).
pub fn prune(
    catalog: &dyn Catalogue,
    kind: Option<snapshot::Kind>,
    id: Option<&str>,
    keep: &KeepOptions,
    dry_run: bool,
) -> crate::Result<PruneReport> {
    let selected = |n: &SnapshotName| kind.is_none_or(|k| n.kind == k) && id.is_none_or(|i| n.id == i);
    let (counted, rejected) = catalog.authentic()?;
    let mut groups: BTreeMap<(snapshot::Kind, String), Vec<SnapshotName>> = BTreeMap::new();
    for n in counted.into_iter().filter(|n| selected(n)) {
        groups.entry((n.kind, n.id.clone())).or_default().push(n);
    }
    let mut report = PruneReport {
        dry_run,
        ignored: rejected
            .into_iter()
            .filter(|r| selected(&r.name))
            .map(|r| IgnoredEntry {
                snapshot: r.name.to_string(),
                why: r.why,
            })
            .collect(),
        ..Default::default()
    };
    for (_, mut list) in groups {
        list.sort_by(|a, b| b.time.cmp(&a.time));
        let mut protected = HashSet::new();
        for n in &list {
            match catalog.protection(n) {
                Protected::Yes => _ = protected.insert(n.clone()),
                Protected::Ignored(why) => report.protection_ignored.push(IgnoredEntry {
                    snapshot: n.to_string(),
                    why,
                }),
                Protected::No => {}
            }
        }
        let marks = plan_group(&list, &protected, keep);
        let mut counts: HashMap<bool, u64> = HashMap::new();
        for (name, mark) in list.iter().zip(marks) {
            let remove = mark == Mark::Remove;
            if remove && !dry_run {
                catalog.forget(name)?;
            }
            *counts.entry(remove).or_default() += 1;
            report.snapshots.push(PruneEntry {
                snapshot: name.to_string(),
                mark,
            });
        }
        let remove = counts.get(&true).copied().unwrap_or(0);
        report.would_remove += remove;
        if !dry_run {
            report.removed += remove;
        }
        report.kept += counts.get(&false).copied().unwrap_or(0);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::Kind;

    fn names(times: &[&str]) -> Vec<SnapshotName> {
        times
            .iter()
            .map(|t| SnapshotName {
                kind: Kind::Vm,
                id: "1".into(),
                time: t.to_string(),
            })
            .collect()
    }

    fn kept(list: &[SnapshotName], marks: &[Mark]) -> Vec<String> {
        list.iter()
            .zip(marks)
            .filter(|(_, m)| **m != Mark::Remove)
            .map(|(n, _)| n.time[..13].to_string())
            .collect()
    }

    #[test]
    fn iso_weeks_match_the_calendar() {
        assert_eq!(iso_week(2026, 11, 26), (2026, 48));
        assert_eq!(iso_week(2021, 1, 3), (2020, 53)); // a Sunday still in 2020's last week
        assert_eq!(iso_week(2019, 12, 30), (2020, 1)); // a Monday already in 2020's first week
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(year_of_days(days_from_civil(2000, 2, 29)), 2000);
    }

    #[test]
    fn pbs_semantics() {
        // Newest first: two per day for four days.
        let list = names(&[
            "2026-11-26T18:00:00Z",
            "2026-11-26T06:00:00Z",
            "2026-11-25T18:00:00Z",
            "2026-11-25T06:00:00Z",
            "2026-11-24T18:00:00Z",
            "2026-11-24T06:00:00Z",
            "2026-11-23T18:00:00Z",
            "2026-11-23T06:00:00Z",
        ]);
        let none = HashSet::new();
        let m = plan_group(
            &list,
            &none,
            &KeepOptions {
                last: Some(3),
                ..Default::default()
            },
        );
        assert_eq!(
            kept(&list, &m),
            ["2026-11-26T18", "2026-11-26T06", "2026-11-25T18"]
        );
        // keep-daily keeps the newest of each day; keep-last's picks count for their days.
        let m = plan_group(
            &list,
            &none,
            &KeepOptions {
                last: Some(1),
                daily: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(
            kept(&list, &m),
            ["2026-11-26T18", "2026-11-25T18", "2026-11-24T18"]
        );
        let m = plan_group(
            &list,
            &none,
            &KeepOptions {
                weekly: Some(5),
                ..Default::default()
            },
        );
        // 23rd is a Monday: same ISO week as 24..26.
        assert_eq!(kept(&list, &m), ["2026-11-26T18"]);
        // Protected snapshots survive any policy.
        let protected: HashSet<_> = [list[7].clone()].into();
        let m = plan_group(
            &list,
            &protected,
            &KeepOptions {
                last: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(m[7], Mark::Protected);
        assert_eq!(kept(&list, &m), ["2026-11-26T18", "2026-11-23T06"]);
    }
}
