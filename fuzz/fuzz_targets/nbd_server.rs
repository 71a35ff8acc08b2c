#![no_main]
//! `cargo fuzz run nbd_server`: hostile NBD server bytes, see
//! hoard_engine::fuzzing::nbd_server.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::nbd_server(data));
