//! Issue 28: nothing the store says is trusted. Whoever holds a store (a
//! NAS admin, a bucket account) edits its files as an attacker would: the
//! protection mode switched off in config.json, the newest snapshot
//! hidden, snapshots planted in the future or copied, a key slot that
//! demands gigabytes. hoard refuses, reports or ignores each, and the
//! owner's own prune never forgets a real snapshot because of one.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{noise, Env};

const MARKER: &[u8] = b"HOARD-TRUST-MARKER-41c9 ";

/// A 2 MiB image full of the marker, at `path`.
fn marked_image(path: &Path) {
    let mut data = MARKER.repeat((2 << 20) / MARKER.len() + 1);
    data.truncate(2 << 20);
    fs::write(path, data).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether any file under `dir` holds `needle`.
fn store_holds(dir: &Path, needle: &[u8]) -> bool {
    common::walk(dir)
        .iter()
        .any(|p| fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
}

/// Rewrites the store's config.json with `edit` applied to its JSON.
fn edit_config(env: &Env, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = env.store.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// `hoard ARGS` as a host that has never seen the store (a fresh memory).
fn as_new_host(env: &Env, args: &[&str]) -> Output {
    env.hoard()
        .env("HOARD_STATE_DIR", env.path("new-host-state"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn switching_encryption_off_in_the_config_is_refused() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    fs::write(&img, noise(1, 1 << 20)).unwrap();
    env.backup("a", &[format!("d.img:{}", img.display())]);
    let original = fs::read(env.store.join("config.json")).unwrap();
    marked_image(&img);
    let spec = format!("d.img:{}", img.display());
    let backup = ["backup", "--id", "a", &spec];

    // encrypt -> sign: same key, same fingerprint.
    edit_config(&env, |v| v["encryption"] = "sign".into());
    let e = stderr(&env.run(&backup));
    assert!(
        e.contains("not the store this host has used") && e.contains("encrypted"),
        "{e}"
    );
    // A new host: the key slot names the mode under its tag (and the
    // config MAC would fail next).
    let out = as_new_host(&env, &backup);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this is the key of a encrypt store"),
        "{}",
        stderr(&out)
    );

    // encrypt -> plain: version 1, no key fields.
    edit_config(&env, |v| {
        v["version"] = 1.into();
        let o = v.as_object_mut().unwrap();
        for f in ["encryption", "key_fingerprint", "config_mac"] {
            o.remove(f);
        }
    });
    let e = stderr(&env.run(&backup));
    assert!(
        e.contains("it was encrypted, its config.json now says plain"),
        "{e}"
    );
    let out = as_new_host(&env, &backup);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not encrypted or signed, but a key was given"),
        "{}",
        stderr(&out)
    );
    assert!(!store_holds(&env.store, MARKER), "plaintext reached the store");

    // Put back, everything works and verifies.
    fs::write(env.store.join("config.json"), original).unwrap();
    env.backup("a", std::slice::from_ref(&spec));
    env.ok(&["verify"]);
    assert!(!store_holds(&env.store, MARKER));
}

/// The key slot names its store's mode and version under its tag: a new
/// host (no memory) shown a version 3 encrypt store passed off as a
/// version 2 sign store (no config MAC to fail, weaker keys, the public
/// chunker) is refused by the slot itself, before anything is written.
#[test]
fn a_store_passed_off_as_an_older_weaker_one_is_refused_by_its_key() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    marked_image(&img);
    let spec = format!("d.img:{}", img.display());
    let backup = ["backup", "--id", "a", &spec];
    for (mode, version) in [("sign", 2), ("encrypt", 2), ("sign", 3)] {
        let original = fs::read(env.store.join("config.json")).unwrap();
        edit_config(&env, |v| {
            v["encryption"] = mode.into();
            v["version"] = version.into();
            if version == 2 {
                v.as_object_mut().unwrap().remove("config_mac");
            }
        });
        let out = as_new_host(&env, &backup);
        assert!(!out.status.success(), "{mode} {version}");
        let e = stderr(&out);
        assert!(
            e.contains("this is the key of a encrypt store of version 3")
                && e.contains(&format!("describes a {mode} store of version {version}")),
            "{mode} {version}: {e}"
        );
        assert!(!store_holds(&env.store, MARKER), "plaintext reached the store");
        fs::write(env.store.join("config.json"), original).unwrap();
    }
    env.backup("a", std::slice::from_ref(&spec));
    env.ok(&["verify"]);
}

/// A secret serves one mode: its key file says which, so a second store
/// of the other mode refuses it; and even if one secret did serve both
/// (a version 1 key file names no mode), their keys are bound to the mode,
/// so the two stores would share no digest.
#[test]
fn a_sign_store_and_an_encrypt_store_of_one_secret_share_no_digest() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    let pass = dir.path().join("pass");
    fs::write(&pass, "pw\n").unwrap();
    let hoard = |store: &Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env("HOARD_STORE", store)
            .env("HOARD_STATE_DIR", dir.path().join("state"))
            .env("HOARD_PASSWORD_FILE", &pass)
            .env("HOARD_NEW_PASSWORD_FILE", &pass)
            .arg("--keyfile")
            .arg(&key)
            .args(args)
            .output()
            .unwrap()
    };
    let sign = hoard(&dir.path().join("sign"), &["init", "--encryption", "sign"]);
    assert!(sign.status.success(), "{}", stderr(&sign));
    let out = hoard(&dir.path().join("encrypt"), &["init", "--encryption", "encrypt"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is the key of a sign store of version 3, not of a new encrypt store"),
        "{}",
        stderr(&out)
    );
    // The same secret under both modes' keys: different digests.
    use hoard_engine::{Protection, StoreKeys};
    let file = hoard_engine::key_slots::read_key_file(&key).unwrap();
    let master = hoard_engine::key_wrap::unwrap(&file, b"pw").unwrap();
    let chunk = noise(4, 64 << 10);
    let digest = |mode| StoreKeys::derive(&master, mode).hasher().digest(&chunk);
    assert_ne!(digest(Protection::Sign), digest(Protection::Encrypt));
}

/// Two snapshots of group host/a a second apart; returns their names.
fn two_snapshots(env: &Env) -> (String, String) {
    let img = env.path("disk.raw");
    fs::write(&img, noise(2, 256 << 10)).unwrap();
    let spec = format!("d.img:{}", img.display());
    let a = env.backup("a", std::slice::from_ref(&spec));
    let b = env.backup("a", std::slice::from_ref(&spec));
    (
        a["snapshot"].as_str().unwrap().into(),
        b["snapshot"].as_str().unwrap().into(),
    )
}

#[test]
fn a_hidden_newest_snapshot_is_reported() {
    for env in [Env::new("64K"), Env::protected("64K", "encrypt")] {
        let (old, new) = two_snapshots(&env);
        env.ok(&["snapshots"]);
        // The holder hides the newest snapshot: "latest" now restores the
        // older one, and hoard says so.
        let dir = env.snapshot_dir(&new);
        fs::rename(&dir, env.path("hidden")).unwrap();
        let out = env.run(&["restore", "host/a", "d.img", env.path("out").to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(&new) && e.contains("is gone"), "{e}");
        // Forgotten by this host itself: no warning.
        fs::rename(env.path("hidden"), &dir).unwrap();
        env.ok(&["forget", &new]);
        let out = env.run(&["snapshots"]);
        assert!(!stderr(&out).contains("is gone"), "{}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&old));
    }
}

/// Plants `KIND/ID/TIME` as a copy of snapshot `from`, its manifest's
/// time rewritten to match (what a holder without the key can do).
fn plant(env: &Env, from: &str, time: &str, rewrite: bool) -> String {
    let src = env.snapshot_dir(from);
    let planted = format!("host/a/{time}");
    let dst = env.snapshot_dir(&planted);
    fs::create_dir_all(&dst).unwrap();
    for e in fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    if rewrite {
        let m = dst.join("manifest.json");
        let old_time = from.rsplit('/').next().unwrap();
        let text = fs::read_to_string(&m).unwrap().replace(old_time, time);
        fs::write(&m, text).unwrap();
    }
    planted
}

#[test]
fn planted_snapshots_never_make_prune_forget_real_ones() {
    for mode in ["none", "encrypt"] {
        let env = if mode == "none" {
            Env::new("64K")
        } else {
            Env::protected("64K", mode)
        };
        let (old, new) = two_snapshots(&env);
        // Future-dated, with a consistent manifest (plain) or a MAC that
        // no longer matches (encrypt).
        let future = plant(&env, &new, "2099-01-01T00:00:00Z", true);
        // An empty manifest, and a manifest copied unchanged (it names
        // another snapshot), both dated after the real ones.
        let empty = plant(&env, &new, "2030-01-01T00:00:00Z", false);
        fs::write(env.snapshot_dir(&empty).join("manifest.json"), b"").unwrap();
        let copied = plant(&env, &new, "2031-01-01T00:00:00Z", false);
        let out = env.run(&["prune", "--keep-last", "1", "--json"]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kept: Vec<&str> = report["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mark"] == "keep")
            .map(|e| e["snapshot"].as_str().unwrap())
            .collect();
        assert_eq!(kept, [new.as_str()], "{mode}: {report}");
        let ignored: Vec<&str> = report["ignored"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["snapshot"].as_str().unwrap())
            .collect();
        for p in [&future, &empty, &copied] {
            assert!(
                ignored.contains(&p.as_str()),
                "{mode}: {p} not reported: {report}"
            );
            assert!(
                env.snapshot_dir(p).exists(),
                "{mode}: a planted snapshot is left alone"
            );
        }
        assert!(
            !env.snapshot_dir(&old).exists(),
            "{mode}: keep-last 1 removed the older real one"
        );
        // "latest" is the real newest one.
        let out = env.run(&["show", "host/a", "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["time"], new.rsplit('/').next().unwrap(), "{mode}");
        assert!(
            stderr(&out).contains("does not count"),
            "{mode}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_planted_costly_key_slot_is_skipped() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    fs::write(&img, noise(9, 256 << 10)).unwrap();
    let snap = env.backup("a", &[format!("d.img:{}", img.display())]);
    // A slot named to sort first that asks argon2id for 4 GiB × 64 passes.
    let real = env.store.join("keys/key-1.key");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&real).unwrap()).unwrap();
    v["kdf"]["memory_kib"] = (4u64 << 20).into();
    v["kdf"]["iterations"] = 64.into();
    fs::write(
        env.store.join("keys/a-planted.key"),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
    let out = env.run(&[
        "restore",
        snap["snapshot"].as_str().unwrap(),
        "d.img",
        env.path("out").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("key slot a-planted skipped") && stderr(&out).contains("kdf memory"),
        "{}",
        stderr(&out)
    );
    common::assert_same_file(&img, &env.path("out"));
}

/// Issue 28, item 4: a pack planted to sort first, a copy of a real one
/// whose first record carries garbage with valid CRCs, wins a keyless index
/// rebuild. GC must not then delete the genuine pack as redundant: without
/// the key it cannot prove the planted copy good, and with the key it finds
/// it bad. `check` with the key names the planted record as damage.
#[test]
fn a_planted_pack_never_costs_the_genuine_copy() {
    use hoard_engine::pack;
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    fs::write(&img, noise(6, 1 << 20)).unwrap();
    let snap = env.backup("a", &[format!("d.img:{}", img.display())]);
    let genuine = env.packs()[0].clone();
    let original = fs::read(&genuine).unwrap();
    let mut bytes = original.clone();
    bytes[16..32].fill(0);
    let (offset, mut h) = pack::scan_bytes(&bytes, None).records[0];
    let start = offset as usize + 56;
    bytes[start + 20] ^= 1;
    h.payload_crc = common::crc32c(&bytes[start..start + h.stored_len as usize]);
    bytes[offset as usize..start].copy_from_slice(&h.encode());
    let planted = env.store.join("packs/00/00000000000000000000000000000000.pack");
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    fs::write(&planted, &bytes).unwrap();
    // A keyless rebuild (a server's) cannot tell the copies apart.
    assert!(env.keyless(&["index", "rebuild"]).status.success());
    // Old enough for GC to look at every pack.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for p in env.packs() {
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    for _ in 0..2 {
        let out = env.keyless(&["gc", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            r["packs_kept_for_key"]
                .to_string()
                .contains(genuine.file_name().unwrap().to_str().unwrap()),
            "{r}"
        );
    }
    assert_eq!(
        fs::read(&genuine).unwrap(),
        original,
        "the genuine pack survives keyless gc"
    );
    // With the key the planted copy fails, and the genuine pack stays.
    let _ = env.run(&["gc"]);
    let _ = env.run(&["gc"]);
    assert_eq!(
        fs::read(&genuine).unwrap(),
        original,
        "the genuine pack survives gc with the key"
    );
    let out = env.run(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["damaged"]
            .to_string()
            .contains("00000000000000000000000000000000"),
        "{report}"
    );
    // A rebuild given the key finds the planted record damaged (the pack
    // is quarantined) and indexes the genuine one: the snapshot restores.
    let out = env.run(&["index", "rebuild", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["damaged"]
            .to_string()
            .contains("00000000000000000000000000000000"),
        "{report}"
    );
    assert!(!planted.exists(), "quarantined");
    env.assert_restores(snap["snapshot"].as_str().unwrap(), "d.img", &img);
}

/// A store re-created at the same place by `hoard init` is remembered as
/// the new one; one changed by hand is refused until `hoard known-stores
/// forget` accepts it, and `known-stores list` shows what is remembered.
#[test]
fn known_stores_follow_init_and_forget() {
    let env = Env::protected("64K", "encrypt");
    let listed = env.ok(&["known-stores", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["stores"][0]["encryption"], "encrypt", "{v}");
    // Re-created as a plain store by init: no complaint.
    fs::remove_dir_all(&env.store).unwrap();
    env.ok(&["init", "--chunk-size", "64K"]);
    let out = env.keyless(&["snapshots"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Changed by hand (another uuid): refused, then accepted on request.
    edit_config(&env, |v| {
        v["uuid"] = "00000000-0000-4000-8000-000000000000".into()
    });
    let out = env.keyless(&["snapshots"]);
    assert!(
        !out.status.success() && stderr(&out).contains("its uuid was"),
        "{}",
        stderr(&out)
    );
    let out = env.keyless(&["known-stores", "forget", env.store.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("forgot store"),
        "{}",
        stderr(&out)
    );
    assert!(env.keyless(&["snapshots"]).status.success());
}

/// Item 5: a `protected` marker is believed, with the key, only when its
/// MAC (bound to its snapshot) checks; a planted one (empty, or copied
/// from another snapshot) is named and does not keep a snapshot from the
/// owner's prune. Without the key any marker holds: keeping is safe.
#[test]
fn a_planted_protected_marker_does_not_hold_with_the_key() {
    let env = Env::protected("64K", "sign");
    let (a, b) = two_snapshots(&env);
    let img = env.path("disk.raw");
    let c = env.backup("a", &[format!("d.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Protecting writes a MAC, so it needs the key.
    let out = env.keyless(&["protect", &c]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("passphrase"), "{}", stderr(&out));
    env.ok(&["protect", &c]);
    assert!(
        env.run(&["forget", &c]).status.code() != Some(0),
        "a real marker holds"
    );
    // The holder plants an empty marker on a, and c's real one on b.
    fs::write(env.snapshot_dir(&a).join("protected"), b"").unwrap();
    fs::copy(
        env.snapshot_dir(&c).join("protected"),
        env.snapshot_dir(&b).join("protected"),
    )
    .unwrap();
    let marks = |out: &Output| -> Vec<(String, String)> {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["snapshot"].as_str().unwrap().into(),
                    e["mark"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let keyless = env.keyless(&["prune", "--keep-last", "1", "--dry-run", "--json"]);
    assert!(keyless.status.success(), "{}", stderr(&keyless));
    let protected = |n: &str| (n.to_string(), "protected".to_string());
    assert_eq!(
        marks(&keyless),
        [protected(&c), protected(&b), protected(&a)],
        "without the key every marker holds"
    );
    // With the key only c's: keep-last 1 then keeps b (the newest
    // unprotected one) and removes a.
    let out = env.run(&["prune", "--keep-last", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        marks(&out),
        [
            protected(&c),
            (b.clone(), "keep".into()),
            (a.clone(), "remove".into())
        ]
    );
    let e = stderr(&out);
    for n in [&a, &b] {
        assert!(
            e.contains(&format!("{n}: its protected marker does not authenticate")),
            "{e}"
        );
    }
    assert!(!env.snapshot_dir(&a).exists());
    env.ok(&["forget", &b]);
    assert!(env.snapshot_dir(&c).exists());
}

/// The ends of the payload chunks of ct/ID's newest tree archive, read
/// off its `.didx` (format-spec/dynamic-index.md: 128-byte header, then
/// 40-byte entries whose first 8 bytes are the end offset), which anyone
/// holding the store can read.
fn payload_chunk_ends(env: &Env, snapshot: &str) -> Vec<u64> {
    let didx = fs::read(env.snapshot_dir(snapshot).join("root.tree.payload.didx")).unwrap();
    didx[128..]
        .chunks_exact(40)
        .map(|e| u64::from_le_bytes(e[..8].try_into().unwrap()))
        .collect()
}

/// Hole 3: whoever holds a plain store and a candidate file computes the
/// file's FastCDC cut points and finds them among the chunk lengths. In a
/// protected store the keyed chunker cuts elsewhere, at points that also
/// differ from store to store.
#[test]
fn a_known_file_is_not_found_by_its_chunk_lengths() {
    let file = noise(28, 24 << 20);
    let attacker = {
        let (min, avg, max) = (256 << 10, 1 << 20, 4 << 20);
        let mut ends = Vec::new();
        for c in fastcdc::v2020::FastCDC::new(&file, min, avg, max) {
            ends.push((c.offset + c.length) as u64);
        }
        ends
    };
    let mut seen = Vec::new();
    for mode in ["none", "sign", "encrypt"] {
        let env = if mode == "none" {
            Env::new("64K")
        } else {
            Env::protected("64K", mode)
        };
        let src = env.path("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("known"), &file).unwrap();
        let snapshot = env.backup_tree("1", &src);
        let ends = payload_chunk_ends(&env, &snapshot);
        assert!(ends.len() > 10, "{mode}: {} chunks", ends.len());
        assert_eq!(ends.last(), Some(&(file.len() as u64)));
        let found = ends[..ends.len() - 1]
            .iter()
            .filter(|e| attacker.contains(e))
            .count();
        if mode == "none" {
            assert_eq!(ends, attacker, "a plain store is cut by the public FastCDC");
        } else {
            assert_eq!(
                found, 0,
                "{mode}: {found} of the public cut points found: {ends:?}"
            );
            for other in &seen {
                assert_ne!(&ends, other, "two protected stores cut alike");
            }
            seen.push(ends);
        }
        let out = env.path("restored");
        env.ok(&["restore", &snapshot, "root.tree", out.to_str().unwrap()]);
        assert!(
            fs::read(out.join("known")).unwrap() == file,
            "{mode}: restored file differs"
        );
    }
}
