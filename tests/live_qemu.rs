//! Live backups of a real qemu-storage-daemon: point in time while the
//! guest writes, dirty-bitmap incrementals, and every way a bitmap can go
//! bad. Each test starts and stops its own daemon in a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::qemu::{assert_identical, have_qemu, Qsd};
use common::Env;
use hoard_engine::Qmp;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

struct Live {
    env: Env,
    qsd: Qsd,
}

impl Live {
    fn new(disks: &[(&str, u64, u8, u64)]) -> Live {
        Live::on(Env::new("64K"), disks)
    }

    fn on(env: Env, disks: &[(&str, u64, u8, u64)]) -> Live {
        let qsd = Qsd::start(env.dir.path(), disks);
        Live { env, qsd }
    }

    fn args(&self, disks: &[&str]) -> Vec<String> {
        let mut a = vec![
            "backup-qemu".to_string(),
            "--qmp".into(),
            self.qsd.qmp().display().to_string(),
            "--id".into(),
            "100".into(),
            "--nbd-socket".into(),
            self.qsd.nbd().display().to_string(),
            "--timeout".into(),
            "20".into(),
            "--json".into(),
        ];
        for d in disks {
            a.push("--disk".into());
            a.push(format!("{d}={d}.img"));
        }
        a
    }

    fn backup(&self, disks: &[&str]) -> Value {
        let a = self.args(disks);
        self.env.json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Starts a backup that stops right after its snapshot point; returns
    /// once that point is passed.
    fn backup_paused(&self, disks: &[&str], pause_ms: u64) -> Child {
        let mark = self.env.path("paused");
        let _ = std::fs::remove_file(&mark);
        let child = self
            .env
            .hoard()
            .args(self.args(disks))
            .env(
                "HOARD_TEST_PAUSE",
                format!("live-after-snapshot-point:{pause_ms}"),
            )
            .env("HOARD_TEST_PAUSE_MARK", &mark)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !mark.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "backup never reached its snapshot point"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    fn copy(&self, node: &str, name: &str) -> PathBuf {
        let p = self.env.path(name);
        self.qsd.copy(node, &p);
        p
    }

    fn assert_restores(&self, snapshot: &str, archive: &str, expected: &Path) {
        let out = self.env.path("restored.img");
        let _ = std::fs::remove_file(&out);
        self.env
            .ok(&["restore", snapshot, archive, out.to_str().unwrap()]);
        assert_identical(expected, &out);
    }

    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qsd.qmp(), Duration::from_secs(10)).unwrap()
    }
}

fn bitmap_status(out: &Value, disk: usize) -> String {
    out["disks"][disk]["bitmap"].as_str().unwrap().to_string()
}

fn bytes_read(out: &Value) -> u64 {
    out["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stats"]["bytes_read"].as_u64().unwrap())
        .sum()
}

fn wait_json(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Overwrites `blocks` scattered 64 KiB blocks of a `mib` MiB disk.
fn scattered_writes(pattern: u8, mib: u64, blocks: u64, seed: u64) -> Vec<String> {
    let total = mib * 16;
    (0..blocks)
        .map(|i| {
            let b = (i * 7919 + seed * 104729) % total;
            format!("write -P {pattern:#x} {} 64k", b * 65536)
        })
        .collect()
}

fn hoard_nodes(qmp: &mut Qmp) -> Vec<String> {
    let nodes: Vec<Value> = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .unwrap();
    nodes
        .iter()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("hoard-"))
        .map(String::from)
        .collect()
}

fn bitmaps(qmp: &mut Qmp, node: &str) -> Vec<Value> {
    let nodes: Vec<Value> = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .unwrap();
    nodes
        .into_iter()
        .find(|n| n["node-name"] == node)
        .and_then(|n| n["dirty-bitmaps"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn point_in_time_while_the_guest_overwrites_everything() {
    if !common::have_failpoints("point_in_time_while_the_guest_overwrites_everything") {
        return;
    }
    if !have_qemu() {
        return;
    }
    let l = Live::new(&[("disk0", 64, 0x11, 48)]);
    let mut snaps = Vec::new();
    for (round, pattern) in [(0u64, 0xaau8), (1, 0xbb)] {
        if round == 1 {
            l.qsd.write(
                "disk0",
                &["write -P 0x22 1M 64k".into(), "write -P 0x33 10M 200k".into()],
            );
        }
        let expected = l.copy("disk0", &format!("expected-{round}.raw"));
        let child = l.backup_paused(&["disk0"], 1500);
        // The guest overwrites every block, during the pause and the read.
        let mut w = scattered_writes(pattern, 64, 1024, round);
        w.insert(512, "sleep 1000".into());
        l.qsd.write("disk0", &w);
        let out = wait_json(child);
        let snap = out["snapshot"].as_str().unwrap().to_string();
        l.assert_restores(&snap, "disk0.img", &expected);
        snaps.push((snap, expected));
    }
    // The guest's writes are on the live disk, and nothing of hoard is left.
    let mut q = l.qmp();
    assert!(hoard_nodes(&mut q).is_empty());
    assert_eq!(bitmaps(&mut q, "disk0").len(), 1);
    for (snap, expected) in &snaps {
        l.assert_restores(snap, "disk0.img", expected);
    }
}

#[test]
fn incrementals_read_only_dirty_chunks() {
    if have_qemu() {
        incrementals(Env::new("64K"));
    }
}

/// The same on an encrypted store: keyed digests change nothing about
/// what a dirty bitmap lets a backup skip.
#[test]
fn incrementals_read_only_dirty_chunks_when_encrypted() {
    if have_qemu() {
        incrementals(Env::protected("64K", "encrypt"));
    }
}

/// The same into a store in a bucket of a real SeaweedFS.
#[test]
fn incrementals_read_only_dirty_chunks_into_a_bucket() {
    if !have_qemu() {
        return;
    }
    let Some(sw) = common::seaweed::Seaweed::start() else {
        return;
    };
    let env = Env::in_bucket(&sw, "hoard", "live");
    env.ok(&["init", "--chunk-size", "64K"]);
    incrementals(env);
}

/// The same through `hoard serve`: the base chosen before the backup's
/// session opens (by its bitmap) is known to that session, so the clean
/// chunks are never sent.
#[test]
fn incrementals_read_only_dirty_chunks_through_a_server() {
    if !have_qemu() {
        return;
    }
    let mut env = Env::new("64K");
    let admin = common::server::make_token(&env, "root", "admin");
    let server = common::server::Server::start(&env);
    env.vars.push(("HOARD_REPO".into(), server.repo("")));
    env.vars
        .push(("HOARD_FINGERPRINT".into(), server.fingerprint.clone()));
    env.vars.push(("HOARD_TOKEN".into(), admin));
    incrementals(env);
    drop(server);
}

fn incrementals(env: Env) {
    let l = Live::on(env, &[("disk0", 64, 0x11, 64)]);
    let first = l.backup(&["disk0"]);
    assert_eq!(bitmap_status(&first, 0), "new bitmap");
    assert_eq!(bytes_read(&first), 64 * MIB);
    let clean = l.backup(&["disk0"]);
    assert_eq!(bitmap_status(&clean, 0), "clean");
    assert_eq!(bytes_read(&clean), 0, "nothing changed, nothing read");
    // Three extents touching 1 + 4 + 1 chunks of 64 KiB.
    l.qsd.write(
        "disk0",
        &[
            "write -P 0x22 1M 64k".into(),
            "write -P 0x33 10M 200k".into(),
            "write -P 0x44 40M 4k".into(),
        ],
    );
    let inc = l.backup(&["disk0"]);
    assert!(bitmap_status(&inc, 0).starts_with("OK ("), "{inc}");
    assert_eq!(bytes_read(&inc), 6 * 65536);
    let expected = l.copy("disk0", "expected.raw");
    l.assert_restores(inc["snapshot"].as_str().unwrap(), "disk0.img", &expected);
    // Zero extents are neither read nor hashed.
    l.qsd.write("disk0", &["write -z 0 8M".into()]);
    let z = l.backup(&["disk0"]);
    assert_eq!(bytes_read(&z), 0, "{z}");
    let expected = l.copy("disk0", "expected-z.raw");
    l.assert_restores(z["snapshot"].as_str().unwrap(), "disk0.img", &expected);
}

#[test]
fn a_bad_bitmap_or_resized_disk_means_a_full_read() {
    if !have_qemu() {
        return;
    }
    let mut l = Live::new(&[("disk0", 32, 0x11, 32)]);
    l.backup(&["disk0"]);
    let check = |l: &Live, why: &str| {
        l.qsd.write("disk0", &["write -P 0x5a 3M 64k".into()]);
        let out = l.backup(&["disk0"]);
        let status = bitmap_status(&out, 0);
        assert!(
            status.starts_with("bitmap invalid") && status.contains(why),
            "{status}"
        );
        assert!(status.ends_with("full read"));
        // Every allocated byte is read again (the disk's first 32 MiB are
        // data; what a resize added reads as zeros and is skipped).
        assert_eq!(bytes_read(&out), 32 * MIB);
        let expected = l.copy("disk0", "expected.raw");
        l.assert_restores(out["snapshot"].as_str().unwrap(), "disk0.img", &expected);
    };
    // Deleted bitmap.
    let name = bitmaps(&mut l.qmp(), "disk0")[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    l.qmp()
        .execute_value(
            "block-dirty-bitmap-remove",
            json!({"node": "disk0", "name": name}),
        )
        .unwrap();
    check(&l, "missing");
    // Stored by an orderly stop, then QEMU killed while it had the image
    // open: the bitmap comes back inconsistent.
    l.qsd.stop(false);
    l.qsd.launch();
    l.qsd.stop(true);
    l.qsd.launch();
    check(&l, "inconsistent");
    // Killed before the bitmap was ever stored: it is gone.
    l.qsd.stop(true);
    l.qsd.launch();
    check(&l, "missing");
    // Disk grown (offline: the guest's export does not share resizing).
    l.qsd.stop(false);
    let image = l.qsd.disks[0].1.display().to_string();
    common::qemu::run("qemu-img", &["resize", "-q", &image, "40M"]);
    l.qsd.launch();
    check(&l, "size changed");
    // A previous snapshot that failed verification is no base.
    let last = l
        .env
        .ok(&["snapshots"])
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let verify_state = json!({"version": 1, "state": "failed", "time": "2026-11-26T00:00:00Z",
                              "chunks": 1, "bad_chunks": []});
    std::fs::write(
        l.env.snapshot_dir(&last).join("verify.json"),
        verify_state.to_string(),
    )
    .unwrap();
    check(&l, "failed verification");
    // And after all that, incrementals work again.
    let out = l.backup(&["disk0"]);
    assert_eq!(bitmap_status(&out, 0), "clean");
}

#[test]
fn a_killed_backup_loses_no_change_from_tracking() {
    if !common::have_failpoints("a_killed_backup_loses_no_change_from_tracking") {
        return;
    }
    if !have_qemu() {
        return;
    }
    let l = Live::new(&[("disk0", 32, 0x11, 32)]);
    l.backup(&["disk0"]);
    l.qsd.write("disk0", &["write -P 0x21 1M 64k".into()]);
    // Killed after its snapshot point: filter, job, export and both bitmaps
    // are left in QEMU.
    let mut child = l.backup_paused(&["disk0"], 10_000);
    // A second backup of the same QEMU meanwhile is refused at once.
    let t = Instant::now();
    let err = l
        .env
        .fails(&l.args(&["disk0"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("another hoard backup of this QEMU"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!hoard_nodes(&mut l.qmp()).is_empty());
    assert_eq!(bitmaps(&mut l.qmp(), "disk0").len(), 2);
    l.qsd.write("disk0", &["write -P 0x22 5M 64k".into()]);
    // The next run clears the leftovers, merges the killed run's bitmap back
    // and reads both changes.
    let out = l.backup(&["disk0"]);
    assert!(bitmap_status(&out, 0).starts_with("OK ("), "{out}");
    assert_eq!(bytes_read(&out), 2 * 65536);
    let expected = l.copy("disk0", "expected.raw");
    l.assert_restores(out["snapshot"].as_str().unwrap(), "disk0.img", &expected);
    let mut q = l.qmp();
    assert!(hoard_nodes(&mut q).is_empty());
    assert_eq!(bitmaps(&mut q, "disk0").len(), 1);
}

#[test]
fn a_failed_backup_removes_what_it_inserted_and_keeps_tracking() {
    if !have_qemu() {
        return;
    }
    let l = Live::new(&[("disk0", 32, 0x11, 32)]);
    l.backup(&["disk0"]);
    l.qsd.write("disk0", &["write -P 0x31 2M 64k".into()]);
    // The export goes to QEMU's server, but hoard is told a wrong socket:
    // the backup fails after the snapshot point.
    let mut a = l.args(&["disk0"]);
    let at = a.iter().position(|x| x == "--nbd-socket").unwrap();
    a[at + 1] = l.env.path("wrong.sock").display().to_string();
    let err = l.env.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("wrong.sock"), "{err}");
    let mut q = l.qmp();
    assert!(hoard_nodes(&mut q).is_empty(), "everything inserted is removed");
    let exports: Vec<Value> = q.execute("query-block-exports", json!({})).unwrap();
    assert_eq!(exports.len(), 1, "only the guest's export is left: {exports:?}");
    let bms = bitmaps(&mut q, "disk0");
    assert_eq!(bms.len(), 1);
    assert_eq!(bms[0]["recording"], true, "the base bitmap records again");
    drop(q);
    l.qsd.write("disk0", &["write -P 0x32 7M 64k".into()]);
    let out = l.backup(&["disk0"]);
    assert!(bitmap_status(&out, 0).starts_with("OK ("), "{out}");
    assert_eq!(
        bytes_read(&out),
        2 * 65536,
        "both changes, before and after the failure"
    );
    let expected = l.copy("disk0", "expected.raw");
    l.assert_restores(out["snapshot"].as_str().unwrap(), "disk0.img", &expected);
}

#[test]
fn two_disks_in_one_snapshot_and_qemu_dying_midway() {
    if !common::have_failpoints("two_disks_in_one_snapshot_and_qemu_dying_midway") {
        return;
    }
    if !have_qemu() {
        return;
    }
    let mut l = Live::new(&[("disk0", 16, 0x11, 16), ("disk1", 24, 0x77, 8)]);
    let out = l.backup(&["disk0", "disk1"]);
    let snap = out["snapshot"].as_str().unwrap().to_string();
    for d in ["disk0", "disk1"] {
        let expected = l.copy(d, &format!("{d}.raw"));
        l.assert_restores(&snap, &format!("{d}.img"), &expected);
    }
    let before = l.env.ok(&["snapshots"]);
    let child = l.backup_paused(&["disk0", "disk1"], 1000);
    l.qsd.stop(true);
    let res = child.wait_with_output().unwrap();
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("NBD") || err.contains("QMP"), "{err}");
    assert_eq!(
        l.env.ok(&["snapshots"]),
        before,
        "no snapshot from a failed backup"
    );
}
