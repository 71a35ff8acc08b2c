#![no_main]
//! `cargo fuzz run dynamic_index`: see hoard_engine::fuzzing::dynamic_index.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::dynamic_index(data));
