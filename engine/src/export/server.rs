//! Listening, connections and the worker pool of an NBD export.
//!
//! Each connection has a thread that runs the handshake and then reads
//! requests in order; the requests themselves run on a pool shared by all
//! connections, so one client's slow read does not hold up another's, and
//! a client with many requests in flight (qemu, nbdcopy) gets them served
//! in parallel. Replies are written whole under the connection's writer
//! lock. What a connection may have in flight is bounded in bytes.
//!
//! A client that disconnects, sends garbage or breaks the protocol ends its
//! own connection and nothing else; a chunk that cannot be read fails that
//! request with EIO and is logged.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{unbounded, Sender};

use super::proto::{self, Offer, ProtoError, Request, Session};
use super::{BlockDevice, Piece};
use crate::nbd_wire::*;

/// Largest read or write served in one request.
pub const MAX_BLOCK: u32 = 8 << 20;
/// Bytes of reads and writes one connection may have in flight.
const MAX_IN_FLIGHT: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{0} is not a loopback address: NBD has no authentication here, so hoard only listens on 127.0.0.1/::1 (tunnel it, e.g. over ssh, to reach it from elsewhere)")]
    NotLoopback(SocketAddr),
    #[error("listening socket: {0}")]
    Io(io::Error),
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
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServeReport {
    pub connections: u64,
    pub refused: u64,
    pub requests: u64,
    pub failed_requests: u64,
}

/// A request handed to a worker.
pub type Job<'s> = Box<dyn FnOnce() + Send + 's>;

/// Where requests run: on the pool, or (fuzzing, tests) on the reading thread.
pub enum Dispatch<'a, 's> {
    Inline,
    Pool(&'a Sender<Job<'s>>),
}

#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
}

/// Requests of one connection in flight: their number and bytes.
#[derive(Default)]
struct InFlight {
    state: Mutex<(usize, u64)>,
    changed: Condvar,
}

impl InFlight {
    fn acquire(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > 0 && s.1 + bytes > MAX_IN_FLIGHT {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0 += 1;
        s.1 += bytes;
    }

    fn release(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        s.1 -= bytes;
        drop(s);
        self.changed.notify_all();
    }

    fn wait_idle(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 > 0 {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Conn<W> {
    writer: Mutex<W>,
    session: Session,
    in_flight: InFlight,
    peer: String,
}

impl<W: Write> Conn<W> {
    /// Sends one whole reply; a client that has gone is not an error here
    /// (the reading side notices and ends the connection).
    fn send(&self, parts: &[&[u8]]) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for p in parts {
            if w.write_all(p).is_err() {
                return;
            }
        }
        let _ = w.flush();
    }

    fn send_read(&self, cookie: u64, offset: u64, pieces: &[Piece]) {
        static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut write = || -> io::Result<()> {
            if !self.session.structured {
                w.write_all(&proto::simple_reply(cookie, 0))?;
                for p in pieces {
                    match p.data() {
                        Some(d) => w.write_all(d)?,
                        None => {
                            let mut left = p.len();
                            while left > 0 {
                                let n = left.min(ZEROS.len());
                                w.write_all(&ZEROS[..n])?;
                                left -= n;
                            }
                        }
                    }
                }
                return w.flush();
            }
            let mut at = offset;
            for (k, p) in pieces.iter().enumerate() {
                let flags = if k + 1 == pieces.len() { REPLY_FLAG_DONE } else { 0 };
                let mut head = Vec::with_capacity(32);
                match p.data() {
                    Some(d) => {
                        head.extend_from_slice(&proto::chunk_header(
                            flags,
                            REPLY_TYPE_OFFSET_DATA,
                            cookie,
                            8 + d.len() as u32,
                        ));
                        head.extend_from_slice(&at.to_be_bytes());
                        w.write_all(&head)?;
                        w.write_all(d)?;
                    }
                    None => {
                        head.extend_from_slice(&proto::chunk_header(
                            flags,
                            REPLY_TYPE_OFFSET_HOLE,
                            cookie,
                            12,
                        ));
                        head.extend_from_slice(&at.to_be_bytes());
                        head.extend_from_slice(&(p.len() as u32).to_be_bytes());
                        w.write_all(&head)?;
                    }
                }
                at += p.len() as u64;
            }
            w.flush()
        };
        let _ = write();
    }
}

/// Read and write halves of one socket, as one stream for the handshake.
struct Duplex<'a, R, W>(&'a mut R, &'a mut W);

impl<R: Read, W> Read for Duplex<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<'_, R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.1.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}

/// What a request needs checked before it runs: an error to answer with.
fn check(req: &Request, device: &dyn BlockDevice, session: Session) -> Option<(u32, String)> {
    let end = req.offset.checked_add(u64::from(req.len));
    let beyond = end.is_none_or(|e| e > device.size());
    let known = CMD_FLAG_FUA | CMD_FLAG_REQ_ONE;
    if req.flags & !known != 0 {
        return Some((EINVAL, format!("unsupported command flags {:#x}", req.flags)));
    }
    match req.kind {
        CMD_READ | CMD_CACHE | CMD_BLOCK_STATUS | CMD_WRITE if req.len == 0 => {
            Some((EINVAL, "zero-length request".into()))
        }
        CMD_READ | CMD_WRITE if req.len > MAX_BLOCK => Some((
            EINVAL,
            format!("request of {} bytes; at most {MAX_BLOCK}", req.len),
        )),
        CMD_WRITE if beyond => Some((ENOSPC, "write beyond the end of the export".into())),
        CMD_WRITE if !device.writable() => Some((EPERM, "export is read-only".into())),
        CMD_READ | CMD_CACHE | CMD_BLOCK_STATUS if beyond => {
            Some((EINVAL, "request beyond the end of the export".into()))
        }
        CMD_BLOCK_STATUS if !session.allocation => Some((EINVAL, "no meta context negotiated".into())),
        CMD_READ | CMD_CACHE | CMD_BLOCK_STATUS | CMD_WRITE | CMD_FLUSH => None,
        other => Some((EINVAL, format!("unsupported command {other}"))),
    }
}

/// Runs the request on the device and sends its reply.
fn answer<W: Write>(
    conn: &Conn<W>,
    device: &dyn BlockDevice,
    req: Request,
    payload: Vec<u8>,
    counters: &Counters,
    log: &(dyn Fn(&str) + Sync),
) {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let result = match req.kind {
        CMD_READ => match device.read(req.offset, req.len as usize) {
            Ok(pieces) => {
                conn.send_read(req.cookie, req.offset, &pieces);
                return;
            }
            Err(f) => Err(f),
        },
        CMD_BLOCK_STATUS => {
            let mut extents = device.extents(req.offset, u64::from(req.len));
            if req.flags & CMD_FLAG_REQ_ONE != 0 {
                extents.truncate(1);
            }
            let mut body = proto::ALLOCATION_ID.to_be_bytes().to_vec();
            for e in &extents {
                body.extend_from_slice(&(e.len as u32).to_be_bytes());
                body.extend_from_slice(&e.flags.to_be_bytes());
            }
            let head = proto::chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                req.cookie,
                body.len() as u32,
            );
            conn.send(&[&head, &body]);
            return;
        }
        CMD_WRITE => device.write(req.offset, &payload),
        CMD_FLUSH => device.flush(),
        _ => {
            device.cache(req.offset, u64::from(req.len));
            Ok(())
        }
    };
    match result {
        Ok(()) => conn.send(&[&proto::ok_reply(conn.session, req.cookie)]),
        Err(f) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            log(&format!(
                "{}: request at offset {} ({} bytes) failed: {}",
                conn.peer, req.offset, req.len, f.message
            ));
            conn.send(&[&proto::error_reply(conn.session, req.cookie, f.errno, &f.message)]);
        }
    }
}

/// Serves one client: handshake, then requests until it disconnects,
/// breaks the protocol, or the socket is shut down. Returns once every
/// request it started has been answered.
#[allow(clippy::too_many_arguments)]
pub fn connection<'a, R: Read, W: Write + Send + 'a>(
    mut reader: R,
    mut writer: W,
    peer: String,
    device: &'a dyn BlockDevice,
    offer: &Offer,
    dispatch: Dispatch<'_, 'a>,
    counters: &'a Counters,
    log: &'a (dyn Fn(&str) + Sync),
) -> Result<(), ProtoError> {
    let Some(session) = proto::handshake(&mut Duplex(&mut reader, &mut writer), offer)? else {
        return Ok(());
    };
    let conn = Arc::new(Conn {
        writer: Mutex::new(writer),
        session,
        in_flight: InFlight::default(),
        peer,
    });
    let result = loop {
        let req = match proto::read_request(&mut reader) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if req.kind == CMD_DISC {
            break Ok(());
        }
        // A write's payload is part of the request stream and is read
        // before anything else, whatever the answer will be.
        let mut payload = Vec::new();
        if req.kind == CMD_WRITE {
            if req.len > MAX_BLOCK {
                break Err(ProtoError::Bad(format!("write of {} bytes", req.len)));
            }
            payload.resize(req.len as usize, 0);
            if let Err(e) = reader.read_exact(&mut payload) {
                break Err(ProtoError::Io(e));
            }
        }
        if let Some((errno, message)) = check(&req, device, session) {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            conn.send(&[&proto::error_reply(session, req.cookie, errno, &message)]);
            continue;
        }
        let bytes = match req.kind {
            CMD_READ | CMD_WRITE => u64::from(req.len),
            _ => 0,
        };
        conn.in_flight.acquire(bytes);
        let job_conn = Arc::clone(&conn);
        let job = move || {
            answer(&job_conn, device, req, payload, counters, log);
            job_conn.in_flight.release(bytes);
        };
        match &dispatch {
            Dispatch::Inline => job(),
            Dispatch::Pool(tx) => {
                if let Err(e) = tx.send(Box::new(job)) {
                    // The pool is gone (shutting down): run it here.
                    (e.into_inner())();
                }
            }
        }
    };
    conn.in_flight.wait_idle();
    match result {
        Err(ProtoError::Closed) => Ok(()),
        other => other,
    }
}

/// A connected client socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn bind(listen: &Listen) -> Result<Listener, ExportError> {
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
                if !addr.ip().is_loopback() {
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

    fn uri(&self, name: &str) -> String {
        match self {
            Listener::Unix(_, path) => format!("nbd+unix:///{name}?socket={}", path.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("nbd://{a}/{name}"),
                Err(_) => format!("nbd://?/{name}"),
            },
        }
    }

    /// Waits up to 200 ms for a client.
    fn accept(&self) -> io::Result<Option<(Stream, String)>> {
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
                .map(|(s, _)| (Stream::Unix(s), "unix client".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), a.to_string())
            }),
        };
        match accepted {
            Ok((s, peer)) => {
                match &s {
                    Stream::Unix(u) => u.set_nonblocking(false)?,
                    Stream::Tcp(t) => t.set_nonblocking(false)?,
                }
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

/// What a server of `device` offers under `name`.
pub fn offer_for(device: &dyn BlockDevice, name: &str, preferred_block: u32) -> Offer {
    // Every connection sees the same cache and overlay, and a flush covers
    // writes made through any of them: several connections are safe.
    let mode = if device.writable() {
        TFLAG_SEND_FLUSH
    } else {
        TFLAG_READ_ONLY
    };
    Offer {
        name: name.into(),
        description: String::new(),
        size: device.size(),
        flags: TFLAG_HAS_FLAGS | TFLAG_CAN_MULTI_CONN | TFLAG_SEND_CACHE | mode,
        min_block: 1,
        preferred_block: preferred_block.clamp(512, MAX_BLOCK),
        max_block: MAX_BLOCK,
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
) -> Result<ServeReport, ExportError> {
    let listener = Listener::bind(listen)?;
    let mut offer = offer_for(device, &opts.name, opts.preferred_block);
    offer.description = opts.description.clone();
    let counters = Counters::default();
    let open: Mutex<HashMap<u64, Stream>> = Mutex::new(HashMap::new());
    let mut report = ServeReport::default();
    ready(&listener.uri(&opts.name));
    let (tx, rx) = unbounded::<Job<'_>>();
    std::thread::scope(|workers| {
        for _ in 0..opts.threads.max(1) {
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
                let (stream, peer) = match listener.accept() {
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
                    let end = connection(
                        stream,
                        writer,
                        peer.clone(),
                        device,
                        offer,
                        Dispatch::Pool(tx),
                        counters,
                        log,
                    );
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
    use crate::export::testing::{backed_up, sample_image};
    use crate::export::{ImageDevice, ImageOptions};
    use crate::source::nbd::{Address, NbdClient, NbdError};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Serves the sample image on a socket while `client` runs.
    fn with_export(writable: bool, client: impl FnOnce(&Address, &[u8]) + Send) {
        let data = sample_image();
        let (dir, store, fidx) = backed_up(&data);
        let overlay =
            writable.then(|| crate::export::overlay::Overlay::create(dir.path(), data.len() as u64).unwrap());
        let opts = ImageOptions {
            cache_bytes: 1 << 20,
            read_ahead: 256 << 10,
            overlay,
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
