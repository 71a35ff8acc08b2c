//! Listening sockets and the worker pool of an NBD export.
//!
//! Each connection gets a thread ([`connection`]); requests run on a pool
//! of workers shared by all connections. On stop, every connection is shut
//! down and waited for, then the workers.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crossbeam_channel::unbounded;

use super::connection::{connection, offer_for, tls_connection, Client, Counters, Dispatch, Job};
use super::device::BlockDevice;
use crate::error::{io_kind, Classify, Context, ErrorKind};
use crate::format::nbd_wire::Socket;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{0} is not a loopback address: without TLS, NBD has no authentication, so hoard only listens on 127.0.0.1/::1 then (serve it with --tls-creds, or tunnel it)")]
    NotLoopback(SocketAddr),
    #[error("listening socket: {0}")]
    Io(io::Error),
}

impl Classify for ExportError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExportError::Bind { source, .. } => io_kind(source),
            ExportError::SocketInUse(_) => ErrorKind::Busy,
            ExportError::NotASocket(_) | ExportError::NotLoopback(_) => ErrorKind::Invalid,
            ExportError::Io(e) => io_kind(e),
        }
    }

    fn context(&self) -> Context {
        match self {
            ExportError::SocketInUse(path) | ExportError::NotASocket(path) => Context::path(path),
            ExportError::Bind { addr, .. } => Context::path(std::path::Path::new(addr)),
            _ => Context::default(),
        }
    }
}

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

pub struct ServeOptions {
    /// The export's name (clients may also ask for the empty name).
    pub name: String,
    pub description: String,
    /// Connections beyond this are closed at once.
    pub max_clients: usize,
    /// Request workers shared by all connections.
    pub threads: usize,
    /// Preferred request size told to clients (the chunk size).
    pub preferred_block: u32,
    /// A client that takes no reply bytes for this long is dropped, so that
    /// one that stops reading cannot hold the shared workers.
    pub write_timeout: std::time::Duration,
    /// TCP only: require TLS (`NBD_OPT_STARTTLS`) with a client certificate
    /// signed by the configured CA. None: plain NBD, loopback only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServeReport {
    pub connections: u64,
    pub refused: u64,
    pub requests: u64,
    pub failed_requests: u64,
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn bind(listen: &Listen, tls: bool) -> Result<Listener, ExportError> {
        match listen {
            Listen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(ExportError::NotASocket(path.clone()));
                    }
                    if UnixStream::connect(path).is_ok() {
                        return Err(ExportError::SocketInUse(path.clone()));
                    }
                    // Left behind by a server that died.
                    let _ = std::fs::remove_file(path);
                }
                let bind_err = |source| ExportError::Bind {
                    addr: path.display().to_string(),
                    source,
                };
                let l = UnixListener::bind(path).map_err(bind_err)?;
                // Only the owner (root) may read the backups through it.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(ExportError::Io)?;
                Ok(Listener::Unix(l, path.clone()))
            }
            Listen::Tcp(addr) => {
                if !tls && !addr.ip().is_loopback() {
                    return Err(ExportError::NotLoopback(*addr));
                }
                let l = TcpListener::bind(addr).map_err(|source| ExportError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
                l.set_nonblocking(true).map_err(ExportError::Io)?;
                Ok(Listener::Tcp(l))
            }
        }
    }

    fn uri(&self, name: &str, tls: bool) -> String {
        let scheme = if tls { "nbds" } else { "nbd" };
        match self {
            Listener::Unix(_, path) => format!("nbd+unix:///{name}?socket={}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("{scheme}://{a}/{name}"),
                Err(_) => format!("{scheme}://?/{name}"),
            },
        }
    }

    /// Waits up to 200 ms for a client.
    fn accept(&self, write_timeout: std::time::Duration) -> io::Result<Option<(Socket, String)>> {
        let fd = match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            return Ok(None);
        }
        let accepted = match self {
            Listener::Unix(l, _) => l
                .accept()
                .map(|(s, _)| (Socket::Unix(s), "unix client".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Socket::Tcp(s), a.to_string())
            }),
        };
        match accepted {
            Ok((s, peer)) => {
                s.set_nonblocking(false)?;
                s.set_write_timeout(Some(write_timeout))?;
                Ok(Some((s, peer)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves `device` until `stop()` says so: calls `ready(uri)` once
/// listening, logs connections and failed requests through `log`. On stop,
/// every connection is shut down and waited for.
pub fn serve<'s>(
    device: &'s dyn BlockDevice,
    listen: &Listen,
    opts: &ServeOptions,
    log: &'s (dyn Fn(&str) + Sync),
    ready: &mut dyn FnMut(&str),
    stop: &(dyn Fn() -> bool + Sync),
) -> crate::Result<ServeReport> {
    let tls = match listen {
        Listen::Tcp(_) => opts.tls.clone(),
        Listen::Unix(_) => None,
    };
    let listener = Listener::bind(listen, tls.is_some())?;
    let mut offer = offer_for(device, &opts.name, opts.preferred_block);
    offer.description = opts.description.clone();
    let counters = Counters::default();
    let open: Mutex<HashMap<u64, Socket>> = Mutex::new(HashMap::new());
    let mut report = ServeReport::default();
    ready(&listener.uri(&opts.name, tls.is_some()));
    let (tx, rx) = unbounded::<Job<'_>>();
    std::thread::scope(|workers| {
        for _ in 0..crate::worker_threads(opts.threads.max(1)) {
            let rx = rx.clone();
            workers.spawn(move || {
                for job in rx.iter() {
                    job();
                }
            });
        }
        drop(rx);
        std::thread::scope(|clients| {
            let (offer, counters, open, tx) = (&offer, &counters, &open, &tx);
            let mut next_id = 0u64;
            while !stop() {
                let (stream, peer) = match listener.accept(opts.write_timeout) {
                    Ok(Some(s)) => s,
                    Ok(None) => continue,
                    Err(e) => {
                        log(&format!("accept: {e}"));
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                };
                let mut conns = open.lock().unwrap_or_else(|e| e.into_inner());
                if conns.len() >= opts.max_clients {
                    report.refused += 1;
                    log(&format!(
                        "{peer}: refused, {} clients connected already (--max-clients)",
                        conns.len()
                    ));
                    stream.shutdown();
                    continue;
                }
                let tls = tls.clone();
                let (writer, keep) = match (stream.try_clone(), stream.try_clone()) {
                    (Ok(w), Ok(k)) => (w, k),
                    (Err(e), _) | (_, Err(e)) => {
                        log(&format!("{peer}: {e}"));
                        continue;
                    }
                };
                next_id += 1;
                let id = next_id;
                let peer = format!("client {id} ({peer})");
                conns.insert(id, keep);
                drop(conns);
                report.connections += 1;
                log(&format!("{peer}: connected"));
                clients.spawn(move || {
                    let client = Client {
                        peer: peer.clone(),
                        device,
                        offer,
                        dispatch: Dispatch::Pool(tx),
                        counters,
                        log,
                    };
                    let end = match tls {
                        Some(tls) => tls_connection(stream, tls, client),
                        None => connection(stream, writer, client),
                    };
                    match end {
                        Ok(()) => log(&format!("{peer}: disconnected")),
                        Err(e) => log(&format!("{peer}: dropped: {e}")),
                    }
                    if let Some(s) = open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                        s.shutdown();
                    }
                });
            }
            for s in open.lock().unwrap_or_else(|e| e.into_inner()).values() {
                s.shutdown();
            }
        });
        // Every connection has ended: the workers may go.
        drop(tx);
    });
    report.requests = counters.requests.load(Ordering::Relaxed);
    report.failed_requests = counters.failed.load(Ordering::Relaxed);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::nbd_wire::REQUEST_MAGIC;
    use crate::serve::export::testing::{backed_up, sample_image};
    use crate::serve::export::{ImageDevice, ImageOptions};
    use crate::source::nbd::{Address, NbdClient, NbdError};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Serves the sample image on a socket while `client` runs.
    fn with_export(writable: bool, client: impl FnOnce(&Address, &[u8]) + Send) {
        let data = sample_image();
        let (dir, store, fidx) = backed_up(&data);
        let overlay = writable
            .then(|| crate::serve::export::overlay::Overlay::create(dir.path(), data.len() as u64).unwrap());
        let opts = ImageOptions {
            cache_bytes: 1 << 20,
            read_ahead: 256 << 10,
            overlay,
            reader: "test",
        };
        let device = ImageDevice::new(&store, fidx, "d.img".into(), opts);
        let sock = dir.path().join("e.sock");
        let addr = Address::Unix(sock.clone());
        let stop = AtomicBool::new(false);
        let serve_opts = ServeOptions {
            name: "d.img".into(),
            description: "test".into(),
            max_clients: 4,
            threads: 2,
            preferred_block: 65536,
            write_timeout: Duration::from_secs(1),
            tls: None,
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        std::thread::scope(|s| {
            let server = s.spawn(|| {
                serve(
                    &device,
                    &Listen::Unix(sock.clone()),
                    &serve_opts,
                    &|m| eprintln!("export: {m}"),
                    &mut |uri| ready_tx.send(uri.to_string()).unwrap(),
                    &|| stop.load(Ordering::Relaxed),
                )
                .unwrap()
            });
            let uri = ready_rx.recv().unwrap();
            assert!(uri.starts_with("nbd+unix:///d.img?socket="), "{uri}");
            client(&addr, &data);
            stop.store(true, Ordering::Relaxed);
            let report = server.join().unwrap();
            assert!(report.connections >= 1);
        });
        assert!(!sock.exists(), "socket removed at the end");
    }

    #[test]
    fn serves_data_holes_and_block_status_to_a_real_client() {
        with_export(false, |addr, data| {
            let c = NbdClient::connect(addr, "d.img", &["base:allocation"], Duration::from_secs(10)).unwrap();
            assert_eq!(c.size(), data.len() as u64);
            let mut buf = vec![0u8; data.len()];
            c.read(0, &mut buf).unwrap();
            assert!(buf == data);
            let mut part = vec![0u8; 5000];
            c.read(65536 - 2500, &mut part).unwrap();
            assert!(part[..] == data[65536 - 2500..65536 + 2500]);
            let ctx = c.context_id("base:allocation").unwrap();
            let map: Vec<(u64, u64, u32)> = c
                .map(ctx)
                .unwrap()
                .iter()
                .map(|e| (e.offset, e.len, e.flags))
                .collect();
            assert_eq!(
                map,
                vec![
                    (0, 65536, 0),
                    (65536, 65536, 3),
                    (131072, data.len() as u64 - 131072, 0)
                ]
            );
            // Two clients at once, and the empty export name.
            let c2 = NbdClient::connect(addr, "", &[], Duration::from_secs(10)).unwrap();
            c2.read(3 * 65536, &mut part).unwrap();
            assert!(part[..] == data[3 * 65536..3 * 65536 + 5000]);
            // A read beyond the end is refused; the connection goes on.
            assert!(matches!(
                c.read(data.len() as u64 - 10, &mut part),
                Err(NbdError::Request { .. })
            ));
            c.read(0, &mut part).unwrap();
            // An unknown export name is refused.
            assert!(NbdClient::connect(addr, "other.img", &[], Duration::from_secs(10)).is_err());
        });
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_and_others_are_served() {
        with_export(false, |addr, data| {
            let Address::Unix(path) = addr else { unreachable!() };
            let mut stuck = UnixStream::connect(path).unwrap();
            let mut hello = [0u8; 18];
            stuck.read_exact(&mut hello).unwrap();
            stuck.write_all(&[0, 0, 0, 3]).unwrap();
            stuck.write_all(b"IHAVEOPT\0\0\0\x01\0\0\0\0").unwrap();
            let mut export = [0u8; 10];
            stuck.read_exact(&mut export).unwrap();
            // Far more replies than the socket buffers hold, never read.
            for cookie in 0..256u64 {
                let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
                r.extend_from_slice(&[0, 0, 0, 0]);
                r.extend_from_slice(&cookie.to_be_bytes());
                r.extend_from_slice(&0u64.to_be_bytes());
                r.extend_from_slice(&(65536u32).to_be_bytes());
                stuck.write_all(&r).unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
            let c = NbdClient::connect(addr, "d.img", &[], Duration::from_secs(20)).unwrap();
            let mut buf = vec![0u8; 4096];
            c.read(4096, &mut buf).unwrap();
            assert!(buf[..] == data[4096..8192]);
            drop(stuck);
        });
    }

    #[test]
    fn garbage_and_disconnects_leave_the_server_serving() {
        with_export(false, |addr, data| {
            let Address::Unix(path) = addr else { unreachable!() };
            // Garbage instead of a handshake; a client gone mid-request.
            let mut s = UnixStream::connect(path).unwrap();
            let _ = s.write_all(&[0xff; 100]);
            drop(s);
            let mut s = UnixStream::connect(path).unwrap();
            let mut hello = [0u8; 18];
            s.read_exact(&mut hello).unwrap();
            let t = crate::fuzzing::tests::nbd_client_transcript();
            s.write_all(&t[..t.len() - 40]).unwrap();
            drop(s);
            let c = NbdClient::connect(addr, "d.img", &[], Duration::from_secs(10)).unwrap();
            let mut buf = vec![0u8; 4096];
            c.read(0, &mut buf).unwrap();
            assert!(buf[..] == data[..4096]);
        });
    }
}
