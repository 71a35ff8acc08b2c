//! Arguments several commands share, and their parsers: one doc and one
//! rule each.

use anyhow::{bail, Context, Result};
use hoard_engine::{BackupOptions, ChunkSize, Compression, FixedIndex, Kind, Repository};
use std::path::{Path, PathBuf};

/// `--kind vm|ct|host`, with its values listed (help and completions).
pub(crate) fn kind_arg() -> impl clap::builder::TypedValueParser<Value = Kind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["vm", "ct", "host"]).try_map(|s| s.parse::<Kind>())
}

/// `--threads N`: 0 (the default for the command) up to the engine's cap,
/// so that an absurd number is an error here instead of a hang.
pub(crate) fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= hoard_engine::MAX_THREADS => Ok(n),
        _ => Err(format!("use 0 (the default) to {}", hoard_engine::MAX_THREADS)),
    }
}

/// How every backup command writes (`backup`, `backup-vm`, `backup-ct`;
/// a job gives its entries the same): one doc and one default each.
#[derive(clap::Args, Clone, Copy, serde::Serialize)]
pub(crate) struct WriteArgs {
    /// Compression of new chunks: none, zstd or zstd:LEVEL (1..19).
    #[arg(long = "compress", default_value = "zstd:1")]
    #[serde(serialize_with = "crate::argv::as_text")]
    pub(crate) compression: Compression,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, value_parser = parse_threads)]
    pub(crate) threads: usize,
    #[command(flatten)]
    pub(crate) bwlimit: BwLimit,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl WriteArgs {
    /// Applies the bandwidth limit to this process and returns the options
    /// of a backup of group `kind`/`id` that writes this way.
    pub(crate) fn begin(&self, kind: Kind, id: impl Into<String>) -> Result<BackupOptions> {
        self.bwlimit.apply()?;
        Ok(BackupOptions {
            compression: self.compression,
            threads: self.threads,
            ..BackupOptions::new(kind, id)
        })
    }
}

/// `--bwlimit` of the backup commands.
#[derive(clap::Args, Clone, Copy, serde::Serialize)]
pub(crate) struct BwLimit {
    /// Read at most this fast, in bytes per second: 50M, 1G, 200000000 (K,
    /// M, G are powers of 1024): a backup's source, a restore's store.
    /// Rsync's copy of a container backup with --tmpdir is not limited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) bwlimit: Option<u64>,
}

impl BwLimit {
    pub(crate) fn apply(self) -> Result<()> {
        let Some(rate) = self.bwlimit else {
            return Ok(());
        };
        match std::env::var_os(hoard_engine::throttle::SHARED_VAR) {
            Some(file) => hoard_engine::throttle::set_shared_read_limit(rate, Path::new(&file))
                .with_context(|| format!("bwlimit bucket {}", Path::new(&file).display())),
            None => {
                hoard_engine::throttle::set_read_limit(rate);
                Ok(())
            }
        }
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match hoard_engine::job_file::parse_size(s) {
        Some(n) if n >= 1 << 20 => Ok(n),
        Some(_) => Err("at least 1M (bytes per second)".into()),
        None => Err(format!("{s:?} is not a rate: give bytes per second, like 50M")),
    }
}

pub(crate) fn parse_chunk_size(s: &str) -> Result<ChunkSize, String> {
    ChunkSize::parse(s).map_err(|e| e.to_string())
}

/// The index named by `SNAPSHOT NAME.img` or `--index FILE.fidx`, and its
/// label for messages.
pub(crate) fn image_index(
    store: &dyn Repository,
    args: &[String],
    index: &Option<PathBuf>,
) -> Result<(FixedIndex, String)> {
    match (index, args) {
        (Some(path), []) => Ok((FixedIndex::open(path)?, path.display().to_string())),
        (Some(_), _) => bail!("with --index, give no SNAPSHOT or archive"),
        (None, [snap, archive]) => {
            let name = store.catalogue().find(snap)?;
            let fidx = store.catalogue().open_image_index(&name, archive)?;
            Ok((fidx, format!("{name} {archive}")))
        }
        (None, _) => bail!("give SNAPSHOT NAME.img (or --index FILE.fidx)"),
    }
}
