//! Encrypted and signed stores end to end: every archive kind round trips,
//! nothing readable (no content, no unkeyed digest) reaches the store,
//! tampering is an authentication error naming the object, keys rotate and
//! recover, keyless maintenance works, and nonces never repeat.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{noise, Env, FAST_KDF};
use hoard_engine::pack;

const MARKER: &[u8] = b"HOARD-SECRET-MARKER-7f3a ";

/// hoard with the passphrase in `pass` (and `new` for a new one).
fn with_pass(env: &Env, pass: &Path, new: Option<&Path>, args: &[&str]) -> Output {
    let mut c = env.hoard();
    c.env("HOARD_PASSWORD_FILE", pass).args(args).stdin(Stdio::null());
    if let Some(n) = new {
        c.env("HOARD_NEW_PASSWORD_FILE", n);
    }
    c.output().expect("run hoard")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// An image of marker text, noise and a hole, 64 chunks of 64 KiB.
fn marked_image(path: &Path) -> Vec<u8> {
    let mut data = MARKER.repeat((1 << 20) / MARKER.len() + 1);
    data.truncate(1 << 20);
    data.extend(noise(3, 2 << 20));
    data.resize(4 << 20, 0);
    fs::write(path, &data).unwrap();
    data
}

/// A 1 MiB image of noise `seed`, backed up as host/a d.img: its path and
/// the snapshot's name.
fn backed_up(env: &Env, seed: u64) -> (PathBuf, String) {
    let img = env.path("disk.raw");
    fs::write(&img, noise(seed, 1 << 20)).unwrap();
    let out = env.backup("a", &[format!("d.img:{}", img.display())]);
    (img, out["snapshot"].as_str().unwrap().to_string())
}

fn pw(env: &Env, name: &str, text: &str) -> PathBuf {
    let p = env.path(name);
    fs::write(&p, format!("{text}\n")).unwrap();
    p
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_archive_kind_round_trips_and_nothing_readable_is_stored() {
    for mode in ["encrypt", "sign"] {
        let env = Env::protected("64K", mode);
        let img = env.path("disk.raw");
        let data = marked_image(&img);
        let spec = format!("d.img:{}", img.display());
        let first = env.backup("a", std::slice::from_ref(&spec));
        assert_eq!(first["archives"][0]["stats"]["zero_chunks"], 16, "{first}");
        // An incremental: only the changed chunk is new.
        let mut changed = data.clone();
        changed[3 << 20..(3 << 20) + 5].copy_from_slice(b"again");
        fs::write(&img, &changed).unwrap();
        let second = env.backup("a", std::slice::from_ref(&spec));
        assert_eq!(second["archives"][0]["stats"]["new_chunks"], 1, "{second}");
        let snap = second["snapshot"].as_str().unwrap();
        env.assert_restores(snap, "d.img", &img);

        // A tree whose names and contents are secret too.
        let src = env.path("src");
        fs::create_dir_all(src.join("dir-HOARD-SECRET-NAME")).unwrap();
        fs::write(src.join("dir-HOARD-SECRET-NAME/notes.txt"), MARKER.repeat(100)).unwrap();
        fs::write(src.join("big"), noise(4, 300_000)).unwrap();
        let tree = env.backup_tree("t", &src);
        let out = env.path("tree-out");
        env.ok(&["restore", &tree, "root.tree", out.to_str().unwrap()]);
        common::tree::assert_same_tree(&src, &out);
        assert!(env
            .ok(&["ls", &tree, "root.tree"])
            .contains("dir-HOARD-SECRET-NAME"));
        let cat = env.ok(&["cat", &tree, "root.tree", "dir-HOARD-SECRET-NAME/notes.txt"]);
        assert_eq!(cat.as_bytes(), MARKER.repeat(100).as_slice());
        env.ok(&["verify"]);

        // Every file of the store: no unkeyed digest of a stored chunk, and
        // (encrypted) no content or file name.
        let unkeyed = *blake3::hash(&data[..65536]).as_bytes();
        for f in common::walk(&env.store) {
            let bytes = fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, &unkeyed),
                "{mode}: {} holds an unkeyed digest",
                f.display()
            );
            if mode == "encrypt" {
                assert!(
                    !contains(&bytes, &MARKER[..12]),
                    "{} holds plaintext",
                    f.display()
                );
                assert!(
                    !contains(&bytes, b"HOARD-SECRET-NAME"),
                    "{} holds a file name",
                    f.display()
                );
            }
        }
        if mode == "sign" {
            // Signed, not encrypted: content is readable in the packs.
            let packs: Vec<u8> = env.packs().iter().flat_map(|p| fs::read(p).unwrap()).collect();
            assert!(contains(&packs, &MARKER[..12]));
        }
    }
}

#[test]
fn tree_change_detection_works_unchanged() {
    let env = Env::protected("64K", "encrypt");
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..40u64 {
        fs::write(src.join(format!("f{i}")), noise(i, 20_000 + i as usize * 1000)).unwrap();
    }
    let spec = format!("root.tree:{}", src.display());
    let args = ["backup", "--kind", "ct", "--id", "t", "--json", &spec];
    env.json(&args);
    fs::write(src.join("f3"), b"changed").unwrap();
    let second = env.json(&args);
    let t = &second["archives"][0]["tree"];
    assert!(t["reused_files"].as_u64().unwrap() >= 38, "{second}");
    let out = env.path("out");
    env.ok(&[
        "restore",
        second["snapshot"].as_str().unwrap(),
        "root.tree",
        out.to_str().unwrap(),
    ]);
    common::tree::assert_same_tree(&src, &out);
}

#[test]
fn the_same_data_in_two_keys_shares_no_chunk() {
    let a = Env::protected("64K", "encrypt");
    let b = Env::protected("64K", "encrypt");
    let plain = Env::new("64K");
    let mut digests = Vec::new();
    for env in [&a, &b, &plain] {
        let img = env.path("disk.raw");
        marked_image(&img);
        let snap = env.backup("x", &[format!("d.img:{}", img.display())]);
        let dir = env.snapshot_dir(snap["snapshot"].as_str().unwrap());
        let fidx = hoard_engine::FixedIndex::open(&dir.join("d.img.fidx")).unwrap();
        digests.push(fidx.digest(0));
    }
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);
    assert_ne!(digests[1], digests[2]);
}

#[test]
fn wrong_passphrase_wrong_key_file_and_no_key() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    marked_image(&img);
    let snap = env.backup("a", &[format!("d.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let target = env.path("out");
    let wrong = pw(&env, "wrong", "battery staple");
    let e = err(
        with_pass(
            &env,
            &wrong,
            None,
            &["restore", &snap, "d.img", target.to_str().unwrap()],
        ),
        "wrong passphrase",
    );
    assert!(e.contains("opens none of the store's key slots (key-1)"), "{e}");
    assert!(!target.exists());
    let e = err(
        env.keyless(&["restore", &snap, "d.img", target.to_str().unwrap()]),
        "no key",
    );
    assert!(e.contains("HOARD_PASSWORD_FILE"), "{e}");
    let e = err(
        env.keyless(&["backup", "--id", "a", &format!("d.img:{}", img.display())]),
        "backup without key",
    );
    assert!(e.contains("passphrase"), "{e}");
    // Another store's key file, with its right passphrase.
    let other = env.path("other.key");
    ok(
        with_pass(
            &env,
            &wrong,
            Some(&wrong),
            &[
                &["key", "create", "--out", other.to_str().unwrap()][..],
                &FAST_KDF[..],
            ]
            .concat(),
        ),
        "key create",
    );
    let restore_with = |pass: &Path| {
        let args = [
            "--keyfile",
            other.to_str().unwrap(),
            "restore",
            &snap,
            "d.img",
            target.to_str().unwrap(),
        ];
        err(
            with_pass(&env, pass, None, &args),
            "restore with another store's key file",
        )
    };
    let e = restore_with(&wrong);
    assert!(e.contains("is not this store's"), "{e}");
    let e = restore_with(&env.path("passphrase"));
    assert!(e.contains("other.key: wrong passphrase"), "{e}");
    assert!(!target.exists());
}

/// Rewrites the first record of `pack` with its payload changed and both
/// CRCs fixed (what someone with write access but no key can do); returns
/// its digest.
fn forge_record(pack: &Path) -> String {
    let mut bytes = fs::read(pack).unwrap();
    let (offset, mut h) = pack::scan_bytes(&bytes, None).records[0];
    let start = offset as usize + 56;
    bytes[start + 20] ^= 1;
    h.payload_crc = common::crc32c(&bytes[start..start + h.stored_len as usize]);
    bytes[offset as usize..start].copy_from_slice(&h.encode());
    fs::write(pack, bytes).unwrap();
    h.digest.to_hex()
}

#[test]
fn tampering_is_an_authentication_error_naming_the_object() {
    for mode in ["encrypt", "sign"] {
        let env = Env::protected("64K", mode);
        let (img, snap) = backed_up(&env, 8);
        let target = env.path("out");

        // A chunk changed by someone without the key.
        let pack = env.packs()[0].clone();
        let saved = fs::read(&pack).unwrap();
        let digest = forge_record(&pack);
        let e = err(
            env.run(&["restore", &snap, "d.img", target.to_str().unwrap()]),
            "forged chunk",
        );
        let why = if mode == "encrypt" {
            "fails authentication"
        } else {
            "digest mismatch"
        };
        assert!(e.contains(&digest) && e.contains(why), "{mode}: {e}");
        assert!(!target.exists(), "nothing restored from a forged chunk");
        // The CRCs match, so only a keyed verify finds it.
        let r = env.keyless(&["verify", "--json"]);
        assert!(r.status.success(), "{mode}: keyless verify sees intact CRCs");
        let r = env.run(&["verify", "--json"]);
        assert!(!r.status.success());
        assert!(String::from_utf8_lossy(&r.stdout).contains(&digest));
        fs::write(&pack, saved).unwrap();
        env.ok(&["index", "rebuild"]);
        env.ok(&["verify"]);

        // A manifest changed to vouch for another index: MAC mismatch.
        let manifest = env.snapshot_dir(&snap).join("manifest.json");
        let text = fs::read_to_string(&manifest).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let checksum = v["archives"][0]["index_checksum"].as_str().unwrap();
        fs::write(&manifest, text.replace(checksum, &"0".repeat(64))).unwrap();
        let e = err(
            env.run(&["restore", &snap, "d.img", target.to_str().unwrap()]),
            "changed manifest",
        );
        assert!(
            e.contains("manifest.json: manifest fails authentication: its MAC does not match"),
            "{e}"
        );
        // Its MAC removed: refused too.
        let stripped = format!("{{{}", &text[text.find(',').unwrap() + 1..]);
        fs::write(&manifest, stripped).unwrap();
        let e = err(
            env.run(&["restore", &snap, "d.img", target.to_str().unwrap()]),
            "unsigned manifest",
        );
        assert!(e.contains("it has no MAC"), "{e}");
        // Keyless commands still list it.
        assert!(ok(env.keyless(&["snapshots"]), "snapshots").contains(&snap));
        fs::write(&manifest, &text).unwrap();
        env.assert_restores(&snap, "d.img", &img);
    }
}

#[test]
fn keyless_maintenance_runs_without_the_key() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    for seed in 0..3 {
        fs::write(&img, noise(seed, 1 << 20)).unwrap();
        env.backup("a", &[format!("d.img:{}", img.display())]);
    }
    let names = env.snapshot_names();
    for args in [
        &["snapshots"][..],
        &["show", &names[0]],
        &["check"],
        &["verify"],
        &["prune", "--keep-last", "2"],
        &["forget", &names[1]],
        &["gc"],
        &["index", "rebuild"],
        &["key", "list"],
    ] {
        let out = env.keyless(args);
        assert!(
            out.status.success(),
            "{args:?} without the key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&env.keyless(&["verify", "--json"]).stdout).unwrap();
    assert_eq!(v["crc_only"], true);
    assert_eq!(env.json(&["verify", "--json"])["crc_only"], false);
    env.assert_restores(&names[2], "d.img", &img);
}

#[test]
fn key_rotation_keeps_every_snapshot_readable() {
    let env = Env::protected("64K", "encrypt");
    let (img, snap) = backed_up(&env, 5);
    let (one, two, three) = (
        env.path("passphrase"),
        pw(&env, "two", "second"),
        pw(&env, "three", "third"),
    );
    let add = [&["key", "add", "--name", "second"][..], &FAST_KDF[..]].concat();
    ok(with_pass(&env, &one, Some(&two), &add), "key add");
    ok(
        with_pass(
            &env,
            &one,
            Some(&three),
            &[&["key", "passwd"][..], &FAST_KDF[..]].concat(),
        ),
        "key passwd",
    );
    let e = err(
        with_pass(&env, &one, None, &["restore", &snap, "d.img", "/nonexistent/x"]),
        "old passphrase",
    );
    assert!(e.contains("opens none"), "{e}");
    for (p, n) in [(&two, "r2"), (&three, "r3")] {
        let out = env.path(n);
        ok(
            with_pass(&env, p, None, &["restore", &snap, "d.img", out.to_str().unwrap()]),
            "restore",
        );
        common::assert_same_file(&img, &out);
    }
    // Removing a slot needs a passphrase of another one.
    let e = err(
        with_pass(&env, &three, None, &["key", "remove", "key-1"]),
        "remove own slot",
    );
    assert!(e.contains("opens none"), "{e}");
    ok(
        with_pass(&env, &two, None, &["key", "remove", "key-1"]),
        "key remove",
    );
    let e = err(
        with_pass(&env, &two, None, &["key", "remove", "second"]),
        "remove last",
    );
    assert!(e.contains("last key slot"), "{e}");
    let slots: serde_json::Value =
        serde_json::from_str(&ok(env.keyless(&["key", "list", "--json"]), "list")).unwrap();
    assert_eq!(slots["slots"].as_array().unwrap().len(), 1);
    assert_eq!(slots["slots"][0]["name"], "second");
    let shown = ok(env.keyless(&["key", "show"]), "show");
    assert!(
        shown.contains("encryption:  encrypt") && shown.contains("unlock:"),
        "{shown}"
    );
}

fn have_age() -> bool {
    let ok = Command::new("age-keygen")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "age missing under CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: age-keygen missing (scripts/setup.sh installs the age package)");
    }
    ok
}

#[test]
fn a_lost_passphrase_is_recovered_through_the_identity_or_paper() {
    if !have_age() {
        return;
    }
    let env = Env::protected("64K", "encrypt");
    let (img, snap) = backed_up(&env, 6);
    let id = env.path("id.txt");
    let made = Command::new("age-keygen").arg("-o").arg(&id).output().unwrap();
    assert!(made.status.success());
    let text = fs::read_to_string(&id).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap();
    let copy = env.path("recovery.age");
    env.ok(&[
        "key",
        "export",
        "--recipient",
        recipient,
        "--out",
        copy.to_str().unwrap(),
    ]);
    let paper = env.ok(&["key", "export", "--paper"]);
    let paper_file = env.path("paper.txt");
    fs::write(&paper_file, &paper).unwrap();
    // The real age tool opens the copy.
    let opened = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&id)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&opened.stdout).starts_with("hoard-recovery 1\n"));

    // The passphrase is lost: its only slot is gone.
    fs::remove_file(env.store.join("keys/key-1.key")).unwrap();
    let nothing = env.path("nothing");
    let e = err(
        with_pass(
            &env,
            &nothing,
            None,
            &["restore", &snap, "d.img", "/nonexistent/x"],
        ),
        "no slot",
    );
    assert!(e.contains("keeps no key slot"), "{e}");
    let new = pw(&env, "new", "recovered");
    let recover = [
        &[
            "key",
            "recover",
            copy.to_str().unwrap(),
            "--identity",
            id.to_str().unwrap(),
            "--name",
            "back",
        ][..],
        &FAST_KDF[..],
    ]
    .concat();
    ok(with_pass(&env, &nothing, Some(&new), &recover), "recover");
    let out = env.path("r1");
    ok(
        with_pass(
            &env,
            &new,
            None,
            &["restore", &snap, "d.img", out.to_str().unwrap()],
        ),
        "restore",
    );
    common::assert_same_file(&img, &out);
    // From paper, into a key file outside the store.
    let kf = env.path("paper.key");
    let from_paper = [
        &[
            "key",
            "recover",
            paper_file.to_str().unwrap(),
            "--paper",
            "--out",
            kf.to_str().unwrap(),
        ][..],
        &FAST_KDF[..],
    ]
    .concat();
    ok(
        with_pass(&env, &nothing, Some(&new), &from_paper),
        "recover paper",
    );
    let out = env.path("r2");
    ok(
        with_pass(
            &env,
            &new,
            None,
            &[
                "--keyfile",
                kf.to_str().unwrap(),
                "restore",
                &snap,
                "d.img",
                out.to_str().unwrap(),
            ],
        ),
        "restore",
    );
    common::assert_same_file(&img, &out);
    // Another identity opens nothing.
    let other = env.path("other-id.txt");
    Command::new("age-keygen").arg("-o").arg(&other).output().unwrap();
    let e = err(
        with_pass(
            &env,
            &nothing,
            Some(&new),
            &[
                "key",
                "recover",
                copy.to_str().unwrap(),
                "--identity",
                other.to_str().unwrap(),
            ],
        ),
        "wrong identity",
    );
    assert!(e.contains("does not open with this identity"), "{e}");
}

#[test]
fn a_store_whose_key_lives_only_in_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, kf, pass) = (
        dir.path().join("s"),
        dir.path().join("k.key"),
        dir.path().join("pw"),
    );
    fs::write(&pass, "kf pass\n").unwrap();
    let hoard = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env("HOARD_STORE", &store)
            .env("HOARD_PASSWORD_FILE", &pass)
            .env("HOARD_NEW_PASSWORD_FILE", &pass)
            .stdin(Stdio::null())
            .args(args)
            .output()
            .unwrap()
    };
    ok(
        hoard(
            &[
                &["key", "create", "--out", kf.to_str().unwrap()][..],
                &FAST_KDF[..],
            ]
            .concat(),
        ),
        "create",
    );
    ok(
        hoard(&["--keyfile", kf.to_str().unwrap(), "init", "--encrypt"]),
        "init",
    );
    assert_eq!(
        fs::read_dir(store.join("keys")).unwrap().count(),
        0,
        "no slot in the store"
    );
    let img = dir.path().join("img");
    fs::write(&img, noise(9, 300_000)).unwrap();
    let spec = format!("d.img:{}", img.display());
    let e = err(hoard(&["backup", "--id", "k", &spec]), "no key file");
    assert!(e.contains("--keyfile"), "{e}");
    ok(
        hoard(&["--keyfile", kf.to_str().unwrap(), "backup", "--id", "k", &spec]),
        "backup",
    );
    let out = dir.path().join("out");
    ok(
        hoard(&[
            "--keyfile",
            kf.to_str().unwrap(),
            "restore",
            "host/k",
            "d.img",
            out.to_str().unwrap(),
        ]),
        "restore",
    );
    common::assert_same_file(&img, &out);
}

#[test]
fn nonces_never_repeat_across_concurrent_backups() {
    let env = Env::protected("64K", "encrypt");
    let mut children = Vec::new();
    for i in 0..3u64 {
        let img = env.path(&format!("img{i}"));
        // The same content in every image too: one chunk stored once.
        let mut data = noise(100 + i, 4 << 20);
        data.extend(noise(7, 1 << 20));
        fs::write(&img, data).unwrap();
        children.push(
            env.hoard()
                .args([
                    "backup",
                    "--id",
                    &format!("c{i}"),
                    &format!("d.img:{}", img.display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut nonces = HashSet::new();
    let mut records = 0;
    for p in env.packs() {
        let bytes = fs::read(&p).unwrap();
        for (offset, h) in pack::scan_bytes(&bytes, None).records {
            assert!(h.sealed);
            let at = offset as usize + 56;
            nonces.insert(bytes[at..at + 12].to_vec());
            records += 1;
        }
    }
    assert!(records >= 3 * 64, "{records} records");
    assert_eq!(nonces.len(), records, "a nonce repeated");
    env.ok(&["verify"]);
}

/// GC without the key rewrites a pack, copying sealed records byte for
/// byte after their CRC check; the key then reads everything it kept.
#[test]
fn keyless_gc_repacks_sealed_records() {
    let env = Env::protected("64K", "encrypt");
    let a = env.path("a");
    let b = env.path("b");
    let shared = noise(2, 10 * 65536);
    fs::write(&a, [noise(1, 20 * 65536), shared.clone()].concat()).unwrap();
    fs::write(&b, [shared, noise(3, 10 * 65536)].concat()).unwrap();
    let sa = env.backup("a", &[format!("d.img:{}", a.display())]);
    let sb = env.backup("b", &[format!("d.img:{}", b.display())]);
    ok(
        env.keyless(&["forget", sa["snapshot"].as_str().unwrap()]),
        "forget",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(env.keyless(&["gc"]), "gc 1");
    let second: serde_json::Value =
        serde_json::from_str(&ok(env.keyless(&["gc", "--json"]), "gc 2")).unwrap();
    assert_eq!(second["packs_rewritten"], 1, "{second}");
    assert_eq!(second["chunks_removed"], 20, "{second}");
    env.ok(&["verify"]);
    env.assert_restores(sb["snapshot"].as_str().unwrap(), "d.img", &b);
}
