//! A second implementation of the upper seam, for tests: chunk records,
//! manifests, markers, notes and verify states are held in memory; only
//! index files are files, in a temporary directory (the seam reads them
//! memory-mapped from a local directory, as a remote store's client would
//! keep a copy). `ops/over_the_seam.rs` runs backup, incremental backup,
//! restore, verify and prune against it: they need nothing but the traits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::error::StoreError;
use super::seam::{
    BatchItem, Catalogue, CheckOutcome, ChunkCheck, ChunkSink, ChunkSource, Protected, Repository,
};
use super::session::ReadSession;
use crate::chunking::chunker::ChunkSize;
use crate::chunking::digest::{ChunkHasher, Digest};
use crate::chunking::keyed_cdc::ChunkerKey;
use crate::format::chunk::{ChunkEncoder, Compression};
use crate::format::chunk_decoder::ChunkDecoder;
use crate::format::notes::{self, NotesOf};
use crate::format::sealed_text::SealedText;
use crate::format::snapshot::{Kind, Manifest, SnapshotError, SnapshotName};
use crate::format::task_log;
use crate::format::verify_state::VerifyState;
use crate::progress::Progress;

pub(crate) struct InMemory {
    /// Index files, `KIND/ID/TIME/NAME.{fidx,didx}`.
    files: tempfile::TempDir,
    chunk_size: ChunkSize,
    /// Chunk records by digest, as the store's encoder wrote them, and
    /// their content's length.
    chunks: Mutex<HashMap<Digest, (Vec<u8>, u32)>>,
    snapshots: Mutex<BTreeMap<SnapshotName, Published>>,
    notes: Mutex<HashMap<String, Vec<u8>>>,
}

struct Published {
    manifest: Manifest,
    protected: bool,
    verify: Option<VerifyState>,
    task_log: Option<Vec<u8>>,
}

impl InMemory {
    pub(crate) fn new(chunk_size: ChunkSize) -> io::Result<InMemory> {
        Ok(InMemory {
            files: tempfile::tempdir()?,
            chunk_size,
            chunks: Mutex::default(),
            snapshots: Mutex::default(),
            notes: Mutex::default(),
        })
    }

    /// How many chunks it holds.
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.lock().expect("lock poisoned").len()
    }

    /// Flips one byte of chunk `d`'s record (a test's bit rot).
    pub(crate) fn damage(&self, d: &Digest) {
        let mut chunks = self.chunks.lock().expect("lock poisoned");
        if let Some((record, _)) = chunks.get_mut(d) {
            let last = record.len() - 1;
            record[last] ^= 0x40;
        }
    }

    fn has(&self, d: &Digest) -> bool {
        self.chunks.lock().expect("lock poisoned").contains_key(d)
    }

    fn not_found(name: &SnapshotName) -> StoreError {
        SnapshotError::NotFound(name.to_string()).into()
    }

    fn with_published<T>(
        &self,
        name: &SnapshotName,
        f: impl FnOnce(&mut Published) -> T,
    ) -> Result<T, StoreError> {
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots
            .get_mut(name)
            .map(f)
            .ok_or_else(|| Self::not_found(name))
    }
}

impl Repository for InMemory {
    fn default_chunk_size(&self) -> ChunkSize {
        self.chunk_size
    }

    fn require_key(&self, _what: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn checks_crc_only(&self) -> bool {
        false
    }

    fn catalogue(&self) -> &dyn Catalogue {
        self
    }

    fn begin_backup(&self, _what: &str) -> Result<Box<dyn ChunkSink + '_>, StoreError> {
        Ok(Box::new(MemorySink {
            repo: self,
            staged: Mutex::default(),
            unpublished: Mutex::default(),
        }))
    }

    fn reader(&self) -> Result<Box<dyn ChunkSource + '_>, StoreError> {
        Ok(Box::new(MemorySource {
            repo: self,
            decoder: decoder()?,
        }))
    }

    fn hold_reads(&self, _what: &str) -> Option<ReadSession> {
        None
    }

    fn begin_check(&self) -> Result<Box<dyn ChunkCheck + '_>, StoreError> {
        Ok(Box::new(MemoryCheck {
            repo: self,
            referenced: BTreeSet::new(),
        }))
    }

    fn chunk_sizes(&self, digests: &[Digest]) -> Result<Vec<Option<(u32, u32)>>, StoreError> {
        let chunks = self.chunks.lock().expect("lock poisoned");
        Ok(digests
            .iter()
            .map(|d| chunks.get(d).map(|(record, raw)| (*raw, record.len() as u32)))
            .collect())
    }
}

fn decoder() -> Result<ChunkDecoder, StoreError> {
    ChunkDecoder::new().map_err(|source| StoreError::Io {
        path: "memory".into(),
        source,
    })
}

fn damaged(digest: Digest, source: crate::format::chunk::RecordError) -> StoreError {
    StoreError::ChunkDamaged {
        digest,
        pack: "memory".into(),
        source,
    }
}

struct MemorySink<'a> {
    repo: &'a InMemory,
    /// Added and not yet flushed: readable only after the barrier.
    staged: Mutex<HashMap<Digest, (Vec<u8>, u32)>>,
    unpublished: Mutex<Option<(SnapshotName, PathBuf)>>,
}

impl ChunkSink for MemorySink<'_> {
    fn hasher(&self) -> ChunkHasher {
        ChunkHasher::PLAIN
    }

    fn chunker(&self) -> Option<Arc<ChunkerKey>> {
        None
    }

    fn encoder(&self, compression: Compression) -> Result<ChunkEncoder, StoreError> {
        ChunkEncoder::new(compression).map_err(|source| StoreError::Io {
            path: "memory".into(),
            source,
        })
    }

    fn is_known(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.repo.has(d) || self.staged.lock().expect("lock poisoned").contains_key(d))
    }

    fn known(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        digests.iter().map(|d| self.is_known(d)).collect()
    }

    fn seed(&self, digests: &mut dyn Iterator<Item = Digest>) -> Result<usize, StoreError> {
        Ok(digests.filter(|d| self.repo.has(d)).count())
    }

    fn add_chunk(&self, d: Digest, record: &[u8], raw_len: u32) -> Result<bool, StoreError> {
        if self.repo.has(&d) {
            return Ok(false);
        }
        let mut staged = self.staged.lock().expect("lock poisoned");
        Ok(staged.insert(d, (record.to_vec(), raw_len)).is_none())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let staged = std::mem::take(&mut *self.staged.lock().expect("lock poisoned"));
        self.repo.chunks.lock().expect("lock poisoned").extend(staged);
        Ok(())
    }

    fn create_snapshot(&self, kind: Kind, id: &str) -> Result<(SnapshotName, PathBuf), StoreError> {
        let (name, dir) = super::snapshot_dir::create(self.repo.files.path(), kind, id)?;
        *self.unpublished.lock().expect("lock poisoned") = Some((name.clone(), dir.clone()));
        Ok((name, dir))
    }

    fn publish(&self, manifest: &Manifest) -> Result<(), StoreError> {
        self.flush()?;
        let (name, _) = self
            .unpublished
            .lock()
            .expect("lock poisoned")
            .take()
            .expect("publish follows create_snapshot");
        let published = Published {
            manifest: manifest.clone(),
            protected: false,
            verify: None,
            task_log: None,
        };
        self.repo
            .snapshots
            .lock()
            .expect("lock poisoned")
            .insert(name, published);
        Ok(())
    }

    fn abort(&self) {
        self.staged.lock().expect("lock poisoned").clear();
        if let Some((_, dir)) = self.unpublished.lock().expect("lock poisoned").take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

struct MemorySource<'a> {
    repo: &'a InMemory,
    decoder: ChunkDecoder,
}

impl ChunkSource for MemorySource<'_> {
    fn read_into(&mut self, digest: &Digest, out: &mut [u8]) -> Result<usize, StoreError> {
        let record = self
            .repo
            .chunks
            .lock()
            .expect("lock poisoned")
            .get(digest)
            .map(|(record, _)| record.clone());
        let record = record.ok_or(StoreError::ChunkMissing { digest: *digest })?;
        self.decoder
            .decode_to_slice(&record, digest, out)
            .map_err(|e| damaged(*digest, e))
    }

    fn read_batch(&mut self, items: &[BatchItem], out: &mut [u8]) -> Vec<Result<usize, StoreError>> {
        items
            .iter()
            .map(|i| self.read_into(&i.digest, &mut out[i.at..i.at + i.len]))
            .collect()
    }
}

struct MemoryCheck<'a> {
    repo: &'a InMemory,
    referenced: BTreeSet<Digest>,
}

impl ChunkCheck for MemoryCheck<'_> {
    fn add(&mut self, d: Digest) -> Result<(), StoreError> {
        self.referenced.insert(d);
        Ok(())
    }

    fn run(self: Box<Self>, _threads: usize, _progress: &dyn Progress) -> Result<CheckOutcome, StoreError> {
        let mut decoder = decoder()?;
        let mut outcome = CheckOutcome::default();
        let mut content = Vec::new();
        let mut chunks = self.repo.chunks.lock().expect("lock poisoned");
        for d in self.referenced {
            let Some((record, _)) = chunks.get(&d) else {
                outcome.bad.insert(d, "not in the store".into());
                continue;
            };
            outcome.chunks += 1;
            match decoder.check(record, &d, &mut content) {
                Ok(()) => outcome.bytes += content.len() as u64,
                Err(e) => {
                    outcome.bad.insert(d, damaged(d, e).to_string());
                    // Never reused: the next backup of this data stores it again.
                    chunks.remove(&d);
                }
            }
        }
        Ok(outcome)
    }
}

impl Catalogue for InMemory {
    fn list(&self) -> Result<Vec<SnapshotName>, SnapshotError> {
        Ok(self
            .snapshots
            .lock()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect())
    }

    fn load_manifest(&self, name: &SnapshotName) -> Result<Manifest, SnapshotError> {
        let snapshots = self.snapshots.lock().expect("lock poisoned");
        let p = snapshots
            .get(name)
            .ok_or_else(|| SnapshotError::NotFound(name.to_string()))?;
        Ok(p.manifest.clone())
    }

    fn is_published(&self, name: &SnapshotName) -> bool {
        self.snapshots.lock().expect("lock poisoned").contains_key(name)
    }

    fn dir(&self, name: &SnapshotName) -> PathBuf {
        name.dir(self.files.path())
    }

    fn protection(&self, name: &SnapshotName) -> Protected {
        match self.with_published(name, |p| p.protected) {
            Ok(true) => Protected::Yes,
            _ => Protected::No,
        }
    }

    fn set_protected(&self, name: &SnapshotName, protect: bool) -> Result<(), StoreError> {
        self.with_published(name, |p| p.protected = protect)
    }

    fn forget(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        match snapshots.get(name) {
            None => return Err(Self::not_found(name)),
            Some(p) if p.protected => return Err(SnapshotError::Protected(name.to_string()).into()),
            Some(_) => {}
        }
        snapshots.remove(name);
        let _ = fs::remove_dir_all(self.dir(name));
        Ok(())
    }

    fn verify_state_checked(&self, name: &SnapshotName) -> Option<(VerifyState, bool)> {
        let state = self.with_published(name, |p| p.verify.clone()).ok()??;
        Some((state, false))
    }

    fn save_verify_state(&self, name: &SnapshotName, state: &VerifyState) -> Result<(), StoreError> {
        self.with_published(name, |p| p.verify = Some(state.clone()))
    }

    fn task_log(&self, name: &SnapshotName) -> Option<SealedText> {
        let bytes = self.with_published(name, |p| p.task_log.clone()).ok()??;
        Some(task_log::decode(&bytes, &name.to_string(), false, None))
    }

    fn save_task_log(&self, name: &SnapshotName, log: &str) -> Result<(), StoreError> {
        let bytes = task_log::encode(log, &name.to_string(), None).expect("no key, nothing to fail");
        self.with_published(name, |p| p.task_log = Some(bytes))
    }

    fn notes(&self, of: &NotesOf) -> Option<SealedText> {
        let notes = self.notes.lock().expect("lock poisoned");
        let bytes = notes.get(&of.to_string())?;
        Some(notes::decode(bytes, &of.to_string(), false, None))
    }

    fn set_notes(&self, of: &NotesOf, text: &str) -> Result<(), StoreError> {
        let mut all = self.notes.lock().expect("lock poisoned");
        if text.is_empty() {
            all.remove(&of.to_string());
        } else {
            let bytes = notes::encode(text, &of.to_string(), None).expect("no key, nothing to fail");
            all.insert(of.to_string(), bytes);
        }
        Ok(())
    }

    fn authenticates(&self) -> bool {
        false
    }
}
