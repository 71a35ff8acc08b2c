//! `task.log`: the log of the job run that made a snapshot, kept beside
//! its manifest (format-spec/store.md). Plain UTF-8 text; in an encrypted
//! store sealed with the store's AES-256-GCM key, bound to its snapshot's
//! name, since a log names what the backup saw (paths in warnings).

use crate::crypto::keys::{StoreKeys, SEAL_OVERHEAD};

pub const TASK_LOG_FILE: &str = "task.log";

/// The most of a log that is kept: its head and its tail.
pub const TASK_LOG_MAX: usize = 1 << 20;

/// The first bytes of a sealed log (then nonce, ciphertext, tag).
pub const SEALED_MAGIC: &[u8] = b"hoard sealed task log 1\n";

/// A stored log, as far as this reader can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskLog {
    Text(String),
    /// Sealed, and no key was given.
    Sealed,
    /// Sealed, and it does not open with the key given: damaged, or not
    /// this snapshot's.
    Damaged,
    /// Plain text in a store that encrypts: not written by hoard (which
    /// seals every log there), so not shown as the job's log.
    Unsealed,
}

/// The bytes to store for `log` of snapshot `snapshot` (`KIND/ID/TIME`):
/// shortened to [`TASK_LOG_MAX`], and sealed when `keys` encrypt.
pub fn encode(
    log: &str,
    snapshot: &str,
    keys: Option<&StoreKeys>,
) -> Result<Vec<u8>, crate::crypto::keys::AuthFailed> {
    let text = shorten(log);
    let Some(keys) = keys.filter(|k| k.encrypts()) else {
        return Ok(text.into_bytes());
    };
    let mut buf = Vec::with_capacity(SEALED_MAGIC.len() + text.len() + SEAL_OVERHEAD);
    buf.extend_from_slice(SEALED_MAGIC);
    let at = buf.len();
    buf.extend_from_slice(&[0; crate::crypto::keys::NONCE_LEN]);
    buf.extend_from_slice(text.as_bytes());
    keys.seal(snapshot.as_bytes(), &mut buf, at)?;
    Ok(buf)
}

/// Reads stored bytes of a store that seals its logs (`sealed_store`: it
/// encrypts) or not (also the fuzz target's entry): never fails, says what
/// it could not read.
pub fn decode(bytes: &[u8], snapshot: &str, sealed_store: bool, keys: Option<&StoreKeys>) -> TaskLog {
    let Some(sealed) = bytes.strip_prefix(SEALED_MAGIC) else {
        if sealed_store {
            return TaskLog::Unsealed;
        }
        return TaskLog::Text(String::from_utf8_lossy(bytes).into_owned());
    };
    let Some(keys) = keys.filter(|k| k.encrypts()) else {
        return TaskLog::Sealed;
    };
    let Some(len) = sealed.len().checked_sub(SEAL_OVERHEAD) else {
        return TaskLog::Damaged;
    };
    let mut out = vec![0; len];
    match keys.open(snapshot.as_bytes(), sealed, &mut out) {
        Ok(()) => TaskLog::Text(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => TaskLog::Damaged,
    }
}

/// `log`, or its first and last [`TASK_LOG_MAX`]/2 bytes (at line ends)
/// with a note of what was left out.
fn shorten(log: &str) -> String {
    if log.len() <= TASK_LOG_MAX {
        return log.to_string();
    }
    let half = TASK_LOG_MAX / 2;
    // Cut at line ends (byte '\n' never sits inside a UTF-8 character).
    let bytes = log.as_bytes();
    let head_end = bytes[..half]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let from = log.len() - half;
    let tail_start = bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(log.len(), |i| from + i + 1);
    format!(
        "{}[... {} bytes of the log left out ...]\n{}",
        &log[..head_end],
        tail_start - head_end,
        &log[tail_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::master_key::MasterKey;
    use crate::crypto::Protection;

    #[test]
    fn a_sealed_log_opens_only_with_its_key_and_snapshot() {
        let keys = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Encrypt);
        let log = "2026-12-03T02:00:00Z cannot read /root/secret-plans.txt\n";
        let bytes = encode(log, "ct/101/2026-12-03T02:00:00Z", Some(&keys)).unwrap();
        assert!(bytes.starts_with(SEALED_MAGIC));
        assert!(!String::from_utf8_lossy(&bytes).contains("secret-plans"));
        assert_eq!(
            decode(&bytes, "ct/101/2026-12-03T02:00:00Z", true, Some(&keys)),
            TaskLog::Text(log.into())
        );
        assert_eq!(
            decode(&bytes, "ct/101/2026-12-03T02:00:00Z", true, None),
            TaskLog::Sealed
        );
        assert_eq!(
            decode(&bytes, "ct/102/2026-12-03T02:00:00Z", true, Some(&keys)),
            TaskLog::Damaged
        );
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode(&bad, "ct/101/2026-12-03T02:00:00Z", true, Some(&keys)),
            TaskLog::Damaged
        );
        // A plain-text log planted in an encrypt store is not shown as
        // the job's, with the key or without.
        for k in [Some(&keys), None] {
            assert_eq!(
                decode(log.as_bytes(), "ct/101/2026-12-03T02:00:00Z", true, k),
                TaskLog::Unsealed
            );
        }
        // Signing keys and plain stores keep it as text.
        let sign = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Sign);
        assert_eq!(encode(log, "x", Some(&sign)).unwrap(), log.as_bytes());
        assert_eq!(
            decode(log.as_bytes(), "x", false, None),
            TaskLog::Text(log.into())
        );
    }

    #[test]
    fn a_long_log_keeps_its_head_and_tail_at_line_ends() {
        let line = "2026-12-03T02:00:00Z ünïcode line of some length\n";
        let log = line.repeat(TASK_LOG_MAX / line.len() * 3);
        let short = shorten(&log);
        assert!(short.len() <= TASK_LOG_MAX + 100);
        assert!(short.starts_with(line) && short.ends_with(line));
        assert!(short.contains("bytes of the log left out ...]\n2026"));
        assert_eq!(shorten("short\n"), "short\n");
    }
}
