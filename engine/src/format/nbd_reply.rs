//! The client side of NBD's transmission phase: simple replies and
//! structured reply chunks (doc/proto.md), parsed and bounded by what the
//! request asked for. hoard's client (`source::nbd`) reads its server's
//! answers with it; the fuzz target feeds it hostile bytes.

use std::io::{self, Read};

use super::nbd_wire::*;

/// Option replies and reply chunks longer than this are refused: no server
/// we talk to sends more, and it bounds what a hostile one can make us hold.
pub(crate) const MAX_PAYLOAD: u32 = 64 << 20;

/// A part of a reply, as the reader thread hands it on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Data { offset: u64, bytes: Vec<u8> },
    Hole { offset: u64, len: u32 },
    Status { context: u32, extents: Vec<(u32, u32)> },
    Error { code: u32, message: String },
}

/// What a cookie was sent for: the reader needs it to parse simple replies
/// and to bound what it accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expect {
    pub offset: u64,
    pub len: u32,
    pub is_read: bool,
}

/// Reads one reply (simple) or reply chunk (structured) from the server.
/// `expect` tells what a cookie was sent for; returns the cookie, the part
/// (None for a chunk that carries nothing) and whether it was the last.
pub(crate) fn read_reply<R: Read>(
    r: &mut R,
    expect: impl Fn(u64) -> Option<Expect>,
) -> Result<(u64, Option<Part>, bool), String> {
    let io = |e: io::Error| e.to_string();
    let magic = read_u32(r).map_err(io)?;
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let code = read_u32(r).map_err(io)?;
            let cookie = read_u64(r).map_err(io)?;
            let e = expect(cookie).ok_or_else(|| format!("reply for unknown cookie {cookie}"))?;
            if code != 0 {
                let message = String::new();
                return Ok((cookie, Some(Part::Error { code, message }), true));
            }
            if !e.is_read {
                return Ok((cookie, None, true));
            }
            let mut bytes = vec![0; e.len as usize];
            r.read_exact(&mut bytes).map_err(io)?;
            let offset = e.offset;
            Ok((cookie, Some(Part::Data { offset, bytes }), true))
        }
        STRUCTURED_REPLY_MAGIC => {
            let flags = read_u16(r).map_err(io)?;
            let kind = read_u16(r).map_err(io)?;
            let cookie = read_u64(r).map_err(io)?;
            let len = read_u32(r).map_err(io)?;
            let e = expect(cookie).ok_or_else(|| format!("reply for unknown cookie {cookie}"))?;
            let done = flags & REPLY_FLAG_DONE != 0;
            let limit = if e.is_read {
                e.len.saturating_add(8)
            } else {
                MAX_PAYLOAD
            };
            if len > limit.min(MAX_PAYLOAD) {
                return Err(format!("reply chunk of {len} bytes for a request of {}", e.len));
            }
            let mut p = vec![0; len as usize];
            r.read_exact(&mut p).map_err(io)?;
            let part = parse_chunk(kind, &p, &e)?;
            Ok((cookie, part, done))
        }
        m => Err(format!("bad reply magic {m:#x}")),
    }
}

fn parse_chunk(kind: u16, p: &[u8], e: &Expect) -> Result<Option<Part>, String> {
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let short = || format!("reply chunk type {kind} too short ({} bytes)", p.len());
    let within =
        |offset: u64, len: u64| offset >= e.offset && offset.saturating_add(len) <= e.offset + e.len as u64;
    match kind {
        REPLY_TYPE_NONE => Ok(None),
        REPLY_TYPE_OFFSET_DATA if e.is_read => {
            let offset = be64(p.get(..8).ok_or_else(short)?);
            let bytes = p[8..].to_vec();
            if !within(offset, bytes.len() as u64) {
                return Err(format!("data at {offset}+{} outside the request", bytes.len()));
            }
            Ok(Some(Part::Data { offset, bytes }))
        }
        REPLY_TYPE_OFFSET_HOLE if e.is_read => {
            if p.len() != 12 {
                return Err(short());
            }
            let (offset, len) = (be64(&p[..8]), be32(&p[8..12]));
            if !within(offset, len as u64) {
                return Err(format!("hole at {offset}+{len} outside the request"));
            }
            Ok(Some(Part::Hole { offset, len }))
        }
        REPLY_TYPE_BLOCK_STATUS if !e.is_read => {
            if p.len() < 12 || !(p.len() - 4).is_multiple_of(8) {
                return Err(short());
            }
            let context = be32(&p[..4]);
            let extents = p[4..]
                .chunks_exact(8)
                .map(|d| (be32(&d[..4]), be32(&d[4..])))
                .collect();
            Ok(Some(Part::Status { context, extents }))
        }
        k if k & REPLY_TYPE_ERROR_BIT != 0 => {
            if p.len() < 6 {
                return Err(short());
            }
            let code = be32(&p[..4]);
            let n = u16::from_be_bytes([p[4], p[5]]) as usize;
            let message = p
                .get(6..6 + n)
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .ok_or_else(short)?;
            Ok(Some(Part::Error { code, message }))
        }
        k => Err(format!("unexpected reply chunk type {k}")),
    }
}
