#![no_main]
//! `cargo fuzz run nbd_export`: see hoard_engine::fuzzing::nbd_export.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::nbd_export(data));
