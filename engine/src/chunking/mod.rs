//! Cutting and naming data: fixed-size chunks of images, content-defined
//! chunks of streams, BLAKE3 digests and the zero check.

pub mod cdc;
pub mod chunker;
pub mod digest;

mod aes_batch;
pub mod keyed_cdc;
