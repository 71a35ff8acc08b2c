#![no_main]
//! `cargo fuzz run token_list`: see hoard_engine::fuzzing::token_list.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::token_list(data));
