//! The local store as the upper seam: its backup session, chunk reader,
//! catalogue and chunk check are [`Store`]'s own.

use super::backup_session::BackupSession;
use super::chunk_check::LocalCheck;
use super::chunk_reader::ChunkReader;
use super::datastore::Store;
use super::error::StoreError;
use super::seam::{Catalogue, ChunkCheck, ChunkSink, ChunkSource, Repository};
use super::session::ReadSession;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::Digest;
use crate::crypto::Protection;

impl Repository for Store {
    fn default_chunk_size(&self) -> ChunkSize {
        Store::default_chunk_size(self)
    }

    fn require_key(&self, what: &str) -> Result<(), StoreError> {
        Store::require_key(self, what)
    }

    fn checks_crc_only(&self) -> bool {
        self.protection() != Protection::None && self.keys().is_none()
    }

    fn catalogue(&self) -> &dyn Catalogue {
        self.catalog()
    }

    fn begin_backup(&self, what: &str) -> Result<Box<dyn ChunkSink + '_>, StoreError> {
        Ok(Box::new(BackupSession::begin(self, what)?))
    }

    fn reader(&self) -> Result<Box<dyn ChunkSource + '_>, StoreError> {
        Ok(Box::new(ChunkReader::new(self)?))
    }

    fn hold_reads(&self, what: &str) -> Option<ReadSession> {
        Some(ReadSession::begin(self.root(), what))
    }

    fn begin_check(&self) -> Result<Box<dyn ChunkCheck + '_>, StoreError> {
        Ok(Box::new(LocalCheck::begin(self)?))
    }

    fn chunk_sizes(&self, digests: &[Digest]) -> Result<Vec<Option<(u32, u32)>>, StoreError> {
        let entries = self.index().entries(digests)?;
        Ok(entries
            .into_iter()
            .map(|e| e.map(|e| (e.loc.raw_len, e.loc.record_len)))
            .collect())
    }
}
