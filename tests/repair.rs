//! Repair: packs are self-describing, the index can be rebuilt from them,
//! and `check` finds damaged and missing data.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use hoard_engine::{pack, pack::PackId, ChunkLocation, MaintenanceLock, Session, Store};

use common::{mixed_image, noise, Env};

fn two_disk_env() -> (Env, String) {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 6 << 20, 3);
    mixed_image(&env.path("b"), 5 << 20, 4);
    let s = env.backup(
        "r",
        &[
            format!("a.img:{}", env.path("a").display()),
            format!("b.img:{}", env.path("b").display()),
        ],
    );
    (env, s["snapshot"].as_str().unwrap().to_string())
}

#[test]
fn index_entries_are_recoverable_from_packs_alone() {
    let (env, _) = two_disk_env();
    let store = Store::open(&env.store).unwrap();
    let mut records = 0;
    for path in env.packs() {
        let id = PackId::from_hex(path.file_stem().unwrap().to_str().unwrap()).unwrap();
        for (offset, header) in pack::scan_bytes(&std::fs::read(&path).unwrap(), Some(id)).records {
            let expected = ChunkLocation {
                pack: id,
                offset,
                record_len: header.record_len() as u32,
                raw_len: header.raw_len,
            };
            assert_eq!(store.index().lookup(&header.digest).unwrap(), Some(expected));
            records += 1;
        }
    }
    assert!(records > 10, "{records} records");
}

#[test]
fn deleted_index_is_rebuilt_completely() {
    let (env, snap) = two_disk_env();
    let before = env.json(&["check", "--json"]);
    fs::remove_dir_all(env.store.join("index")).unwrap();
    let err = env.fails(&["restore", &snap, "a.img", env.path("x").to_str().unwrap()]);
    assert!(err.contains("hoard index rebuild"), "{err}");
    let report = env.json(&["index", "rebuild", "--json"]);
    assert_eq!(report["chunks"], before["index_entries"]);
    assert_eq!(report["duplicates"], 0);
    for (disk, src) in [("a.img", "a"), ("b.img", "b")] {
        env.assert_restores(&snap, disk, &env.path(src));
    }
    // Backups keep deduplicating against the rebuilt index.
    let again = env.backup("r", &[format!("a.img:{}", env.path("a").display())]);
    assert_eq!(again["new_chunks"], 0);
}

#[test]
fn rebuild_needs_the_store_to_itself() {
    let (env, _) = two_disk_env();
    let running = Session::register(&env.store, "backup host/busy").unwrap();
    let err = env.fails(&["index", "rebuild"]);
    assert!(err.contains("backup host/busy"), "{err}");
    drop(running);
    let held = MaintenanceLock::acquire(&env.store, "gc").unwrap();
    let err = env.fails(&["index", "rebuild"]);
    assert!(
        err.contains("another maintenance operation") && err.contains("gc"),
        "{err}"
    );
    drop(held);
    // A session record of a dead process is cleared, with a message.
    fs::write(
        env.store.join("sessions").join("4242-dead.session"),
        "pid=4242 backup host/gone",
    )
    .unwrap();
    let out = env.run(&["index", "rebuild"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed stale session") && stderr.contains("pid=4242"),
        "{stderr}"
    );
}

#[test]
fn check_finds_flipped_bytes_and_missing_packs() {
    let env = Env::new("64K");
    fs::write(env.path("a"), noise(1, 20 * 65536)).unwrap();
    env.backup("c", &[format!("d.img:{}", env.path("a").display())]);
    let clean = env.json(&["check", "--json"]);
    assert_eq!(clean["records"], 20);
    assert!(clean["damaged"].as_array().unwrap().is_empty());

    let pack = &env.packs()[0];
    let f = OpenOptions::new().write(true).open(pack).unwrap();
    f.write_all_at(b"\xff\xff", 32 + 2 * (65536 + 56) + 56 + 77)
        .unwrap(); // payload of record 3
    let out = env.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["offset"], 32 + 2 * (65536 + 56));
    assert!(damaged[0]["reason"].as_str().unwrap().contains("checksum"));
    assert!(damaged[0]["digest"].as_str().unwrap().len() == 64);

    fs::remove_file(pack).unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("missing pack") && text.contains("20 indexed chunks"),
        "{text}"
    );
}

#[test]
fn rebuild_keeps_the_intact_records_of_a_truncated_pack() {
    let env = Env::new("64K");
    fs::write(env.path("a"), noise(2, 10 * 65536)).unwrap();
    env.backup("t", &[format!("d.img:{}", env.path("a").display())]);
    let len = common::cut_last_record(&env.packs()[0], 100);
    let out = env.run(&["index", "rebuild", "--json"]);
    assert_eq!(out.status.code(), Some(3), "something was skipped");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["chunks"], 9);
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1);
    assert!(
        damaged[0]["reason"].as_str().unwrap().contains("truncated"),
        "{report}"
    );
    assert_eq!(damaged[0]["end"], len);
    assert_eq!(report["records_rescued"], 9);
}

#[test]
fn restore_ignore_missing_fills_lost_ranges_with_zeros_and_lists_them() {
    let env = Env::new("64K");
    let a = noise(5, 10 * 65536);
    fs::write(env.path("a"), &a).unwrap();
    env.backup("a", &[format!("d.img:{}", env.path("a").display())]);
    let first_pack = env.packs()[0].clone();
    let mut b = a.clone();
    b.extend(noise(6, 5 * 65536));
    fs::write(env.path("b"), &b).unwrap();
    let snap = env.backup("b", &[format!("d.img:{}", env.path("b").display())]);
    let snap = snap["snapshot"].as_str().unwrap();
    fs::remove_file(&first_pack).unwrap();

    let out = env.path("out");
    let err = env.fails(&["restore", snap, "d.img", out.to_str().unwrap()]);
    assert!(err.contains("No such file"), "{err}");
    let r = env.run(&[
        "restore",
        "--ignore-missing",
        "--json",
        snap,
        "d.img",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let missing = report["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 10);
    assert_eq!(missing[3]["offset"], 3 * 65536);
    let restored = fs::read(&out).unwrap();
    assert!(restored[..10 * 65536].iter().all(|x| *x == 0));
    assert_eq!(&restored[10 * 65536..], &b[10 * 65536..]);
}
