//! Packs on a real SeaweedFS and a real Ceph RGW through the S3 seam:
//! a store whose chunk index and snapshots are local and whose packs are
//! objects in a bucket backs up, restores and verifies; create-only puts
//! let exactly one of four racing writers win; bad credentials and a
//! missing bucket are clear errors naming the object.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ceph::Ceph;
use common::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use common::{mixed_image, noise, S3Server};
use hoard_engine::{
    backup_images, restore_image, verify, BackupOptions, FileSource, ImageInput, Kind, NoProgress,
    ObjectBackend, RestoreOptions, S3Backend, Store, VerifyOptions,
};

fn backend(sw: &dyn S3Server, url: &str, creds: (&str, &str)) -> S3Backend {
    S3Backend::new(
        url.parse().unwrap(),
        sw.dir().join("spool"),
        Duration::from_secs(10),
        Some(creds),
    )
    .unwrap()
}

#[test]
fn packs_on_seaweedfs_round_trip_race_and_fail_clearly() {
    let Some(sw) = Seaweed::start() else { return };
    round_trip_race_and_fail_clearly(&sw);
}

#[test]
fn packs_on_ceph_rgw_round_trip_race_and_fail_clearly() {
    let Some(ceph) = Ceph::start() else { return };
    round_trip_race_and_fail_clearly(&ceph);
}

fn round_trip_race_and_fail_clearly(sw: &dyn S3Server) {
    sw.create_bucket("hoard");
    let url = format!("{}/hoard/site-a", sw.endpoint());
    let s3 = Arc::new(backend(sw, &url, (ACCESS_KEY, SECRET_KEY)));

    // A backup and an incremental: packs go to the bucket, not the disk.
    let root = sw.dir().join("store");
    drop(Store::init(&root, hoard_engine::ChunkSize::new(65536).unwrap()).unwrap());
    let store = Store::open_with_packs(&root, s3.clone()).unwrap();
    let img = sw.dir().join("disk.raw");
    mixed_image(&img, 12 << 20, 4);
    let run = |store: &Store| {
        let input = ImageInput::full("d.img".into(), Box::new(FileSource::open(&img).unwrap()));
        backup_images(
            store,
            &BackupOptions::new(Kind::Host, "s3"),
            vec![input],
            &NoProgress,
        )
        .unwrap()
    };
    let first = run(&store);
    assert!(first.archives[0].stats.new_chunks > 0);
    let second = run(&store);
    assert_eq!(
        second.archives[0].stats.new_chunks, 0,
        "an unchanged image stores nothing"
    );
    let packs = s3.list("packs/").unwrap();
    assert!(!packs.is_empty());
    assert!(
        packs.iter().all(|p| p.name.ends_with(".pack") && p.size > 0),
        "{packs:?}"
    );
    assert_eq!(
        common::walk(&root.join("packs")).len(),
        0,
        "no pack on the local disk"
    );
    assert!(
        common::walk(&sw.dir().join("spool")).is_empty(),
        "spool files removed after upload"
    );

    let out = sw.dir().join("restored.raw");
    let fidx = store.catalog().open_image_index(&second.name(), "d.img").unwrap();
    restore_image(
        &store,
        &fidx,
        "d.img",
        &out,
        &RestoreOptions {
            force: false,
            threads: 0,
            ignore_missing: false,
        },
        &NoProgress,
    )
    .unwrap();
    common::assert_same_file(&img, &out);
    let report = verify(
        &store,
        &[],
        &VerifyOptions {
            ignore_verified: false,
            outdated_after: None,
            threads: 0,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        report.bad_chunks.is_empty() && report.snapshots_failed.is_empty(),
        "{report:?}"
    );

    // Two writers racing to create one object: exactly one wins, and the
    // object holds the winner's bytes whole.
    let results: Vec<std::io::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let s3 = s3.clone();
                s.spawn(move || {
                    let mut w = s3.create("race/one.pack")?;
                    w.write_all(&noise(i, 300_000))?;
                    w.finish()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.kind(), std::io::ErrorKind::AlreadyExists, "{r}");
    }
    let got = s3.get("race/one.pack").unwrap();
    assert!((0..4).any(|i| got[..] == noise(i, 300_000)[..]));
    // Ranged reads past the end are UnexpectedEof.
    let mut buf = [0u8; 10];
    let e = s3
        .open("race/one.pack")
        .unwrap()
        .read_at(&mut buf, 299_995)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(
        s3.open("race/none.pack").err().unwrap().kind(),
        std::io::ErrorKind::NotFound
    );

    // Wrong credentials and a missing bucket: errors naming the object.
    let wrong = backend(sw, &url, (ACCESS_KEY, "not-the-secret"));
    let e = wrong.list("packs/").unwrap_err().to_string();
    assert!(
        e.contains("/hoard/site-a/packs") && (e.contains("SignatureDoesNotMatch") || e.contains("403")),
        "{e}"
    );
    // (SeaweedFS creates a missing bucket on an admin's PUT, so only a read
    // can meet one.)
    let nobucket = backend(
        sw,
        &format!("{}/nobucket", sw.endpoint()),
        (ACCESS_KEY, SECRET_KEY),
    );
    let e = nobucket.get("packs/x.pack").err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("/nobucket/packs/x.pack"), "{e}");
}
