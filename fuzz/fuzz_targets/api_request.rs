#![no_main]
//! `cargo fuzz run api_request`: see hoard_engine::fuzzing::api_request.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::api_request(data));
