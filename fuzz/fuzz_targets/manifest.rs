#![no_main]
//! `cargo fuzz run manifest`: see hoard_engine::fuzzing::manifest.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::manifest(data));
