//! One NBD client: the handshake, then requests until it goes.
//!
//! The connection's thread reads requests in order; the requests themselves
//! run on a pool shared by all connections ([`Dispatch`]), so one client's
//! slow read does not hold up another's, and a client with many requests in
//! flight (qemu, nbdcopy) gets them served in parallel. Replies are written
//! whole under the connection's writer lock. What a connection may have in
//! flight is bounded in bytes.
//!
//! A client that disconnects, sends garbage or breaks the protocol ends its
//! own connection and nothing else; a chunk that cannot be read fails that
//! request with EIO and is logged.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::Sender;

use super::device::{BlockDevice, Piece};
use super::proto::{self, Negotiated, Offer, ProtoError, Request, Session, Tls};
use crate::format::nbd_wire::*;

/// Largest read or write served in one request.
pub(crate) const MAX_BLOCK: u32 = 8 << 20;
/// Bytes of reads and writes one connection may have in flight.
const MAX_IN_FLIGHT: u64 = 32 << 20;

/// A request handed to a worker.
pub(crate) type Job<'s> = Box<dyn FnOnce() + Send + 's>;

/// Where requests run: on the pool, or (fuzzing, tests) on the reading thread.
pub(crate) enum Dispatch<'a, 's> {
    #[cfg(any(test, feature = "fuzzing"))]
    Inline,
    Pool(&'a Sender<Job<'s>>),
}

#[derive(Default)]
pub(crate) struct Counters {
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
    /// A reply could not be written (the client went, or stopped reading
    /// until the socket's write timeout): nothing more is sent, and the
    /// connection ends at the next request.
    dead: AtomicBool,
}

impl<W: Write> Conn<W> {
    /// Sends one whole reply; a client that has gone is not an error here
    /// (the reading side notices and ends the connection).
    fn send(&self, parts: &[&[u8]]) {
        self.send_with(|w| {
            for p in parts {
                w.write_all(p)?;
            }
            Ok(())
        });
    }

    /// Writes a reply under the writer lock, unless the connection is dead.
    fn send_with(&self, write: impl FnOnce(&mut W) -> io::Result<()>) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        if write(&mut w).and_then(|()| w.flush()).is_err() {
            self.dead.store(true, Ordering::Relaxed);
        }
    }

    fn send_read(&self, cookie: u64, offset: u64, pieces: &[Piece]) {
        static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];
        self.send_with(|w| {
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
                return Ok(());
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
            Ok(())
        });
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

/// Whom a connection serves, and with what.
pub(crate) struct Client<'d, 'a> {
    /// Names the client in the log.
    pub peer: String,
    pub device: &'a dyn BlockDevice,
    pub offer: &'d Offer,
    pub dispatch: Dispatch<'d, 'a>,
    pub counters: &'a Counters,
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// Serves one client: handshake, then requests until it disconnects,
/// breaks the protocol, or the socket is shut down. Returns once every
/// request it started has been answered.
pub(crate) fn connection<'a, R: Read, W: Write + Send + 'a>(
    mut reader: R,
    mut writer: W,
    client: Client<'_, 'a>,
) -> Result<(), ProtoError> {
    let Some(session) = proto::handshake(&mut Duplex(&mut reader, &mut writer), client.offer)? else {
        return Ok(());
    };
    transmit(reader, writer, session, client)
}

/// [`connection`] on a TCP socket that must be TLS-protected: only
/// `NBD_OPT_STARTTLS` is served until the TLS handshake (which checks the
/// client's certificate) is done; the rest runs over TLS.
pub(crate) fn tls_connection<'a>(
    sock: Socket,
    tls: Arc<rustls::ServerConfig>,
    client: Client<'_, 'a>,
) -> Result<(), ProtoError> {
    let (mut r, mut w) = (
        sock.try_clone().map_err(ProtoError::Io)?,
        sock.try_clone().map_err(ProtoError::Io)?,
    );
    let mut plain = Duplex(&mut r, &mut w);
    let no_zeroes = proto::greet(&mut plain)?;
    match proto::negotiate(&mut plain, client.offer, no_zeroes, Tls::Required)? {
        Negotiated::StartTls => {}
        Negotiated::Ended => return Ok(()),
        Negotiated::Session(_) => return Err(ProtoError::Bad("a session without TLS".into())),
    }
    let (mut reader, mut writer) = super::tls::accept(tls, sock, TLS_HANDSHAKE_TIMEOUT)
        .map_err(|e| ProtoError::Bad(format!("TLS handshake: {e}")))?;
    (client.log)(&format!("{}: TLS established", client.peer));
    let mut protected = Duplex(&mut reader, &mut writer);
    match proto::negotiate(&mut protected, client.offer, no_zeroes, Tls::Active)? {
        Negotiated::Session(session) => transmit(reader, writer, session, client),
        Negotiated::Ended => Ok(()),
        Negotiated::StartTls => Err(ProtoError::Bad("STARTTLS twice".into())),
    }
}

/// How long a client may take for its side of the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The transmission phase: requests until the client disconnects.
fn transmit<'a, R: Read, W: Write + Send + 'a>(
    mut reader: R,
    writer: W,
    session: Session,
    client: Client<'_, 'a>,
) -> Result<(), ProtoError> {
    let Client {
        peer,
        device,
        dispatch,
        counters,
        log,
        ..
    } = client;
    let conn = Arc::new(Conn {
        writer: Mutex::new(writer),
        session,
        in_flight: InFlight::default(),
        peer,
        dead: AtomicBool::new(false),
    });
    let result = loop {
        if conn.dead.load(Ordering::Relaxed) {
            break Err(ProtoError::Bad(
                "replies could not be delivered (client gone or not reading)".into(),
            ));
        }
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
            #[cfg(any(test, feature = "fuzzing"))]
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

/// What a server of `device` offers under `name`.
pub(crate) fn offer_for(device: &dyn BlockDevice, name: &str, preferred_block: u32) -> Offer {
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
