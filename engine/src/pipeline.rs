//! The chunk pipeline's one step, shared by every producer of chunks (the
//! image reader's workers and the tree archiver's stream workers): a chunk's
//! bytes and digest in, a decision out (zero, already stored, or new with
//! its encoded record), and on the writer's side that decision applied to
//! the backup session and counted in the archive's statistics.
//!
//! The producers differ only in where chunks come from: image workers pull
//! chunk numbers and read the source themselves (so a slow NBD source gets
//! many reads in flight), stream workers take the chunks a content-defined
//! chunker cut. Both hash, ask the session, compress new chunks and hand the
//! [`Outcome`] to one writer that calls [`Outcome::settle`].

use crate::chunking::digest::Digest;
use crate::format::chunk::ChunkEncoder;
use crate::format::snapshot::ArchiveStats;
use crate::store::backup_session::BackupSession;
use crate::store::StoreError;

/// What a worker decided about one chunk.
pub enum Outcome {
    /// All zeros: nothing is stored.
    Zero(Digest),
    /// The store (or the session's open pack) holds it.
    Known(Digest),
    /// New: the encoded record to add.
    New(Digest, Vec<u8>),
}

impl Outcome {
    /// Decides about a non-zero chunk `data` with digest `digest`: one
    /// lookup, and compression only when the session does not have it.
    pub fn decide(
        session: &BackupSession,
        encoder: &mut ChunkEncoder,
        data: &[u8],
        digest: Digest,
    ) -> Result<Outcome, StoreError> {
        Ok(if session.is_known(&digest)? {
            Outcome::Known(digest)
        } else {
            Outcome::New(digest, encoder.encode(data, digest))
        })
    }

    /// Applies the decision about a chunk of `len` bytes: adds a new
    /// record to the session (which may find another worker added the
    /// same chunk first) and counts it; returns the digest to index.
    pub fn settle(
        self,
        session: &BackupSession,
        len: u64,
        stats: &mut ArchiveStats,
    ) -> Result<Digest, StoreError> {
        Ok(match self {
            Outcome::Zero(d) => {
                stats.zero_chunks += 1;
                stats.zero_bytes += len;
                d
            }
            Outcome::Known(d) => {
                stats.reused_chunks += 1;
                stats.reused_bytes += len;
                d
            }
            Outcome::New(d, record) => {
                if session.add_chunk(d, &record, len as u32)? {
                    stats.new_chunks += 1;
                    stats.new_bytes += len;
                    stats.stored_bytes += record.len() as u64;
                } else {
                    stats.reused_chunks += 1;
                    stats.reused_bytes += len;
                }
                d
            }
        })
    }
}
