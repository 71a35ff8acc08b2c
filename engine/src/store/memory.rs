//! [`ObjectBackend`] in memory: the proof that nothing above the seam needs
//! a file system, and a fast backend for unit tests.
//!
//! A writer dropped without `finish` or `abort` stays listed as unfinished,
//! like the `.partial` file of a killed process, until
//! [`remove_unfinished`](ObjectBackend::remove_unfinished) clears it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};
use super::session::now_ns;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, (Arc<[u8]>, u64)>,
    /// Writes started and not ended: write id -> (name, start, bytes so far).
    unfinished: BTreeMap<u64, (String, u64, u64)>,
    next_write: u64,
}

/// Cheap to clone: clones share the objects.
#[derive(Clone, Default)]
pub(crate) struct Memory {
    state: Arc<Mutex<State>>,
}

impl Memory {
    pub(crate) fn new() -> Memory {
        Memory::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory backend lock poisoned")
    }

    /// A finished object's bytes, shared.
    fn bytes(&self, name: &str) -> io::Result<Arc<[u8]>> {
        let state = self.state();
        let (bytes, _) = state.objects.get(name).ok_or_else(|| not_found(name))?;
        Ok(bytes.clone())
    }

    /// Moves every object's time `by_ns` into the past, as if written
    /// earlier: what lets a test reach GC's grace periods without waiting.
    pub(crate) fn backdate(&self, by_ns: u64) {
        for (_, time) in self.state().objects.values_mut() {
            *time = time.saturating_sub(by_ns);
        }
    }

    /// Changes the bytes of a finished object in place, as damage would.
    pub(crate) fn damage(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut state = self.state();
        let (bytes, _) = state.objects.get_mut(name).ok_or_else(|| not_found(name))?;
        let mut v = bytes.to_vec();
        f(&mut v);
        *bytes = v.into();
        Ok(())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no object {name}"))
}

impl ObjectBackend for Memory {
    fn location(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("memory:/{name}"))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let mut state = self.state();
        if state.objects.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "object exists"));
        }
        let id = state.next_write;
        state.next_write += 1;
        state.unfinished.insert(id, (name.to_string(), now_ns(), 0));
        Ok(Box::new(MemoryWriter {
            backend: self.clone(),
            id,
            name: name.to_string(),
            bytes: Vec::new(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>> {
        Ok(Box::new(self.bytes(name)?))
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        Ok(ObjectBytes::Shared(self.bytes(name)?))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        Ok(self
            .state()
            .objects
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, (bytes, time))| ObjectInfo {
                name: name.clone(),
                size: bytes.len() as u64,
                modified_ns: *time,
            })
            .collect())
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.state()
            .objects
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String> {
        let mut state = self.state();
        let mut target = format!("{name}{suffix}");
        let mut n = 1;
        while state.objects.contains_key(&target) {
            target = format!("{name}{suffix}-{n}");
            n += 1;
        }
        let object = state.objects.remove(name).ok_or_else(|| not_found(name))?;
        state.objects.insert(target.clone(), object);
        Ok(target)
    }

    fn remove_unfinished(&self, prefix: &str, cutoff_ns: u64) -> io::Result<Vec<(String, u64)>> {
        let mut state = self.state();
        let stale: Vec<u64> = state
            .unfinished
            .iter()
            .filter(|(_, (name, start, _))| name.starts_with(prefix) && *start < cutoff_ns)
            .map(|(id, _)| *id)
            .collect();
        Ok(stale
            .into_iter()
            .filter_map(|id| state.unfinished.remove(&id))
            .map(|(name, _, size)| (name, size))
            .collect())
    }
}

impl ObjectRead for Arc<[u8]> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::format::pack::reader_of(self)(buf, offset)
    }
}

struct MemoryWriter {
    backend: Memory,
    id: u64,
    name: String,
    bytes: Vec<u8>,
}

impl ObjectWriter for MemoryWriter {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        if let Some(w) = self.backend.state().unfinished.get_mut(&self.id) {
            w.2 = self.bytes.len() as u64;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let MemoryWriter {
            backend,
            id,
            name,
            bytes,
        } = *self;
        let mut state = backend.state();
        state.unfinished.remove(&id);
        if state.objects.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "object exists"));
        }
        state.objects.insert(name, (bytes.into(), now_ns()));
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.backend.state().unfinished.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::PACKS_PREFIX;

    const FILE_TIME_GRACE: u64 = crate::store::gc::FILE_TIME_GRACE_NS;

    #[test]
    fn objects_appear_whole_and_once() {
        let m = Memory::new();
        let mut w = m.create("packs/ab/x.pack").unwrap();
        w.write_all(b"hello ").unwrap();
        assert!(m.list("packs/").unwrap().is_empty(), "invisible until finished");
        w.write_all(b"world").unwrap();
        w.finish().unwrap();
        assert!(m.create("packs/ab/x.pack").is_err());
        let listed = m.list("packs/").unwrap();
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("packs/ab/x.pack", 11));
        let mut buf = [0u8; 5];
        m.open("packs/ab/x.pack").unwrap().read_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        let r = m.open("packs/ab/x.pack").unwrap().read_at(&mut buf, 8);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            m.set_aside("packs/ab/x.pack", ".bad").unwrap(),
            "packs/ab/x.pack.bad"
        );
        assert_eq!(
            m.get("packs/ab/x.pack").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        // A writer that was neither finished nor aborted is a leftover.
        std::mem::forget(m.create("packs/cd/y.pack").unwrap());
        let gone = m.remove_unfinished("packs/", u64::MAX).unwrap();
        assert_eq!(gone, [("packs/cd/y.pack".to_string(), 0)]);
    }

    /// The proof that the seam holds: backups, an incremental, restore,
    /// verify, damage, GC and an index rebuild over packs that are not files.
    #[test]
    fn a_store_with_its_packs_in_memory_backs_up_restores_verifies_and_collects() {
        use crate::chunking::chunker::ChunkSize;
        use crate::format::snapshot::{Kind, SnapshotRef};
        use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
        use crate::ops::gc::{gc, GcOptions};
        use crate::ops::restore::{restore_image, RestoreOptions};
        use crate::ops::verify::{verify, VerifyOptions};
        use crate::progress::NoProgress;
        use crate::source::FileSource;
        use crate::store::datastore::Store;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        drop(Store::init(&root, ChunkSize::new(64 * 1024).unwrap()).unwrap());
        let packs = Memory::new();
        let store = Store::open_with_packs(&root, Arc::new(packs.clone())).unwrap();
        let no_files = || std::fs::read_dir(root.join("packs")).unwrap().next().is_none();

        let image: Vec<u8> = (0..16u32 * 65536)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let back_up = |id: &str, bytes: &[u8]| {
            let path = dir.path().join(id);
            std::fs::write(&path, bytes).unwrap();
            let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&path).unwrap()));
            backup_images(
                &store,
                &BackupOptions::new(Kind::Host, id),
                vec![input],
                &NoProgress,
            )
            .unwrap()
        };
        let first = back_up("a", &image);
        assert_eq!(first.archives[0].stats.new_chunks, 16);
        let mut changed = image.clone();
        changed[5 * 65536 + 7] ^= 1;
        let second = back_up("b", &changed);
        let stats = &second.archives[0].stats;
        assert_eq!((stats.new_chunks, stats.reused_chunks), (1, 15), "deduplicated");
        assert!(no_files(), "no pack is a file");
        assert_eq!(packs.list(PACKS_PREFIX).unwrap().len(), 2);

        let restore = |name: &crate::format::snapshot::SnapshotName, want: &[u8]| {
            let fidx = store.catalog().open_image_index(name, "d.img").unwrap();
            let target = dir.path().join("restored");
            let _ = std::fs::remove_file(&target);
            let opts = RestoreOptions {
                force: false,
                threads: 0,
                ignore_missing: false,
            };
            restore_image(&store, &fidx, "d.img", &target, &opts, &NoProgress).unwrap();
            assert!(std::fs::read(&target).unwrap() == want, "{name} restores");
        };
        restore(&first.name(), &image);
        restore(&second.name(), &changed);

        let opts = VerifyOptions {
            ignore_verified: false,
            outdated_after: None,
            threads: 0,
        };
        let report = verify(&store, &[], &opts, &NoProgress).unwrap();
        assert_eq!((report.snapshots_verified.len(), report.bad_chunks.len()), (2, 0));

        // Forget the first snapshot: GC condemns its one own chunk, then
        // (its epoch ripe) removes it, rewriting the sparse pack.
        store.catalog().forget(&first.name()).unwrap();
        packs.backdate(10 * FILE_TIME_GRACE);
        let condemned = gc(&store, &GcOptions::default(), &NoProgress).unwrap();
        assert_eq!(condemned.chunks_condemned, 1);
        packs.backdate(10 * FILE_TIME_GRACE);
        let collected = gc(&store, &GcOptions { repack_below: 1.0 }, &NoProgress).unwrap();
        assert_eq!(collected.chunks_removed, 1, "{collected:?}");
        assert!(
            collected.packs_rewritten + collected.packs_deleted > 0,
            "{collected:?}"
        );
        let newest = store
            .catalog()
            .resolve(&SnapshotRef::Newest {
                kind: Kind::Host,
                id: "b".into(),
            })
            .unwrap();
        restore(&newest, &changed);

        // Damage is found, and a rebuild over the backend keeps the rest.
        let victim = packs.list(PACKS_PREFIX).unwrap()[0].name.clone();
        packs.damage(&victim, |b| b[200] ^= 0x40).unwrap();
        let report = verify(&store, &[], &opts, &NoProgress).unwrap();
        assert_eq!(report.snapshots_failed.len(), 1);
        drop(store);
        let rebuilt = crate::store::repair::rebuild_index_with(&root, &packs, None, &NoProgress).unwrap();
        assert_eq!(rebuilt.damaged.len(), 1);
        assert_eq!(rebuilt.quarantined.len(), 1);
        assert!(packs
            .list(PACKS_PREFIX)
            .unwrap()
            .iter()
            .any(|o| o.name.ends_with(".pack.bad")));
        assert!(no_files());
    }
}
