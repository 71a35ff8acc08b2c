//! Snapshot names and the manifest format (format-spec/manifest.md). Where
//! snapshots live and how they are listed, published and forgotten is the
//! store's catalogue (`store::catalog`, `store::snapshot_dir`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::dynamic_index::DidxError;
use crate::format::fixed_index::FidxError;

pub(crate) const MANIFEST_FORMAT: &str = "hoard-manifest";
/// Version written. Versions 1 (no `bitmap`) and 2 (no tree archives) are
/// still read.
pub(crate) const MANIFEST_VERSION: u32 = 6;
pub(crate) const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid snapshot name {0:?}: expected KIND/ID or KIND/ID/TIME, KIND one of vm, ct, host")]
    BadName(String),
    #[error("invalid backup id {0:?}: use 1-128 characters of A-Z a-z 0-9 . _ - not starting with '.'")]
    BadId(String),
    #[error("invalid archive name {0:?}: use NAME.img with NAME of A-Z a-z 0-9 . _ -")]
    BadArchiveName(String),
    #[error("no snapshot {0}")]
    NotFound(String),
    #[error("snapshot {0} is protected; `hoard unprotect {0}` first")]
    Protected(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: malformed manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error(transparent)]
    Index(#[from] FidxError),
    #[error(transparent)]
    Stream(#[from] DidxError),
    #[error("{path}: manifest fails authentication: {why}")]
    Unauthenticated { path: PathBuf, why: &'static str },
    #[error("{0}: index does not match the snapshot manifest")]
    IndexMismatch(PathBuf),
    #[error("{archive} of snapshot {snapshot} is a file tree, not a disk image")]
    NotAnImage { snapshot: String, archive: String },
    #[error("snapshot {snapshot} has no archive {archive} (it has: {have})")]
    NoSuchArchive {
        snapshot: String,
        archive: String,
        have: String,
    },
}

impl Classify for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::BadName(_) | SnapshotError::BadId(_) | SnapshotError::BadArchiveName(_) => {
                ErrorKind::Invalid
            }
            SnapshotError::NotAnImage { .. } => ErrorKind::Invalid,
            SnapshotError::NotFound(_) | SnapshotError::NoSuchArchive { .. } => ErrorKind::NotFound,
            SnapshotError::Protected(_) => ErrorKind::Busy,
            SnapshotError::Unauthenticated { .. } => ErrorKind::Auth,
            SnapshotError::Io { source, .. } => io_kind(source),
            SnapshotError::BadManifest { .. } | SnapshotError::IndexMismatch(_) => ErrorKind::Damaged,
            SnapshotError::Index(e) => e.kind(),
            SnapshotError::Stream(e) => e.kind(),
        }
    }

    fn context(&self) -> Context {
        match self {
            SnapshotError::Io { path, .. }
            | SnapshotError::BadManifest { path, .. }
            | SnapshotError::Unauthenticated { path, .. }
            | SnapshotError::IndexMismatch(path) => Context::path(path),
            SnapshotError::Index(e) => e.context(),
            SnapshotError::Stream(e) => e.context(),
            _ => Context::default(),
        }
    }
}

/// How an authenticated manifest file starts.
const MAC_PREFIX: &[u8] = b"{\"mac\":\"";
/// The prefix, 64 hex digits and `",`.
const MAC_HEAD_LEN: usize = MAC_PREFIX.len() + 64 + 2;

/// Splits a manifest file into its MAC (None for a manifest without one)
/// and the manifest text the MAC covers, which is what
/// [`Manifest::from_bytes`] parses.
pub(crate) fn split_mac(bytes: &[u8]) -> (Option<[u8; 32]>, std::borrow::Cow<'_, [u8]>) {
    let mac = bytes
        .strip_prefix(MAC_PREFIX)
        .filter(|rest| rest.get(64..66) == Some(b"\","))
        .and_then(|rest| std::str::from_utf8(&rest[..64]).ok())
        .and_then(crate::chunking::digest::from_hex::<32>);
    match mac {
        Some(mac) => {
            let mut text = Vec::with_capacity(bytes.len() - MAC_HEAD_LEN + 1);
            text.push(b'{');
            text.extend_from_slice(&bytes[MAC_HEAD_LEN..]);
            (Some(mac), text.into())
        }
        None => (None, bytes.into()),
    }
}

/// A JSON object's text `text` (starting with `{`) with `tag` in front as
/// its `mac` field: what [`split_mac`] splits again.
pub(crate) fn with_mac(text: &[u8], tag: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAC_HEAD_LEN + text.len());
    out.extend_from_slice(MAC_PREFIX);
    out.extend_from_slice(crate::chunking::digest::to_hex(tag).as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(text.get(1..).unwrap_or_default());
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Vm,
    Ct,
    Host,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Ct => "ct",
            Kind::Host => "host",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "vm" => Ok(Kind::Vm),
            "ct" => Ok(Kind::Ct),
            "host" => Ok(Kind::Host),
            _ => Err(format!("invalid kind {s:?}: use vm, ct or host")),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub(crate) fn validate_id(id: &str) -> Result<(), SnapshotError> {
    if safe_component(id) {
        Ok(())
    } else {
        Err(SnapshotError::BadId(id.into()))
    }
}

/// Image archive names: `NAME.img`. They become file names in the snapshot
/// directory, so they may not contain separators or start with a dot.
pub fn validate_archive_name(name: &str) -> Result<(), SnapshotError> {
    match name.strip_suffix(".img").or_else(|| name.strip_suffix(".tree")) {
        Some(stem) if safe_component(stem) => Ok(()),
        _ => Err(SnapshotError::BadArchiveName(name.into())),
    }
}

/// Whether an archive name is a tree archive's (`NAME.tree`).
pub fn is_tree(name: &str) -> bool {
    name.ends_with(".tree")
}

/// `KIND/ID/TIME`, TIME in RFC 3339 UTC with whole seconds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    pub kind: Kind,
    pub id: String,
    pub time: String,
}

impl SnapshotName {
    /// The snapshot's time as seconds since the epoch.
    pub fn unix_time(&self) -> i64 {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64)
    }

    pub fn dir(&self, snapshots_dir: &Path) -> PathBuf {
        snapshots_dir
            .join(self.kind.as_str())
            .join(&self.id)
            .join(&self.time)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.id, self.time)
    }
}

pub(crate) fn valid_time(t: &str) -> bool {
    t.len() == 20 && t.ends_with('Z') && humantime::parse_rfc3339(t).is_ok()
}

/// A user's reference to a snapshot: exact, or the newest of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRef {
    Exact(SnapshotName),
    Newest { kind: Kind, id: String },
}

impl FromStr for SnapshotRef {
    type Err = SnapshotError;
    fn from_str(s: &str) -> Result<SnapshotRef, SnapshotError> {
        let bad = || SnapshotError::BadName(s.into());
        let parts: Vec<&str> = s.trim_end_matches('/').split('/').collect();
        let (kind, id) = match parts.as_slice() {
            [k, i] | [k, i, _] => (k.parse::<Kind>().map_err(|_| bad())?, i.to_string()),
            _ => return Err(bad()),
        };
        validate_id(&id)?;
        match parts.get(2) {
            // `KIND/ID/latest` says what a bare group means where one
            // snapshot is wanted.
            None | Some(&"latest") => Ok(SnapshotRef::Newest { kind, id }),
            Some(t) if valid_time(t) => Ok(SnapshotRef::Exact(SnapshotName {
                kind,
                id,
                time: t.to_string(),
            })),
            Some(_) => Err(bad()),
        }
    }
}

/// What one archive of a snapshot holds, and what its backup cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStats {
    pub bytes_read: u64,
    pub new_chunks: u64,
    pub reused_chunks: u64,
    pub zero_chunks: u64,
    /// Uncompressed bytes of new chunks.
    pub new_bytes: u64,
    pub reused_bytes: u64,
    pub zero_bytes: u64,
    /// Bytes appended to packs for new chunks (records, after compression).
    pub stored_bytes: u64,
}

/// How an archive lists its chunks (its manifest `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    /// A disk image: a fixed index (`NAME.img.fidx`).
    Fixed,
    /// A file tree: metadata and payload streams, each a dynamic index.
    Tree,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveEntry {
    /// `NAME.img`.
    pub name: String,
    /// Index file in the snapshot directory: `NAME.img.fidx`.
    pub index: String,
    #[serde(rename = "type")]
    pub archive_type: ArchiveKind,
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// BLAKE3 of the index's digest array (hex), as in its header.
    pub index_checksum: String,
    /// Live VM disks: the dirty bitmap that tracks changes since this
    /// snapshot's point in time (manifest version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<BitmapRecord>,
    /// Tree archives: the payload stream (manifest version 3). For trees,
    /// `index`, `size`, `chunk_count` and `index_checksum` describe the
    /// metadata stream and `chunk_size` is the average chunk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<StreamRecord>,
    /// Tree archives: what the walk found (manifest version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeStats>,
    /// Where it was read from: a file or device path, a directory, a QEMU
    /// block node, the configuration files (manifest version 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub stats: ArchiveStats,
}

impl ArchiveEntry {
    /// What the archive holds: an image's bytes, a tree's files' bytes (not
    /// its metadata stream's, which is what `size` holds for a tree).
    pub fn logical_size(&self) -> u64 {
        match (&self.archive_type, &self.tree) {
            (ArchiveKind::Tree, Some(t)) => t.file_bytes,
            _ => self.size,
        }
    }
}

/// A chunked stream of a tree archive: its `.didx` and what its header says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRecord {
    pub index: String,
    pub size: u64,
    pub chunk_count: u64,
    pub index_checksum: String,
}

/// Counts of a tree backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeStats {
    pub entries: u64,
    pub files: u64,
    /// Bytes of all regular files in the archive; the payload stream's size
    /// minus this is the waste that reuse has accumulated.
    #[serde(default)]
    pub file_bytes: u64,
    /// Unchanged files whose payload was referenced again, unread.
    pub reused_files: u64,
    pub reused_file_bytes: u64,
    /// Bytes of the previous payload chunks referenced again: minus
    /// `reused_file_bytes`, the bytes of other files they also hold.
    pub reused_chunk_bytes: u64,
    pub changed_while_read: u64,
    pub unreadable: u64,
    pub excluded: u64,
    pub mounts_skipped: u64,
}

/// The QEMU dirty bitmap started at a snapshot's point in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitmapRecord {
    /// Block node the bitmap lives on.
    pub node: String,
    /// Bitmap name, `hoard-` followed by the generation uuid.
    pub name: String,
}

/// How a VM backup mode went (`backup-vm`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// The guest agent at the point in time: `frozen`, `skipped`,
    /// `unavailable: REASON`, `freeze failed: REASON`, `thaw failed: REASON`
    /// or `not running` (stop mode: the guest was shut down).
    pub guest_agent: String,
    /// Seconds the guest did not run because of the backup.
    pub downtime_secs: f64,
    /// Seconds the guest's file systems were frozen.
    pub frozen_secs: f64,
    /// What each disk's dirty bitmap allowed (`new bitmap`, `OK (...)`,
    /// `clean`, `bitmap invalid: REASON, full read`).
    pub disks: Vec<VmDisk>,
}

/// How a container backup mode went (`backup-ct`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtRecord {
    /// Seconds the container was stopped because of the backup.
    pub downtime_secs: f64,
    /// Seconds it was frozen.
    pub frozen_secs: f64,
    /// Suspend mode: seconds of the first pass, while it ran.
    pub first_pass_secs: f64,
    /// The archived volumes: the root file system and included mounts.
    pub volumes: Vec<CtVolume>,
    /// Mount entries not archived, and why.
    pub skipped_mounts: Vec<CtSkipped>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtVolume {
    pub archive: String,
    /// Where it is mounted in the container (`/` for the root).
    pub mount_point: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtSkipped {
    pub mount_point: String,
    pub source: String,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    pub archive: String,
    pub node: String,
    pub bitmap: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub kind: Kind,
    pub id: String,
    pub time: String,
    /// Backup mode (VM/CT modes); absent for plain image backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// VM backup modes (v4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRecord>,
    /// Container backup modes (v5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtRecord>,
    /// The host name of the machine that made it (v6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub tool_version: String,
    pub duration_secs: f64,
    pub archives: Vec<ArchiveEntry>,
}

impl Manifest {
    /// Parses and validates manifest bytes; also the fuzz target.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        let bad = |message: String| SnapshotError::BadManifest {
            path: path.to_path_buf(),
            message,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(bad(format!("format is {:?}, not {MANIFEST_FORMAT:?}", m.format)));
        }
        let too_new_for = |a: &ArchiveEntry| {
            (m.version < 2 && a.bitmap.is_some())
                || (m.version < 3 && (a.payload.is_some() || a.tree.is_some()))
                || (m.version < 6 && a.source.is_some())
        };
        if !(1..=MANIFEST_VERSION).contains(&m.version)
            || m.archives.iter().any(too_new_for)
            || (m.version < 4 && m.vm.is_some())
            || (m.version < 5 && m.ct.is_some())
            || (m.version < 6 && m.host.is_some())
        {
            return Err(bad(format!("unsupported manifest version {}", m.version)));
        }
        validate_id(&m.id).map_err(|e| bad(e.to_string()))?;
        if !valid_time(&m.time) {
            return Err(bad(format!("invalid time {:?}", m.time)));
        }
        for a in &m.archives {
            validate_archive_name(&a.name).map_err(|e| bad(e.to_string()))?;
            let valid = if is_tree(&a.name) {
                a.archive_type == ArchiveKind::Tree
                    && a.index == format!("{}.meta.didx", a.name)
                    && a.payload
                        .as_ref()
                        .is_some_and(|p| p.index == format!("{}.payload.didx", a.name))
            } else {
                a.archive_type == ArchiveKind::Fixed
                    && a.index == format!("{}.fidx", a.name)
                    && a.payload.is_none()
            };
            if !valid {
                return Err(bad(format!("archive {:?} has an invalid index entry", a.name)));
            }
        }
        Ok(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serialises")
    }

    /// The file of an authenticated manifest: `{"mac":"HEX",` and then
    /// [`to_bytes`](Self::to_bytes) after its opening brace, where HEX is
    /// `mac` of those bytes (format-spec/manifest.md).
    pub fn to_bytes_with_mac(&self, mac: impl FnOnce(&[u8]) -> [u8; 32]) -> Vec<u8> {
        let text = self.to_bytes();
        let tag = mac(&text);
        with_mac(&text, &tag)
    }

    pub fn name(&self) -> SnapshotName {
        SnapshotName {
            kind: self.kind,
            id: self.id.clone(),
            time: self.time.clone(),
        }
    }

    pub fn archive(&self, name: &str) -> Result<&ArchiveEntry, SnapshotError> {
        self.archives
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| SnapshotError::NoSuchArchive {
                snapshot: self.name().to_string(),
                archive: name.into(),
                have: self
                    .archives
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r: SnapshotRef = "vm/100/2026-11-26T07:00:00Z".parse().unwrap();
        assert!(matches!(r, SnapshotRef::Exact(ref n) if n.id == "100" && n.kind == Kind::Vm));
        assert_eq!(
            "host/web".parse::<SnapshotRef>().unwrap(),
            SnapshotRef::Newest {
                kind: Kind::Host,
                id: "web".into()
            }
        );
        assert_eq!(
            "host/web/latest".parse::<SnapshotRef>().unwrap(),
            "host/web".parse::<SnapshotRef>().unwrap()
        );
        for bad in [
            "vm",
            "pc/1",
            "vm/../x",
            "vm/1/yesterday",
            "vm/.x",
            "vm/a b",
            "vm/1/2/3",
        ] {
            assert!(bad.parse::<SnapshotRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn archive_names() {
        assert!(validate_archive_name("disk0.img").is_ok());
        for bad in ["disk0", ".img", "../x.img", "a/b.img", ".hidden.img", "x.IMG"] {
            assert!(validate_archive_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_rejects_path_tricks() {
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: 1,
            kind: Kind::Host,
            id: "a".into(),
            time: "2026-11-26T07:00:00Z".into(),
            mode: None,
            vm: None,
            ct: None,
            host: None,
            tool_version: "0".into(),
            duration_secs: 1.0,
            archives: vec![ArchiveEntry {
                name: "d.img".into(),
                index: "d.img.fidx".into(),
                archive_type: ArchiveKind::Fixed,
                size: 1,
                chunk_size: 65536,
                chunk_count: 1,
                index_checksum: "00".into(),
                bitmap: None,
                payload: None,
                tree: None,
                source: None,
                stats: ArchiveStats::default(),
            }],
        };
        let p = Path::new("m.json");
        assert_eq!(Manifest::from_bytes(p, &m.to_bytes()).unwrap(), m);
        let mut evil = m.clone();
        evil.archives[0].index = "../../../etc/passwd".into();
        assert!(Manifest::from_bytes(p, &evil.to_bytes()).is_err());
        // Version 1 cannot carry a bitmap; version 2 can; later ones are refused.
        let mut with_bitmap = m.clone();
        with_bitmap.archives[0].bitmap = Some(BitmapRecord {
            node: "disk0".into(),
            name: "hoard-x".into(),
        });
        assert!(Manifest::from_bytes(p, &with_bitmap.to_bytes()).is_err());
        with_bitmap.version = 2;
        assert!(Manifest::from_bytes(p, &with_bitmap.to_bytes()).is_ok());
        // Only version 4 carries how a VM mode went.
        let mut with_vm = m.clone();
        with_vm.mode = Some("suspend".into());
        with_vm.vm = Some(VmRecord {
            guest_agent: "frozen".into(),
            downtime_secs: 0.2,
            frozen_secs: 0.1,
            disks: vec![VmDisk {
                archive: "d.img".into(),
                node: "disk0".into(),
                bitmap: "new bitmap".into(),
            }],
        });
        with_vm.version = 3;
        assert!(Manifest::from_bytes(p, &with_vm.to_bytes()).is_err());
        with_vm.version = 4;
        assert_eq!(Manifest::from_bytes(p, &with_vm.to_bytes()).unwrap(), with_vm);
        let mut newer = m;
        newer.version = MANIFEST_VERSION + 1;
        assert!(Manifest::from_bytes(p, &newer.to_bytes()).is_err());
    }
}
