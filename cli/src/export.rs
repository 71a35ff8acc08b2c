//! `hoard export`: a snapshot's image served over NBD, straight from the store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use hoard_engine::{
    serve, signals, signals::DeferSignals, ImageDevice, ImageOptions, Listen, Overlay, ServeOptions, Store,
};
use serde_json::json;

/// Serve an image archive over NBD without restoring it.
///
/// `hoard export SNAPSHOT NAME.img` (or `--index FILE.fidx`) serves the
/// image read-only to any number of NBD clients (qemu, qemu-img, nbdcopy,
/// nbdinfo, the kernel's nbd-client) until Ctrl-C: chunks are read on
/// demand through a shared cache, sequential readers get read-ahead, and
/// zero chunks are holes (`base:allocation`). A chunk that cannot be read
/// fails that request with EIO and is logged; the export goes on.
///
/// Examples: `qemu-img convert -O raw nbd+unix:///disk.img?socket=S out.raw`,
/// `nbdinfo --map nbd+unix:///disk.img?socket=S`, or as a VM's read-only
/// backing node; with --writable, clients may write into a temporary
/// overlay.
#[derive(Args)]
pub(crate) struct Export {
    /// SNAPSHOT NAME.img (SNAPSHOT: KIND/ID/TIME, or KIND/ID for the newest);
    /// nothing with --index.
    #[arg(num_args = 0..=2, value_name = "ARGS")]
    args: Vec<String>,
    /// Serve this fixed index file (its chunks are read from --store).
    #[arg(long, value_name = "FILE.fidx")]
    index: Option<PathBuf>,
    /// Unix socket to listen on (default: nbd.sock in a new private
    /// directory hoard-export-PID-N in the temporary directory). Only its
    /// owner may connect.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Listen on TCP instead (127.0.0.1:10809; port 0 picks a free one).
    /// TCP needs --tls-creds (any address), or --insecure-tcp (loopback
    /// addresses only).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve TCP with TLS (NBD_OPT_STARTTLS): DIR holds ca-cert.pem,
    /// server-cert.pem and server-key.pem (qemu's tls-creds-x509 layout).
    /// Clients must present a certificate signed by ca-cert.pem.
    #[arg(long, value_name = "DIR", requires = "listen")]
    tls_creds: Option<PathBuf>,
    /// Serve TCP without TLS: any local user can then read (and with
    /// --writable change) what every client sees. Loopback only.
    #[arg(long, requires = "listen", conflicts_with = "tls_creds")]
    insecure_tcp: bool,
    /// Accept writes into a copy-on-write overlay in a temporary file
    /// (discarded when the export ends; the store is never written).
    #[arg(long)]
    writable: bool,
    /// Where --writable keeps its overlay file (default: the temporary directory).
    #[arg(long, value_name = "DIR", requires = "writable")]
    overlay_dir: Option<PathBuf>,
    /// Memory for decoded chunks shared by all clients.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// How far ahead of a sequential reader chunks are loaded.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    read_ahead: u64,
    /// Clients served at once; more are turned away.
    #[arg(long, default_value_t = 32)]
    max_clients: usize,
    /// Request workers shared by all clients (default: two per core).
    #[arg(long, default_value_t = 0, value_parser = crate::args::parse_threads)]
    threads: usize,
    /// Print the address and, at the end, the counters as JSON lines.
    #[arg(long)]
    json: bool,
}

/// `64M`, `1G`, `4096`: bytes, binary units.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (digits, unit) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("invalid size {s:?}: expected a number with an optional K, M or G"))
}

pub(crate) fn run(store: &Store, a: Export) -> Result<()> {
    let (fidx, label) = crate::args::image_index(store, &a.args, &a.index)?;
    let size = fidx.header().image_size;
    let chunk = fidx.chunk_size().bytes();
    let name = a
        .args
        .get(1)
        .cloned()
        .or_else(|| {
            a.index
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let tls = match (&a.listen, &a.tls_creds) {
        (Some(_), Some(dir)) => Some(hoard_engine::server_config(dir)?),
        (Some(addr), None) if !a.insecure_tcp => bail!(
            "--listen {addr}: NBD over TCP is served only with TLS (--tls-creds DIR, client certificates required); --insecure-tcp serves it without, to anybody on this host"
        ),
        _ => None,
    };
    // The default socket is bound inside a private directory of its own,
    // never straight in the shared temporary directory; it lives until the
    // export ends.
    let mut socket_dir = None;
    let listen = match (&a.listen, &a.socket) {
        (Some(addr), _) => Listen::Tcp(*addr),
        (None, Some(p)) => Listen::Unix(p.clone()),
        (None, None) => Listen::Unix(
            socket_dir
                .insert(PrivateDir::create("hoard-export")?)
                .0
                .join("nbd.sock"),
        ),
    };
    let overlay = if a.writable {
        let dir = a.overlay_dir.clone().unwrap_or_else(std::env::temp_dir);
        Some(Overlay::create(&dir, size).with_context(|| format!("overlay in {}", dir.display()))?)
    } else {
        None
    };
    // Held from here, and delivered only after the session file is gone.
    let _held = DeferSignals::start();
    // The device holds a read session: GC removes no chunk condemned after
    // it started, so a snapshot forgotten meanwhile stays readable to the end.
    let device = ImageDevice::new(
        store,
        fidx,
        label.clone(),
        ImageOptions {
            cache_bytes: a.cache_size as usize,
            read_ahead: a.read_ahead,
            overlay,
            reader: "export",
        },
    );
    let threads = if a.threads == 0 {
        2 * hoard_engine::worker_threads(0)
    } else {
        a.threads
    };
    let opts = ServeOptions {
        name: name.clone(),
        description: format!("hoard {label}"),
        max_clients: a.max_clients.max(1),
        threads,
        preferred_block: chunk.min(u64::from(u32::MAX)) as u32,
        write_timeout: std::time::Duration::from_secs(60),
        tls,
    };
    let json = a.json;
    let log = |m: &str| eprintln!("hoard export: {m}");
    let mut ready = |uri: &str| {
        if json {
            let socket = match &listen {
                Listen::Unix(p) => Some(p.display().to_string()),
                Listen::Tcp(_) => None,
            };
            println!(
                "{}",
                json!({"event": "ready", "uri": uri, "socket": socket, "export": name,
                       "size": size, "writable": a.writable})
            );
        } else {
            println!(
                "serving {label} ({size} bytes{}) at {uri}",
                if a.writable {
                    ", writable overlay"
                } else {
                    ", read-only"
                }
            );
            eprintln!("hoard export: Ctrl-C or SIGTERM stops it");
        }
    };
    let report = std::thread::scope(|s| {
        let prefetchers: Vec<_> = (0..hoard_engine::worker_threads(0))
            .map(|_| s.spawn(|| device.cache().run_prefetcher()))
            .collect();
        let r = serve(&device, &listen, &opts, &log, &mut ready, &signals::pending);
        device.cache().stop();
        for p in prefetchers {
            let _ = p.join();
        }
        r
    })?;
    let stats = device.stats();
    if json {
        println!(
            "{}",
            json!({"event": "stopped", "report": report, "cache": stats,
                   "peak_rss_mib": crate::output::peak_rss_mib()})
        );
    } else {
        eprintln!(
            "hoard export: stopped after {} connections, {} requests ({} failed); chunks: {} loaded, {} read ahead, {} cache hits",
            report.connections, report.requests, report.failed_requests, stats.loads, stats.prefetched, stats.hits
        );
    }
    Ok(())
}

/// A new directory only this user can enter, in the system's temporary
/// directory; removed with what is in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(prefix: &str) -> Result<PrivateDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        // A name someone else took first is refused, never shared.
        if dir.exists() {
            anyhow::bail!("{} exists already; not reusing it", dir.display());
        }
        hoard_engine::private_dir(&dir).with_context(|| dir.display().to_string())?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
