//! Encryption and signing primitives: the secret, the keys derived from it,
//! sealing and MACs (format-spec/encryption.md). Below `format/`: wrapping
//! the secret in a key file is `format::key_wrap`.

pub mod keys;
pub mod master_key;
pub mod recovery;

pub use keys::{AuthFailed, Protection, StoreKeys};
