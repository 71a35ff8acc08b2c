#![no_main]
//! `cargo fuzz run key_file`: see hoard_engine::fuzzing::key_file.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::key_file(data));
