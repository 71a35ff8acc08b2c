//! hoard's storage engine.
//!
//! # Layers
//!
//! Imports run one way, from the top of this table down: a module may use
//! its own layer and those below it. The unit test in `layers.rs` reads
//! this table and fails on any import against it, `super::` imports of a
//! child into its parent included; `rs_cycles.py` checks that no two files
//! import each other.
//!
//! | layer | modules | knows about |
//! |-------|---------|-------------|
//! | tests and fuzzing | `fuzzing` (entry points of the fuzz targets), `layers` (this table's check) | everything |
//! | serving | [`serve`] ([`serve::export`]: NBD server, TLS, overlay; [`serve::mount`]: FUSE; [`serve::api`]: the backup server's HTTP/2 API, its tokens and its client) | the operations' readers |
//! | modes | [`modes`] ([`modes::vm`], [`modes::ct`], [`modes::live`], [`modes::hooks`]) | QEMU, LXC, btrfs, hook scripts; the operations |
//! | operations | [`ops`] ([`ops::backup`], [`ops::restore`], [`ops::verify`], [`ops::prune`], [`ops::gc`], [`ops::bench`], [`ops::space`]) | the archiver, sources, pipeline and the store's seams (the upper seam's traits; GC drives the store's [`store::gc::Collection`] phases) |
//! | archive | [`archive`] (tree archiver and extractor) | the pipeline's stream feed, the store's catalogue and readers |
//! | sources | [`source`] (file, NBD client, QMP, QGA) | sockets and files it reads |
//! | pipeline | [`pipeline`]: one worker pool, one hash -> lookup -> compress -> add step, fed by the image reader and the tree archiver's streams ([`pipeline::stream`]); what a backup is asked to do ([`pipeline::options`]) | the backup session |
//! | store | [`store`]: the seams below, [`store::objects`] (where every object lives), `LocalDir`, `Memory`, S3, the RocksDB [`store::index`] (private to the store); its maintenance: GC's phases ([`store::gc`]), index rebuild and pack check ([`store::repair`]), verify's chunk check | formats |
//! | formats | [`mod@format`] (chunk record, pack, fixed and dynamic index, manifest, verify state, key files and their wrapping, NBD wire) | bytes, and the primitives that seal them |
//! | primitives | [`crypto`] (the secret, derived keys, sealing, MACs, recovery copies) | chunking's hasher |
//! | chunking | [`chunking`] (fixed, CDC, BLAKE3, zero check) | bytes only |
//! | base | [`error`], [`failpoint`], [`signals`], [`progress`], [`private_fs`], [`umask`], [`direct_io`], [`throttle`], [`host`], [`chunking::digest`] (a digest is a value every layer names) | the operating system |
//!
//! [`private_fs`] and [`umask`] make files others cannot redirect or read;
//! [`failpoint`] has crash points and test pauses, compiled in only with the
//! `failpoints` feature.
//!
//! # The store's seams
//!
//! - Where objects live: [`store::objects::StoreObjects`], every object of
//!   a store by kind ([`store::objects::ObjectKind`]: config, key slot,
//!   snapshot, verify state, task log, notes, protected marker; packs
//!   through its pack backend) and by name relative to the store. [`store::objects::LocalObjects`]
//!   is a directory; [`store::cached::Cached`] is a store in a bucket, a
//!   decorator over its cache's `LocalObjects` (the bucket first, under the
//!   writer lease, then the cache). [`store::address`] chooses one from the
//!   store's address when it opens: nothing above it asks where bytes live.
//! - Lower: [`store::backend::ObjectBackend`], immutable named objects
//!   (create-only put through an [`store::backend::ObjectWriter`], ranged get
//!   through an [`store::backend::ObjectRead`], whole get, list with size and
//!   time, delete, set aside, removal of unfinished writes). Packs live
//!   there; [`store::local_dir::LocalDir`] keeps the directory layout and its
//!   fsync + rename durability, [`store::memory::Memory`] holds them in
//!   memory, [`store::failing::Failing`] counts calls and fails the one a
//!   unit test names. GC's grace periods come from the backend's object times.
//! - Upper, as traits ([`store::seam`]): a [`store::Repository`] is a store
//!   as the operations see it. It hands out a [`store::ChunkSink`] for
//!   writers (batched "which of these do you have", seeded from the base
//!   snapshot's index, add chunk, flush barrier, publish, abort), a
//!   [`store::ChunkSource`] for readers (checked reads, one or a batch),
//!   a [`store::ChunkCheck`] for verify, and its [`store::Catalogue`] of
//!   snapshots (list, load manifest, open index files, protect, forget,
//!   notes, verify state). The local store's `BackupSession`,
//!   `ChunkReader` (each holding a [`store::session::ReadSession`]; only
//!   GC, holding the maintenance lock, reads without one), chunk check and
//!   `Catalog` implement them; a second, in-memory implementation runs
//!   the operations in a unit test, so they need nothing else.
//!
//! A remote server's client will be one more `StoreObjects` chosen in
//! [`store::address`], and one more implementation of the upper seam's calls.
//!
//! # Locking and durability (who waits for whom)
//!
//! | operation | takes | waits for |
//! |-----------|-------|-----------|
//! | backup | its session record (flock) for its whole run, held by its `BackupSession` | nobody |
//! | backup, committing a sealed pack | `index.lock` for one commit | other commits (ms) |
//! | restore, export, mount | a `ReadSession` (a session record, flock) for the whole run | nobody |
//! | show, snapshots, check | nothing | nobody |
//! | verify | a `ReadSession` (its chunk readers'), and `index.lock` once, to drop damaged chunks | other commits (ms) |
//! | prune, forget, protect | nothing (a snapshot disappears by one rename) | nobody |
//! | gc | `maintenance.lock`; `index.lock` per batch of changes | other commits (ms) |
//! | index rebuild | `maintenance.lock`, no live sessions, `index.lock` throughout | refused while sessions run |
//!
//! Each backup appends to its own pack; the chunk index is written only in
//! short synced commits under `index.lock` and read through a private
//! RocksDB secondary instance. A snapshot's manifest is written (fsync +
//! rename) only after every pack it references is sealed and committed and
//! its index files are fsynced: `BackupSession::publish` flushes first.
//! format-spec/concurrency.md has the protocol and the crash states.

//! # Errors
//!
//! The operations (backup, restore, verify, prune, gc, repair, bench, the
//! modes, the export server, tree extraction) return one [`Error`]: an
//! [`ErrorKind`] to branch on, an [`error::Context`] (store, path, digest,
//! offset) and the module's own enum as its source, whose message it
//! prints unchanged. Each module enum implements [`error::Classify`].

// Module errors carry paths, digests and offsets so that messages name what
// is wrong; they are on cold paths, so their size does not matter.
#![allow(clippy::result_large_err)]
#![warn(unreachable_pub)]

pub(crate) mod archive;
pub(crate) mod chunking;
pub(crate) mod crypto;
pub(crate) mod direct_io;
pub(crate) mod error;
pub use error::{Error, ErrorKind, Result};
pub(crate) mod failpoint;
pub(crate) mod format;
/// Entry points of the fuzz targets (fuzz/), which need protocol internals.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub(crate) mod host;
#[cfg(test)]
mod layers;
pub(crate) mod modes;
pub(crate) mod ops;
pub(crate) mod pipeline;
pub(crate) mod private_fs;
pub(crate) mod progress;
pub(crate) mod serve;
pub mod signals;
pub(crate) mod source;
pub(crate) mod store;
pub mod throttle;
pub(crate) mod umask;

// The public surface: what `cli/`, `fuzz/`, `benches/` and the integration
// tests use, and nothing else (the `unreachable_pub` lint keeps every other
// item `pub(crate)`). Modules stay private; a few cohesive ones are
// re-exported whole as namespaces (`key_slots`, `job_file`, `bench`, ...),
// and `signals`, `throttle` and `fuzzing` are public modules of their own.
pub use crate::archive::create::TreeInput;
pub use crate::archive::diff::{diff_images, diff_trees, TreeSide};
pub use crate::archive::extract::{extract, open_streams, ExtractOptions, ExtractReport};
pub use crate::archive::{is_within, EntryKind, EntryReader, Time};
pub use crate::chunking::cdc::CdcParams;
pub use crate::chunking::chunker::{ChunkSize, DEFAULT_CHUNK_SIZE};
pub use crate::chunking::digest::{is_zero, Digest};
pub use crate::chunking::keyed_cdc;
pub use crate::crypto::keys::{Protection, StoreKeys};
pub use crate::crypto::master_key::MasterKey;
pub use crate::crypto::recovery;
pub use crate::format::chunk::{ChunkEncoder, Compression};
pub use crate::format::chunk_decoder::ChunkDecoder;
pub use crate::format::fixed_index::{FixedIndex, FixedIndexWriter};
pub use crate::format::key_file::{CheckedKeyFile, KeyFor};
pub use crate::format::nbd_wire::{STATE_HOLE, STATE_ZERO};
pub use crate::format::notes::NotesOf;
pub use crate::format::sealed_text::SealedText;
pub use crate::format::serve_config::ServeConfig;
pub use crate::format::snapshot::{
    is_tree, validate_archive_name, ArchiveEntry, ArchiveKind, ArchiveStats, Kind, Manifest, SnapshotName,
    SnapshotRef,
};
pub use crate::format::store_address::is_url;
pub use crate::format::verify_state::VerifyState;
pub use crate::format::{job_file, key_wrap, pack};
pub use crate::host::name as host_name;
pub use crate::modes::ct::runner::System;
pub use crate::modes::ct::{backup_ct, open_restore_dir, CtOptions, Mode as CtMode};
pub use crate::modes::hooks::Hook;
pub use crate::modes::live::{backup_live, lock_work_dir, DiskReport, LiveDisk, LiveOptions, NoHooks};
pub use crate::modes::vm::{backup_vm, Mode as VmMode, VmOptions};
pub use crate::ops::backup::image::ImageInput;
pub use crate::ops::backup::{backup, backup_images, BackupError, BackupOptions, Input};
pub use crate::ops::bench;
pub use crate::ops::gc::gc;
pub use crate::ops::prune::{prune, KeepOptions, Mark, PruneReport};
pub use crate::ops::restore::{restore_image, restore_image_to_stream, RestoreOptions, RestoreReport};
pub use crate::ops::space::{space, Space};
pub use crate::ops::verify::{verify, VerifyOptions};
pub use crate::private_fs::{open_in, private_dir};
pub use crate::progress::{NoProgress, Progress};
pub use crate::serve::api as server;
pub use crate::serve::export::overlay::Overlay;
pub use crate::serve::export::tls::server_config;
pub use crate::serve::export::{serve, ImageDevice, ImageOptions, Listen, ServeOptions};
pub use crate::serve::mount::{fuse, MountTree};
pub use crate::source::nbd::{Address, NbdClient, NbdError};
pub use crate::source::qga::Qga;
pub use crate::source::qmp::{Qmp, QmpError};
pub use crate::source::{FileSource, ImageSource};
pub use crate::store::backend::ObjectBackend;
pub use crate::store::gc::GcOptions;
pub use crate::store::index::ChunkLocation;
pub use crate::store::index::IndexBuilder;
pub use crate::store::local_dir::LocalDir;
pub use crate::store::packs::PackWriter;
pub use crate::store::repair::{check_store, rebuild_index};
pub use crate::store::s3::S3Backend;
pub use crate::store::seam::Repository;
pub use crate::store::seam::{Catalogue, Protected};
pub use crate::store::session::{MaintenanceLock, Session};
pub use crate::store::{
    config_keys, key_slots, known_stores, read_config, remote, write_durably, Access, NewStoreKey, Store,
    StoreError,
};
pub use crate::umask::make_private;

/// Most worker threads any `threads` option may ask for: beyond a few per
/// core more threads only cost memory (each holds chunk buffers), and an
/// absurd number (`--threads 4294967296`) would spawn until the process
/// hangs.
pub const MAX_THREADS: usize = 256;

/// Worker threads for a `threads` option: 0 means one per core; more than
/// [`MAX_THREADS`] are [`MAX_THREADS`].
pub fn worker_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads.min(MAX_THREADS)
    }
}
