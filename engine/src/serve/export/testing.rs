//! Stores and images the export's tests serve.

use crate::chunking::chunker::ChunkSize;
use crate::format::fixed_index::FixedIndex;
use crate::format::snapshot::{self, Kind};
use crate::ops::backup::{backup_images, BackupOptions, ImageInput};
use crate::store::Store;

/// A store holding `data` as image `d.img` with 64 KiB chunks, and its index.
pub(crate) fn backed_up(data: &[u8]) -> (tempfile::TempDir, Store, FixedIndex) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::write(&img, data).unwrap();
    let store = Store::init(&dir.path().join("store"), ChunkSize::new(64 << 10).unwrap()).unwrap();
    let opts = BackupOptions::new(Kind::Host, "t");
    let source = crate::source::FileSource::open(&img).unwrap();
    let m = backup_images(
        &store,
        &opts,
        vec![ImageInput::full("d.img".into(), Box::new(source))],
        &crate::progress::NoProgress,
    )
    .unwrap();
    let name = snapshot::SnapshotName {
        kind: m.kind,
        id: m.id.clone(),
        time: m.time.clone(),
    };
    let fidx = store.catalog().open_image_index(&name, "d.img").unwrap();
    (dir, store, fidx)
}

/// 64 KiB chunks: data, zeros, data, and a short tail of data.
pub(crate) fn sample_image() -> Vec<u8> {
    let mut data: Vec<u8> = (0..(3 * 65536 + 5000) as u32)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    data[65536..131072].fill(0);
    data
}
