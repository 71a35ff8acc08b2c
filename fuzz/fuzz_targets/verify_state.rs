#![no_main]
//! `cargo fuzz run verify_state`: see hoard_engine::fuzzing::verify_state.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::verify_state(data));
