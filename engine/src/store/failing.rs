//! An [`ObjectBackend`] decorator that counts every call and fails the one
//! a test names (redb's `FailingBackend`): how unit tests reach the error
//! paths of a backup, a restore and GC at each call the backend sees,
//! without a disk that fails or a process that is killed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};

/// A backend call, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Call {
    Create,
    Write,
    Finish,
    Open,
    ReadAt,
    Get,
    List,
    Delete,
    SetAside,
    RemoveUnfinished,
}

#[derive(Default)]
struct Plan {
    counts: HashMap<Call, u64>,
    /// Fail the n-th call of a kind (by the count since the backend was
    /// made), and with `true` every one after it too.
    fail: Option<(Call, u64, bool)>,
}

/// Wraps `inner`; cheap to clone (clones share counts and plan).
#[derive(Clone)]
pub(crate) struct Failing {
    inner: Arc<dyn ObjectBackend>,
    plan: Arc<Mutex<Plan>>,
}

impl Failing {
    pub(crate) fn new(inner: Arc<dyn ObjectBackend>) -> Failing {
        Failing {
            inner,
            plan: Arc::default(),
        }
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().expect("failing backend lock poisoned")
    }

    /// The `nth` call of `call` from now on fails (once), counting from 1.
    pub(crate) fn fail(&self, call: Call, nth: u64) {
        self.plan_failure(call, nth, false)
    }

    /// Every call of `call` fails from the `nth` on, until [`heal`](Self::heal).
    pub(crate) fn fail_from(&self, call: Call, nth: u64) {
        self.plan_failure(call, nth, true)
    }

    pub(crate) fn heal(&self) {
        self.plan().fail = None;
    }

    fn plan_failure(&self, call: Call, nth: u64, persistent: bool) {
        let mut plan = self.plan();
        let seen = plan.counts.get(&call).copied().unwrap_or(0);
        plan.fail = Some((call, seen + nth, persistent));
    }

    /// How many calls of `call` were made.
    pub(crate) fn count(&self, call: Call) -> u64 {
        self.plan().counts.get(&call).copied().unwrap_or(0)
    }

    /// Counts a call; the error it must return instead, if it is the one.
    fn call(&self, call: Call) -> io::Result<()> {
        let mut plan = self.plan();
        let n = plan.counts.entry(call).or_default();
        *n += 1;
        let n = *n;
        match plan.fail {
            Some((c, at, persistent)) if c == call && (n == at || persistent && n > at) => {
                if !persistent {
                    plan.fail = None;
                }
                Err(io::Error::other(format!("injected failure of {call:?}")))
            }
            _ => Ok(()),
        }
    }
}

impl ObjectBackend for Failing {
    fn location(&self, name: &str) -> PathBuf {
        self.inner.location(name)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        self.call(Call::Create)?;
        Ok(Box::new(FailingWriter {
            inner: self.inner.create(name)?,
            backend: self.clone(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>> {
        self.call(Call::Open)?;
        Ok(Box::new(FailingRead {
            inner: self.inner.open(name)?,
            backend: self.clone(),
        }))
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        self.call(Call::Get)?;
        self.inner.get(name)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.call(Call::List)?;
        self.inner.list(prefix)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.call(Call::Delete)?;
        self.inner.delete(name)
    }

    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String> {
        self.call(Call::SetAside)?;
        self.inner.set_aside(name, suffix)
    }

    fn remove_unfinished(&self, prefix: &str, cutoff_ns: u64) -> io::Result<Vec<(String, u64)>> {
        self.call(Call::RemoveUnfinished)?;
        self.inner.remove_unfinished(prefix, cutoff_ns)
    }
}

struct FailingWriter {
    inner: Box<dyn ObjectWriter>,
    backend: Failing,
}

impl ObjectWriter for FailingWriter {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.backend.call(Call::Write)?;
        self.inner.write_all(bytes)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        if let Err(e) = self.backend.call(Call::Finish) {
            self.inner.abort();
            return Err(e);
        }
        self.inner.finish()
    }

    fn abort(self: Box<Self>) {
        self.inner.abort()
    }
}

struct FailingRead {
    inner: Box<dyn ObjectRead>,
    backend: Failing,
}

impl ObjectRead for FailingRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.backend.call(Call::ReadAt)?;
        self.inner.read_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunker::ChunkSize;
    use crate::format::pack::PACKS_PREFIX;
    use crate::format::snapshot::{Kind, SnapshotName};
    use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
    use crate::ops::gc::{gc, GcOptions};
    use crate::ops::restore::{restore_image, RestoreOptions};
    use crate::progress::NoProgress;
    use crate::source::FileSource;
    use crate::store::datastore::Store;
    use crate::store::gc::FILE_TIME_GRACE_NS;
    use crate::store::memory::Memory;

    struct Fixture {
        dir: tempfile::TempDir,
        memory: Memory,
        packs: Failing,
        store: Store,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("s");
            drop(Store::init(&root, ChunkSize::new(64 * 1024).unwrap()).unwrap());
            let memory = Memory::new();
            let packs = Failing::new(Arc::new(memory.clone()));
            let store = Store::open_with_packs(&root, Arc::new(packs.clone())).unwrap();
            Fixture {
                dir,
                memory,
                packs,
                store,
            }
        }

        fn image(seed: u32) -> Vec<u8> {
            (0..8u32 * 65536)
                .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
                .collect()
        }

        fn back_up(&self, id: &str, bytes: &[u8]) -> crate::Result<SnapshotName> {
            let path = self.dir.path().join(id);
            std::fs::write(&path, bytes).unwrap();
            let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&path).unwrap()));
            let opts = BackupOptions::new(Kind::Host, id);
            backup_images(&self.store, &opts, vec![input], &NoProgress).map(|r| r.name())
        }

        fn restore(&self, name: &SnapshotName) -> crate::Result<Vec<u8>> {
            let fidx = self.store.catalog().open_image_index(name, "d.img").unwrap();
            let target = self.dir.path().join("restored");
            let _ = std::fs::remove_file(&target);
            let opts = RestoreOptions {
                force: false,
                threads: 1,
                ignore_missing: false,
            };
            restore_image(&self.store, &fidx, "d.img", &target, &opts, &NoProgress)?;
            Ok(std::fs::read(&target).unwrap())
        }
    }

    /// A pack that cannot be sealed fails the backup at every call the
    /// writer makes: no snapshot is published, nothing stays half-written,
    /// and the next backup stores everything again.
    #[test]
    fn a_backup_whose_pack_write_fails_publishes_nothing() {
        for call in [Call::Create, Call::Write, Call::Finish] {
            let f = Fixture::new();
            let image = Fixture::image(1);
            f.packs.fail(call, 1);
            let err = f.back_up("a", &image).expect_err("the backup fails");
            assert!(err.to_string().contains("injected failure"), "{call:?}: {err}");
            assert!(
                f.store.catalog().list().unwrap().is_empty(),
                "{call:?}: nothing published"
            );
            assert!(
                f.memory.list(PACKS_PREFIX).unwrap().is_empty(),
                "{call:?}: no pack"
            );
            let name = f.back_up("a", &image).unwrap();
            assert!(f.restore(&name).unwrap() == image, "{call:?}: the retry restores");
        }
    }

    /// A batched read that fails once is retried chunk by chunk and the
    /// restore is whole; a read that keeps failing is an error of the
    /// restore, never wrong bytes.
    #[test]
    fn a_restore_retries_a_failed_read_and_fails_on_a_lasting_one() {
        let f = Fixture::new();
        let image = Fixture::image(2);
        let name = f.back_up("a", &image).unwrap();
        let reads = f.packs.count(Call::ReadAt);
        f.packs.fail(Call::ReadAt, 1);
        assert!(f.restore(&name).unwrap() == image, "retried");
        assert!(f.packs.count(Call::ReadAt) > reads + 1, "the retry read again");
        f.packs.fail_from(Call::ReadAt, 1);
        match f.restore(&name) {
            Err(e) => assert!(e.to_string().contains("injected failure"), "{e}"),
            Ok(bytes) => panic!("a failed read restored {} bytes", bytes.len()),
        }
        f.packs.heal();
        assert!(f.restore(&name).unwrap() == image, "restores once reads work");
    }

    /// GC stopped by a failing delete or listing loses nothing: the next
    /// GC finishes the work and every kept snapshot restores.
    #[test]
    fn gc_stopped_by_a_failing_call_loses_nothing() {
        for call in [Call::List, Call::Delete] {
            let f = Fixture::new();
            let doomed = f.back_up("a", &Fixture::image(3)).unwrap();
            let image = Fixture::image(4);
            let kept = f.back_up("b", &image).unwrap();
            f.store.catalog().forget(&doomed).unwrap();
            f.memory.backdate(10 * FILE_TIME_GRACE_NS);
            gc(&f.store, &GcOptions::default(), &NoProgress).unwrap();
            f.memory.backdate(10 * FILE_TIME_GRACE_NS);
            f.packs.fail(call, 1);
            let failed = gc(&f.store, &GcOptions::default(), &NoProgress);
            assert!(failed.is_err(), "{call:?}: {failed:?}");
            assert!(f.restore(&kept).unwrap() == image, "{call:?}: kept restores");
            f.memory.backdate(10 * FILE_TIME_GRACE_NS);
            let done = gc(&f.store, &GcOptions::default(), &NoProgress).unwrap();
            assert!(f.restore(&kept).unwrap() == image, "{call:?}: {done:?}");
            assert_eq!(
                f.memory.list(PACKS_PREFIX).unwrap().len(),
                1,
                "{call:?}: {done:?}"
            );
        }
    }
}
