//! Cutting and naming data: fixed-size chunks of images, content-defined
//! chunks of streams, BLAKE3 digests and the zero check.

pub(crate) mod cdc;
pub(crate) mod chunker;
pub(crate) mod digest;

pub mod keyed_cdc;
