#![no_main]
//! `cargo fuzz run qmp_server`: see hoard_engine::fuzzing::qmp_server.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::qmp_server(data));
