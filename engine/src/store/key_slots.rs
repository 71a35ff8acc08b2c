//! Key slots: `STORE/keys/NAME.key`, each the store's secret wrapped under
//! one passphrase (format-spec/key-file.md). Several slots let a
//! passphrase change, or a second person hold one, without re-encrypting
//! anything: every slot unwraps to the same secret.

use std::fs;
use std::path::{Path, PathBuf};

use super::address;
use super::config::{StoreConfig, PROTECTED_STORE_VERSION};
use super::error::{io_err, StoreError};
use super::objects::ObjectKind;
use crate::crypto::master_key::MasterKey;
use crate::crypto::Protection;
use crate::format::key_file::{CheckedKeyFile, KeyFor, KeyMode};
use crate::format::key_wrap::{self, KdfCost};

pub(crate) const KEYS_DIR: &str = "keys";
const SLOT_SUFFIX: &str = ".key";

/// One slot as `hoard key list` shows it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub path: PathBuf,
    pub file: CheckedKeyFile,
}

/// A slot an unlock skips: its name and why.
pub type UnusableSlot = (String, StoreError);

/// Slot names become file names: the snapshot id rules.
pub fn validate_slot_name(name: &str) -> Result<(), StoreError> {
    if crate::format::snapshot::safe_component(name) {
        Ok(())
    } else {
        Err(StoreError::BadSlotName(name.into()))
    }
}

/// Every slot of the store at `root`, by name. A slot that does not parse
/// is an error naming its file: a damaged slot is never skipped quietly.
pub fn list(root: &Path) -> Result<Vec<Slot>, StoreError> {
    let (slots, unusable) = list_usable(root)?;
    match unusable.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(slots),
    }
}

/// The slots an unlock may try, and apart, each slot that does not parse
/// (or asks for more than the KDF's caps) with its error: a planted or
/// damaged slot never stops the others from opening, and is named.
pub fn list_usable(root: &Path) -> Result<(Vec<Slot>, Vec<UnusableSlot>), StoreError> {
    let dir = root.join(KEYS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut slots = Vec::new();
    let mut unusable = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(SLOT_SUFFIX) else {
            continue; // a `.tmp` left by a killed write
        };
        let path = entry.path();
        match read_key_file(&path) {
            Ok(file) => slots.push(Slot {
                name: name.to_string(),
                file,
                path,
            }),
            Err(e) => unusable.push((name.to_string(), e)),
        }
    }
    slots.sort_by(|a, b| a.name.cmp(&b.name));
    unusable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((slots, unusable))
}

/// Reads and parses a key file anywhere (a slot, or `--keyfile`).
pub fn read_key_file(path: &Path) -> Result<CheckedKeyFile, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    CheckedKeyFile::parse(&bytes).map_err(|e| StoreError::Key {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Writes `file` as slot `name`; `replace` allows overwriting it (a
/// passphrase change), otherwise an existing slot is an error.
pub fn write(root: &Path, name: &str, file: &CheckedKeyFile, replace: bool) -> Result<PathBuf, StoreError> {
    validate_slot_name(name)?;
    let dir = root.join(KEYS_DIR);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(format!("{name}{SLOT_SUFFIX}"));
    if !replace && path.exists() {
        return Err(StoreError::SlotExists(name.into()));
    }
    let object = format!("{KEYS_DIR}/{name}{SLOT_SUFFIX}");
    address::open(root)?.put(ObjectKind::Key, &object, &file.to_bytes(), !replace)?;
    Ok(path)
}

/// A name no slot has: `key-1`, `key-2`, ...
pub fn free_name(root: &Path) -> Result<String, StoreError> {
    let taken: Vec<String> = list(root)?.into_iter().map(|s| s.name).collect();
    Ok((1..)
        .map(|i| format!("key-{i}"))
        .find(|n| !taken.contains(n))
        .expect("some number is free"))
}

/// Removes slot `name`.
pub fn remove(root: &Path, name: &str) -> Result<(), StoreError> {
    validate_slot_name(name)?;
    let object = format!("{KEYS_DIR}/{name}{SLOT_SUFFIX}");
    if !root.join(&object).exists() {
        return Err(StoreError::NoSuchSlot(name.into()));
    }
    address::open(root)?.delete(ObjectKind::Key, &object)
}

/// Unwraps the secret from the first of `slots` that `passphrase` opens,
/// trying slot `first` (the one that opened last time) before the others;
/// returns it with that slot's name. A slot that unwraps to a secret other
/// than the one it names is passed over like a wrong passphrase, so that
/// which slots are planted says nothing about the passphrase.
pub fn unlock(
    slots: &[Slot],
    passphrase: &[u8],
    first: Option<&str>,
    store: KeyFor,
) -> Result<(MasterKey, String), StoreError> {
    use crate::format::key_wrap::KeyError;
    let ordered = slots
        .iter()
        .filter(|s| Some(s.name.as_str()) == first)
        .chain(slots.iter().filter(|s| Some(s.name.as_str()) != first));
    for slot in ordered {
        match key_wrap::unwrap(&slot.file, passphrase) {
            Ok(key) => {
                check_store(&slot.file, &slot.path, store)?;
                return Ok((key, slot.name.clone()));
            }
            Err(KeyError::WrongPassphrase | KeyError::FingerprintMismatch) => continue,
            Err(e) => {
                return Err(StoreError::Key {
                    path: slot.path.clone(),
                    source: e,
                })
            }
        }
    }
    Err(StoreError::WrongPassphrase {
        tried: slots
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Fails unless key file `file` (at `path`), which opened, is for a store
/// like `store`. The mode and store version a version 2 key file names
/// are covered by its tag, so a config that says otherwise was changed (a
/// mode switched, or a version 3 store passed off as a version 2 one,
/// whose keys and chunker are weaker); a version 1 file names neither.
pub fn check_store(file: &CheckedKeyFile, path: &Path, store: KeyFor) -> Result<(), StoreError> {
    match file.for_store {
        Some(key) if key != store => Err(StoreError::KeyStoreMismatch {
            path: path.to_path_buf(),
            key,
            store,
        }),
        _ => Ok(()),
    }
}

/// The kind of store `config` describes, as a key file names it (a plain
/// store's is never compared: it has no key).
pub fn key_for(config: &StoreConfig) -> KeyFor {
    KeyFor {
        mode: key_mode(config.encryption),
        store_version: config.version,
    }
}

/// What the key file of a new `mode` store names.
pub fn new_store_key_for(mode: Protection) -> KeyFor {
    KeyFor {
        mode: key_mode(mode),
        store_version: PROTECTED_STORE_VERSION,
    }
}

fn key_mode(mode: Protection) -> KeyMode {
    match mode {
        Protection::Sign => KeyMode::Sign,
        // A plain store has no key file to compare; encrypt is the mode
        // that refuses the most.
        Protection::Encrypt | Protection::None => KeyMode::Encrypt,
    }
}

/// `key` of a `store` wrapped under `passphrase` at `cost`, stamped now.
/// A cost above the caps that every reader enforces is refused: nobody
/// could open it.
pub fn wrap(
    key: &MasterKey,
    passphrase: &[u8],
    cost: KdfCost,
    store: KeyFor,
) -> Result<CheckedKeyFile, StoreError> {
    use crate::format::key_file::{MAX_ITERATIONS, MAX_MEMORY_KIB, MAX_PARALLELISM};
    if cost.memory_kib > MAX_MEMORY_KIB
        || cost.iterations > MAX_ITERATIONS
        || cost.parallelism > MAX_PARALLELISM
    {
        return Err(StoreError::Key {
            path: PathBuf::from("(new key file)"),
            source: crate::format::key_wrap::KeyError::Kdf(format!(
                "cost above the caps every reader enforces: at most {MAX_MEMORY_KIB} KiB, {MAX_ITERATIONS} passes, {MAX_PARALLELISM} lanes"
            )),
        });
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    key_wrap::wrap(key, passphrase, cost, &now, store).map_err(|source| StoreError::Key {
        path: PathBuf::from("(new key file)"),
        source,
    })
}
