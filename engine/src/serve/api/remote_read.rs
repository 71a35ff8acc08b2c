//! Reading through the server: chunks in batches, each record checked
//! here as a record from this host's own disk ([`ChunkSource`]), and
//! verify's read-back of every chunk ([`ChunkCheck`]).

use std::path::PathBuf;

use reqwest::Method;

use super::client::Client;
use super::wire;
use crate::chunking::digest::{Digest, DigestSet};
use crate::format::chunk_decoder::ChunkDecoder;
use crate::progress::Progress;
use crate::store::seam::{BatchItem, CheckOutcome, ChunkCheck, ChunkSource, Repository};
use crate::store::StoreError;

/// Bytes of chunks one verify request reads.
const CHECK_BATCH: usize = 32 << 20;

/// Reads chunks through the server, in batches, each record checked here.
pub(super) struct RemoteReader<'a> {
    pub(super) client: &'a Client,
    pub(super) decoder: ChunkDecoder,
}

impl ChunkSource for RemoteReader<'_> {
    fn read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError> {
        let item = BatchItem {
            digest: *digest,
            at: 0,
            len: out.len(),
        };
        self.read_batch(&[item], out).pop().expect("one answer per item")
    }

    fn read_batch(&mut self, items: &[BatchItem], out: &mut [u8]) -> Vec<Result<usize, StoreError>> {
        let mut results = Vec::with_capacity(items.len());
        for part in items.chunks(wire::MAX_READ_DIGESTS) {
            let body = part.iter().flat_map(|i| i.digest.0).collect();
            let answer = self
                .client
                .call(Method::POST, "chunks", body)
                .map_err(|e| e.to_string());
            let answers = answer
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|b| wire::parse_answers(b, part.len()));
            let answers = match answers {
                Ok(answers) => answers,
                Err(e) => {
                    results.extend(
                        part.iter()
                            .map(|_| Err(StoreError::Remote(std::io::Error::other(e.clone())))),
                    );
                    continue;
                }
            };
            for (item, answer) in part.iter().zip(answers) {
                results.push(match answer {
                    Err(why) => Err(StoreError::Remote(std::io::Error::other(format!(
                        "chunk {}: the server says: {why}",
                        item.digest
                    )))),
                    // Checked here as a record from this host's own disk.
                    Ok(record) => self
                        .decoder
                        .decode_to_slice(record, &item.digest, &mut out[item.at..item.at + item.len])
                        .map_err(|source| StoreError::ChunkDamaged {
                            digest: item.digest,
                            pack: PathBuf::from(&self.client.repo().server),
                            source,
                        }),
                });
            }
        }
        results
    }
}

/// Verify through the server: every chunk read back and checked here.
pub(super) struct RemoteCheck<'a> {
    pub(super) store: &'a dyn Repository,
    pub(super) digests: Vec<Digest>,
    pub(super) seen: DigestSet,
}

impl ChunkCheck for RemoteCheck<'_> {
    fn add(&mut self, d: Digest) -> Result<(), StoreError> {
        if self.seen.insert(d) {
            self.digests.push(d);
        }
        Ok(())
    }

    /// Reads the chunks in batches of at most [`CHECK_BATCH`] bytes (their
    /// sizes asked first), each checked as a restore checks it.
    fn run(self: Box<Self>, _threads: usize, progress: &dyn Progress) -> Result<CheckOutcome, StoreError> {
        let mut outcome = CheckOutcome::default();
        let mut reader = self.store.reader()?;
        let mut buf = Vec::new();
        for part in self.digests.chunks(wire::MAX_READ_DIGESTS) {
            let sizes = self.store.chunk_sizes(part)?;
            let mut items = Vec::new();
            let mut at = 0;
            let mut stored = Vec::new();
            for (d, size) in part.iter().zip(sizes) {
                match size {
                    Some((raw, _)) => stored.push((*d, raw as usize)),
                    None => {
                        outcome.bad.insert(*d, "not in the store".into());
                    }
                }
            }
            let mut stored = stored.into_iter().peekable();
            while let Some((digest, len)) = stored.next() {
                items.push(BatchItem { digest, at, len });
                at += len;
                let full = stored.peek().is_none_or(|(_, next)| at + next > CHECK_BATCH);
                if !full {
                    continue;
                }
                buf.resize(at, 0);
                for (item, r) in items.iter().zip(reader.read_batch(&items, &mut buf)) {
                    match r {
                        Ok(n) => {
                            outcome.chunks += 1;
                            outcome.bytes += n as u64;
                            progress.advance(n as u64);
                        }
                        Err(e) => {
                            outcome.bad.insert(item.digest, e.to_string());
                        }
                    }
                }
                items.clear();
                at = 0;
            }
        }
        Ok(outcome)
    }
}
