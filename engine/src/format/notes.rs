//! `notes`: what a user wrote about a snapshot (in its directory) or a
//! group (in `snapshots/KIND/ID/`), as PBS keeps both. Sealed in an
//! encrypted store, bound to what it describes (format-spec/store.md).

use std::path::{Path, PathBuf};

use super::sealed_text::{Seal, SealedText};
use super::snapshot::{Kind, SnapshotName};
use crate::crypto::keys::{AuthFailed, StoreKeys};

pub(crate) const NOTES_FILE: &str = "notes";

/// The longest note kept: a description, not a document.
pub(crate) const NOTES_MAX: usize = 64 * 1024;

/// What a note describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotesOf {
    Snapshot(SnapshotName),
    Group(Kind, String),
}

impl NotesOf {
    /// The directory its `notes` file is in, under `snapshots_dir`.
    pub fn dir(&self, snapshots_dir: &Path) -> PathBuf {
        match self {
            NotesOf::Snapshot(name) => name.dir(snapshots_dir),
            NotesOf::Group(kind, id) => snapshots_dir.join(kind.as_str()).join(id),
        }
    }
}

impl std::fmt::Display for NotesOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotesOf::Snapshot(name) => write!(f, "{name}"),
            NotesOf::Group(kind, id) => write!(f, "{kind}/{id}"),
        }
    }
}

const MAGIC: &[u8] = b"hoard sealed notes 1\n";

/// Bound to `hoard notes\n` and the snapshot's or group's name, so a note
/// is never a task log and never another snapshot's or group's.
fn aad(of: &str) -> Vec<u8> {
    format!("hoard notes\n{of}").into_bytes()
}

/// The bytes to store for the note on `of` (`KIND/ID` or `KIND/ID/TIME`).
pub(crate) fn encode(text: &str, of: &str, keys: Option<&StoreKeys>) -> Result<Vec<u8>, AuthFailed> {
    let aad = aad(of);
    Seal {
        magic: MAGIC,
        aad: &aad,
    }
    .encode(text, keys)
}

/// The note on `of` from its stored bytes; also a fuzz target's entry.
pub(crate) fn decode(bytes: &[u8], of: &str, sealed_store: bool, keys: Option<&StoreKeys>) -> SealedText {
    let aad = aad(of);
    Seal {
        magic: MAGIC,
        aad: &aad,
    }
    .decode(bytes, sealed_store, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::master_key::MasterKey;
    use crate::crypto::Protection;

    #[test]
    fn a_sealed_note_opens_only_as_its_own_and_never_as_a_task_log() {
        let keys = StoreKeys::derive(&MasterKey::generate().unwrap(), Protection::Encrypt);
        let bytes = encode("before the upgrade to 8.3", "vm/100", Some(&keys)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("upgrade"));
        assert_eq!(
            decode(&bytes, "vm/100", true, Some(&keys)),
            SealedText::Text("before the upgrade to 8.3".into())
        );
        assert_eq!(decode(&bytes, "vm/101", true, Some(&keys)), SealedText::Damaged);
        assert_eq!(decode(&bytes, "vm/100", true, None), SealedText::Sealed);
        let log = crate::format::task_log::encode("x", "vm/100", Some(&keys)).unwrap();
        assert_eq!(decode(&log, "vm/100", true, Some(&keys)), SealedText::Unsealed);
    }
}
