//! Wrapping the store's secret in a key file with a passphrase: argon2id
//! derives a key from the passphrase and a random salt, and AES-256-GCM
//! (ring) encrypts the secret under it with a random nonce, authenticating
//! every other field of the file too (format-spec/key-file.md).

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use super::key_file::{
    CheckedKeyFile, Kdf, KeyFile, KeyFileError, KeyFor, KeyMode, KDF_ARGON2ID, KEY_FILE_FORMAT,
    KEY_FILE_VERSION, NONCE_LEN, SALT_LEN,
};
use crate::chunking::digest::to_hex;
use crate::crypto::master_key::{MasterKey, NoRandom};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Malformed(#[from] KeyFileError),
    #[error("wrong passphrase (or the key file was changed)")]
    WrongPassphrase,
    #[error("the key file unwraps, but to a secret whose fingerprint is not the one it names")]
    FingerprintMismatch,
    #[error(transparent)]
    Random(#[from] NoRandom),
    #[error("argon2id: {0}")]
    Kdf(String),
}

/// The argon2id cost of a new key file. `STANDARD` takes about a second
/// on one core here; tests use `FAST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfCost {
    /// 64 MiB, 3 passes: the memory and passes of RFC 9106's second
    /// recommendation, with one lane instead of its four.
    pub const STANDARD: KdfCost = KdfCost {
        memory_kib: 64 << 10,
        iterations: 3,
        parallelism: 1,
    };
    /// For tests only: nothing to brute-force.
    pub const FAST: KdfCost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

/// A new key file holding the secret `key`, of a store of kind `store`,
/// under `passphrase`.
pub fn wrap(
    key: &MasterKey,
    passphrase: &[u8],
    cost: KdfCost,
    created: &str,
    store: KeyFor,
) -> Result<CheckedKeyFile, KeyError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| NoRandom)?;
    rng.fill(&mut nonce).map_err(|_| NoRandom)?;
    let fingerprint = key.fingerprint();
    let mut file = CheckedKeyFile {
        file: KeyFile {
            format: KEY_FILE_FORMAT.into(),
            version: KEY_FILE_VERSION,
            mode: Some(store.mode.as_str().into()),
            store_version: Some(store.store_version),
            created: created.into(),
            kdf: Kdf {
                name: KDF_ARGON2ID.into(),
                memory_kib: cost.memory_kib,
                iterations: cost.iterations,
                parallelism: cost.parallelism,
                salt: to_hex(&salt),
            },
            nonce: to_hex(&nonce),
            wrapped: String::new(),
            fingerprint: to_hex(&fingerprint),
        },
        salt,
        nonce,
        wrapped: [0u8; 48],
        fingerprint,
        for_store: Some(store),
    };
    let wrapping = derive(passphrase, &file)?;
    let mut sealed = key.secret().to_vec();
    wrapping
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(file.associated_data()),
            &mut sealed,
        )
        .map_err(|_| KeyError::Kdf("seal failed".into()))?;
    file.wrapped.copy_from_slice(&sealed);
    file.file.wrapped = to_hex(&sealed);
    Ok(file)
}

/// The secret in `file`, if `passphrase` is the one it was wrapped with
/// and no field was changed since.
pub fn unwrap(file: &CheckedKeyFile, passphrase: &[u8]) -> Result<MasterKey, KeyError> {
    let key = derive(passphrase, file)?;
    let mut buf = file.wrapped.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(file.nonce),
            Aad::from(file.associated_data()),
            &mut buf,
        )
        .map_err(|_| KeyError::WrongPassphrase)?;
    let mut secret = [0u8; 32];
    secret.copy_from_slice(plain);
    buf.iter_mut().for_each(|b| *b = 0);
    let master = MasterKey::from_secret(secret);
    if master.fingerprint() != file.fingerprint {
        return Err(KeyError::FingerprintMismatch);
    }
    Ok(master)
}

/// How long unlocking a key file of `cost` takes on this machine (what
/// `hoard key create` reports).
pub fn unlock_time(cost: KdfCost) -> Result<Duration, KeyError> {
    let key = MasterKey::generate()?;
    // The kind of store only goes into the associated data.
    let any = KeyFor {
        mode: KeyMode::Encrypt,
        store_version: 3,
    };
    let file = wrap(&key, b"timing", cost, "", any)?;
    let start = Instant::now();
    unwrap(&file, b"timing")?;
    Ok(start.elapsed())
}

fn derive(passphrase: &[u8], file: &CheckedKeyFile) -> Result<LessSafeKey, KeyError> {
    let k = &file.file.kdf;
    let params = argon2::Params::new(k.memory_kib, k.iterations, k.parallelism, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, &file.salt, &mut out)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let key = UnboundKey::new(&AES_256_GCM, &out).map_err(|_| KeyError::Kdf("bad key length".into()));
    out.iter_mut().for_each(|b| *b = 0);
    Ok(LessSafeKey::new(key?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::master_key::FINGERPRINT_LEN;

    const TEST_STORE: KeyFor = KeyFor {
        mode: KeyMode::Encrypt,
        store_version: 3,
    };

    #[test]
    fn a_wrapped_secret_unwraps_with_its_passphrase_only() {
        let key = MasterKey::generate().unwrap();
        let file = wrap(
            &key,
            b"correct horse",
            KdfCost::FAST,
            "2026-12-02T14:00:00Z",
            TEST_STORE,
        )
        .unwrap();
        let reparsed = CheckedKeyFile::parse(&file.to_bytes()).unwrap();
        let back = unwrap(&reparsed, b"correct horse").unwrap();
        assert_eq!(back.secret(), key.secret());
        assert!(matches!(
            unwrap(&reparsed, b"wrong horse"),
            Err(KeyError::WrongPassphrase)
        ));
        // Two key files of one secret (two slots): the same fingerprint,
        // different salts and nonces.
        let other = wrap(&key, b"second", KdfCost::FAST, "", TEST_STORE).unwrap();
        assert_eq!(other.fingerprint, file.fingerprint);
        assert_ne!(other.salt, file.salt);
        assert_ne!(other.nonce, file.nonce);
        assert!(!format!("{key:?}").contains(&to_hex(key.secret())));
    }

    #[test]
    fn changing_any_field_fails_the_unwrap() {
        let key = MasterKey::generate().unwrap();
        let good = wrap(&key, b"pw", KdfCost::FAST, "", TEST_STORE).unwrap();
        let edits: Vec<fn(&mut KeyFile)> = vec![
            |f| f.kdf.iterations = 2,
            |f| f.kdf.memory_kib = 128,
            |f| f.fingerprint = "00".repeat(FINGERPRINT_LEN),
            |f| f.nonce = "00".repeat(NONCE_LEN),
            |f| f.kdf.salt = "00".repeat(SALT_LEN),
            |f| f.mode = Some("sign".into()),
            |f| {
                let mut w = f.wrapped.clone().into_bytes();
                w[0] = if w[0] == b'0' { b'1' } else { b'0' };
                f.wrapped = String::from_utf8(w).unwrap();
            },
        ];
        for edit in edits {
            let mut f = good.file.clone();
            edit(&mut f);
            let changed = CheckedKeyFile::parse(&serde_json::to_vec(&f).unwrap()).unwrap();
            assert!(
                matches!(unwrap(&changed, b"pw"), Err(KeyError::WrongPassphrase)),
                "{f:?}"
            );
        }
    }
}
