//! What a live copy is asked to copy, and what it reports per disk.

use std::path::PathBuf;
use std::time::Duration;

/// One disk to back up: block node and archive name.
#[derive(Clone, Debug)]
pub struct LiveDisk {
    pub node: String,
    pub archive: String,
}

pub struct LiveOptions {
    /// Fleecing images (and hoard's own NBD socket) go here.
    pub work_dir: PathBuf,
    /// The unix socket of an NBD server QEMU already runs; None: hoard
    /// starts one on a private socket in `work_dir` and stops it after.
    pub nbd_socket: Option<PathBuf>,
    pub timeout: Duration,
}

/// What the bitmap of a disk allowed, in vzdump's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapStatus {
    /// No earlier backup with a bitmap: a full read, tracking starts now.
    New,
    /// Only the dirty chunks were read.
    Dirty { dirty_bytes: u64, size: u64 },
    /// Nothing changed since the last backup.
    Clean,
    /// The bitmap could not be trusted: a full read.
    Invalid(String),
}

impl std::fmt::Display for BitmapStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = 1048576.0;
        match self {
            BitmapStatus::New => write!(f, "new bitmap"),
            BitmapStatus::Clean => write!(f, "clean"),
            BitmapStatus::Dirty { dirty_bytes, size } => write!(
                f,
                "OK ({:.1} of {:.1} MiB dirty)",
                *dirty_bytes as f64 / MIB,
                *size as f64 / MIB
            ),
            BitmapStatus::Invalid(why) => write!(f, "bitmap invalid: {why}, full read"),
        }
    }
}

/// The per-disk result, for the report.
#[derive(Clone, Debug)]
pub struct DiskReport {
    pub node: String,
    pub archive: String,
    pub size: u64,
    pub bitmap: BitmapStatus,
}
