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
    let replaced =
        hoard_engine::format::fixed_index::FixedIndex::open(&env.snapshot_dir(&first).join("d.img.fidx"))
            .unwrap()
            .digest(0);
    let (at, _) = hoard_engine::format::pack::scan_bytes(&fs::read(&pack).unwrap(), None)
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
    assert_eq!(again["chunks_new"], 1);
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
        text.contains("bad chunk") && text.contains("No such file") && text.contains(&first),
        "{text}"
    );
}
