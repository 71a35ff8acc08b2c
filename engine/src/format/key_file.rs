//! Key files: an encrypted store's secret, wrapped by a passphrase
//! (format-spec/key-file.md). JSON, so that a user can tell one from the
//! other; every field is checked before anything is derived from it, and
//! the KDF's cost is capped, so a planted key file cannot make an unlock
//! allocate gigabytes or run for hours.

use serde::{Deserialize, Serialize};

pub(crate) const KEY_FILE_FORMAT: &str = "hoard-key";
/// Written: version 2, which names the store mode the secret is for.
/// Read: 1 and 2.
pub(crate) const KEY_FILE_VERSION: u32 = 2;
pub(crate) const KDF_ARGON2ID: &str = "argon2id";

/// Largest argon2id memory a key file may ask for: 1 GiB, what a backup
/// host can spare for a second or two. A planted slot asking for more is
/// skipped, not obeyed.
pub(crate) const MAX_MEMORY_KIB: u32 = 1 << 20;
/// At most 10 passes: 1 GiB × 10 is about 15 s on one core here.
pub(crate) const MAX_ITERATIONS: u32 = 10;
pub(crate) const MAX_PARALLELISM: u32 = 16;

/// Lengths of the hex fields, in bytes.
pub(crate) const SALT_LEN: usize = 16;
pub(crate) const NONCE_LEN: usize = 12;
/// The 32-byte secret and the AES-GCM tag.
pub(crate) const WRAPPED_LEN: usize = 32 + 16;
pub(crate) use crate::crypto::master_key::FINGERPRINT_LEN;

/// A key file as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub format: String,
    pub version: u32,
    /// Version 2: the protection mode of the store whose secret this is
    /// (`sign` or `encrypt`), covered by the tag. Absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Version 2: that store's version (2 or 3), covered by the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_version: Option<u32>,
    /// When the key file was written, RFC 3339 (informational).
    pub created: String,
    pub kdf: Kdf,
    /// AES-256-GCM nonce of the wrap, hex.
    pub nonce: String,
    /// The secret encrypted with the derived key, then the tag; hex.
    pub wrapped: String,
    /// Names the secret (not the passphrase): the same in every key file of
    /// one store. Hex.
    pub fingerprint: String,
}

/// How the wrapping key is derived from the passphrase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    pub name: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hex.
    pub salt: String,
}

/// A key file's fields, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedKeyFile {
    pub file: KeyFile,
    pub salt: [u8; SALT_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub wrapped: [u8; WRAPPED_LEN],
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// The store it names (version 2); None for a version 1 file.
    pub for_store: Option<KeyFor>,
}

/// The kind of store a key file's secret is for: its protection mode and
/// store version, which a store of another kind (a config changed by
/// whoever holds it) is refused for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFor {
    pub mode: KeyMode,
    pub store_version: u32,
}

/// The protection modes that have a key (a plain store has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    Sign,
    Encrypt,
}

impl KeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Sign => "sign",
            KeyMode::Encrypt => "encrypt",
        }
    }
}

impl std::fmt::Display for KeyFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} store of version {}",
            self.mode.as_str(),
            self.store_version
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed key file: {0}")]
pub struct KeyFileError(pub String);

impl CheckedKeyFile {
    /// Parses and checks key file bytes.
    pub fn parse(bytes: &[u8]) -> Result<CheckedKeyFile, KeyFileError> {
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| KeyFileError(e.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(KeyFileError(format!(
                "format is {:?}, not {KEY_FILE_FORMAT:?}",
                file.format
            )));
        }
        let for_store = match (file.version, file.mode.as_deref(), file.store_version) {
            (1, None, None) => None,
            (1, _, _) => {
                return Err(KeyFileError(
                    "mode or store_version in a version 1 key file".into(),
                ))
            }
            (2, Some(m @ ("sign" | "encrypt")), Some(v @ 2..=3)) => Some(KeyFor {
                mode: if m == "sign" {
                    KeyMode::Sign
                } else {
                    KeyMode::Encrypt
                },
                store_version: v,
            }),
            (2, Some("sign" | "encrypt"), v) => {
                return Err(KeyFileError(format!("store_version {v:?} is not 2 or 3")))
            }
            (2, m, _) => return Err(KeyFileError(format!("mode {m:?} is not \"sign\" or \"encrypt\""))),
            (v, _, _) => {
                return Err(KeyFileError(format!(
                    "version {v}; this hoard reads versions 1 and 2"
                )))
            }
        };
        let k = &file.kdf;
        if k.name != KDF_ARGON2ID {
            return Err(KeyFileError(format!("unknown kdf {:?}", k.name)));
        }
        // argon2 itself needs at least 8 KiB per lane.
        if k.parallelism == 0 || k.parallelism > MAX_PARALLELISM {
            return Err(KeyFileError(format!(
                "kdf parallelism {} out of 1..={MAX_PARALLELISM}",
                k.parallelism
            )));
        }
        if k.memory_kib < 8 * k.parallelism || k.memory_kib > MAX_MEMORY_KIB {
            return Err(KeyFileError(format!(
                "kdf memory {} KiB out of {}..={MAX_MEMORY_KIB}",
                k.memory_kib,
                8 * k.parallelism
            )));
        }
        if k.iterations == 0 || k.iterations > MAX_ITERATIONS {
            return Err(KeyFileError(format!(
                "kdf iterations {} out of 1..={MAX_ITERATIONS}",
                k.iterations
            )));
        }
        Ok(CheckedKeyFile {
            salt: hex_field("kdf.salt", &k.salt)?,
            nonce: hex_field("nonce", &file.nonce)?,
            wrapped: hex_field("wrapped", &file.wrapped)?,
            fingerprint: hex_field("fingerprint", &file.fingerprint)?,
            for_store,
            file,
        })
    }

    /// The bytes the wrap authenticates besides the secret: every field
    /// but the ciphertext, so that changing the KDF's parameters, the
    /// fingerprint or the mode makes the unwrap fail instead of deriving
    /// another key or serving another mode.
    pub fn associated_data(&self) -> Vec<u8> {
        let k = &self.file.kdf;
        let mode = self
            .for_store
            .map(|k| format!(" mode={} store={}", k.mode.as_str(), k.store_version))
            .unwrap_or_default();
        format!(
            "{} v{}{mode} {} m={} t={} p={} salt={} fp={}",
            self.file.format,
            self.file.version,
            k.name,
            k.memory_kib,
            k.iterations,
            k.parallelism,
            k.salt,
            self.file.fingerprint
        )
        .into_bytes()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.file).expect("a key file serializes");
        out.push(b'\n');
        out
    }
}

/// A hex field: exactly `2 * N` lower-case digits, the form the file's
/// associated data covers.
fn hex_field<const N: usize>(name: &str, text: &str) -> Result<[u8; N], KeyFileError> {
    crate::chunking::digest::from_hex(text)
        .ok_or_else(|| KeyFileError(format!("{name} is not {N} bytes of lower-case hex")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyFile {
        KeyFile {
            format: KEY_FILE_FORMAT.into(),
            version: 2,
            mode: Some("encrypt".into()),
            store_version: Some(3),
            created: "2026-12-02T14:00:00Z".into(),
            kdf: Kdf {
                name: KDF_ARGON2ID.into(),
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1,
                salt: "00".repeat(SALT_LEN),
            },
            nonce: "11".repeat(NONCE_LEN),
            wrapped: "22".repeat(WRAPPED_LEN),
            fingerprint: "33".repeat(FINGERPRINT_LEN),
        }
    }

    fn parse(f: &KeyFile) -> Result<CheckedKeyFile, KeyFileError> {
        CheckedKeyFile::parse(&serde_json::to_vec(f).unwrap())
    }

    #[test]
    fn a_key_file_round_trips_and_every_bad_field_is_named() {
        let good = parse(&sample()).unwrap();
        assert_eq!(CheckedKeyFile::parse(&good.to_bytes()).unwrap(), good);
        assert_eq!(good.nonce, [0x11; NONCE_LEN]);

        type Spoil = fn(&mut KeyFile);
        let cases: Vec<(Spoil, &str)> = vec![
            (|f| f.format = "age".into(), "format"),
            (|f| f.version = 3, "version 3"),
            (|f| f.mode = None, "mode"),
            (|f| f.mode = Some("none".into()), "mode"),
            (|f| f.version = 1, "mode or store_version in a version 1"),
            (|f| f.store_version = Some(1), "store_version"),
            (|f| f.store_version = None, "store_version"),
            (|f| f.kdf.name = "scrypt".into(), "unknown kdf"),
            (|f| f.kdf.memory_kib = MAX_MEMORY_KIB + 1, "kdf memory"),
            (|f| f.kdf.memory_kib = 4, "kdf memory"),
            (|f| f.kdf.iterations = 0, "kdf iterations"),
            (|f| f.kdf.parallelism = 1000, "kdf parallelism"),
            (|f| f.kdf.salt = "zz".repeat(SALT_LEN), "kdf.salt"),
            (|f| f.nonce.push('0'), "nonce"),
            (|f| f.wrapped.truncate(10), "wrapped"),
            (|f| f.fingerprint = "é".repeat(8), "fingerprint"),
        ];
        for (spoil, named) in cases {
            let mut f = sample();
            spoil(&mut f);
            let e = parse(&f).unwrap_err().to_string();
            assert!(e.contains(named), "{e} should name {named}");
        }
        let e = CheckedKeyFile::parse(br#"{"format":"hoard-key","extra":1}"#).unwrap_err();
        assert!(e.to_string().contains("malformed key file"), "{e}");
    }

    #[test]
    fn associated_data_covers_the_parameters_and_the_mode() {
        let a = parse(&sample()).unwrap();
        let mut f = sample();
        f.kdf.iterations = 1;
        assert_ne!(a.associated_data(), parse(&f).unwrap().associated_data());
        let mut f = sample();
        f.mode = Some("sign".into());
        assert_ne!(a.associated_data(), parse(&f).unwrap().associated_data());
        let mut f = sample();
        f.store_version = Some(2);
        assert_ne!(a.associated_data(), parse(&f).unwrap().associated_data());
        // Version 1 (no mode) keeps its associated data byte for byte.
        let mut f = sample();
        (f.version, f.mode, f.store_version) = (1, None, None);
        let v1 = parse(&f).unwrap();
        assert_eq!(v1.for_store, None);
        assert!(String::from_utf8(v1.associated_data())
            .unwrap()
            .starts_with("hoard-key v1 argon2id m=65536"));
    }
}
