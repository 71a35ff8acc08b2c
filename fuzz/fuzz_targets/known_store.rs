#![no_main]
//! `cargo fuzz run known_store`: see hoard_engine::fuzzing::known_store.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::known_store(data));
