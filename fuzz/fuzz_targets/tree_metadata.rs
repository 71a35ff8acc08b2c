#![no_main]
//! `cargo fuzz run tree_metadata`: see hoard_engine::fuzzing::tree_metadata.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::tree_metadata(data));
