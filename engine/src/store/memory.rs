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
    /// Writes started and not ended: name -> (start, bytes so far).
    unfinished: BTreeMap<u64, (String, u64, u64)>,
    next_write: u64,
}

/// Cheap to clone: clones share the objects.
#[derive(Clone, Default)]
pub struct Memory {
    state: Arc<Mutex<State>>,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory backend lock poisoned")
    }

    /// Changes the bytes of a finished object in place, as damage would.
    pub fn damage(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
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
        match self.get(name)? {
            ObjectBytes::Shared(bytes) => Ok(Box::new(bytes)),
            ObjectBytes::Mapped(_) => unreachable!("memory objects are never mapped"),
        }
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        let state = self.state();
        let (bytes, _) = state.objects.get(name).ok_or_else(|| not_found(name))?;
        Ok(ObjectBytes::Shared(bytes.clone()))
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
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = self
            .get(start..start.saturating_add(buf.len()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
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
        let mut state = self.backend.state();
        state.unfinished.remove(&self.id);
        if state.objects.contains_key(&self.name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "object exists"));
        }
        let bytes = std::mem::take(&mut { self.bytes });
        state.objects.insert(self.name.clone(), (bytes.into(), now_ns()));
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.backend.state().unfinished.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
