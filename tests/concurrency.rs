//! Several OS processes on one store, and crashes at awkward moments.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};

use common::{noise, Env};

fn spawn_backup(env: &Env, id: &str, spec: &str, pause: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(["backup", "--id", id, "--json", spec])
        .env("HOARD_STORE", &env.store)
        .env("HOARD_TEST_PAUSE", pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Images that share half their content, so concurrent backups race on the
/// same new chunks.
fn shared_images(env: &Env, n: usize) -> Vec<std::path::PathBuf> {
    let shared = noise(1, 48 << 20);
    (0..n)
        .map(|i| {
            let p = env.path(&format!("img{i}"));
            let mut data = shared.clone();
            data.extend(noise(100 + i as u64, 48 << 20));
            fs::write(&p, data).unwrap();
            p
        })
        .collect()
}

#[test]
fn concurrent_backups_from_separate_processes() {
    if !common::have_failpoints("concurrent_backups_from_separate_processes") {
        return;
    }
    let env = Env::new("1M");
    let images = shared_images(&env, 4);
    let children: Vec<Child> = images
        .iter()
        .enumerate()
        .map(|(i, p)| spawn_backup(&env, &format!("c{i}"), &format!("d.img:{}", p.display()), ""))
        .collect();
    let mut snaps = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        snaps.push(v["snapshot"].as_str().unwrap().to_string());
    }
    for (i, snap) in snaps.iter().enumerate() {
        env.assert_restores(snap, "d.img", &images[i]);
    }
    // Every chunk is indexed now: backing any of them up again stores nothing.
    for (i, p) in images.iter().enumerate() {
        let again = env.backup(&format!("c{i}"), &[format!("d.img:{}", p.display())]);
        assert_eq!(again["new_chunks"], 0, "{again}");
    }
}

#[test]
fn killed_backup_leaves_no_snapshot_and_store_keeps_working() {
    if !common::have_failpoints("killed_backup_leaves_no_snapshot_and_store_keeps_working") {
        return;
    }
    let env = Env::new("64K");
    let img = env.path("big");
    fs::write(&img, noise(5, 64 << 20)).unwrap();
    let spec = format!("d.img:{}", img.display());
    // Killed (at injected points, not after a delay) at its first record,
    // in the middle of its pack, after sealing it, after committing it, and
    // after its index file but before its manifest.
    for at in [
        "pack-appended#1",
        "pack-appended#500",
        "pack-sealed",
        "index-committed",
        "fidx-synced",
    ] {
        env.crash_at(&["backup", "--id", "k", &spec], at);
        assert!(env.snapshot_names().is_empty());
    }
    // Whatever the killed runs committed is reused; the result is correct.
    let s = env.backup("k", std::slice::from_ref(&spec));
    assert!(s["reused_chunks"].as_u64().unwrap() > 0, "{s}");
    env.assert_restores(s["snapshot"].as_str().unwrap(), "d.img", &img);
}
