#![no_main]
//! `cargo fuzz run pack_scan`: see hoard_engine::fuzzing::pack_scan.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::pack_scan(data));
