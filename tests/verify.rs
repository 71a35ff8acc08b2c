//! `hoard verify`: every referenced chunk read once, damage reported with
//! every reference, and healed by the next backup.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use common::{noise, Env};

/// Two snapshots of one 20-chunk image, the second with one chunk changed.
fn two_snapshots(env: &Env) -> (String, String) {
    let img = env.path("a");
    fs::write(&img, noise(1, 20 * 65536)).unwrap();
    let spec = format!("d.img:{}", img.display());
    let first = env.backup("v", std::slice::from_ref(&spec));
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&noise(2, 65536), 0)
        .unwrap();
    let second = env.backup("v", std::slice::from_ref(&spec));
    (
        first["snapshot"].as_str().unwrap().into(),
        second["snapshot"].as_str().unwrap().into(),
    )
}

#[test]
fn shared_chunks_are_read_once_and_state_is_recorded() {
    let env = Env::new("64K");
    let (first, second) = two_snapshots(&env);
    let r = env.json(&["verify", "--json"]);
    assert_eq!(r["chunks"], 21, "20 shared + 1 changed, each read once: {r}");
    assert_eq!(r["snapshots_verified"].as_array().unwrap().len(), 2);
    let shown = env.json(&["show", &first, "--json"]);
    assert_eq!(shown["verify"]["state"], "ok");
    assert!(env.ok(&["show", &second]).contains("verified ok"));

    let r = env.json(&["verify", "--ignore-verified", "--json"]);
    assert_eq!(r["snapshots_skipped"].as_array().unwrap().len(), 2);
    assert_eq!(r["chunks"], 0);
    let r = env.json(&[
        "verify",
        "--ignore-verified",
        "--outdated-after",
        "0",
        "--json",
        "host/v",
    ]);
    assert_eq!(
        r["snapshots_verified"].as_array().unwrap().len(),
        2,
        "older than 0 days: verified again"
    );
    let r = env.json(&["verify", "--json", &second]);
    assert_eq!(r["chunks"], 20);
}

#[test]
fn damage_is_reported_with_every_reference_and_healed_by_the_next_backup() {
    let env = Env::new("64K");
    let (first, second) = two_snapshots(&env);
    // Damage one record's payload; find which chunk it is from the pack itself.
    let pack = env
        .packs()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    // A record of a chunk both snapshots share: any but the first
    // snapshot's chunk 0, which the second replaced. Records lie in the
    // order the workers finished, not in image order, so look.
    let replaced = hoard_engine::FixedIndex::open(&env.snapshot_dir(&first).join("d.img.fidx"))
        .unwrap()
        .digest(0);
    let (at, _) = hoard_engine::pack::scan_bytes(&fs::read(&pack).unwrap(), None)
        .records
        .into_iter()
        .find(|(_, h)| h.digest != replaced)
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .write_all_at(b"\0\0\0\0", at + 56 + 999)
        .unwrap();

    let out = env.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = r["bad_chunks"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{r}");
    assert!(bad[0]["reason"].as_str().unwrap().contains("checksum"));
    let refs: Vec<&str> = bad[0]["referenced_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        refs.len(),
        2,
        "both snapshots reference the damaged chunk: {refs:?}"
    );
    assert!(refs.iter().any(|r| r.starts_with(&first)) && refs.iter().any(|r| r.starts_with(&second)));
    assert!(refs[0].contains(" d.img @"));
    assert_eq!(env.json(&["show", &first, "--json"])["verify"]["state"], "failed");

    // The damaged chunk left the index: the next backup stores it again...
    let again = env.backup("v", &[format!("d.img:{}", env.path("a").display())]);
    assert_eq!(again["new_chunks"], 1);
    // ...which heals the old snapshots.
    env.ok(&["verify"]);
    env.assert_restores(&second, "d.img", &env.path("a"));
}

#[test]
fn missing_pack_fails_verification() {
    let env = Env::new("64K");
    let (first, _) = two_snapshots(&env);
    for p in env.packs() {
        fs::remove_file(p).unwrap();
    }
    let out = env.run(&["verify", &first]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad chunk") && text.contains("missing pack") && text.contains(&first),
        "{text}"
    );
}

/// Issue 28, item 13: verify keeps working on a nearly full store disk (10
/// MiB free: its work list goes elsewhere) and a full one (0 bytes: the
/// results it cannot record are named, the report still has them).
#[test]
fn verify_on_a_full_store_disk_reports_every_snapshot() {
    for free in [10u64 << 20, 0] {
        let env = Env::new("64K");
        let Some(small) = common::Tmpfs::mount(env.path("small-fs"), 40, "verify_on_a_full_store_disk")
        else {
            return;
        };
        let store = small.path.join("store");
        let hoard = |args: &[&str]| common::hoard_at(&store, args);
        assert!(hoard(&["init", "--chunk-size", "64K"]).status.success());
        let img = env.path("img");
        fs::write(&img, noise(12, 4 << 20)).unwrap();
        for id in ["a", "b"] {
            let out = hoard(&["backup", "--id", id, &format!("d.img:{}", img.display())]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        common::fill_leaving(&small.path, free);
        let out = hoard(&["verify", "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{free} bytes free: {err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["snapshots_verified"].as_array().unwrap().len(),
            2,
            "{report}"
        );
        if free == 0 {
            assert_eq!(report["not_recorded"].as_array().unwrap().len(), 2, "{report}");
            assert!(err.contains("result not recorded"), "{err}");
        }
    }
}

/// Issue 28, item 13: a prune that forgets snapshots while verify runs
/// never aborts it: the forgotten ones are reported as such, the others
/// verified.
#[test]
fn verify_beside_a_prune_reports_the_rest() {
    if !common::have_failpoints("verify_beside_a_prune_reports_the_rest") {
        return;
    }
    let env = Env::new("64K");
    let img = env.path("img");
    fs::write(&img, noise(3, 1 << 20)).unwrap();
    let spec = format!("d.img:{}", img.display());
    for _ in 0..3 {
        env.backup("a", std::slice::from_ref(&spec));
    }
    let verifying = env.spawn_paused(
        &["verify".to_string(), "--json".to_string()],
        "verify-after-check:3000",
    );
    env.ok(&["prune", "--keep-last", "1"]);
    let out = verifying.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["snapshots_verified"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(
        report["snapshots_forgotten"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert!(
        report["snapshots_failed"].as_array().unwrap().is_empty(),
        "{report}"
    );
}
