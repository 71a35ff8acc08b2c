//! A store damaged on purpose, as bad disks and unlucky admins damage
//! them: the documented repairs (index rebuild, verify, gc) never turn a
//! fault into lost data, and never trust an index file the manifest does
//! not vouch for.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{noise, Env};

const CHUNK: usize = 65536;
/// A raw record of one 64 KiB chunk: header and payload.
const RECORD: u64 = 56 + CHUNK as u64;
const PACK_HEADER: u64 = 32;

/// A store with one snapshot of 8 incompressible chunks in one pack.
fn one_pack(chunks: usize) -> (Env, String, PathBuf) {
    let env = Env::new("64K");
    fs::write(env.path("img"), noise(11, chunks * CHUNK)).unwrap();
    let s = env.backup("d", &[format!("d.img:{}", env.path("img").display())]);
    let packs = env.packs();
    assert_eq!(packs.len(), 1);
    (env, s["snapshot"].as_str().unwrap().to_string(), packs[0].clone())
}

fn flip(path: &PathBuf, offset: u64) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

/// Makes every pack look old enough for GC to consider (its grace period
/// protects files younger than the oldest writer).
fn age_packs(env: &Env) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for p in env.packs() {
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

fn status(out: &std::process::Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_damaged_pack_header_loses_nothing_through_rebuild_and_gc() {
    let (env, snap, pack) = one_pack(8);
    flip(&pack, 3);
    let (code, out, err) = status(&env.run(&["index", "rebuild", "--json"]));
    assert_eq!(code, Some(3), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["chunks"], 8, "{report}");
    assert_eq!(report["records_rescued"], 8);
    assert_eq!(report["damaged"][0]["offset"], 0);
    assert_eq!(report["damaged"][0]["end"], PACK_HEADER);
    assert!(err.contains("quarantined damaged pack"), "{err}");
    // The damaged pack is kept, byte for byte, under a name GC never touches.
    let bad = pack.with_extension("pack.bad");
    assert!(bad.exists() && !pack.exists());
    age_packs(&env);
    let gc = env.json(&["gc", "--json"]);
    assert_eq!(gc["packs_deleted"], 0, "{gc}");
    env.json(&["gc", "--json"]);
    assert!(bad.exists());
    env.assert_restores(&snap, "d.img", &env.path("img"));
    assert!(env.run(&["check"]).status.success());
}

#[test]
fn rebuild_resynchronises_past_a_damaged_record_header() {
    let (env, snap, pack) = one_pack(8);
    let second = PACK_HEADER + RECORD; // record 2 of 8
    flip(&pack, second + 9);
    let (code, out, err) = status(&env.run(&["index", "rebuild", "--json"]));
    assert_eq!(code, Some(3), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["chunks"], 7, "every intact record is indexed: {report}");
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["offset"], second);
    assert_eq!(damaged[0]["end"], second + RECORD);
    // Restore names the lost chunk; a new backup of the same data heals it.
    let err = env.fails(&["restore", &snap, "d.img", env.path("x").to_str().unwrap()]);
    assert!(err.contains("not in the store index"), "{err}");
    let again = env.backup("d", &[format!("d.img:{}", env.path("img").display())]);
    assert_eq!(again["new_chunks"], 1, "{again}");
    env.assert_restores(&snap, "d.img", &env.path("img"));
}

#[test]
fn a_damaged_payload_is_never_indexed_again() {
    let (env, snap, pack) = one_pack(8);
    flip(&pack, PACK_HEADER + 3 * RECORD + 56 + 100); // record 4's payload
    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let (code, out, _) = status(&env.run(&["index", "rebuild", "--json"]));
    assert_eq!(code, Some(3));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["chunks"], 7, "{report}");
    let damaged = &report["damaged"][0];
    assert_eq!(damaged["offset"], PACK_HEADER + 3 * RECORD);
    assert_eq!(damaged["digest"].as_str().unwrap().len(), 64);
    // The next backup stores a good copy, which heals the snapshot.
    let again = env.backup("d", &[format!("d.img:{}", env.path("img").display())]);
    assert_eq!(again["new_chunks"], 1, "{again}");
    env.assert_restores(&snap, "d.img", &env.path("img"));
    env.ok(&["verify", &snap]);
}

#[test]
fn gc_with_a_lost_index_deletes_no_pack() {
    let (env, snap, pack) = one_pack(8);
    // A crash of the disk takes RocksDB's WAL and table files.
    for f in fs::read_dir(env.store.join("index")).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.ends_with(".sst") {
            fs::remove_file(&p).unwrap();
        }
    }
    age_packs(&env);
    for _ in 0..2 {
        let (code, out, err) = status(&env.run(&["gc", "--json"]));
        assert_eq!(code, Some(3), "{out}{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["packs_deleted"], 0, "{report}");
        assert_eq!(report["chunks_missing"], 8, "{report}");
        assert!(err.contains("hoard index rebuild"), "{err}");
    }
    assert!(pack.exists());
    let (code, _, err) = status(&env.run(&["index", "rebuild"]));
    assert_eq!(code, Some(0), "{err}");
    env.assert_restores(&snap, "d.img", &env.path("img"));
}

#[test]
fn gc_stops_at_a_snapshot_whose_index_file_is_missing() {
    let (env, snap, _) = one_pack(8);
    let fidx = env.snapshot_dir(&snap).join("d.img.fidx");
    let saved = fs::read(&fidx).unwrap();
    fs::remove_file(&fidx).unwrap();
    age_packs(&env);
    for _ in 0..2 {
        let err = env.fails(&["gc"]);
        assert!(err.contains(&snap) && err.contains("hoard forget"), "{err}");
    }
    fs::write(&fidx, saved).unwrap();
    env.assert_restores(&snap, "d.img", &env.path("img"));
    // Forgetting the snapshot is how its chunks are given up.
    fs::remove_file(&fidx).unwrap();
    env.ok(&["forget", &snap]);
    env.ok(&["gc"]);
}

#[test]
fn verify_refuses_an_index_file_of_another_snapshot() {
    let env = Env::new("64K");
    fs::write(env.path("a"), noise(1, 4 * CHUNK)).unwrap();
    fs::write(env.path("b"), noise(2, 4 * CHUNK)).unwrap();
    let a = env.backup("a", &[format!("d.img:{}", env.path("a").display())]);
    let b = env.backup("b", &[format!("d.img:{}", env.path("b").display())]);
    let (a, b) = (a["snapshot"].as_str().unwrap(), b["snapshot"].as_str().unwrap());
    fs::copy(
        env.snapshot_dir(b).join("d.img.fidx"),
        env.snapshot_dir(a).join("d.img.fidx"),
    )
    .unwrap();
    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshots_failed"], serde_json::json!([a]), "{report}");
    assert_eq!(report["snapshots_verified"], serde_json::json!([b]));
    assert!(
        report["unreadable"][0]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{report}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshot_dir(a).join("verify.json")).unwrap()).unwrap();
    assert_eq!(state["state"], "failed");
    // GC will not mark on the strength of a swapped index either.
    let err = env.fails(&["gc"]);
    assert!(err.contains(a), "{err}");
}

#[test]
fn leftovers_of_killed_processes_are_removed_with_a_message() {
    let (env, snap, _) = one_pack(2);
    // A killed rebuild's directories, and scratch of a dead PID in the
    // store's tmp/ and (a full store disk) in the system's temp dir.
    for d in ["index.rebuild", "index.old-1234"] {
        fs::create_dir_all(env.store.join(d).join("x")).unwrap();
    }
    let dead = 4_194_301; // above any PID this kernel hands out here
    fs::create_dir_all(env.store.join(format!("tmp/verify-{dead}-x"))).unwrap();
    let system = std::env::temp_dir().join(format!("index-reader-{dead}-{}", std::process::id()));
    fs::create_dir_all(&system).unwrap();
    let (code, _, err) = status(&env.run(&["index", "rebuild"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("index.rebuild/") && err.contains("index.old-1234/"),
        "{err}"
    );
    assert!(!env.store.join("index.old-1234").exists());
    // (A GC of another test's store may clear the system temp dir first.)
    let gc = env.json(&["gc", "--json"]);
    assert!(gc["leftovers_removed"].as_u64().unwrap() >= 1, "{gc}");
    assert!(!env.store.join(format!("tmp/verify-{dead}-x")).exists());
    assert!(!system.exists(), "the reader log in the system temp dir");
    env.assert_restores(&snap, "d.img", &env.path("img"));
}

/// Issue 28, item 10: a pack deleted, or a directory in its place, must
/// not spread into new backups of the same data: the next backup stores
/// the chunks again and restores; verify, gc and check drop the entries of
/// a pack that is gone and name it.
#[test]
fn a_missing_pack_never_spreads_into_new_backups() {
    for replace_with_dir in [false, true] {
        let (env, old, pack) = one_pack(16);
        fs::remove_file(&pack).unwrap();
        if replace_with_dir {
            fs::create_dir(&pack).unwrap();
        }
        let img = env.path("img");
        let again = env.backup("d", &[format!("d.img:{}", img.display())]);
        assert_eq!(
            again["new_chunks"], 16,
            "the lost chunks are stored again: {again}"
        );
        env.assert_restores(again["snapshot"].as_str().unwrap(), "d.img", &img);
        // Content addressing heals the old snapshot too: the same chunks
        // were stored anew.
        env.ok(&["verify", &old]);
        let gc = env.json(&["gc", "--json"]);
        assert!(
            gc["packs_missing"].as_array().unwrap().is_empty(),
            "already dropped: {gc}"
        );
        env.ok(&["verify", again["snapshot"].as_str().unwrap()]);
    }
    // Found by verify, gc and check alike when no backup came first.
    for cmd in ["verify", "gc", "check"] {
        let (env, _, pack) = one_pack(4);
        fs::remove_file(&pack).unwrap();
        let out = env.run(&[cmd]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("missing pack") && text.contains("entries were dropped"),
            "{cmd}: {text}"
        );
        let again = env.backup("d", &[format!("d.img:{}", env.path("img").display())]);
        assert_eq!(again["new_chunks"], 4, "{cmd}: {again}");
    }
}
