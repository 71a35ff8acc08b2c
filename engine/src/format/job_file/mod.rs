//! Job files: `/etc/hoard/jobs/NAME.toml`, one backup job each — which
//! guests, in which mode, into which store, when, how long kept, who is
//! told (format-spec/job-file.md). This module only reads and checks them;
//! running a job is the command line's.
//!
//! Every value is checked while it is deserialized, so that the TOML
//! parser's byte span of the offending value becomes the line of the error;
//! checks across fields use the spans kept in [`Spanned`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IntoDeserializer};
use serde::Deserialize;
use toml::Spanned;

use crate::chunking::cdc::CdcParams;
use crate::chunking::chunker::ChunkSize;
use crate::format::chunk::Compression;
use crate::format::snapshot::{safe_component, Kind};

mod values;
pub use values::parse_size;

/// A job file that cannot be used: which file, which line, which field.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        /// `section.key` of the offending value, or the section.
        field: String,
        message: String,
    },
}

impl crate::error::Classify for JobFileError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            JobFileError::Read { source, .. } => crate::error::io_kind(source),
            JobFileError::Invalid { .. } => crate::error::ErrorKind::Invalid,
        }
    }
}

/// A value and the line of the job file it came from (for errors found later,
/// such as a schedule systemd does not accept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
    /// Byte offset of the value, until [`parse`] turns it into `line`.
    at: usize,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Located<T>, D::Error> {
        let s = Spanned::<T>::deserialize(d)?;
        Ok(Located {
            at: s.span().start,
            line: 0,
            value: s.into_inner(),
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmMode {
    #[default]
    Snapshot,
    Suspend,
    Stop,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtMode {
    #[default]
    Snapshot,
    Suspend,
    Stop,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyWhen {
    #[default]
    Failure,
    Always,
    Never,
}

/// Retention applied to a guest's group after each successful backup of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Keep {
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub last: Option<usize>,
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub hourly: Option<usize>,
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub daily: Option<usize>,
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub weekly: Option<usize>,
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub monthly: Option<usize>,
    #[serde(default, deserialize_with = "values::at_least_one")]
    pub yearly: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Notify {
    #[serde(default)]
    pub when: NotifyWhen,
    /// Recipients of the summary mail, through `sendmail -t`.
    #[serde(default, deserialize_with = "values::addresses")]
    pub mailto: Vec<String>,
    /// The mail's From: (default `hoard@HOSTNAME`).
    #[serde(default, deserialize_with = "values::optional_address")]
    pub from: Option<String>,
    /// The sendmail program (default /usr/sbin/sendmail).
    #[serde(default)]
    pub sendmail: Option<PathBuf>,
    /// http:// or https:// URL the summary is POSTed to as JSON.
    #[serde(default, deserialize_with = "values::optional_url")]
    pub webhook: Option<String>,
}

/// What a run does for the store itself after its guests, as a Proxmox
/// Backup Server datastore's own schedules do: a store fed only by jobs
/// otherwise grows without bound (prune removes snapshots, only gc frees
/// their space) and is never read back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Maintenance {
    /// `[keep]` applied to every group of the store, not only this job's.
    #[serde(default)]
    pub prune: bool,
    /// `hoard gc`.
    #[serde(default)]
    pub gc: bool,
    /// `hoard verify --ignore-verified --outdated-after DAYS`.
    #[serde(default)]
    pub verify: bool,
    #[serde(default = "values::default_outdated_after", deserialize_with = "values::days")]
    pub verify_outdated_after: u32,
}

/// One VM by its QMP socket (and its guest agent's).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmGuest {
    #[serde(deserialize_with = "values::group_id")]
    pub id: String,
    pub qmp: PathBuf,
    #[serde(default)]
    pub qga: Option<PathBuf>,
    #[serde(default)]
    pub mode: Option<VmMode>,
    /// The VM's configuration files, stored with each backup (`--config`).
    #[serde(default)]
    pub config: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Vms {
    #[serde(default)]
    pub mode: VmMode,
    /// Directories of sockets: every `ID.qmp` in them is a VM of id ID,
    /// with `ID.qga` beside it as its agent and `ID.conf` as its
    /// configuration if present.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Ids found in `dirs` that are not backed up.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub guests: Vec<Spanned<VmGuest>>,
    /// Freeze the guests' file systems through their agents (snapshot mode).
    #[serde(default = "values::yes")]
    pub fsfreeze: bool,
    #[serde(default = "values::default_vm_stop_timeout")]
    pub stop_timeout: u64,
    #[serde(default)]
    pub force_stop: bool,
    #[serde(default)]
    pub fleece_dir: Option<PathBuf>,
}

/// A container named alone, or with options of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtGuest {
    pub name: String,
    pub id: Option<String>,
    pub mode: Option<CtMode>,
    pub include_mounts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CtGuestTable {
    #[serde(deserialize_with = "values::ct_name")]
    name: String,
    #[serde(default, deserialize_with = "values::optional_group_id")]
    id: Option<String>,
    #[serde(default)]
    mode: Option<CtMode>,
    #[serde(default)]
    include_mounts: Vec<String>,
}

impl<'de> Deserialize<'de> for CtGuest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CtGuest, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = CtGuest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a container name, or a table with name, id, mode, include-mounts")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<CtGuest, E> {
                Ok(CtGuest {
                    name: values::ct_name(name.into_deserializer())?,
                    id: None,
                    mode: None,
                    include_mounts: Vec::new(),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<CtGuest, A::Error> {
                let t = CtGuestTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(CtGuest {
                    name: t.name,
                    id: t.id,
                    mode: t.mode,
                    include_mounts: t.include_mounts,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Containers {
    #[serde(default)]
    pub mode: CtMode,
    #[serde(default = "values::default_lxcpath")]
    pub lxcpath: PathBuf,
    /// Every container of `lxcpath` (`lxc-ls`), but those in `exclude`.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub guests: Vec<Spanned<CtGuest>>,
    /// Suspend mode: copy through this directory first (rsync), as vzdump.
    #[serde(default)]
    pub tmpdir: Option<PathBuf>,
    #[serde(default = "values::default_ct_stop_timeout")]
    pub stop_timeout: u64,
}

/// A disk image (file or block device) as archive `name` of group `kind/id`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageJob {
    #[serde(deserialize_with = "values::group_id")]
    pub id: String,
    pub path: PathBuf,
    #[serde(
        default = "values::default_image_name",
        deserialize_with = "values::image_name"
    )]
    pub name: String,
    #[serde(default = "values::default_plain_kind")]
    pub kind: Kind,
}

/// A directory tree as archive `name` of group `kind/id`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TreeJob {
    #[serde(deserialize_with = "values::group_id")]
    pub id: String,
    pub path: PathBuf,
    #[serde(default = "values::default_tree_name", deserialize_with = "values::tree_name")]
    pub name: String,
    #[serde(default = "values::default_plain_kind")]
    pub kind: Kind,
    /// gitignore-style patterns, as `hoard backup --exclude`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "values::yes")]
    pub one_file_system: bool,
}

/// A checked job file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Job {
    /// The file's name without `.toml`.
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub path: PathBuf,
    /// As `--store`: a directory or a bucket URL.
    #[serde(deserialize_with = "values::nonempty")]
    pub store: String,
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Create a plain store in `store` (a directory) if there is none.
    #[serde(default)]
    pub create_store: bool,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub aws_profile: Option<String>,
    #[serde(default)]
    pub aws_credentials_file: Option<PathBuf>,
    /// systemd `OnCalendar=` expression; checked by systemd itself.
    #[serde(default)]
    pub schedule: Option<Located<String>>,
    /// systemd time span for `RandomizedDelaySec=`.
    #[serde(default)]
    pub randomized_delay: Option<Located<String>>,
    #[serde(default = "values::one", deserialize_with = "values::workers")]
    pub max_workers: usize,
    /// Bytes per second the whole job may read.
    #[serde(default, deserialize_with = "values::optional_rate")]
    pub bwlimit: Option<u64>,
    #[serde(default, deserialize_with = "values::compression")]
    pub compress: Option<Compression>,
    #[serde(default, deserialize_with = "values::chunk_size")]
    pub chunk_size: Option<ChunkSize>,
    #[serde(default, deserialize_with = "values::tree_chunk_avg")]
    pub tree_chunk_avg: Option<CdcParams>,
    #[serde(default, deserialize_with = "values::threads")]
    pub threads: usize,
    #[serde(default)]
    pub hook: Option<PathBuf>,
    #[serde(default = "values::default_hook_timeout")]
    pub hook_timeout: u64,
    #[serde(default)]
    pub keep: Option<Keep>,
    #[serde(default)]
    pub notify: Option<Notify>,
    #[serde(default)]
    pub vms: Option<Vms>,
    #[serde(default)]
    pub containers: Option<Containers>,
    #[serde(default)]
    pub images: Vec<Spanned<ImageJob>>,
    #[serde(default)]
    pub trees: Vec<Spanned<TreeJob>>,
    #[serde(default)]
    pub maintenance: Option<Maintenance>,
}

/// The file name of job `name` in a jobs directory.
pub fn job_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Whether `name` may name a job: it becomes part of file and unit names,
/// and an argument of `hoard job run` in the unit, where a leading `-`
/// would be read as an option.
pub fn valid_job_name(name: &str) -> bool {
    safe_component(name) && !name.contains('@') && !name.starts_with('-')
}

/// Reads and checks job file `path`.
pub fn load(path: &Path) -> Result<Job, JobFileError> {
    let bytes = std::fs::read(path).map_err(|source| JobFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

/// Checks the bytes of job file `path` (also the fuzz target's entry).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Job, JobFileError> {
    let invalid = |line: usize, field: &str, message: String| JobFileError::Invalid {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".toml"))
        .unwrap_or("");
    if !valid_job_name(name) {
        return Err(invalid(
            1,
            "(file name)",
            "a job file is NAME.toml, NAME of A-Z a-z 0-9 . _ - (not starting with .)".into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        invalid(line, "(file)", "not UTF-8 text".into())
    })?;
    let mut job: Job = toml::from_str(text).map_err(|e| {
        let start = e.span().map_or(0, |s| s.start);
        let (line, field) = locate(text, start);
        invalid(line, &field, e.message().trim().to_string())
    })?;
    job.name = name.to_string();
    job.path = path.to_path_buf();
    let line_of = |start: usize| line_at(text, start);
    for l in [&mut job.schedule, &mut job.randomized_delay]
        .into_iter()
        .flatten()
    {
        l.line = line_of(l.at);
    }
    // Checks across fields, each at the line of what it is about.
    let top = |key: &str| {
        text.lines()
            .position(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
            .map_or(1, |i| i + 1)
    };
    if let Some(keep) = &job.keep {
        if keep == &Keep::default() {
            return Err(invalid(top("[keep]"), "keep", "no keep-* value: give at least one of last, hourly, daily, weekly, monthly, yearly (or remove [keep])".into()));
        }
    }
    if let Some(n) = &job.notify {
        if n.mailto.is_empty() && n.webhook.is_none() && n.when != NotifyWhen::Never {
            return Err(invalid(
                top("[notify]"),
                "notify",
                "give mailto or webhook (or when = \"never\")".into(),
            ));
        }
    }
    let mut groups: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    let mut claim =
        |kind: Kind, id: &str, line: usize, field: &str| match groups.insert((kind, id.to_string()), line) {
            Some(first) => Err(invalid(
                line,
                field,
                format!(
                    "{}/{id} is already backed up by this job (line {first}): one group, one guest",
                    kind.as_str()
                ),
            )),
            None => Ok(()),
        };
    if let Some(v) = &job.vms {
        if v.dirs.is_empty() && v.guests.is_empty() {
            return Err(invalid(top("[vms]"), "vms", "no VM: give guests or dirs".into()));
        }
        if !v.exclude.is_empty() && v.dirs.is_empty() {
            return Err(invalid(
                top("exclude"),
                "vms.exclude",
                "exclude applies to the VMs found in dirs; give dirs".into(),
            ));
        }
        for g in &v.guests {
            claim(
                Kind::Vm,
                &g.get_ref().id,
                line_of(g.span().start),
                "vms.guests.id",
            )?;
        }
    }
    if let Some(c) = &job.containers {
        if !c.all && c.guests.is_empty() {
            return Err(invalid(
                top("[containers]"),
                "containers",
                "no container: give guests, or all = true".into(),
            ));
        }
        if !c.exclude.is_empty() && !c.all {
            return Err(invalid(
                top("exclude"),
                "containers.exclude",
                "exclude applies with all = true".into(),
            ));
        }
        for g in &c.guests {
            let g2 = g.get_ref();
            let id = g2.id.as_deref().unwrap_or(&g2.name);
            claim(Kind::Ct, id, line_of(g.span().start), "containers.guests")?;
        }
    }
    for i in &job.images {
        let i2 = i.get_ref();
        claim(i2.kind, &i2.id, line_of(i.span().start), "images.id")?;
    }
    for t in &job.trees {
        let t2 = t.get_ref();
        claim(t2.kind, &t2.id, line_of(t.span().start), "trees.id")?;
    }
    if let Some(m) = &job.maintenance {
        if !(m.prune || m.gc || m.verify) {
            return Err(invalid(
                top("[maintenance]"),
                "maintenance",
                "nothing to do: set prune, gc or verify to true (or remove [maintenance])".into(),
            ));
        }
        if m.prune && job.keep.is_none() {
            return Err(invalid(
                top("prune"),
                "maintenance.prune",
                "prune applies [keep] to every group of the store: give [keep]".into(),
            ));
        }
    }
    let guests =
        job.vms.is_some() || job.containers.is_some() || !job.images.is_empty() || !job.trees.is_empty();
    if !guests && job.maintenance.is_none() {
        return Err(invalid(
            1,
            "(job)",
            "the job does nothing: give [vms], [containers], [[images]] or [[trees]] to back up, or [maintenance] for the store".into(),
        ));
    }
    if job.create_store && super::store_address::is_url(&job.store) {
        return Err(invalid(
            top("create-store"),
            "create-store",
            "a store in a bucket is created with `hoard init --store URL`".into(),
        ));
    }
    Ok(job)
}

/// The line of byte `at`, and the `section.key` written there (or the
/// section, for an error about a whole table).
fn locate(text: &str, at: usize) -> (usize, String) {
    let at = at.min(text.len());
    let line = line_at(text, at);
    let mut section = String::new();
    let mut key = None;
    for (i, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key = None;
        } else if i + 1 == line {
            key = l.split_once('=').map(|(k, _)| k.trim().to_string());
        }
    }
    let field = match (section.is_empty(), key) {
        (_, Some(k)) if k.is_empty() => section,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{section}.{k}"),
        (false, None) => section,
        (true, None) => "(job)".into(),
    };
    (line, field)
}

fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
