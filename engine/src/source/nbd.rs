//! An NBD client (doc/proto.md of NetworkBlockDevice/nbd): fixed newstyle
//! handshake, `NBD_OPT_GO`, structured replies, pipelined `NBD_CMD_READ`
//! and `NBD_CMD_BLOCK_STATUS` with meta contexts (`base:allocation`,
//! `qemu:dirty-bitmap:NAME`).
//!
//! Any number of threads may issue requests at once. One reader thread owns
//! the receiving half of the socket and hands each reply part to the request
//! whose cookie it carries; every wait is bounded by the client's timeout,
//! and a protocol violation ends the connection for every request.
//!
//! One file of ~770 lines, on purpose: the handshake, the reply demultiplexer
//! and the request paths share one connection state machine.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};

use crate::error::{Classify, Context, ErrorKind};
use crate::format::nbd_reply::MAX_PAYLOAD;
use crate::format::nbd_wire::*;

/// Reads are split into requests of at most this many bytes, all in flight.
pub(crate) const MAX_READ_REQUEST: usize = 1 << 20;

pub(crate) use crate::format::nbd_reply::{read_reply, Expect, Part};
pub(crate) use crate::format::nbd_wire::{STATE_DIRTY, STATE_ZERO};

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD {peer}: {source}")]
    Io { peer: String, source: io::Error },
    #[error("NBD {peer}: protocol error: {0}", peer = .1)]
    Protocol(String, String),
    #[error("NBD {peer}: server refused {what}: {detail}")]
    Refused {
        peer: String,
        what: String,
        detail: String,
    },
    #[error("NBD {peer}: request failed at offset {offset}: error {code} {message}")]
    Request {
        peer: String,
        offset: u64,
        code: u32,
        message: String,
    },
    #[error("NBD {peer}: no answer within {secs} s (server busy or hung?)")]
    Timeout { peer: String, secs: u64 },
    #[error("NBD {peer}: connection lost: {reason}")]
    Lost { peer: String, reason: String },
}

impl Classify for NbdError {
    fn kind(&self) -> ErrorKind {
        match self {
            NbdError::Timeout { .. } | NbdError::Lost { .. } => ErrorKind::Interrupted,
            _ => ErrorKind::Source,
        }
    }

    fn context(&self) -> Context {
        match self {
            NbdError::Request { peer, offset, .. } => {
                Context::path(std::path::Path::new(peer)).offset(*offset)
            }
            NbdError::Io { peer, .. }
            | NbdError::Refused { peer, .. }
            | NbdError::Timeout { peer, .. }
            | NbdError::Lost { peer, .. }
            | NbdError::Protocol(peer, _) => Context::path(std::path::Path::new(peer)),
        }
    }
}

/// Where the server listens.
#[derive(Clone, Debug)]
pub enum Address {
    Unix(std::path::PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// What the handshake settled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub transmission_flags: u16,
    pub structured_replies: bool,
    /// Meta contexts the server agreed to, with their ids.
    pub contexts: Vec<(String, u32)>,
    pub preferred_block_size: Option<u32>,
}

/// One extent of a block status answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub flags: u32,
}

/// Runs the fixed newstyle handshake up to and including `NBD_OPT_GO`.
pub(crate) fn handshake<S: Read + Write>(
    s: &mut S,
    peer: &str,
    export: &str,
    contexts: &[&str],
) -> Result<Export, NbdError> {
    let io = |source| NbdError::Io {
        peer: peer.into(),
        source,
    };
    let proto = |m: String| NbdError::Protocol(m, peer.into());
    if read_u64(s).map_err(io)? != NBDMAGIC || read_u64(s).map_err(io)? != IHAVEOPT {
        return Err(proto("not a newstyle NBD server".into()));
    }
    let flags = read_u16(s).map_err(io)?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto("server does not speak fixed newstyle".into()));
    }
    let client_flags = 1u32 | if flags & FLAG_NO_ZEROES != 0 { 2 } else { 0 };
    s.write_all(&client_flags.to_be_bytes()).map_err(io)?;

    let mut out = Export::default();
    send_option(s, OPT_STRUCTURED_REPLY, &[]).map_err(io)?;
    let (rep, data) = option_reply(s, peer, OPT_STRUCTURED_REPLY)?;
    out.structured_replies = rep == REP_ACK && data.is_empty();
    if !out.structured_replies {
        drain_option(s, peer, OPT_STRUCTURED_REPLY, rep)?;
    }

    if !contexts.is_empty() {
        if !out.structured_replies {
            return Err(refused(peer, "structured replies", "needed for block status"));
        }
        let mut d = Vec::new();
        put_str32(&mut d, export);
        d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            put_str32(&mut d, c);
        }
        send_option(s, OPT_SET_META_CONTEXT, &d).map_err(io)?;
        loop {
            let (rep, data) = option_reply(s, peer, OPT_SET_META_CONTEXT)?;
            match rep {
                REP_ACK => break,
                REP_META_CONTEXT if data.len() >= 4 => {
                    let id = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
                    let name = String::from_utf8_lossy(&data[4..]).into_owned();
                    out.contexts.push((name, id));
                }
                rep => return Err(option_error(peer, "meta contexts", rep, &data)),
            }
        }
    }

    let mut d = Vec::new();
    put_str32(&mut d, export);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &d).map_err(io)?;
    let mut have_export = false;
    loop {
        let (rep, data) = option_reply(s, peer, OPT_GO)?;
        match rep {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let kind = u16::from_be_bytes([data[0], data[1]]);
                if kind == INFO_EXPORT && data.len() == 12 {
                    out.size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                    out.transmission_flags = u16::from_be_bytes([data[10], data[11]]);
                    have_export = true;
                } else if kind == INFO_BLOCK_SIZE && data.len() == 14 {
                    out.preferred_block_size =
                        Some(u32::from_be_bytes(data[6..10].try_into().expect("4 bytes")));
                }
            }
            REP_INFO => return Err(proto("short NBD_REP_INFO".into())),
            rep => return Err(option_error(peer, &format!("export {export:?}"), rep, &data)),
        }
    }
    if !have_export {
        return Err(proto("NBD_OPT_GO ended without NBD_INFO_EXPORT".into()));
    }
    if out.size > i64::MAX as u64 {
        return Err(proto(format!("export size {} out of range", out.size)));
    }
    Ok(out)
}

fn send_option<W: Write>(w: &mut W, option: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

fn option_reply<R: Read>(r: &mut R, peer: &str, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
    let io = |source| NbdError::Io {
        peer: peer.into(),
        source,
    };
    let magic = read_u64(r).map_err(io)?;
    let opt = read_u32(r).map_err(io)?;
    let rep = read_u32(r).map_err(io)?;
    let len = read_u32(r).map_err(io)?;
    if magic != REPLY_MAGIC || opt != option {
        return Err(NbdError::Protocol(
            format!("bad option reply (magic {magic:#x}, option {opt} for {option})"),
            peer.into(),
        ));
    }
    if len > MAX_PAYLOAD {
        return Err(NbdError::Protocol(
            format!("option reply of {len} bytes"),
            peer.into(),
        ));
    }
    let mut data = vec![0; len as usize];
    r.read_exact(&mut data).map_err(io)?;
    Ok((rep, data))
}

/// After an unexpected reply to an option that allows several, reads on to
/// the final one so the next option starts in step.
fn drain_option<R: Read>(r: &mut R, peer: &str, option: u32, mut rep: u32) -> Result<(), NbdError> {
    while rep & REP_ERR_BIT == 0 && rep != REP_ACK {
        rep = option_reply(r, peer, option)?.0;
    }
    Ok(())
}

fn option_error(peer: &str, what: &str, rep: u32, data: &[u8]) -> NbdError {
    let name = match rep {
        x if x == REP_ERR_BIT + 1 => "unsupported",
        x if x == REP_ERR_BIT + 2 => "forbidden by policy",
        x if x == REP_ERR_BIT + 3 => "invalid",
        x if x == REP_ERR_BIT + 5 => "TLS required",
        x if x == REP_ERR_BIT + 6 => "unknown export",
        x if x == REP_ERR_BIT + 7 => "server shutting down",
        x if x & REP_ERR_BIT != 0 => "error",
        _ => "unexpected reply",
    };
    let msg = String::from_utf8_lossy(data);
    refused(peer, what, &format!("{name} ({rep:#x}) {msg}"))
}

fn refused(peer: &str, what: &str, detail: &str) -> NbdError {
    NbdError::Refused {
        peer: peer.into(),
        what: what.into(),
        detail: detail.trim().into(),
    }
}

fn put_str32(d: &mut Vec<u8>, s: &str) {
    d.extend_from_slice(&(s.len() as u32).to_be_bytes());
    d.extend_from_slice(s.as_bytes());
}

/// Messages from the reader thread to a waiting request.
enum Delivery {
    Part(Part),
    Done,
}

struct Pending {
    expect: Expect,
    tx: Sender<Delivery>,
}

type Table = Arc<Mutex<HashMap<u64, Pending>>>;

/// The two halves of the socket.
fn connect(addr: &Address) -> io::Result<Socket> {
    Ok(match addr {
        Address::Unix(p) => Socket::Unix(UnixStream::connect(p)?),
        Address::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            Socket::Tcp(s)
        }
    })
}

/// A connected NBD client. Cheap to share between threads (`&self` methods).
pub struct NbdClient {
    peer: String,
    export: Export,
    writer: Mutex<Socket>,
    table: Table,
    dead: Arc<Mutex<Option<String>>>,
    next_cookie: AtomicU64,
    timeout: Duration,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NbdClient {
    /// Connects to export `name` and asks for the given meta contexts.
    pub fn connect(
        addr: &Address,
        name: &str,
        contexts: &[&str],
        timeout: Duration,
    ) -> Result<NbdClient, NbdError> {
        let peer = format!("{addr} export {name:?}");
        let io = |source| NbdError::Io {
            peer: peer.clone(),
            source,
        };
        let mut conn = connect(addr).map_err(io)?;
        conn.set_read_timeout(Some(timeout)).map_err(io)?;
        let export = handshake(&mut conn, &peer, name, contexts).map_err(|e| match e {
            NbdError::Io { peer, source }
                if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                NbdError::Timeout {
                    peer,
                    secs: timeout.as_secs(),
                }
            }
            e => e,
        })?;
        // The reader waits for replies as long as requests are outstanding;
        // each request bounds its own wait.
        conn.set_read_timeout(None).map_err(io)?;
        let mut rx_half = conn.try_clone().map_err(io)?;
        let table: Table = Arc::default();
        let dead: Arc<Mutex<Option<String>>> = Arc::default();
        let reader = {
            let (table, dead) = (table.clone(), dead.clone());
            std::thread::Builder::new()
                .name("nbd-reader".into())
                .spawn(move || reader_loop(&mut rx_half, &table, &dead))
                .map_err(io)?
        };
        Ok(NbdClient {
            peer,
            export,
            writer: Mutex::new(conn),
            table,
            dead,
            next_cookie: AtomicU64::new(1),
            timeout,
            reader: Some(reader),
        })
    }

    pub fn export(&self) -> &Export {
        &self.export
    }

    pub fn size(&self) -> u64 {
        self.export.size
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The id the server gave meta context `name`, if it agreed to it.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.export
            .contexts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Reads `buf.len()` bytes at `offset`, as requests of at most
    /// [`MAX_READ_REQUEST`] bytes that are all in flight at once.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let mut waits = Vec::new();
        for (i, piece) in buf.chunks(MAX_READ_REQUEST).enumerate() {
            let at = offset + (i * MAX_READ_REQUEST) as u64;
            waits.push((at, self.send(CMD_READ, 0, at, piece.len() as u32, true)?));
        }
        for (i, piece) in buf.chunks_mut(MAX_READ_REQUEST).enumerate() {
            let (at, rx) = &waits[i];
            let mut filled = 0u64;
            self.collect(*at, rx, |part| {
                // read_reply checked that every part lies within the request.
                let len = match part {
                    Part::Data { offset, bytes } => {
                        let s = (offset - at) as usize;
                        piece[s..s + bytes.len()].copy_from_slice(&bytes);
                        bytes.len()
                    }
                    Part::Hole { offset, len } => {
                        let s = (offset - at) as usize;
                        piece[s..s + len as usize].fill(0);
                        len as usize
                    }
                    _ => return Err(format!("unexpected reply part to a read: {part:?}")),
                };
                filled += len as u64;
                Ok(())
            })?;
            if filled != piece.len() as u64 {
                return Err(self.protocol(format!(
                    "read at {at} of {} bytes answered with {filled}",
                    piece.len()
                )));
            }
        }
        Ok(())
    }

    /// Block status of `[offset, offset + len)` in meta context `context`:
    /// extents in order, covering at least a prefix of the range (servers may
    /// answer less than asked; callers continue from the end).
    pub(crate) fn block_status(&self, context: u32, offset: u64, len: u32) -> Result<Vec<Extent>, NbdError> {
        let rx = self.send(CMD_BLOCK_STATUS, 0, offset, len, false)?;
        let mut out = Vec::new();
        self.collect(offset, &rx, |part| match part {
            Part::Status { context: c, extents } if c == context => {
                let mut at = offset;
                for (l, flags) in extents {
                    if l == 0 {
                        return Err("zero-length extent".into());
                    }
                    out.push(Extent {
                        offset: at,
                        len: l as u64,
                        flags,
                    });
                    at += l as u64;
                }
                Ok(())
            }
            Part::Status { .. } => Ok(()), // another context's answer
            _ => Err(format!("unexpected reply part to block status: {part:?}")),
        })?;
        if out.is_empty() {
            return Err(self.protocol(format!("block status at {offset} answered with no extent")));
        }
        Ok(out)
    }

    /// Every extent of the whole export in context `context`.
    pub fn map(&self, context: u32) -> Result<Vec<Extent>, NbdError> {
        let mut out: Vec<Extent> = Vec::new();
        let mut at = 0;
        let size = self.export.size;
        while at < size {
            let len = (size - at).min(1 << 30) as u32;
            for e in self.block_status(context, at, len)? {
                let e = Extent {
                    len: e.len.min(size - e.offset.min(size)),
                    ..e
                };
                if e.len == 0 {
                    break;
                }
                at = e.offset + e.len;
                match out.last_mut() {
                    Some(last) if last.flags == e.flags && last.offset + last.len == e.offset => {
                        last.len += e.len
                    }
                    _ => out.push(e),
                }
            }
        }
        Ok(out)
    }

    fn send(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        is_read: bool,
    ) -> Result<crossbeam_channel::Receiver<Delivery>, NbdError> {
        self.check_alive()?;
        let cookie = self.next_cookie.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded();
        let expect = Expect { offset, len, is_read };
        self.table
            .lock()
            .expect("lock poisoned")
            .insert(cookie, Pending { expect, tx });
        let mut m = [0u8; 28];
        m[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m[4..6].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&command.to_be_bytes());
        m[8..16].copy_from_slice(&cookie.to_be_bytes());
        m[16..24].copy_from_slice(&offset.to_be_bytes());
        m[24..28].copy_from_slice(&len.to_be_bytes());
        let sent = self.writer.lock().expect("lock poisoned").write_all(&m);
        if let Err(source) = sent {
            self.table.lock().expect("lock poisoned").remove(&cookie);
            return Err(NbdError::Io {
                peer: self.peer.clone(),
                source,
            });
        }
        Ok(rx)
    }

    /// Hands each part of one reply to `f` until the server says done.
    fn collect(
        &self,
        offset: u64,
        rx: &crossbeam_channel::Receiver<Delivery>,
        mut f: impl FnMut(Part) -> Result<(), String>,
    ) -> Result<(), NbdError> {
        let mut error = None;
        loop {
            match rx.recv_timeout(self.timeout) {
                Ok(Delivery::Part(Part::Error { code, message })) => {
                    error.get_or_insert((code, message));
                }
                Ok(Delivery::Part(p)) => f(p).map_err(|m| self.protocol(m))?,
                Ok(Delivery::Done) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // A server that stops answering ends the connection.
                    self.kill(format!("no reply within {} s", self.timeout.as_secs()));
                    return Err(NbdError::Timeout {
                        peer: self.peer.clone(),
                        secs: self.timeout.as_secs(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.lost()),
            }
        }
        match error {
            Some((code, message)) => Err(NbdError::Request {
                peer: self.peer.clone(),
                offset,
                code,
                message,
            }),
            None => Ok(()),
        }
    }

    fn check_alive(&self) -> Result<(), NbdError> {
        match self.dead.lock().expect("lock poisoned").as_ref() {
            Some(_) => Err(self.lost()),
            None => Ok(()),
        }
    }

    fn lost(&self) -> NbdError {
        let reason = self.dead.lock().expect("lock poisoned").clone();
        NbdError::Lost {
            peer: self.peer.clone(),
            reason: reason.unwrap_or_else(|| "closed".into()),
        }
    }

    fn protocol(&self, m: String) -> NbdError {
        self.kill(m.clone());
        NbdError::Protocol(m, self.peer.clone())
    }

    fn kill(&self, reason: String) {
        self.dead.lock().expect("lock poisoned").get_or_insert(reason);
        self.writer.lock().expect("lock poisoned").shutdown();
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.check_alive().is_ok() {
            let mut m = [0u8; 28];
            m[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            m[6..8].copy_from_slice(&CMD_DISC.to_be_bytes());
            let _ = self.writer.lock().expect("lock poisoned").write_all(&m);
        }
        self.kill("disconnected".into());
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn reader_loop(conn: &mut Socket, table: &Table, dead: &Mutex<Option<String>>) {
    let reason = loop {
        let expect = |cookie| {
            table
                .lock()
                .expect("lock poisoned")
                .get(&cookie)
                .map(|p| p.expect)
        };
        match read_reply(conn, expect) {
            Ok((cookie, part, done)) => {
                let mut t = table.lock().expect("lock poisoned");
                let tx = if done {
                    t.remove(&cookie).map(|p| p.tx)
                } else {
                    t.get(&cookie).map(|p| p.tx.clone())
                };
                drop(t);
                if let Some(tx) = tx {
                    if let Some(p) = part {
                        let _ = tx.send(Delivery::Part(p));
                    }
                    if done {
                        let _ = tx.send(Delivery::Done);
                    }
                }
            }
            Err(e) => break e,
        }
    };
    dead.lock().expect("lock poisoned").get_or_insert(reason);
    conn.shutdown();
    // Dropping the senders wakes every waiting request with "lost".
    table.lock().expect("lock poisoned").clear();
}

impl super::ImageSource for NbdClient {
    fn describe(&self) -> String {
        self.peer.clone()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.export.size)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = (self.export.size.saturating_sub(offset)).min(buf.len() as u64) as usize;
        self.read(offset, &mut buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }

    fn preferred_read(&self) -> usize {
        // Whole chunks at once: their requests are all in flight together.
        usize::MAX
    }

    fn reads_in_flight(&self) -> usize {
        // Small chunks are one request each: more workers keep the server busy.
        8
    }
}
