//! Encryption of a store: the secret and its key files. (Keyed digests,
//! encrypted chunk records and authenticated manifests build on
//! [`master_key::MasterKey`].)

pub mod master_key;
