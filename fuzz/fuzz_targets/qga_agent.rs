#![no_main]
//! `cargo fuzz run qga_agent`: see hoard_engine::fuzzing::qga_agent.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hoard_engine::fuzzing::qga_agent(data));
