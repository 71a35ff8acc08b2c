//! Cutting and naming data: fixed-size chunks of images, content-defined
//! chunks of streams, BLAKE3 digests and the zero check.

pub mod cdc;
pub mod chunker;
pub mod digest;
pub mod keyed_cdc;
