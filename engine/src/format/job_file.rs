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
use crate::format::snapshot::{safe_component, validate_archive_name, Kind};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmMode {
    Snapshot,
    Suspend,
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtMode {
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
    #[serde(default, deserialize_with = "at_least_one")]
    pub last: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    pub hourly: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    pub daily: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    pub weekly: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    pub monthly: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    pub yearly: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Notify {
    #[serde(default)]
    pub when: NotifyWhen,
    /// Recipients of the summary mail, through `sendmail -t`.
    #[serde(default, deserialize_with = "addresses")]
    pub mailto: Vec<String>,
    /// The mail's From: (default `hoard@HOSTNAME`).
    #[serde(default, deserialize_with = "optional_address")]
    pub from: Option<String>,
    /// The sendmail program (default /usr/sbin/sendmail).
    #[serde(default)]
    pub sendmail: Option<PathBuf>,
    /// http:// or https:// URL the summary is POSTed to as JSON.
    #[serde(default, deserialize_with = "optional_url")]
    pub webhook: Option<String>,
}

/// One VM by its QMP socket (and its guest agent's).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmGuest {
    #[serde(deserialize_with = "group_id")]
    pub id: String,
    pub qmp: PathBuf,
    #[serde(default)]
    pub qga: Option<PathBuf>,
    #[serde(default)]
    pub mode: Option<VmMode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Vms {
    #[serde(default = "default_vm_mode")]
    pub mode: VmMode,
    /// Directories of sockets: every `ID.qmp` in them is a VM of id ID,
    /// with `ID.qga` beside it as its agent if present.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Ids found in `dirs` that are not backed up.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub guests: Vec<Spanned<VmGuest>>,
    /// Freeze the guests' file systems through their agents (snapshot mode).
    #[serde(default = "yes")]
    pub fsfreeze: bool,
    #[serde(default = "default_vm_stop_timeout")]
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
    #[serde(deserialize_with = "ct_name")]
    name: String,
    #[serde(default, deserialize_with = "optional_group_id")]
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
                    name: ct_name(name.into_deserializer())?,
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
    #[serde(default = "default_ct_mode")]
    pub mode: CtMode,
    #[serde(default = "default_lxcpath")]
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
    #[serde(default = "default_ct_stop_timeout")]
    pub stop_timeout: u64,
}

/// A disk image (file or block device) as archive `name` of group `kind/id`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageJob {
    #[serde(deserialize_with = "group_id")]
    pub id: String,
    pub path: PathBuf,
    #[serde(default = "default_image_name", deserialize_with = "image_name")]
    pub name: String,
    #[serde(default = "default_plain_kind")]
    pub kind: Kind,
}

/// A directory tree as archive `name` of group `kind/id`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TreeJob {
    #[serde(deserialize_with = "group_id")]
    pub id: String,
    pub path: PathBuf,
    #[serde(default = "default_tree_name", deserialize_with = "tree_name")]
    pub name: String,
    #[serde(default = "default_plain_kind")]
    pub kind: Kind,
    /// gitignore-style patterns, as `hoard backup --exclude`.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "yes")]
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
    #[serde(deserialize_with = "nonempty")]
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
    #[serde(default = "one", deserialize_with = "workers")]
    pub max_workers: usize,
    /// Bytes per second the whole job may read.
    #[serde(default, deserialize_with = "optional_rate")]
    pub bwlimit: Option<u64>,
    #[serde(default, deserialize_with = "compression")]
    pub compress: Option<Compression>,
    #[serde(default, deserialize_with = "chunk_size")]
    pub chunk_size: Option<ChunkSize>,
    #[serde(default, deserialize_with = "tree_chunk_avg")]
    pub tree_chunk_avg: Option<CdcParams>,
    #[serde(default)]
    pub threads: usize,
    #[serde(default)]
    pub hook: Option<PathBuf>,
    #[serde(default = "default_hook_timeout")]
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
}

/// The file name of job `name` in a jobs directory.
pub fn job_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Whether `name` may name a job (it becomes part of file and unit names).
pub fn valid_job_name(name: &str) -> bool {
    safe_component(name) && !name.contains('@')
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
    if job.vms.is_none() && job.containers.is_none() && job.images.is_empty() && job.trees.is_empty() {
        return Err(invalid(
            1,
            "(job)",
            "the job backs up nothing: give [vms], [containers], [[images]] or [[trees]]".into(),
        ));
    }
    if job.create_store && crate::store::remote::is_url(&job.store) {
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

// Defaults and checked values. Each checker turns a bad value into a serde
// error, which the TOML parser places at the value.

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_vm_mode() -> VmMode {
    VmMode::Snapshot
}
fn default_ct_mode() -> CtMode {
    CtMode::Snapshot
}
fn default_lxcpath() -> PathBuf {
    PathBuf::from("/var/lib/lxc")
}
fn default_vm_stop_timeout() -> u64 {
    600
}
fn default_ct_stop_timeout() -> u64 {
    60
}
fn default_hook_timeout() -> u64 {
    600
}
fn default_plain_kind() -> Kind {
    Kind::Host
}
fn default_image_name() -> String {
    "disk.img".into()
}
fn default_tree_name() -> String {
    "root.tree".into()
}

fn nonempty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(s)
}

fn group_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !safe_component(&s) {
        return Err(de::Error::custom(format!(
            "invalid id {s:?}: 1-128 characters of A-Z a-z 0-9 . _ -, not starting with ."
        )));
    }
    Ok(s)
}

fn optional_group_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    group_id(d).map(Some)
}

fn ct_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.starts_with('-') || s.contains(['/', '\0', '\n']) {
        return Err(de::Error::custom(format!("invalid container name {s:?}")));
    }
    Ok(s)
}

fn archive_name<E: de::Error>(s: String, suffix: &str) -> Result<String, E> {
    if !s.ends_with(suffix) || validate_archive_name(&s).is_err() {
        return Err(E::custom(format!(
            "invalid archive name {s:?}: NAME{suffix}, NAME of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(s)
}

fn image_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    archive_name(String::deserialize(d)?, ".img")
}

fn tree_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    archive_name(String::deserialize(d)?, ".tree")
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(de::Error::custom(
            "must be at least 1 (leave the key out to not use it)",
        )),
        n => Ok(Some(n)),
    }
}

fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n @ 1..=64 => Ok(n),
        n => Err(de::Error::custom(format!("{n}: use 1..64"))),
    }
}

/// `50M`, `1G`, `512K`, `1000000`: bytes (K, M, G, T are powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn size_value<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(d)
        .map_err(|_| de::Error::custom(format!("{what}: a number of bytes or a size like 64K, 50M")))?
    {
        Size::Number(n) => Ok(n),
        Size::Text(s) => {
            parse_size(&s).ok_or_else(|| de::Error::custom(format!("{s:?} is not a size (64K, 50M, 1G)")))
        }
    }
}

fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match size_value(d, "bytes per second")? {
        n if n < 1 << 20 => Err(de::Error::custom("at least 1M (bytes per second)")),
        n => Ok(Some(n)),
    }
}

fn compression<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Compression>, D::Error> {
    String::deserialize(d)?
        .parse()
        .map(Some)
        .map_err(de::Error::custom)
}

fn chunk_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChunkSize>, D::Error> {
    let n = size_value(d, "chunk size")?;
    ChunkSize::new(n).map(Some).map_err(de::Error::custom)
}

fn tree_chunk_avg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CdcParams>, D::Error> {
    let n = size_value(d, "average chunk size")?;
    u32::try_from(n)
        .ok()
        .and_then(CdcParams::new)
        .map(Some)
        .ok_or_else(|| de::Error::custom("average chunk size must be a power of two, 4K..4M"))
}

/// A mail address as a header value: no line breaks or control characters
/// (they would add headers to the mail).
fn check_address<E: de::Error>(a: &str) -> Result<(), E> {
    if a.is_empty() || a.chars().any(|c| c.is_control()) || !a.contains(|c: char| c.is_alphanumeric()) {
        return Err(E::custom(format!("invalid mail address {a:?}")));
    }
    Ok(())
}

fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for a in &list {
        check_address::<D::Error>(a)?;
    }
    Ok(list)
}

fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let a = String::deserialize(d)?;
    check_address::<D::Error>(&a)?;
    Ok(Some(a))
}

fn optional_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let u = String::deserialize(d)?;
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(r)
            if !r.is_empty()
                && !r.starts_with('/')
                && !u.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(Some(u))
        }
        _ => Err(de::Error::custom(format!("{u:?}: an http:// or https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Job, JobFileError> {
        parse(Path::new("/etc/hoard/jobs/nightly.toml"), text.as_bytes())
    }

    fn error(text: &str) -> (usize, String, String) {
        match parse_text(text) {
            Err(JobFileError::Invalid {
                line, field, message, ..
            }) => (line, field, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    const FULL: &str = r#"
store = "/srv/hoard"
schedule = "*-*-* 02:00"
randomized-delay = "15min"
max-workers = 2
bwlimit = "50M"
compress = "zstd:3"
chunk-size = "64K"

[keep]
daily = 7
weekly = 4

[notify]
when = "always"
mailto = ["root@example.org"]
webhook = "http://127.0.0.1:9/hook"

[vms]
mode = "snapshot"
guests = [{ id = "100", qmp = "/run/qemu/100.qmp", qga = "/run/qemu/100.qga" }]

[containers]
mode = "suspend"
guests = ["web", { name = "db", mode = "stop", include-mounts = ["/srv"] }]

[[images]]
id = "data"
path = "/dev/vdb"

[[trees]]
id = "etc"
path = "/etc"
exclude = ["*.cache"]
"#;

    #[test]
    fn a_full_job_file_reads_back() {
        let job = parse_text(FULL).unwrap();
        assert_eq!(job.name, "nightly");
        assert_eq!(
            job.schedule.as_ref().map(|s| (s.value.as_str(), s.line)),
            Some(("*-*-* 02:00", 3))
        );
        assert_eq!(job.bwlimit, Some(50 << 20));
        assert_eq!(job.max_workers, 2);
        assert_eq!(job.keep.as_ref().unwrap().daily, Some(7));
        let cts = job.containers.as_ref().unwrap();
        assert_eq!(cts.guests[1].get_ref().mode, Some(CtMode::Stop));
        assert_eq!(cts.guests[0].get_ref().name, "web");
        assert_eq!(job.images[0].get_ref().name, "disk.img");
        assert_eq!(job.trees[0].get_ref().name, "root.tree");
    }

    #[test]
    fn every_bad_value_names_its_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "store = \"/s\"\nfrobnicate = 1\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "frobnicate",
                "unknown field",
            ),
            (
                "[[trees]]\nid=\"a\"\npath=\"/\"\n",
                1,
                "",
                "missing field `store`",
            ),
            (
                "store = \"/s\"\nmax-workers = 0\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "max-workers",
                "1..64",
            ),
            (
                "store = \"/s\"\nbwlimit = \"fast\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "bwlimit",
                "not a size",
            ),
            (
                "store = \"/s\"\ncompress = \"lz4\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "compress",
                "invalid compression",
            ),
            (
                "store = \"/s\"\nchunk-size = \"3K\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "chunk-size",
                "chunk size",
            ),
            (
                "store = \"/s\"\n[keep]\ndaily = 0\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                3,
                "keep.daily",
                "at least 1",
            ),
            (
                "store = \"/s\"\n[keep]\ndayly = 3\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                3,
                "keep.dayly",
                "unknown field",
            ),
            (
                "store = \"/s\"\n[vms]\nmode = \"fast\"\nguests = []\n",
                3,
                "vms.mode",
                "unknown variant",
            ),
            ("store = \"/s\"\n[vms]\nguests = []\n", 2, "vms", "no VM"),
            (
                "store = \"/s\"\n[vms]\nguests = [{ id = \"a/b\", qmp = \"/q\" }]\n",
                3,
                "vms.guests",
                "invalid id",
            ),
            (
                "store = \"/s\"\n[containers]\nguests = [{ name = \"a\", colour = 1 }]\n",
                3,
                "containers.guests",
                "unknown field",
            ),
            (
                "store = \"/s\"\n[containers]\nexclude = [\"x\"]\nguests = [\"a\"]\n",
                3,
                "containers.exclude",
                "all = true",
            ),
            (
                "store = \"/s\"\n[containers]\nguests = [\"a\", \"a\"]\n",
                3,
                "containers.guests",
                "already backed up",
            ),
            (
                "store = \"/s\"\n[notify]\nmailto = [\"a\\nBcc: x\"]\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                3,
                "notify.mailto",
                "invalid mail address",
            ),
            (
                "store = \"/s\"\n[notify]\nwebhook = \"ftp://x\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                3,
                "notify.webhook",
                "URL",
            ),
            (
                "store = \"/s\"\n[notify]\nwhen = \"always\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "notify",
                "mailto or webhook",
            ),
            (
                "store = \"/s\"\n[[images]]\nid = \"a\"\npath = \"/x\"\nname = \"x.tree\"\n",
                5,
                "images.name",
                "invalid archive name",
            ),
            ("store = \"/s\"\n", 1, "(job)", "backs up nothing"),
            (
                "store = \"/s\"\nschedule = 5\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "schedule",
                "invalid type",
            ),
            (
                "store = \"/s\"\n[[trees]\nid=\"a\"\n",
                2,
                "trees",
                "unclosed array table",
            ),
            (
                "store = \"http://h/b\"\ncreate-store = true\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
                2,
                "create-store",
                "hoard init",
            ),
        ];
        for (text, line, field, msg) in cases {
            let (l, f, m) = error(text);
            assert!(
                l == *line && f.contains(field) && m.contains(msg),
                "{text:?}: got line {l} field {f:?} message {m:?}, expected {line} {field:?} {msg:?}"
            );
        }
    }

    #[test]
    fn the_error_message_carries_file_line_and_field() {
        let e =
            parse_text("store = \"/s\"\nmax-workers = 99\n[[trees]]\nid=\"a\"\npath=\"/\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/hoard/jobs/nightly.toml:2: max-workers: 99: use 1..64"
        );
    }

    #[test]
    fn job_names_are_checked() {
        let bad = parse(Path::new("/j/a@b.toml"), b"store = \"/s\"").unwrap_err();
        assert!(bad.to_string().contains("file name"), "{bad}");
        assert!(valid_job_name("nightly-2.x") && !valid_job_name(".hidden") && !valid_job_name("a b"));
    }

    #[test]
    fn the_packaged_examples_are_valid_job_files() {
        for (name, text) in [
            ("example.toml", include_str!("../../../packaging/example.toml")),
            (
                "reference.toml",
                include_str!("../../../packaging/reference.toml"),
            ),
        ] {
            let job = parse(Path::new(name), text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert!(!job.trees.is_empty(), "{name}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("50M"), Some(50 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
