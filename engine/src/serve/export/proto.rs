//! The server side of the NBD protocol (doc/proto.md of
//! NetworkBlockDevice/nbd): fixed newstyle handshake with `NBD_OPT_GO`,
//! `NBD_OPT_INFO`, `NBD_OPT_LIST`, `NBD_OPT_EXPORT_NAME`, structured replies
//! and the `base:allocation` meta context; then requests and replies.
//!
//! Everything here reads from a client that may send anything: lengths are
//! checked before anything is allocated, an option longer than
//! [`MAX_OPTION`] ends the connection, and nothing panics (the `nbd_export`
//! fuzz target runs whole sessions of arbitrary bytes through it).

use std::io::{self, Read, Write};

use crate::error::{io_kind, Classify, ErrorKind};
use crate::format::nbd_wire::*;

/// Longest option payload accepted: names and queries are strings of at
/// most 4096 bytes each.
pub(crate) const MAX_OPTION: u32 = 16 << 10;

/// The only meta context served, and its id.
pub(crate) const ALLOCATION_CONTEXT: &str = "base:allocation";
pub(crate) const ALLOCATION_ID: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtoError {
    #[error("client disconnected")]
    Closed,
    #[error("{0}")]
    Io(io::Error),
    #[error("protocol error: {0}")]
    Bad(String),
}

impl Classify for ProtoError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProtoError::Closed => ErrorKind::Interrupted,
            ProtoError::Io(e) => io_kind(e),
            ProtoError::Bad(_) => ErrorKind::Damaged,
        }
    }
}

fn from_io(e: io::Error) -> ProtoError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            ProtoError::Closed
        }
        _ => ProtoError::Io(e),
    }
}

fn bad(what: impl Into<String>) -> ProtoError {
    ProtoError::Bad(what.into())
}

/// What the server offers: one export.
#[derive(Clone, Debug)]
pub(crate) struct Offer {
    pub name: String,
    pub description: String,
    pub size: u64,
    /// Transmission flags (`TFLAG_*`).
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    pub structured: bool,
    /// `base:allocation` was selected (block status allowed).
    pub allocation: bool,
}

fn read_u32(r: &mut impl Read) -> Result<u32, ProtoError> {
    crate::format::nbd_wire::read_u32(r).map_err(from_io)
}

fn read_u64(r: &mut impl Read) -> Result<u64, ProtoError> {
    crate::format::nbd_wire::read_u64(r).map_err(from_io)
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> Result<(), ProtoError> {
    let mut msg = Vec::with_capacity(20 + data.len());
    msg.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    w.write_all(&msg).map_err(from_io)
}

fn string_reply(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Takes `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    take(data, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_u16(data: &mut &[u8]) -> Option<u16> {
    take(data, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// A length-prefixed string (u32 length).
fn take_string<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_u32(data)? as usize;
    take(data, n)
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` payload: export name and info requests.
fn parse_go(mut data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name = take_string(&mut data)?;
    let n = take_u16(&mut data)?;
    let requests = (0..n).map(|_| take_u16(&mut data)).collect::<Option<Vec<_>>>()?;
    data.is_empty().then_some((name, requests))
}

/// `NBD_OPT_{LIST,SET}_META_CONTEXT` payload: export name and queries.
fn parse_meta(mut data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let name = take_string(&mut data)?;
    let n = take_u32(&mut data)?;
    let mut queries = Vec::new();
    for _ in 0..n {
        queries.push(take_string(&mut data)?);
    }
    data.is_empty().then_some((name, queries))
}

impl Offer {
    fn names(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    fn info_export(&self) -> Vec<u8> {
        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
        d.extend_from_slice(&self.size.to_be_bytes());
        d.extend_from_slice(&self.flags.to_be_bytes());
        d
    }

    fn info_block_size(&self) -> Vec<u8> {
        let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [self.min_block, self.preferred_block, self.max_block] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d
    }

    fn info_text(&self, kind: u16, text: &str) -> Vec<u8> {
        let mut d = kind.to_be_bytes().to_vec();
        d.extend_from_slice(text.as_bytes());
        d
    }
}

/// Where a handshake stands with respect to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tls {
    /// Not offered (unix sockets, `--insecure-tcp`).
    Off,
    /// Required and not started yet: only `NBD_OPT_STARTTLS` (and
    /// `NBD_OPT_ABORT`) are served.
    Required,
    /// Started: the options go over TLS now.
    Active,
}

/// How option haggling ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Negotiated {
    Session(Session),
    /// The client ended it politely (`NBD_OPT_ABORT`, or it only listed).
    Ended,
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next,
    /// then [`negotiate`] again with [`Tls::Active`].
    StartTls,
}

/// Runs the handshake on `s` without TLS. `Ok(None)`: the client ended it
/// politely (`NBD_OPT_ABORT`, or it only listed exports).
pub(crate) fn handshake<S: Read + Write>(s: &mut S, offer: &Offer) -> Result<Option<Session>, ProtoError> {
    let no_zeroes = greet(s)?;
    match negotiate(s, offer, no_zeroes, Tls::Off)? {
        Negotiated::Session(session) => Ok(Some(session)),
        Negotiated::Ended => Ok(None),
        Negotiated::StartTls => Err(bad("STARTTLS without TLS")),
    }
}

/// The server's greeting and the client's flags; returns whether the
/// client asked for `NBD_FLAG_NO_ZEROES`.
pub(crate) fn greet<S: Read + Write>(s: &mut S) -> Result<bool, ProtoError> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).map_err(from_io)?;
    let client_flags = read_u32(s)?;
    if client_flags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return Err(bad(format!("unknown client flags {client_flags:#x}")));
    }
    Ok(client_flags & u32::from(FLAG_NO_ZEROES) != 0)
}

/// Option haggling, until the client picks the export, ends, or (with
/// [`Tls::Required`]) starts TLS.
pub(crate) fn negotiate<S: Read + Write>(
    s: &mut S,
    offer: &Offer,
    no_zeroes: bool,
    tls: Tls,
) -> Result<Negotiated, ProtoError> {
    let mut session = Session::default();
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Err(bad("option without IHAVEOPT magic"));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION {
            return Err(bad(format!("option {option} of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).map_err(from_io)?;
        if tls == Tls::Required && option != OPT_STARTTLS && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                // No error reply exists for this option: the spec says to close.
                return Err(bad(
                    "NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: this server requires TLS",
                ));
            }
            option_reply(
                s,
                option,
                REP_ERR_TLS_REQD,
                b"TLS required: send NBD_OPT_STARTTLS first",
            )?;
            continue;
        }
        match option {
            OPT_STARTTLS if tls == Tls::Off => {
                option_reply(s, option, REP_ERR_UNSUP, b"this export is not served with TLS")?
            }
            OPT_STARTTLS if tls == Tls::Active => {
                option_reply(s, option, REP_ERR_INVALID, b"TLS is already active")?
            }
            OPT_STARTTLS => {
                if !data.is_empty() {
                    option_reply(s, option, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")?;
                    continue;
                }
                option_reply(s, option, REP_ACK, &[])?;
                return Ok(Negotiated::StartTls);
            }
            OPT_EXPORT_NAME => {
                if !offer.names(&data) {
                    // This option has no error reply: the spec says to close.
                    return Err(bad(format!(
                        "unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let mut reply = offer.size.to_be_bytes().to_vec();
                reply.extend_from_slice(&offer.flags.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply).map_err(from_io)?;
                return Ok(Negotiated::Session(session));
            }
            OPT_ABORT => {
                // The client may already have closed; the ack is a courtesy.
                let _ = option_reply(s, option, REP_ACK, &[]);
                return Ok(Negotiated::Ended);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                let mut d = (offer.name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(offer.name.as_bytes());
                d.extend_from_slice(offer.description.as_bytes());
                option_reply(s, option, REP_SERVER, &d)?;
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_go(&data) else {
                    option_reply(s, option, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if !offer.names(name) {
                    let msg = format!(
                        "no export {:?}; this server has {:?}",
                        String::from_utf8_lossy(name),
                        offer.name
                    );
                    option_reply(s, option, REP_ERR_UNKNOWN, &string_reply(&msg))?;
                    continue;
                }
                option_reply(s, option, REP_INFO, &offer.info_export())?;
                // Block sizes are sent whether asked for or not, as the spec allows.
                option_reply(s, option, REP_INFO, &offer.info_block_size())?;
                if requests.contains(&INFO_NAME) {
                    option_reply(s, option, REP_INFO, &offer.info_text(INFO_NAME, &offer.name))?;
                }
                if requests.contains(&INFO_DESCRIPTION) {
                    option_reply(
                        s,
                        option,
                        REP_INFO,
                        &offer.info_text(INFO_DESCRIPTION, &offer.description),
                    )?;
                }
                option_reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Negotiated::Session(session));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(s, option, REP_ERR_INVALID, b"takes no data")?;
                    continue;
                }
                session.structured = true;
                option_reply(s, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = option == OPT_SET_META_CONTEXT;
                let Some((name, queries)) = parse_meta(&data) else {
                    option_reply(s, option, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if set && !session.structured {
                    option_reply(s, option, REP_ERR_INVALID, b"negotiate structured replies first")?;
                    continue;
                }
                if !offer.names(name) {
                    option_reply(s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let wanted = queries.iter().any(|q| {
                    *q == ALLOCATION_CONTEXT.as_bytes() || (!set && (*q == b"base:" || q.is_empty()))
                }) || (!set && queries.is_empty());
                if set {
                    session.allocation = wanted;
                }
                if wanted {
                    let id = if set { ALLOCATION_ID } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(ALLOCATION_CONTEXT.as_bytes());
                    option_reply(s, option, REP_META_CONTEXT, &d)?;
                }
                option_reply(s, option, REP_ACK, &[])?;
            }
            _ => option_reply(s, option, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

/// One transmission request (the header; a write's payload follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub(crate) fn read_request(r: &mut impl Read) -> Result<Request, ProtoError> {
    let mut b = [0u8; 28];
    r.read_exact(&mut b).map_err(from_io)?;
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    if u32_at(0) != REQUEST_MAGIC {
        return Err(bad(format!("request magic {:#x}", u32_at(0))));
    }
    Ok(Request {
        flags: u16_at(4),
        kind: u16_at(6),
        cookie: u64_at(8),
        offset: u64_at(16),
        len: u32_at(24),
    })
}

pub(crate) fn simple_reply(cookie: u64, errno: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&errno.to_be_bytes());
    h[8..].copy_from_slice(&cookie.to_be_bytes());
    h
}

pub(crate) fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&kind.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..].copy_from_slice(&len.to_be_bytes());
    h
}

/// A complete error reply for `cookie`, in the form the session uses.
pub(crate) fn error_reply(session: Session, cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    if !session.structured {
        return simple_reply(cookie, errno).to_vec();
    }
    // Messages are capped so the chunk stays small whatever went wrong.
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let msg = match std::str::from_utf8(msg) {
        Ok(m) => m.as_bytes(),
        Err(e) => &msg[..e.valid_up_to()],
    };
    let mut out = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32).to_vec();
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// A complete success reply without data (write, flush, cache).
pub(crate) fn ok_reply(session: Session, cookie: u64) -> Vec<u8> {
    if session.structured {
        chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0).to_vec()
    } else {
        simple_reply(cookie, 0).to_vec()
    }
}
