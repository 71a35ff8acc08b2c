//! `verify.json`: the outcome of a snapshot's last verification, kept
//! beside its manifest (format-spec/store.md).

use serde::{Deserialize, Serialize};

pub(crate) const VERIFY_FILE: &str = "verify.json";
pub(crate) const VERIFY_STATE_VERSION: u32 = 1;

/// What the last verification of a snapshot found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every chunk it references was read back and checked.
    Ok,
    /// A chunk is damaged or missing, or an index file is unreadable.
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verify state of one snapshot, as stored in `verify.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    /// Format version of this record, [`VERIFY_STATE_VERSION`].
    pub version: u32,
    pub state: Verdict,
    /// RFC 3339 UTC time of the verification.
    pub time: String,
    /// Non-zero chunk references of this snapshot that were checked.
    pub chunks: u64,
    /// Digests of the damaged or missing chunks it references.
    pub bad_chunks: Vec<String>,
    /// Why its manifest or an index file could not be read, or does not
    /// match the manifest (then its chunks were not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VerifyState {
    pub fn ok(&self) -> bool {
        self.state == Verdict::Ok
    }

    /// Parses `verify.json`; also the fuzz target. A state this hoard
    /// cannot read counts as never verified: safe, since the snapshot is
    /// then simply verified again.
    pub fn from_bytes(bytes: &[u8]) -> Option<VerifyState> {
        serde_json::from_slice(bytes)
            .ok()
            .filter(|s: &VerifyState| s.version == VERIFY_STATE_VERSION)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("state serialises")
    }
}

/// What a protected store's `verify.json` MAC covers: a fixed label, the
/// snapshot's name and the state's text (the file without its `mac`), so
/// that a state is neither a manifest nor another snapshot's state.
pub(crate) fn mac_input(snapshot: &str, text: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(32 + snapshot.len() + text.len());
    input.extend_from_slice(b"hoard verify state\n");
    input.extend_from_slice(snapshot.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(text);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_written_and_unknown_ones_as_never_verified() {
        let s = br#"{"version":1,"state":"failed","time":"2026-11-26T07:00:00Z","chunks":3,"bad_chunks":["00"],"error":"x"}"#;
        let state = VerifyState::from_bytes(s).unwrap();
        assert_eq!(state.state, Verdict::Failed);
        assert_eq!(VerifyState::from_bytes(&state.to_bytes()), Some(state));
        assert!(VerifyState::from_bytes(
            br#"{"version":1,"state":"maybe","time":"","chunks":0,"bad_chunks":[]}"#
        )
        .is_none());
    }
}
