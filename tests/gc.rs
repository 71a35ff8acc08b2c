//! Garbage collection: frees space in two runs, never takes a chunk that a
//! finished or running backup references, refuses a second GC, and survives
//! being killed. Real processes throughout.

mod common;

use std::os::unix::process::ExitStatusExt;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_file, noise, Env};

fn spawn(env: &Env, args: &[&str], pause: Option<&str>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
    c.args(args)
        .env("HOARD_STORE", &env.store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = pause {
        c.env("HOARD_TEST_PAUSE", p);
    }
    c.spawn().unwrap()
}

fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `ready` for up to 20 s.
fn wait_for(ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the other process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_image(env: &Env, name: &str, parts: &[(u64, usize)]) -> std::path::PathBuf {
    let p = env.path(name);
    let mut data = Vec::new();
    for (seed, chunks) in parts {
        data.extend(noise(*seed, chunks * 65536));
    }
    fs::write(&p, data).unwrap();
    p
}

#[test]
fn frees_space_in_two_runs_and_keeps_shared_chunks() {
    let env = Env::new("64K");
    let a = write_image(&env, "a", &[(1, 20), (2, 10)]);
    let b = write_image(&env, "b", &[(2, 10), (3, 10)]);
    let sa = env.backup("a", &[format!("d.img:{}", a.display())]);
    let sb = env.backup("b", &[format!("d.img:{}", b.display())]);
    let packs_bytes = || {
        env.packs()
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum::<u64>()
    };
    let before = packs_bytes();
    env.ok(&["forget", sa["snapshot"].as_str().unwrap()]);

    // Packs younger than GC's one-second grace period are never touched.
    std::thread::sleep(Duration::from_millis(1100));
    let first = env.json(&["gc", "--json"]);
    assert_eq!(first["chunks_condemned"], 20);
    assert_eq!(first["chunks_removed"], 0);
    assert_eq!(packs_bytes(), before, "the first run only condemns");
    let second = env.json(&["gc", "--json"]);
    assert_eq!(second["chunks_removed"], 20);
    assert_eq!(
        second["packs_rewritten"], 1,
        "a's pack keeps only the 10 shared chunks: {second}"
    );
    assert!(packs_bytes() < before * 21 / 30, "{} of {before}", packs_bytes());
    assert_eq!(second["chunks_referenced"], 20);

    env.ok(&["verify"]);
    env.ok(&["check"]);
    env.assert_restores(sb["snapshot"].as_str().unwrap(), "d.img", &b);
}

#[test]
fn a_restore_running_across_gcs_of_its_forgotten_snapshot_completes() {
    if !common::have_failpoints("a_restore_running_across_gcs_of_its_forgotten_snapshot_completes") {
        return;
    }
    let env = Env::new("64K");
    let img = write_image(&env, "a", &[(7, 30)]);
    let snap = env.backup("a", &[format!("d.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.path("restored");
    let args = ["restore", &snap, "d.img", out.to_str().unwrap()].map(String::from);
    let restore = env.spawn_paused(&args, "restore-started:6000");
    env.ok(&["forget", &snap]);
    // Condemn, then two runs that would remove chunks and packs (past the
    // one-second grace) if the restore's session did not hold them.
    for _ in 0..3 {
        env.ok(&["gc"]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let done = restore.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_same_file(&img, &out);
}

#[test]
fn a_second_gc_is_refused() {
    if !common::have_failpoints("a_second_gc_is_refused") {
        return;
    }
    let env = Env::new("64K");
    let a = write_image(&env, "a", &[(1, 4)]);
    env.backup("a", &[format!("d.img:{}", a.display())]);
    let first = spawn(&env, &["gc", "--json"], Some("gc-after-mark:3000"));
    wait_for(|| fs::read_to_string(env.store.join("maintenance.lock")).is_ok_and(|t| t.contains("gc")));
    let err = env.fails(&["gc"]);
    assert!(
        err.contains("another maintenance operation") && err.contains("gc"),
        "{err}"
    );
    finish(first);
}

#[test]
fn a_backup_running_across_gcs_keeps_every_chunk_it_claimed() {
    if !common::have_failpoints("a_backup_running_across_gcs_keeps_every_chunk_it_claimed") {
        return;
    }
    let env = Env::new("64K");
    let img = write_image(&env, "x", &[(7, 30)]);
    let spec = format!("d.img:{}", img.display());
    let old = env.backup("x", std::slice::from_ref(&spec));
    env.ok(&["forget", old["snapshot"].as_str().unwrap()]);
    // This backup claims all 30 (now unreferenced) chunks, then waits before
    // publishing its manifest while two GCs run.
    let running = spawn(
        &env,
        &["backup", "--id", "x", "--json", &spec],
        Some("backup-before-manifest:8000"),
    );
    // Its index is complete (header written) once every chunk has been claimed.
    wait_for(|| {
        common::walk(&env.store.join("snapshots")).iter().any(|p| {
            p.extension().is_some_and(|e| e == "fidx") && fs::read(p).is_ok_and(|b| b.starts_with(b"HRDFIDX"))
        })
    });
    let g1 = env.json(&["gc", "--json"]);
    assert_eq!(g1["chunks_condemned"], 30);
    let g2 = env.json(&["gc", "--json"]);
    assert_eq!(
        g2["chunks_removed"], 0,
        "the running backup started before the condemnation: {g2}"
    );
    assert_eq!(g2["postponed_epochs"].as_array().unwrap().len(), 1);
    let done = finish(running);
    assert_eq!(done["new_chunks"], 0, "it claimed the old chunks");
    let g3 = env.json(&["gc", "--json"]);
    assert_eq!(g3["chunks_revived"], 30);
    assert_eq!(g3["chunks_removed"], 0);
    env.ok(&["verify"]);
    env.assert_restores(done["snapshot"].as_str().unwrap(), "d.img", &img);
}

#[test]
fn a_backup_after_condemnation_stores_its_own_copies() {
    let env = Env::new("64K");
    let img = write_image(&env, "x", &[(8, 12)]);
    let spec = format!("d.img:{}", img.display());
    let old = env.backup("x", std::slice::from_ref(&spec));
    env.ok(&["forget", old["snapshot"].as_str().unwrap()]);
    assert_eq!(env.json(&["gc", "--json"])["chunks_condemned"], 12);
    let fresh = env.backup("x", std::slice::from_ref(&spec));
    assert_eq!(fresh["new_chunks"], 12, "condemned chunks count as absent");
    std::thread::sleep(Duration::from_millis(1100));
    let g = env.json(&["gc", "--json"]);
    assert_eq!(
        g["chunks_removed"], 0,
        "the new copies replaced the condemned entries: {g}"
    );
    assert_eq!(g["packs_deleted"], 1, "the old pack holds only dead records now");
    env.assert_restores(fresh["snapshot"].as_str().unwrap(), "d.img", &img);
}

/// Where the thrash test kills backups: every durable step before the
/// manifest is in place (a later kill publishes the snapshot).
const BACKUP_CRASHES: [&str; 7] = [
    "session-registered",
    "pack-fsynced",
    "pack-renamed",
    "pack-sealed",
    "index-committed",
    "fidx-synced",
    "manifest.json-fsynced",
];

/// Where it kills GCs.
const GC_CRASHES: [&str; 6] = [
    "gc-epoch-saved",
    "gc-marked",
    "gc-batch-applied",
    "gc-state-saved",
    "gc-pack-deleted",
    "gc-repack-repointed",
];

#[test]
fn thrash_backups_prunes_and_gcs_at_once() {
    let env = Env::new("64K");
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let store = env.store.clone();
        let dir = env.dir.path().to_path_buf();
        workers.push(std::thread::spawn(move || {
            let mut made = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let path = dir.join(format!("w{w}-{i}"));
                let mut data = noise(w, 6 * 65536); // shared within a worker
                data.extend(noise(1000 * w + i, 4 * 65536)); // new every time
                data.extend(noise(99, 3 * 65536)); // shared by all workers
                fs::write(&path, &data).unwrap();
                // Every third backup is killed at a crash point before it
                // publishes (with the failpoints feature).
                let crash = (i % 3 == 2).then(|| BACKUP_CRASHES[(i / 3 + w) as usize % BACKUP_CRASHES.len()]);
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
                cmd.args([
                    "backup",
                    "--id",
                    &format!("w{w}"),
                    "--json",
                    &format!("d.img:{}", path.display()),
                ])
                .env("HOARD_STORE", &store);
                if let Some(point) = crash.filter(|_| cfg!(feature = "failpoints")) {
                    let out = cmd.env("HOARD_CRASH_AT", point).output().unwrap();
                    assert_eq!(out.status.signal(), Some(9), "backup killed at {point}");
                    i += 1;
                    continue;
                }
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                made.push((v["snapshot"].as_str().unwrap().to_string(), path));
                i += 1;
            }
            made
        }));
    }
    let maintenance = {
        let store = env.store.clone();
        std::thread::spawn(move || {
            let mut runs = 0;
            while Instant::now() < deadline {
                for args in [&["prune", "--keep-last", "2"][..], &["gc"][..]] {
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
                    cmd.args(args).env("HOARD_STORE", &store);
                    // Every other GC is killed somewhere in its run.
                    let point = GC_CRASHES[runs / 2 % GC_CRASHES.len()];
                    if args == ["gc"] && runs % 2 == 1 && cfg!(feature = "failpoints") {
                        let out = cmd.env("HOARD_CRASH_AT", point).output().unwrap();
                        // A run with nothing to do there ends normally.
                        assert!(
                            out.status.signal() == Some(9) || out.status.success(),
                            "gc at {point}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        continue;
                    }
                    let out = cmd.output().unwrap();
                    assert!(
                        out.status.success(),
                        "{args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                runs += 1;
            }
            runs
        })
    };
    let made: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let gcs = maintenance.join().unwrap();
    env.ok(&["prune", "--keep-last", "2"]);
    assert!(
        gcs >= 3 && made.len() >= 9,
        "{gcs} gc runs, {} backups",
        made.len()
    );
    env.ok(&["gc"]);
    env.ok(&["gc"]);
    env.ok(&["verify"]);
    env.ok(&["check"]);
    // The packs alone rebuild an index that serves every snapshot.
    env.ok(&["index", "rebuild"]);
    let remaining: Vec<String> = env.snapshot_names();
    assert_eq!(
        remaining.len(),
        6,
        "keep-last 2 for each of 3 groups: {remaining:?}"
    );
    for (snap, src) in made.iter().filter(|(s, _)| remaining.contains(s)) {
        let out = env.path("restored");
        let _ = fs::remove_file(&out);
        env.ok(&["restore", snap, "d.img", out.to_str().unwrap()]);
        assert_same_file(src, &out);
    }
}

#[test]
fn disk_full_during_gc_leaves_the_store_intact() {
    let env = Env::new("64K");
    let Some(small) = common::Tmpfs::mount(
        env.path("small"),
        16,
        "disk_full_during_gc_leaves_the_store_intact",
    ) else {
        return;
    };
    let store = small.path.join("store");
    let hoard = |args: &[&str]| common::hoard_at(&store, args);
    assert!(hoard(&["init", "--chunk-size", "64K"]).status.success());
    let a = write_image(&env, "a", &[(1, 40)]);
    let b = write_image(&env, "b", &[(1, 10), (2, 10)]);
    let out = hoard(&["backup", "--id", "a", "--json", &format!("d.img:{}", a.display())]);
    let sa: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(hoard(&["backup", "--id", "b", &format!("d.img:{}", b.display())])
        .status
        .success());
    assert!(hoard(&["forget", sa["snapshot"].as_str().unwrap()])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(hoard(&["gc"]).status.success());
    // Fill the file system to the last byte, then let GC try to rewrite a pack.
    let filler = small.path.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    let out = hoard(&["gc"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gc cannot run on a full disk");
    assert!(stderr.contains("No space left"), "{stderr}");
    // A full backup disk can still be listed and restored from.
    assert!(hoard(&["snapshots"]).status.success());
    let restored = env.path("restored");
    let r = hoard(&["restore", "host/b", "d.img", restored.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_file(&b, &restored);
    fs::remove_file(&filler).unwrap();
    let verified = hoard(&["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let out = hoard(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(hoard(&["verify"]).status.success());
    assert!(hoard(&["check"]).status.success());
}
