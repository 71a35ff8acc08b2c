//! Defaults and checked values of job files. Each checker turns a bad
//! value into a serde error, which the TOML parser places at the value
//! (so the error names its line).

use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::chunking::cdc::CdcParams;
use crate::chunking::chunker::ChunkSize;
use crate::format::chunk::Compression;
use crate::format::snapshot::{safe_component, validate_archive_name, Kind};

pub(super) fn one() -> usize {
    1
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_lxcpath() -> PathBuf {
    PathBuf::from("/var/lib/lxc")
}
pub(super) fn default_vm_stop_timeout() -> u64 {
    600
}
pub(super) fn default_ct_stop_timeout() -> u64 {
    60
}
pub(super) fn default_hook_timeout() -> u64 {
    600
}
pub(super) fn default_outdated_after() -> u32 {
    30
}

/// A number of days, 1..=3650.
pub(super) fn days<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if (1..=3650).contains(&n) {
        Ok(n)
    } else {
        Err(de::Error::custom(format!("{n} days: give 1..3650")))
    }
}
pub(super) fn default_plain_kind() -> Kind {
    Kind::Host
}
pub(super) fn default_image_name() -> String {
    "disk.img".into()
}
pub(super) fn default_tree_name() -> String {
    "root.tree".into()
}

pub(super) fn nonempty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(s)
}

pub(super) fn group_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !safe_component(&s) {
        return Err(de::Error::custom(format!(
            "invalid id {s:?}: 1-128 characters of A-Z a-z 0-9 . _ -, not starting with ."
        )));
    }
    Ok(s)
}

pub(super) fn optional_group_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    group_id(d).map(Some)
}

pub(super) fn ct_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.starts_with('-') || s.contains(['/', '\0', '\n']) {
        return Err(de::Error::custom(format!("invalid container name {s:?}")));
    }
    Ok(s)
}

pub(super) fn archive_name<E: de::Error>(s: String, suffix: &str) -> Result<String, E> {
    if !s.ends_with(suffix) || validate_archive_name(&s).is_err() {
        return Err(E::custom(format!(
            "invalid archive name {s:?}: NAME{suffix}, NAME of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(s)
}

pub(super) fn image_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    archive_name(String::deserialize(d)?, ".img")
}

pub(super) fn tree_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    archive_name(String::deserialize(d)?, ".tree")
}

pub(super) fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(de::Error::custom(
            "must be at least 1 (leave the key out to not use it)",
        )),
        n => Ok(Some(n)),
    }
}

pub(super) fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n @ 0..=crate::MAX_THREADS => Ok(n),
        n => Err(de::Error::custom(format!(
            "{n}: use 0 (one per core) to {}",
            crate::MAX_THREADS
        ))),
    }
}

pub(super) fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
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

pub(super) fn size_value<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<u64, D::Error> {
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

pub(super) fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match size_value(d, "bytes per second")? {
        n if n < 1 << 20 => Err(de::Error::custom("at least 1M (bytes per second)")),
        n => Ok(Some(n)),
    }
}

pub(super) fn compression<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Compression>, D::Error> {
    String::deserialize(d)?
        .parse()
        .map(Some)
        .map_err(de::Error::custom)
}

pub(super) fn chunk_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ChunkSize>, D::Error> {
    let n = size_value(d, "chunk size")?;
    ChunkSize::new(n).map(Some).map_err(de::Error::custom)
}

pub(super) fn tree_chunk_avg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CdcParams>, D::Error> {
    let n = size_value(d, "average chunk size")?;
    u32::try_from(n)
        .ok()
        .and_then(CdcParams::new)
        .map(Some)
        .ok_or_else(|| de::Error::custom("average chunk size must be a power of two, 4K..4M"))
}

/// A mail address as a header value: no line breaks or control characters
/// (they would add headers to the mail).
pub(super) fn check_address<E: de::Error>(a: &str) -> Result<(), E> {
    if a.is_empty() || a.chars().any(|c| c.is_control()) || !a.contains(|c: char| c.is_alphanumeric()) {
        return Err(E::custom(format!("invalid mail address {a:?}")));
    }
    Ok(())
}

pub(super) fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for a in &list {
        check_address::<D::Error>(a)?;
    }
    Ok(list)
}

pub(super) fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let a = String::deserialize(d)?;
    check_address::<D::Error>(&a)?;
    Ok(Some(a))
}

pub(super) fn optional_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
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
