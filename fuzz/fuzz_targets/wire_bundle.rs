#![no_main]
//! `cargo fuzz run wire_bundle`: see hoard_engine::fuzzing::wire_bundle.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::wire_bundle(data));
