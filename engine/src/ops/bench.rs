//! `hoard bench`: how fast this machine runs each stage of a backup, and
//! what a full backup of a given disk would take and cost, estimated from a
//! random sample of it in seconds however large the disk.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chunking::digest::{is_zero, Digest};
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::chunk_decoder::ChunkDecoder;
use crate::store::Repository;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: empty (nothing to sample)")]
    Empty(PathBuf),
}

impl Classify for BenchError {
    fn kind(&self) -> ErrorKind {
        match self {
            BenchError::Io { source, .. } => io_kind(source),
            BenchError::Empty(_) => ErrorKind::Invalid,
        }
    }

    fn context(&self) -> Context {
        match self {
            BenchError::Io { path, .. } | BenchError::Empty(path) => Context::path(path),
        }
    }
}

/// One stage's throughput.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub bytes_per_sec: f64,
    /// The same stage on the reference machine.
    pub reference_bytes_per_sec: f64,
}

/// The reference: this project's CI machine (2-core Xeon VM, 23 GiB),
/// measured with a release build of `hoard bench` on 2026-11-26 (rounded).
pub const REFERENCE_MACHINE: &str = "2-core Xeon VM (hoard CI), 2026-11-26";

/// The keyed chunker on the reference machine, MB/s: the unkeyed figure
/// times the keyed/unkeyed ratio at the tree default average (1.13)
/// measured in one criterion run on 2026-12-07 (a 2-vCPU Xeon VM with
/// AES-NI; the reference machine itself was gone).
const KEYED_CDC_REFERENCE: f64 = 1130.0;

/// Runs each stage on generated, disk-like data for about `per_stage`.
pub fn stages(per_stage: Duration) -> Vec<Stage> {
    let data = disk_like(4 << 20);
    let digest = Digest::of(&data);
    let zeros = vec![0u8; 4 << 20];
    let mut out = Vec::new();
    let mut run = |name: &'static str, reference: f64, bytes: usize, f: &mut dyn FnMut()| {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < per_stage || n == 0 {
            f();
            n += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        out.push(Stage {
            name,
            bytes_per_sec: (n as f64 * bytes as f64) / secs,
            reference_bytes_per_sec: reference * 1e6,
        });
    };
    let mut copy = vec![0u8; data.len()];
    run("read (memory copy)", 10000.0, data.len(), &mut || {
        copy.copy_from_slice(&data);
        std::hint::black_box(&copy);
    });
    run("BLAKE3", 4000.0, data.len(), &mut || {
        std::hint::black_box(Digest::of(&data));
    });
    run("zero check", 43000.0, zeros.len(), &mut || {
        std::hint::black_box(is_zero(&zeros));
    });
    let params = crate::chunking::cdc::CdcParams::default();
    let keyed = std::sync::Arc::new(crate::chunking::keyed_cdc::ChunkerKey::new(&[0x5a; 32]));
    for (stage, reference, key) in [
        ("content-defined chunking", 1000.0, None),
        (
            "keyed chunking (protected stores)",
            KEYED_CDC_REFERENCE,
            Some(keyed),
        ),
    ] {
        run(stage, reference, data.len(), &mut || {
            let mut c = crate::chunking::cdc::StreamChunker::new(params, key.clone());
            let mut cuts = 0usize;
            let mut count = |_: &[u8]| -> Result<(), ()> {
                cuts += 1;
                Ok(())
            };
            let _ = c.push(&data, &mut count);
            let _ = c.flush(&mut count);
            std::hint::black_box(cuts);
        });
    }
    let mut enc = ChunkEncoder::new(Compression::Zstd(1)).expect("zstd");
    run("zstd -1 compress", 2000.0, data.len(), &mut || {
        std::hint::black_box(enc.encode(&data, digest));
    });
    let record = enc.encode(&data, digest);
    let mut dec = ChunkDecoder::new().expect("zstd");
    let mut plain = vec![0u8; data.len()];
    run("decompress + verify", 2800.0, data.len(), &mut || {
        let _ = std::hint::black_box(dec.decode_to_slice(&record, &digest, &mut plain));
    });
    out
}

/// The whole pipeline on all cores: a backup of a 256 MiB disk-like image
/// into a new store in `tmp_dir` (removed after), then index lookups of
/// its chunks. Two rows.
pub fn pipeline(tmp_dir: &Path, threads: usize) -> crate::Result<Vec<Stage>> {
    let dir = tmp_dir.join(format!("hoard-bench-{}", uuid::Uuid::new_v4().simple()));
    let r = run_pipeline(&dir, threads);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r?)
}

fn run_pipeline(dir: &Path, threads: usize) -> Result<Vec<Stage>, BenchError> {
    use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
    let io = |source| BenchError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let other = |e: &dyn std::fmt::Display| io(std::io::Error::other(e.to_string()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let img = dir.join("bench.img");
    let len = 256usize << 20;
    let mut data = disk_like(len);
    // Distinct chunks: no dedup inside the image.
    for (i, c) in data.chunks_mut(4 << 20).enumerate() {
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    std::fs::write(&img, &data).map_err(io)?;
    let chunk = crate::chunking::chunker::ChunkSize::new(4 << 20).expect("4M is valid");
    let store = crate::store::Store::init(&dir.join("store"), chunk).map_err(|e| other(&e))?;
    let opts = BackupOptions {
        threads,
        ..BackupOptions::new(crate::format::snapshot::Kind::Host, "bench")
    };
    let source = crate::source::FileSource::open(&img).map_err(io)?;
    let started = Instant::now();
    backup_images(
        &store,
        &opts,
        vec![ImageInput::full("b.img".into(), Box::new(source))],
        &crate::progress::NoProgress,
    )
    .map_err(|e| other(&e))?;
    let secs = started.elapsed().as_secs_f64();
    let digests: Vec<Digest> = data.chunks(4 << 20).map(Digest::of).collect();
    // What a backup asks of the index for each chunk.
    let session = store.begin_backup("bench").map_err(|e| other(&e))?;
    let started = Instant::now();
    let mut lookups = 0u64;
    while started.elapsed() < Duration::from_millis(300) {
        for d in &digests {
            let _ = std::hint::black_box(session.is_known(d));
            lookups += 1;
        }
    }
    drop(session);
    let lookup_secs = started.elapsed().as_secs_f64();
    Ok(vec![
        Stage {
            name: "pipeline: backup, all cores",
            bytes_per_sec: len as f64 / secs,
            reference_bytes_per_sec: 900e6,
        },
        Stage {
            // As MB/s of 4 MiB chunks looked up.
            name: "index lookup (4 MiB chunks)",
            bytes_per_sec: lookups as f64 * (4 << 20) as f64 / lookup_secs,
            reference_bytes_per_sec: 4_000_000e6,
        },
    ])
}

/// The write path into a store: 256 MiB of compressed chunk records
/// appended to a pack in the store's `tmp/` and made durable, then removed.
pub fn pack_write(tmp_dir: &Path) -> crate::Result<Stage> {
    let io = |source| BenchError::Io {
        path: tmp_dir.to_path_buf(),
        source,
    };
    let dir = tmp_dir.join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let r = write_pack(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r.map_err(io)?)
}

fn write_pack(dir: &Path) -> std::io::Result<Stage> {
    let data = disk_like(4 << 20);
    let d = Digest::of(&data);
    let record = ChunkEncoder::new(Compression::Zstd(1))?.encode(&data, d);
    let started = Instant::now();
    let written = crate::store::packs::write_one_pack(dir, &record, d, data.len() as u32, 256 << 20)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Stage {
        name: "pack write to the store (durable)",
        bytes_per_sec: written as f64 / secs,
        reference_bytes_per_sec: 2000e6,
    })
}

/// Half text-like, half noise in 64 KiB stripes: compresses roughly like a
/// system disk.
pub fn disk_like(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|i| {
            if (i / 65536) % 2 == 0 {
                b"libc.so.6 GLIBC_2.34 __cxa_finalize\n"[i % 36]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// What a sample of a disk says about a full backup of it.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub path: PathBuf,
    pub size: u64,
    pub chunk_size: u64,
    pub regions_sampled: u64,
    pub regions_total: u64,
    pub bytes_sampled: u64,
    #[serde(rename = "duration_secs")]
    pub seconds: f64,
    /// Cold read throughput of the sampled regions.
    pub read_bytes_per_sec: f64,
    /// Hash + compress throughput on this machine's cores, on the sample.
    pub cpu_bytes_per_sec: f64,
    pub zero_fraction: f64,
    pub zero_fraction_ci95: f64,
    /// Stored bytes / non-zero bytes for chunks stored once.
    pub compression_ratio: f64,
    /// Non-zero bytes / bytes of distinct non-zero chunks.
    pub dedup_ratio: f64,
    pub projected_store_bytes: u64,
    pub projected_store_bytes_ci95: u64,
    pub projected_backup_secs: f64,
}

/// Reads `samples` random regions (whole chunks, at least 4 MiB) of the
/// file or block device at `path`, cold (the page cache is told to drop
/// each region first), and projects a full backup with chunks of
/// `chunk_size` compressed by `compression`. With `samples` at least the
/// number of regions, every region is read and the figures are exact.
pub fn estimate(
    path: &Path,
    chunk_size: u64,
    compression: Compression,
    samples: u64,
    threads: usize,
) -> crate::Result<Estimate> {
    let io = |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let started = Instant::now();
    let file = File::open(path).map_err(io)?;
    let size = device_size(&file).map_err(io)?;
    if size == 0 {
        return Err(BenchError::Empty(path.to_path_buf()).into());
    }
    let region = chunk_size.max(4 << 20) / chunk_size * chunk_size;
    let total = size.div_ceil(region);
    let picks = pick(total, samples.min(total));
    let n = picks.len() as u64;
    let mut enc = ChunkEncoder::new(compression).map_err(io)?;
    let mut buf = vec![0u8; region as usize];
    // digest -> (times seen, stored length, region it was first seen in)
    let mut seen: HashMap<Digest, (u32, u64, usize)> = HashMap::new();
    let mut zero_per_region = Vec::with_capacity(picks.len());
    let (mut read_secs, mut cpu_secs, mut bytes) = (0.0, 0.0, 0u64);
    for (r, &index) in picks.iter().enumerate() {
        let offset = index * region;
        let len = (size - offset).min(region) as usize;
        drop_cache(&file, offset, len as u64);
        let t = Instant::now();
        file.read_exact_at(&mut buf[..len], offset).map_err(io)?;
        read_secs += t.elapsed().as_secs_f64();
        bytes += len as u64;
        let t = Instant::now();
        let mut zero = 0u64;
        for c in buf[..len].chunks(chunk_size as usize) {
            if is_zero(c) {
                zero += c.len() as u64;
                continue;
            }
            let d = Digest::of(c);
            let e = seen.entry(d).or_insert((0, 0, r));
            if e.0 == 0 {
                e.1 = enc.encode(c, d).len() as u64;
            }
            e.0 += 1;
        }
        cpu_secs += t.elapsed().as_secs_f64();
        zero_per_region.push(zero as f64 / len as f64);
    }
    let f = n as f64 / total as f64;
    let (zero_fraction, zero_se) = mean_se(&zero_per_region, n, total);
    // Chunks seen once are taken to be unique on the disk (scaled up by
    // the sampled fraction); chunks seen again are the disk's repeated
    // ones (zero-like filler, copies), stored once whatever their count.
    let mut single_per_region = vec![0.0f64; picks.len()];
    let (mut repeated_bytes, mut nonzero_chunk_bytes, mut distinct_raw) = (0u64, 0u64, 0u64);
    for (count, stored, r) in seen.values() {
        nonzero_chunk_bytes += *count as u64 * chunk_size;
        if *count == 1 {
            single_per_region[*r] += *stored as f64;
            distinct_raw += chunk_size;
        } else {
            repeated_bytes += stored;
            distinct_raw += chunk_size;
        }
    }
    let singles: f64 = single_per_region.iter().sum();
    let (_, single_se) = mean_se(&single_per_region, n, total);
    let projected = singles / f + repeated_bytes as f64;
    let stored_sample: f64 = singles + repeated_bytes as f64;
    let cores = crate::worker_threads(threads) as f64;
    let cpu_bytes_per_sec = if cpu_secs > 0.0 {
        bytes as f64 / cpu_secs * cores
    } else {
        f64::INFINITY
    };
    let read_bytes_per_sec = if read_secs > 0.0 {
        bytes as f64 / read_secs
    } else {
        f64::INFINITY
    };
    Ok(Estimate {
        path: path.to_path_buf(),
        size,
        chunk_size,
        regions_sampled: n,
        regions_total: total,
        bytes_sampled: bytes,
        seconds: started.elapsed().as_secs_f64(),
        read_bytes_per_sec,
        cpu_bytes_per_sec,
        zero_fraction,
        zero_fraction_ci95: 1.96 * zero_se,
        compression_ratio: if distinct_raw > 0 {
            stored_sample / distinct_raw as f64
        } else {
            1.0
        },
        dedup_ratio: if distinct_raw > 0 {
            nonzero_chunk_bytes as f64 / distinct_raw as f64
        } else {
            1.0
        },
        projected_store_bytes: projected as u64,
        projected_store_bytes_ci95: (1.96 * single_se * total as f64) as u64,
        projected_backup_secs: size as f64 / read_bytes_per_sec.min(cpu_bytes_per_sec),
    })
}

/// Mean of per-region values and its standard error, with the finite
/// population correction for `n` regions drawn out of `total`.
fn mean_se(values: &[f64], n: u64, total: u64) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let m = values.iter().sum::<f64>() / values.len() as f64;
    if values.len() < 2 {
        return (m, 0.0);
    }
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64;
    let fpc = if total > 1 {
        ((total - n) as f64 / (total - 1) as f64).max(0.0)
    } else {
        0.0
    };
    (m, (var / values.len() as f64 * fpc).sqrt())
}

/// `k` distinct region indexes out of `0..total`, spread evenly (one at a
/// random place in each of `k` equal strata), in increasing order.
fn pick(total: u64, k: u64) -> Vec<u64> {
    if k >= total {
        return (0..total).collect();
    }
    let mut x = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
    (0..k)
        .map(|i| {
            let (lo, hi) = (i * total / k, (i + 1) * total / k);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + x % (hi - lo).max(1)
        })
        .collect()
}

fn device_size(f: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::End(0))
}

/// Asks the kernel to drop cached pages of the range, so that the read is
/// cold (clean pages only; a no-op where unsupported).
fn drop_cache(f: &File, offset: u64, len: u64) {
    // SAFETY: a valid descriptor; advice only.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_sorted_and_spread() {
        let p = pick(1000, 100);
        assert_eq!(p.len(), 100);
        assert!(p.windows(2).all(|w| w[0] < w[1]));
        assert!(p.iter().enumerate().all(|(i, &v)| v / 10 == i as u64));
        assert_eq!(pick(5, 10), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_full_sample_is_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.img");
        // 8 MiB: zeros, then one 4 MiB region of text (repeated chunks).
        let mut data = vec![0u8; 4 << 20];
        data.extend((0..4 << 20).map(|i| b"abcdefgh"[i % 8]));
        std::fs::write(&path, &data).unwrap();
        let e = estimate(&path, 1 << 20, Compression::Zstd(1), 1000, 1).unwrap();
        assert_eq!((e.regions_sampled, e.regions_total), (2, 2));
        assert!((e.zero_fraction - 0.5).abs() < 1e-9);
        assert!((e.dedup_ratio - 4.0).abs() < 1e-9, "{e:?}");
        assert!(
            e.projected_store_bytes < 4096,
            "one small compressed chunk: {e:?}"
        );
    }
}
