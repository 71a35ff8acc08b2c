#![no_main]
//! `cargo fuzz run api_paths`: see hoard_engine::fuzzing::api_paths.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::api_paths(data));
