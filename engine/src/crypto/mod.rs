//! Encryption and signing primitives: the secret, the keys derived from it,
//! sealing and MACs (format-spec/encryption.md). Below `format/`: wrapping
//! the secret in a key file is `format::key_wrap`.

pub(crate) mod keys;
pub(crate) mod master_key;
pub mod recovery;

pub(crate) use keys::{Protection, StoreKeys};
