//! `hoard bench`: stage throughputs on this machine, or a projection of a
//! full backup of a disk from a random sample of it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use hoard_engine::{
    bench::estimate, bench::pack_write, bench::pipeline, bench::stages, bench::REFERENCE_MACHINE, ChunkSize,
    Compression, Store,
};
use serde_json::json;

use crate::output::iec;

/// How fast this machine runs each backup stage, or what a full backup
/// of a disk would take and store, estimated from a random sample.
///
/// Without PATH: MB/s of each stage on generated data next to a
/// reference machine's. With PATH (a file or block device of any
/// size): reads --samples random 4 MiB regions cold, and reports read
/// speed, zero fraction, compression, dedup within the disk and the
/// projected store size and backup time with 95% intervals; --full
/// reads everything.
#[derive(Args)]
pub(crate) struct Bench {
    /// A file or block device to project a full backup of; without it,
    /// the throughput of each backup stage on generated data.
    path: Option<PathBuf>,
    /// Random regions (4 MiB or one chunk, whichever is larger) to read.
    #[arg(long, default_value_t = 256)]
    samples: u64,
    /// Read the whole disk instead of a sample (exact figures).
    #[arg(long)]
    full: bool,
    /// Chunk size the projection assumes.
    #[arg(long, default_value = "64K", value_parser = crate::args::parse_chunk_size)]
    chunk_size: ChunkSize,
    /// Compression of new chunks: none, zstd or zstd:LEVEL (1..19).
    #[arg(long = "compress", default_value = "zstd:1")]
    compression: Compression,
    /// Stage mode: also measure durable pack writes into this store's tmp/.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    threads: usize,
    /// Print JSON instead of text (format-spec/json.md).
    #[arg(long)]
    json: bool,
}

/// A measured rate in IEC units, MiB/s (infinite: not measured).
fn rate(bytes_per_sec: f64) -> String {
    if bytes_per_sec.is_finite() {
        format!("{:.0} MiB/s", bytes_per_sec / (1 << 20) as f64)
    } else {
        "-".into()
    }
}

pub(crate) fn run(a: Bench) -> Result<()> {
    let Some(path) = &a.path else {
        return run_stages(&a);
    };
    let samples = if a.full { u64::MAX } else { a.samples.max(2) };
    let e = estimate(path, a.chunk_size.bytes(), a.compression, samples, a.threads)?;
    if a.json {
        return crate::output::print_json(&e);
    }
    let exact = e.regions_sampled == e.regions_total;
    println!(
        "{}: {}; read {} of {} regions ({}{}) in {:.1} s",
        e.path.display(),
        iec(e.size),
        e.regions_sampled,
        e.regions_total,
        iec(e.bytes_sampled),
        if exact { ", all of it" } else { ", random" },
        e.seconds
    );
    println!("  cold read          {:>12}", rate(e.read_bytes_per_sec));
    println!(
        "  hash + compress    {:>12} (all cores)",
        rate(e.cpu_bytes_per_sec)
    );
    println!(
        "  zeros              {:8.1} % ± {:.1}",
        100.0 * e.zero_fraction,
        100.0 * e.zero_fraction_ci95
    );
    println!("  compression        {:8.2} (stored / raw)", e.compression_ratio);
    println!("  dedup in the disk  {:8.2} x", e.dedup_ratio);
    println!(
        "  full backup        {} stored ± {} (95%), about {:.0} s",
        iec(e.projected_store_bytes),
        iec(e.projected_store_bytes_ci95),
        e.projected_backup_secs
    );
    Ok(())
}

fn run_stages(a: &Bench) -> Result<()> {
    let mut rows = stages(Duration::from_millis(400));
    rows.extend(pipeline(&std::env::temp_dir(), a.threads)?);
    if let Some(dir) = &a.store {
        let store = Store::open(dir)?;
        rows.push(pack_write(&store.root().join("tmp"))?);
    }
    if a.json {
        return crate::output::print_json(json!({"reference_machine": REFERENCE_MACHINE, "stages": rows}));
    }
    println!(
        "{:<36} {:>10} {:>8}   (reference: {REFERENCE_MACHINE})",
        "stage", "rate", "ref"
    );
    for s in &rows {
        println!(
            "{:<36} {:>12} {:>7.0}%",
            s.name,
            rate(s.bytes_per_sec),
            100.0 * s.bytes_per_sec / s.reference_bytes_per_sec
        );
    }
    Ok(())
}
