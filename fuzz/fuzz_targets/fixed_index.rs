#![no_main]
//! `cargo fuzz run fixed_index`: see hoard_engine::fuzzing::fixed_index.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::fixed_index(data));
