//! The codecs of every stored and exchanged format: pure functions and
//! plain types from bytes to values and back, no I/O policy. Each module's
//! layout is specified in format-spec/.

pub mod chunk;
pub mod chunk_decoder;
pub mod dynamic_index;
pub mod fixed_index;
pub mod job_file;
pub mod key_file;
pub mod key_wrap;
pub mod known_store;
pub mod nbd_reply;
pub mod nbd_wire;
pub mod notes;
pub mod pack;
pub mod protect_marker;
pub mod sealed_text;
pub mod snapshot;
pub mod store_address;
pub mod task_log;
pub mod verify_state;
