//! Bad input: every case gives a clear error, a non-zero exit, and leaves
//! nothing visible half-written.

mod common;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{mixed_image, noise, Env, Tmpfs};
use hoard_engine::{
    backup_images, BackupError, BackupOptions, FileSource, ImageInput, ImageSource, Kind, NoProgress, Store,
};

#[test]
fn missing_or_unreadable_source() {
    let env = Env::new("64K");
    let err = env.fails(&["backup", "--id", "x", "d.img:/nonexistent/disk"]);
    assert!(err.contains("/nonexistent/disk"), "{err}");
    let err = env.fails(&[
        "backup",
        "--id",
        "x",
        &format!("d.img:{}", env.dir.path().display()),
    ]);
    assert!(err.contains("directory"), "{err}");
    let err = env.fails(&["backup", "--id", "x", "noimg:/etc/hostname"]);
    assert!(err.contains("NAME.img"), "{err}");
    let err = env.fails(&["backup", "--id", "../x", "d.img:/etc/hostname"]);
    assert!(err.contains("invalid backup id"), "{err}");
    assert!(env.snapshot_names().is_empty());
}

#[test]
fn store_missing_not_a_store_or_other_version() {
    let env = Env::new("64K");
    let img = env.path("a");
    mixed_image(&img, 100_000, 1);
    let spec = format!("d.img:{}", img.display());
    let run_with = |store: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(["--store", store.to_str().unwrap(), "backup", "--id", "x", &spec])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(run_with(&env.path("nope")).contains("does not exist"));
    assert!(run_with(env.dir.path()).contains("is not a hoard store"));
    let cfg = env.store.join("config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, text.replace("\"version\": 1", "\"version\": 4")).unwrap();
    let err = run_with(&env.store);
    assert!(
        err.contains("version 4") && err.contains("reads versions 1 to 3"),
        "{err}"
    );
    // Version 2 is the protected stores': without its key fields, malformed.
    fs::write(&cfg, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let err = run_with(&env.store);
    assert!(
        err.contains("config.json: malformed store config: version 2 with encryption none"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["snapshots"])
        .env_remove("HOARD_STORE")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOARD_STORE"));
}

/// A real file that another party truncates or extends after the backup has
/// read `after_chunks` chunks of it.
struct ChangingFile {
    inner: FileSource,
    path: std::path::PathBuf,
    reads: AtomicU64,
    after_chunks: u64,
    new_len: u64,
}

impl ImageSource for ChangingFile {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.reads.fetch_add(1, Ordering::SeqCst) == self.after_chunks {
            OpenOptions::new()
                .write(true)
                .open(&self.path)?
                .set_len(self.new_len)?;
        }
        self.inner.read_at(buf, offset)
    }
}

#[test]
fn source_that_shrinks_or_grows_while_read() {
    let env = Env::new("64K");
    for (new_len, expect) in [(1 << 20, "shrank"), (16 << 20, "size changed")] {
        let img = env.path("changing");
        mixed_image(&img, 8 << 20, 4);
        let store = Store::open(&env.store).unwrap();
        let src = ChangingFile {
            inner: FileSource::open(&img).unwrap(),
            path: img.clone(),
            reads: AtomicU64::new(0),
            after_chunks: 20,
            new_len,
        };
        let opts = BackupOptions {
            compression: Default::default(),
            threads: 2,
            ..BackupOptions::new(Kind::Host, "chg")
        };
        let images = vec![ImageInput::full("d.img".into(), Box::new(src))];
        let err = backup_images(&store, &opts, images, &NoProgress).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<BackupError>(),
            Some(BackupError::SourceShrank { .. } | BackupError::SourceResized { .. })
        ));
        assert_eq!(err.kind(), hoard_engine::ErrorKind::Source);
        assert!(
            err.to_string().contains(expect) && err.to_string().contains("changing"),
            "{err}"
        );
        assert!(store.catalog().list().unwrap().is_empty());
    }
    // The store takes the next backup.
    mixed_image(&env.path("ok"), 1 << 20, 2);
    env.backup("after", &[format!("d.img:{}", env.path("ok").display())]);
}

fn backed_up(env: &Env, size: u64) -> (String, std::path::PathBuf) {
    let img = env.path("src");
    fs::write(&img, noise(42, size as usize)).unwrap();
    let s = env.backup("dmg", &[format!("d.img:{}", img.display())]);
    (s["snapshot"].as_str().unwrap().to_string(), img)
}

#[test]
fn flipped_byte_in_a_pack_stops_restore_naming_archive_and_offset() {
    let env = Env::new("64K");
    let (snap, _) = backed_up(&env, 10 * 65536);
    let packs = env.packs();
    assert_eq!(packs.len(), 1);
    // Damage the payload of the 4th record (records here are raw 64 KiB + 56-byte header).
    let at = 32 + 3 * (65536 + 56) + 56 + 1000;
    let f = OpenOptions::new().read(true).write(true).open(&packs[0]).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    let out = env.path("out");
    let err = env.fails(&["restore", &snap, "d.img", out.to_str().unwrap()]);
    // Records are in completion order, so which chunk the damaged record holds varies.
    assert!(
        err.contains("d.img, chunk at offset") && err.contains("checksum mismatch"),
        "{err}"
    );
    assert_eq!(
        err.matches("checksum mismatch").count(),
        1,
        "each cause once: {err}"
    );
    assert!(!out.exists(), "no partial target is left behind");
    let leftovers: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("hoard-restore")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn truncated_pack_stops_restore() {
    let env = Env::new("64K");
    let (snap, _) = backed_up(&env, 10 * 65536);
    common::cut_last_record(&env.packs()[0], 10);
    let out = env.path("out");
    let err = env.fails(&["restore", &snap, "d.img", out.to_str().unwrap()]);
    assert!(
        err.contains("d.img, chunk at offset") && err.contains("truncated"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn damaged_or_truncated_fidx() {
    let env = Env::new("64K");
    let (snap, _) = backed_up(&env, 10 * 65536);
    let fidx = env.snapshot_dir(&snap).join("d.img.fidx");
    let good = fs::read(&fidx).unwrap();
    let out = env.path("out");
    fs::write(&fidx, &good[..good.len() - 7]).unwrap();
    let err = env.fails(&["restore", &snap, "d.img", out.to_str().unwrap()]);
    assert!(err.contains("d.img.fidx") && err.contains("truncated"), "{err}");
    let mut bad = good.clone();
    bad[200] ^= 1;
    fs::write(&fidx, &bad).unwrap();
    let err = env.fails(&["restore", &snap, "d.img", out.to_str().unwrap()]);
    assert!(err.contains("d.img.fidx") && err.contains("checksum"), "{err}");
    let err = env.fails(&["restore", "--index", "/etc/hostname", out.to_str().unwrap()]);
    assert!(err.contains("/etc/hostname"), "{err}");
    assert!(!out.exists());
}

#[test]
fn damaged_manifest_is_named() {
    let env = Env::new("64K");
    let (snap, _) = backed_up(&env, 65536);
    let m = env.snapshot_dir(&snap).join("manifest.json");
    fs::write(&m, b"{\"format\": \"hoard-manifest\", \"version\": 1").unwrap();
    let err = env.fails(&["show", &snap]);
    assert!(
        err.contains("manifest.json") && err.contains("malformed"),
        "{err}"
    );
}

#[test]
fn bad_arguments() {
    let env = Env::new("64K");
    let out = env.run(&["backup", "--id", "x", "--chunk-size", "3M", "d.img:/etc/hostname"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = env.run(&["backup", "--id", "x", "--compress", "lz4", "d.img:/etc/hostname"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid compression"));
    let err = env.fails(&["restore", "host/x", "d.img"]);
    assert!(err.contains("SNAPSHOT NAME.img TARGET"), "{err}");
    let err = env.fails(&["init"]);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn disk_full_while_backing_up() {
    let env = Env::new("64K");
    let Some(small) = Tmpfs::mount(env.path("small-fs"), 24, "disk_full_while_backing_up") else {
        return;
    };
    let store = small.path.join("store");
    let hoard = |args: &[&str]| common::hoard_at(&store, args);
    assert!(hoard(&["init", "--chunk-size", "64K"]).status.success());
    let big = env.path("big");
    fs::write(&big, noise(8, 64 << 20)).unwrap();
    let out = hoard(&["backup", "--id", "full", &format!("d.img:{}", big.display())]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    // The store still opens, shows no partial snapshot, and takes the next backup.
    let listed = hoard(&["snapshots", "--json"]);
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["snapshots"], serde_json::json!([]));
    let partials = common::walk(&store)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(partials, 0, "the open pack is removed");
    let little = env.path("little");
    fs::write(&little, noise(9, 100_000)).unwrap();
    let out = hoard(&["backup", "--id", "ok", &format!("d.img:{}", little.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn commands_on_a_nearly_full_store_disk_never_abort() {
    let env = Env::new("64K");
    let Some(small) = Tmpfs::mount(env.path("small-fs"), 16, "commands_on_a_nearly_full_store_disk") else {
        return;
    };
    let store = small.path.join("store");
    let hoard = |args: &[&str]| common::hoard_at(&store, args);
    assert!(hoard(&["init", "--chunk-size", "64K"]).status.success());
    let img = env.path("img");
    fs::write(&img, noise(12, 2 << 20)).unwrap();
    assert!(
        hoard(&["backup", "--id", "a", &format!("d.img:{}", img.display())])
            .status
            .success()
    );
    // Fill the file system, then give back less than 40 KiB.
    common::fill_leaving(&small.path, 32 * 1024);
    let filler = small.path.join("filler");
    for args in [
        &["verify"][..],
        &["check"],
        &["gc"],
        &["index", "rebuild"],
        &["snapshots"],
    ] {
        let out = hoard(args);
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code.is_some(),
            "{args:?} died of a signal: {:?}\n{err}",
            out.status
        );
        assert!(
            out.status.success() || (code == Some(1) && err.contains("No space left")),
            "{args:?}: {code:?} {err}"
        );
        let left: Vec<_> = fs::read_dir(store.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
    fs::remove_file(&filler).unwrap();
    assert!(hoard(&["verify"]).status.success());
    let out = env.path("out");
    assert!(hoard(&["restore", "host/a", "d.img", out.to_str().unwrap()])
        .status
        .success());
    common::assert_same_file(&img, &out);
}
