//! The codecs of every stored and exchanged format: pure functions and
//! plain types from bytes to values and back, no I/O policy. Each module's
//! layout is specified in format-spec/.

pub(crate) mod chunk;
pub(crate) mod chunk_decoder;
pub(crate) mod dynamic_index;
pub(crate) mod fixed_index;
pub mod job_file;
pub(crate) mod key_file;
pub mod key_wrap;
pub(crate) mod known_store;
pub(crate) mod nbd_reply;
pub(crate) mod nbd_wire;
pub(crate) mod notes;
pub mod pack;
pub(crate) mod protect_marker;
pub(crate) mod sealed_text;
pub(crate) mod serve_config;
pub(crate) mod snapshot;
pub(crate) mod store_address;
pub(crate) mod task_log;
pub(crate) mod token_list;
pub(crate) mod verify_state;
