#![no_main]
//! `cargo fuzz run wire_upload`: see hoard_engine::fuzzing::wire_upload.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::wire_upload(data));
