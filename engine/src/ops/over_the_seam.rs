//! The operations need nothing but the upper seam's traits: backup (images
//! and trees), incremental backup, restore, verify, space accounting and
//! prune run against
//! the in-memory repository, which shares no code with the local store.

use std::fs;
use std::path::Path;

use crate::archive::create::TreeInput;
use crate::archive::extract::{extract, ExtractOptions};
use crate::chunking::chunker::ChunkSize;
use crate::format::snapshot::{Kind, Manifest, SnapshotName};
use crate::ops::backup::{backup, backup_images, BackupOptions, ImageInput, Input};
use crate::ops::prune::{prune, KeepOptions};
use crate::ops::restore::{restore_image, RestoreOptions};
use crate::ops::verify::{verify, VerifyOptions};
use crate::progress::NoProgress;
use crate::source::FileSource;
use crate::store::in_memory::InMemory;
use crate::store::Repository;

const CHUNK: usize = 64 << 10;

fn image(chunks: usize, changed: Option<usize>) -> Vec<u8> {
    (0..chunks * CHUNK)
        .map(|i| {
            let chunk = i / CHUNK;
            let salt = if Some(chunk) == changed { 7 } else { 1 };
            ((i / 3 + chunk * 31) % 251) as u8 ^ salt
        })
        .collect()
}

fn back_up_image(repo: &dyn Repository, dir: &Path, data: &[u8]) -> Manifest {
    let path = dir.join("d.img");
    fs::write(&path, data).unwrap();
    let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&path).unwrap()));
    let opts = BackupOptions::new(Kind::Host, "a");
    backup_images(repo, &opts, vec![input], &NoProgress).unwrap()
}

fn restored(repo: &dyn Repository, dir: &Path, name: &SnapshotName) -> Vec<u8> {
    let index = repo.catalogue().open_image_index(name, "d.img").unwrap();
    let target = dir.join("restored.img");
    let _ = fs::remove_file(&target);
    let opts = RestoreOptions {
        force: false,
        threads: 2,
        ignore_missing: false,
    };
    restore_image(repo, &index, "d.img", &target, &opts, &NoProgress).unwrap();
    fs::read(&target).unwrap()
}

fn verify_all(repo: &dyn Repository) -> crate::ops::verify::VerifyReport {
    let opts = VerifyOptions {
        ignore_verified: false,
        outdated_after: None,
        threads: 1,
    };
    verify(repo, &[], &opts, &NoProgress).unwrap()
}

#[test]
fn backup_incremental_restore_verify_and_prune_need_only_the_traits() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = InMemory::new(ChunkSize::new(CHUNK as u64).unwrap()).unwrap();

    let first_data = image(16, None);
    let first = back_up_image(&repo, tmp.path(), &first_data).name();
    assert_eq!(repo.chunk_count(), 16);
    // The second backup stores only the chunk that changed.
    let second_data = image(16, Some(5));
    let second = back_up_image(&repo, tmp.path(), &second_data).name();
    assert_eq!(repo.chunk_count(), 17);
    assert_eq!(restored(&repo, tmp.path(), &first), first_data);
    assert_eq!(restored(&repo, tmp.path(), &second), second_data);

    // A tree, and its restore.
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"first file").unwrap();
    fs::write(src.join("d/big"), image(3, None)).unwrap();
    let tree = || {
        Input::Tree(TreeInput {
            name: "root.tree".into(),
            root: src.clone(),
            exclude: Vec::new(),
            one_file_system: true,
            include_mounts: Vec::new(),
            full_read: false,
            cdc: Default::default(),
            origin: None,
        })
    };
    let (m, _) = backup(
        &repo,
        &BackupOptions::new(Kind::Ct, "1"),
        vec![tree()],
        &NoProgress,
    )
    .unwrap();
    let entry = m.archive("root.tree").unwrap();
    let target = tmp.path().join("tree");
    let opts = ExtractOptions {
        force: false,
        include: Vec::new(),
        exclude: Vec::new(),
    };
    extract(
        &repo,
        &repo.catalogue().dir(&m.name()),
        entry,
        &target,
        &opts,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(target.join("a")).unwrap(), b"first file");
    assert_eq!(fs::read(target.join("d/big")).unwrap(), image(3, None));
    // Unchanged, the tree's second backup adds no chunk.
    let before = repo.chunk_count();
    backup(
        &repo,
        &BackupOptions::new(Kind::Ct, "1"),
        vec![tree()],
        &NoProgress,
    )
    .unwrap();
    assert_eq!(repo.chunk_count(), before);

    let report = verify_all(&repo);
    assert_eq!(report.snapshots_verified.len(), 4, "{report:?}");
    // Space accounting sees every chunk, none missing.
    let space = crate::ops::space::space(&repo, |_| true).unwrap();
    assert_eq!(space.store.chunks as usize, repo.chunk_count());
    assert_eq!(space.store.missing_chunks, 0);
    assert!(report.bad_chunks.is_empty(), "{report:?}");

    // Bit rot in the chunk only the second snapshot has: verify fails it
    // alone, and the next backup of the same data heals it.
    let changed = repo
        .catalogue()
        .open_image_index(&second, "d.img")
        .unwrap()
        .digest(5);
    repo.damage(&changed);
    let report = verify_all(&repo);
    assert_eq!(report.snapshots_failed, vec![second.to_string()]);
    assert_eq!(report.bad_chunks.len(), 1);
    assert_eq!(report.bad_chunks[0].digest, changed.to_hex());
    let third = back_up_image(&repo, tmp.path(), &second_data).name();
    assert_eq!(restored(&repo, tmp.path(), &second), second_data);
    assert!(verify_all(&repo).snapshots_failed.is_empty());

    // Prune keeps the newest and the protected one.
    repo.catalogue().set_protected(&first, true).unwrap();
    let keep = KeepOptions {
        last: Some(1),
        ..KeepOptions::default()
    };
    let report = prune(repo.catalogue(), Some(Kind::Host), Some("a"), &keep, false).unwrap();
    assert_eq!(report.removed, 1);
    let left: Vec<SnapshotName> = repo
        .catalogue()
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.kind == Kind::Host)
        .collect();
    assert_eq!(left, vec![first, third]);
}
