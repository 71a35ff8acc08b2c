//! `task.log`: the log of the job run that made a snapshot, kept beside
//! its manifest (format-spec/store.md). Plain UTF-8 text; in an encrypted
//! store sealed with the store's AES-256-GCM key, bound to its snapshot's
//! name, since a log names what the backup saw (paths in warnings).

use super::sealed_text::{Seal, SealedText};
use crate::crypto::keys::{AuthFailed, StoreKeys};

pub(crate) const TASK_LOG_FILE: &str = "task.log";

/// The most of a log that is kept: its head and its tail.
pub(crate) const TASK_LOG_MAX: usize = 1 << 20;

/// The first bytes of a sealed log (then nonce, ciphertext, tag).
pub(crate) const SEALED_MAGIC: &[u8] = b"hoard sealed task log 1\n";

/// The bytes to store for `log` of snapshot `snapshot` (`KIND/ID/TIME`):
/// shortened to [`TASK_LOG_MAX`], and sealed when `keys` encrypt.
pub(crate) fn encode(log: &str, snapshot: &str, keys: Option<&StoreKeys>) -> Result<Vec<u8>, AuthFailed> {
    let seal = Seal {
        magic: SEALED_MAGIC,
        aad: snapshot.as_bytes(),
    };
    seal.encode(&shorten(log), keys)
}

/// Reads stored bytes of a store that seals its logs (`sealed_store`: it
/// encrypts) or not (also the fuzz target's entry): never fails, says what
/// it could not read.
pub(crate) fn decode(
    bytes: &[u8],
    snapshot: &str,
    sealed_store: bool,
    keys: Option<&StoreKeys>,
) -> SealedText {
    let seal = Seal {
        magic: SEALED_MAGIC,
        aad: snapshot.as_bytes(),
    };
    seal.decode(bytes, sealed_store, keys)
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
            SealedText::Text(log.into())
        );
        assert_eq!(
            decode(&bytes, "ct/101/2026-12-03T02:00:00Z", true, None),
            SealedText::Sealed
        );
        assert_eq!(
            decode(&bytes, "ct/102/2026-12-03T02:00:00Z", true, Some(&keys)),
            SealedText::Damaged
        );
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode(&bad, "ct/101/2026-12-03T02:00:00Z", true, Some(&keys)),
            SealedText::Damaged
        );
        // A plain-text log planted in an encrypt store is not shown as
        // the job's, with the key or without.
        for k in [Some(&keys), None] {
            assert_eq!(
                decode(log.as_bytes(), "ct/101/2026-12-03T02:00:00Z", true, k),
                SealedText::Unsealed
            );
        }
        // Signing keys and plain stores keep it as text.
        let sign = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Sign);
        assert_eq!(encode(log, "x", Some(&sign)).unwrap(), log.as_bytes());
        assert_eq!(
            decode(log.as_bytes(), "x", false, None),
            SealedText::Text(log.into())
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
