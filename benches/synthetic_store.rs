//! A synthetic store for GC at scale: N chunk entries in the index and S
//! snapshots whose fixed indexes reference 90% of them. The entries point
//! into 251 empty packs (a pack that is gone would have its entries
//! dropped): what scales with chunk count is mark and sweep, and every pack
//! holds live entries, so none is walked. Shared by benches/gc_scale.rs and
//! the GC memory test.

use hoard_engine::{
    pack::PackId, write_durably, ArchiveEntry, ArchiveKind, ArchiveStats, ChunkLocation, ChunkSize, Digest,
    FixedIndexWriter, IndexBuilder, Kind, Manifest, SnapshotName, Store,
};

fn digest(i: u64) -> Digest {
    Digest::of(&i.to_le_bytes())
}

pub fn build(root: &std::path::Path, chunks: u64, snapshots: u64) {
    let store = Store::init(root, ChunkSize::new(65536).unwrap()).unwrap();
    drop(store);
    // Replace the empty index with the synthetic one.
    let index = root.join("index");
    std::fs::remove_dir_all(&index).unwrap();
    let mut b = IndexBuilder::create(&index).unwrap();
    for i in 0..chunks {
        let loc = ChunkLocation {
            pack: PackId([(i % 251) as u8; 16]),
            offset: i * 100,
            record_len: 100,
            raw_len: 65536,
        };
        b.add(digest(i), loc).unwrap();
    }
    b.finish().unwrap();
    for p in 0..251u8 {
        let id = PackId([p; 16]);
        let path = root.join(id.name());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, hoard_engine::pack::empty_pack(id)).unwrap();
    }
    let referenced = chunks * 9 / 10;
    let per = referenced / snapshots;
    for s in 0..snapshots {
        let name = SnapshotName {
            kind: Kind::Vm,
            id: format!("{}", s % 50),
            time: format!(
                "2026-01-{:02}T{:02}:{:02}:00Z",
                1 + s / 1440 % 28,
                s / 60 % 24,
                s % 60
            ),
        };
        let dir = name.dir(&root.join("snapshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let size = per * 65536;
        let w =
            FixedIndexWriter::create(&dir.join("d.img.fidx"), size, ChunkSize::new(65536).unwrap()).unwrap();
        for i in 0..per {
            w.set(i, &digest(s * per + i)).unwrap();
        }
        let h = w.finish([0; 16], 0).unwrap();
        let m = Manifest {
            format: "hoard-manifest".into(),
            version: 1,
            kind: name.kind,
            id: name.id.clone(),
            time: name.time.clone(),
            mode: None,
            vm: None,
            ct: None,
            host: None,
            tool_version: "bench".into(),
            duration_secs: 0.0,
            archives: vec![ArchiveEntry {
                name: "d.img".into(),
                index: "d.img.fidx".into(),
                archive_type: ArchiveKind::Fixed,
                size,
                chunk_size: 65536,
                chunk_count: per,
                index_checksum: h.checksum.to_hex(),
                bitmap: None,
                payload: None,
                tree: None,
                source: None,
                stats: ArchiveStats::default(),
            }],
        };
        write_durably(&dir.join("manifest.json"), &m.to_bytes()).unwrap();
    }
}
