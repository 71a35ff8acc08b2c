//! Encryption and signing of a store: the secret, its key files, and the
//! keys derived from it (format-spec/encryption.md, key-file.md).

pub mod keys;
pub mod master_key;
pub mod recovery;

pub use keys::{AuthFailed, Protection, StoreKeys};
