//! Whole stores in a bucket of a real SeaweedFS and a real Ceph RGW,
//! through the CLI as a user runs it (`--store http://HOST:PORT/BUCKET/PREFIX`):
//! image, tree and incremental round trips, restore by index file, a
//! deleted cache rebuilt from the bucket, forget + GC freeing objects (on
//! both servers); an encrypted store whose key slots live in the bucket,
//! the writer lease keeping a second cache out, a server that goes away
//! mid-backup, a volume server of a replicated cluster lost mid-backup, GC
//! running beside a backup and cleaning up a killed one, and prune, index
//! rebuild, export and mount on a bucket (on SeaweedFS).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::ceph::Ceph;
use common::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use common::{mixed_image, Env, S3Server};
use hoard_engine::ObjectBackend;

fn cache(env: &Env) -> PathBuf {
    env.path("cache")
}

/// The engine's S3 client on the store's prefix.
fn client(sw: &dyn S3Server, env: &Env) -> hoard_engine::S3Backend {
    hoard_engine::S3Backend::new(
        env.store.to_str().unwrap().parse().unwrap(),
        sw.dir().join("probe-spool"),
        std::time::Duration::from_secs(10),
        Some((ACCESS_KEY, SECRET_KEY)),
    )
    .unwrap()
}

/// The objects under the store's prefix.
fn objects(sw: &dyn S3Server, env: &Env, prefix: &str) -> Vec<String> {
    client(sw, env)
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect()
}

fn tree(dir: &Path) {
    fs::create_dir_all(dir.join("etc/sub")).unwrap();
    fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(dir.join("etc/sub/big"), common::noise(9, 900_000)).unwrap();
    std::os::unix::fs::symlink("hosts", dir.join("etc/link")).unwrap();
}

#[test]
fn a_store_in_seaweedfs_round_trips_and_rebuilds_its_cache() {
    let Some(sw) = Seaweed::start() else { return };
    round_trips_and_rebuilds_its_cache(&sw);
}

#[test]
fn a_store_in_ceph_rgw_round_trips_and_rebuilds_its_cache() {
    let Some(ceph) = Ceph::start() else { return };
    round_trips_and_rebuilds_its_cache(&ceph);
}

fn round_trips_and_rebuilds_its_cache(sw: &dyn S3Server) {
    let env = Env::in_bucket(sw, "hoard", "site-a");
    env.ok(&["init", "--chunk-size", "64K"]);
    assert!(objects(sw, &env, "").contains(&"config.json".to_string()));
    let err = env.fails(&["init", "--chunk-size", "64K"]);
    assert!(
        err.contains("already holds objects") || err.contains("not empty"),
        "{err}"
    );

    let img = env.path("disk.raw");
    mixed_image(&img, 16 << 20, 3);
    let first = env.backup("vm1", &[format!("d.img:{}", img.display())]);
    assert!(first["new_chunks"].as_u64().unwrap() > 0);
    let src = env.path("tree");
    tree(&src);
    let ct = env.backup_tree("100", &src);
    // An incremental: a few blocks changed.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&common::noise(77, 200_000), 5 << 20).unwrap();
    }
    let second = env.backup("vm1", &[format!("d.img:{}", img.display())]);
    assert!(second["new_chunks"].as_u64().unwrap() <= 5, "{second}");
    let snap = second["snapshot"].as_str().unwrap().to_string();
    env.assert_restores(&snap, "d.img", &img);

    // Nothing of the store is on the local disk but its cache; packs,
    // indexes and manifests are objects.
    let objs = objects(sw, &env, "");
    assert!(objs
        .iter()
        .any(|o| o.starts_with("packs/") && o.ends_with(".pack")));
    assert!(objs.iter().any(|o| o.ends_with("/manifest.json")));
    assert!(objs.iter().any(|o| o.ends_with("d.img.fidx")));
    assert!(common::walk(&cache(&env).join("packs")).is_empty());

    // The cache deleted: snapshots come back from the bucket, the index
    // from the pack trailers, and the next backup deduplicates fully.
    fs::remove_dir_all(cache(&env)).unwrap();
    assert_eq!(env.snapshot_names().len(), 3);
    let again = env.backup("vm1", &[format!("d.img:{}", img.display())]);
    assert_eq!(again["new_chunks"], 0, "{again}");
    let dst = env.path("tree-out");
    env.ok(&["restore", &ct, "root.tree", dst.to_str().unwrap()]);
    assert_eq!(
        fs::read(dst.join("etc/sub/big")).unwrap(),
        common::noise(9, 900_000)
    );
    assert_eq!(fs::read_link(dst.join("etc/link")).unwrap(), Path::new("hosts"));
    // Restore by index file alone.
    let fidx = env.path("d.img.fidx");
    fs::copy(cache(&env).join(format!("snapshots/{snap}/d.img.fidx")), &fidx).unwrap();
    let out = env.path("by-index.raw");
    env.ok(&[
        "restore",
        "--index",
        fidx.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    common::assert_same_file(&img, &out);
    let v = env.json(&["verify", "--json"]);
    assert_eq!(v["bad_chunks"].as_array().unwrap().len(), 0, "{v}");
    env.ok(&["check"]);

    // Protect, then forget everything else and collect: objects go.
    let packs_before = objects(sw, &env, "packs/").len();
    env.ok(&["protect", &ct]);
    fs::remove_dir_all(cache(&env)).unwrap();
    assert!(env.fails(&["forget", &ct]).contains("protected"));
    for s in env.snapshot_names() {
        if s != ct {
            env.ok(&["forget", &s]);
        }
    }
    // Object times are whole seconds on the server, and GC puts them on
    // its own clock conservatively (a pack may look up to a second newer
    // than it is), leaving alone what looks written after its start: the
    // packs to free must be over a second old first.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    env.ok(&["gc"]);
    let gc = env.json(&["gc", "--json"]);
    assert!(gc["bytes_freed"].as_u64().unwrap() > 1 << 20, "{gc}");
    assert!(objects(sw, &env, "packs/").len() < packs_before);
    assert!(objects(sw, &env, "snapshots/")
        .iter()
        .all(|o| o.starts_with(&format!("snapshots/{ct}/"))));
    // What GC kept is whole: the tree restores from a fresh cache.
    fs::remove_dir_all(cache(&env)).unwrap();
    let dst = env.path("tree-out-2");
    env.ok(&["restore", &ct, "root.tree", dst.to_str().unwrap()]);
    assert_eq!(
        fs::read(dst.join("etc/sub/big")).unwrap(),
        common::noise(9, 900_000)
    );
    assert!(objects(sw, &env, "leases/").is_empty(), "leases released");
}

#[test]
fn an_encrypted_store_in_a_bucket_keeps_its_keys_there() {
    let Some(sw) = Seaweed::start() else { return };
    let env = Env::in_bucket(&sw, "hoard", "enc");
    env.init_protected("64K", "encrypt");
    assert!(objects(&sw, &env, "keys/").contains(&"keys/key-1.key".to_string()));
    let img = env.path("disk.raw");
    fs::write(&img, common::noise(5, 3 << 20)).unwrap();
    let snap = env.backup("e", &[format!("d.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // A second passphrase, added through one cache, opens the store
    // through a fresh one.
    fs::write(env.path("second"), "battery staple\n").unwrap();
    let out = env
        .hoard()
        .args(["key", "add"])
        .args(common::FAST_KDF)
        .env("HOARD_NEW_PASSWORD_FILE", env.path("second"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(objects(&sw, &env, "keys/").len(), 2);
    fs::remove_dir_all(cache(&env)).unwrap();
    let restored = env.path("out.raw");
    let out = env
        .hoard()
        .args(["restore", &snap, "d.img", restored.to_str().unwrap()])
        .env("HOARD_PASSWORD_FILE", env.path("second"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::assert_same_file(&img, &restored);
    // No plaintext in the bucket.
    let needle = &common::noise(5, 3 << 20)[1000..1032];
    let s3 = client(&sw, &env);
    for o in objects(&sw, &env, "packs/") {
        let bytes = s3.get(&o).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{o} holds plaintext"
        );
    }
}

#[test]
fn the_writer_lease_keeps_a_second_cache_out() {
    let Some(sw) = Seaweed::start() else { return };
    let env = Env::in_bucket(&sw, "hoard", "lease");
    env.ok(&["init", "--chunk-size", "64K"]);
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    // One host writes (a process of cache A holds the lease)...
    let holder = hoard_engine::Store::open(&cache(&env)).unwrap();
    holder.begin_writing("backup host/x").unwrap();
    assert_eq!(objects(&sw, &env, "leases/").len(), 1);
    // ...a second cache (another host) may read but not write...
    let other = second_host(&env);
    assert!(other.snapshot_names().is_empty());
    let img = other.path("disk.raw");
    fs::write(&img, common::noise(3, 1 << 20)).unwrap();
    let err = other.fails(&["backup", "--id", "b", &format!("d.img:{}", img.display())]);
    assert!(
        err.contains("another host writes") && err.contains("backup host/x"),
        "{err}"
    );
    assert!(other.fails(&["gc"]).contains("another host writes"));
    // ...while processes of the same cache share it.
    env.backup("a", &[format!("d.img:{}", img.display())]);
    // Released: the second cache writes, and sees the first one's snapshot.
    drop(holder);
    assert!(objects(&sw, &env, "leases/").is_empty());
    other.backup("b", &[format!("d.img:{}", img.display())]);
    assert_eq!(other.snapshot_names().len(), 2);
}

#[test]
fn a_server_that_goes_away_fails_the_backup_cleanly() {
    let Some(mut sw) = Seaweed::start() else { return };
    let env = Env::in_bucket(&sw, "hoard", "gone");
    env.ok(&["init", "--chunk-size", "64K"]);
    let img = env.path("disk.raw");
    fs::write(&img, common::noise(4, 6 << 20)).unwrap();
    env.backup("a", &[format!("d.img:{}", img.display())]);
    sw.kill();
    let out = env.run(&["backup", "--id", "a", &format!("d.img:{}", img.display())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&sw.endpoint), "the error names the server: {err}");
    // Issue 28, item 14: the object's URL once, and the cause the client
    // saw, not only "error sending request".
    let line = err
        .lines()
        .find(|l| l.contains("hoard: error:"))
        .unwrap_or_default();
    assert!(
        line.matches(sw.endpoint.as_str()).count() <= 2,
        "the URL repeated: {line}"
    );
    assert!(
        line.to_lowercase().contains("refused") || line.to_lowercase().contains("timed out"),
        "no cause: {line}"
    );
    sw.resume();
    // Nothing was published; the next backup succeeds and dedups.
    assert_eq!(env.snapshot_names().len(), 1);
    let next = env.backup("a", &[format!("d.img:{}", img.display())]);
    assert_eq!(next["new_chunks"], 0, "{next}");
    assert_eq!(env.snapshot_names().len(), 2);
    // Wrong credentials and a missing bucket are clear errors too.
    let mut wrong = Env {
        store: env.store.clone(),
        vars: env.vars.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    wrong.vars.push(("AWS_SECRET_ACCESS_KEY".into(), "nope".into()));
    wrong
        .vars
        .push(("HOARD_CACHE_DIR".into(), wrong.path("c").display().to_string()));
    let err = wrong.fails(&["snapshots"]);
    assert!(err.contains("config.json"), "{err}");
    let mut missing = Env {
        store: PathBuf::from(format!("{}/no-such-bucket/x", sw.endpoint)),
        vars: env.vars.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    missing
        .vars
        .push(("HOARD_CACHE_DIR".into(), missing.path("c").display().to_string()));
    let err = missing.fails(&["snapshots"]);
    assert!(err.contains("no-such-bucket"), "{err}");

    // No keys in the environment: the shared credentials file's profile.
    let file = env.path("aws-credentials");
    fs::write(
        &file,
        format!("[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n\n[backup]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let from_file = |profile: &str| {
        let c = env.path(&format!("cache-{profile}"));
        env.hoard()
            .args(["snapshots", "--json"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", &file)
            .env("AWS_PROFILE", profile)
            .env("HOARD_CACHE_DIR", c)
            .output()
            .unwrap()
    };
    let out = from_file("backup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2, "{listed}");
    let out = from_file("nope");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("aws-credentials") && err.contains("[nope]"),
        "{err}"
    );
}

#[test]
fn a_volume_server_lost_mid_backup_fails_it_cleanly() {
    if !common::have_failpoints("a_volume_server_lost_mid_backup_fails_it_cleanly") {
        return;
    }
    let Some(mut sw) = Seaweed::start_replicated() else {
        return;
    };
    let mut env = Env::in_bucket(&sw, "hoard", "replicated");
    env.vars.push(("HOARD_S3_TIMEOUT".into(), "2".into()));
    env.ok(&["init", "--chunk-size", "64K"]);
    let img = env.path("disk.raw");
    fs::write(&img, common::noise(6, 4 << 20)).unwrap();
    let spec = format!("d.img:{}", img.display());
    env.backup("a", std::slice::from_ref(&spec));
    // The next backup holds the lease and has begun when a volume server
    // dies: every new object needs both replicas, so an upload (its pack,
    // or its index file) times out and the backup fails.
    let args = ["backup", "--id", "b", "--json", &spec].map(String::from);
    let running = env.spawn_paused(&args, "backup-session-begun:200");
    sw.kill_one(2);
    let out = running.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}/hoard/replicated/", sw.endpoint)),
        "names the object: {err}"
    );
    // Reads still work on the surviving replica, and nothing was published.
    assert_eq!(env.snapshot_names().len(), 1);
    // The server back: the next backup succeeds and restores.
    sw.resume();
    let done = env.backup("b", std::slice::from_ref(&spec));
    env.assert_restores(done["snapshot"].as_str().unwrap(), "d.img", &img);
    assert_eq!(env.snapshot_names().len(), 2);
}

#[test]
fn gc_beside_a_running_backup_frees_space_and_loses_nothing() {
    if !common::have_failpoints("gc_beside_a_running_backup_frees_space_and_loses_nothing") {
        return;
    }
    let Some(sw) = Seaweed::start() else { return };
    let env = Env::in_bucket(&sw, "hoard", "gc");
    env.ok(&["init", "--chunk-size", "64K"]);
    let image = |name: &str, seed: u64| {
        let p = env.path(name);
        fs::write(&p, common::noise(seed, 3 << 20)).unwrap();
        format!("d.img:{}", p.display())
    };
    let (a, x) = (image("a", 1), image("x", 7));
    let old_a = env.backup("a", std::slice::from_ref(&a));
    let old_x = env.backup("x", std::slice::from_ref(&x));
    for s in [&old_a, &old_x] {
        env.ok(&["forget", s["snapshot"].as_str().unwrap()]);
    }
    let packs = || objects(&sw, &env, "packs/").len();
    assert_eq!(packs(), 2);
    // A backup of x claims x's (now unreferenced) chunks, then waits before
    // its manifest while GCs run through the same cache.
    let args = ["backup", "--id", "x", "--json", &x].map(String::from);
    let running = env.spawn_paused(&args, "backup-before-manifest:6000");
    let g1 = env.json(&["gc", "--json"]);
    assert!(g1["chunks_condemned"].as_u64().unwrap() > 0, "{g1}");
    // Past GC's one-second grace, and the second an object's listed time
    // may lie ahead of its write (whole-second Last-Modified on our clock).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g2 = env.json(&["gc", "--json"]);
    assert_eq!(
        g2["chunks_removed"], 0,
        "the backup began before the condemnation: {g2}"
    );
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["new_chunks"], 0, "it claimed the old chunks: {done}");
    // Now a's chunks go, x's are revived, and a's pack object is deleted.
    let g3 = env.json(&["gc", "--json"]);
    assert!(g3["chunks_revived"].as_u64().unwrap() > 0, "{g3}");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g4 = env.json(&["gc", "--json"]);
    let freed = g3["bytes_freed"].as_u64().unwrap() + g4["bytes_freed"].as_u64().unwrap();
    assert!(freed >= 3 << 20, "{g3} {g4}");
    assert_eq!(packs(), 1);
    // Nothing the backup claimed was lost: it verifies and restores
    // through a fresh cache.
    fs::remove_dir_all(cache(&env)).unwrap();
    let v = env.json(&["verify", "--json"]);
    assert_eq!(v["bad_chunks"].as_array().unwrap().len(), 0, "{v}");
    env.assert_restores(done["snapshot"].as_str().unwrap(), "d.img", &env.path("x"));

    // A backup killed once its index file is in the bucket, before its
    // manifest: not a snapshot, and GC removes the file once it is older
    // than every session.
    env.crash_at(&["backup", "--id", "k", &a], "remote-indexes-uploaded");
    let unpublished = || {
        objects(&sw, &env, "snapshots/")
            .iter()
            .filter(|o| o.starts_with("snapshots/host/k/"))
            .count()
    };
    assert_eq!(unpublished(), 1);
    assert_eq!(env.snapshot_names().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g = env.json(&["gc", "--json"]);
    assert!(g["leftovers_removed"].as_u64().unwrap() >= 1, "{g}");
    assert_eq!(unpublished(), 0);
}

/// Starts hoard serving (`export`, `mount`); returns it and its first
/// line of output, which says it is ready.
fn serving(env: &Env, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = env
        .hoard()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

#[test]
fn prune_index_rebuild_export_and_mount_work_on_a_bucket() {
    use std::process::Command;
    let Some(sw) = Seaweed::start() else { return };
    let env = Env::in_bucket(&sw, "hoard", "more");
    env.ok(&["init", "--chunk-size", "64K"]);
    let img = env.path("disk.raw");
    mixed_image(&img, 8 << 20, 5);
    let spec = format!("d.img:{}", img.display());
    for _ in 0..3 {
        env.backup("vm1", std::slice::from_ref(&spec));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let src = env.path("tree");
    tree(&src);
    let ct = env.backup_tree("100", &src);

    // Prune: the bucket loses the pruned snapshots, as a fresh cache sees.
    env.ok(&["prune", "--kind", "host", "--id", "vm1", "--keep-last", "1"]);
    fs::remove_dir_all(cache(&env)).unwrap();
    let names = env.snapshot_names();
    assert_eq!(names.len(), 2, "{names:?}");
    let kept = names.iter().find(|n| n.starts_with("host/vm1/")).unwrap().clone();
    let dirs: std::collections::BTreeSet<String> = objects(&sw, &env, "snapshots/")
        .iter()
        .filter_map(|o| o.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");

    // Index rebuild from the pack objects alone.
    env.ok(&["index", "rebuild"]);
    env.assert_restores(&kept, "d.img", &img);

    // Export over NBD, read by nbdcopy.
    if Command::new("nbdcopy").arg("--version").output().is_ok() {
        let sock = env.path("e.sock");
        let (mut export, line) = serving(
            &env,
            &[
                "export",
                &kept,
                "d.img",
                "--socket",
                sock.to_str().unwrap(),
                "--json",
            ],
        );
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line");
        let copied = env.path("copied.raw");
        let ok = Command::new("nbdcopy")
            .args([ready["uri"].as_str().unwrap(), copied.to_str().unwrap()])
            .status()
            .unwrap();
        let _ = export.kill();
        let _ = export.wait();
        assert!(ok.success());
        common::assert_same_file(&img, &copied);
    } else {
        assert!(std::env::var("CI").is_err(), "nbdcopy missing under CI");
        eprintln!("SKIPPED the export: nbdcopy missing");
    }

    // Mount the tree through FUSE.
    match hoard_engine::fuse::usable() {
        Ok(()) => {
            let mnt = env.path("mnt");
            fs::create_dir(&mnt).unwrap();
            let (mut mount, line) = serving(
                &env,
                &["mount", &ct, "root.tree", mnt.to_str().unwrap(), "--json"],
            );
            assert!(line.contains("mounted"), "{line}");
            let big = fs::read(mnt.join("etc/sub/big"));
            assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
            assert!(mount.wait().unwrap().success());
            assert_eq!(big.unwrap(), common::noise(9, 900_000));
        }
        Err(why) => {
            assert!(std::env::var("CI").is_err(), "FUSE unusable under CI: {why}");
            eprintln!("SKIPPED the mount: {why}");
        }
    }
}

/// A second host's view of `env`'s bucket: its own cache directory.
fn second_host(env: &Env) -> Env {
    let mut other = Env {
        store: env.store.clone(),
        vars: env.vars.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    let cache_b = other.path("cache");
    other.vars.retain(|(k, _)| k != "HOARD_CACHE_DIR");
    other
        .vars
        .push(("HOARD_CACHE_DIR".into(), cache_b.display().to_string()));
    other
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Issue 28, item 9: a backup stopped (SIGSTOP) past its writer lease
/// while another host, holding the lease legitimately, forgets the old
/// snapshot and collects its pack. Resumed, the backup must not revive its
/// lease and publish a snapshot of chunks that are gone.
#[test]
fn a_writer_stalled_past_its_lease_publishes_nothing() {
    if !common::have_failpoints("a_writer_stalled_past_its_lease_publishes_nothing") {
        return;
    }
    let Some(sw) = Seaweed::start() else { return };
    let mut env = Env::in_bucket(&sw, "hoard", "stalled");
    env.ok(&["init", "--chunk-size", "64K"]);
    let img = env.path("disk.raw");
    fs::write(&img, common::noise(5, 2 << 20)).unwrap();
    let spec = format!("d.img:{}", img.display());
    let old = env.backup("a", std::slice::from_ref(&spec));
    // From now on leases last 10 s instead of 10 minutes.
    env.vars.push(("HOARD_TEST_LEASE_SECS".into(), "10".into()));
    let args = ["backup", "--id", "a", "--json", &spec].map(String::from);
    let stalled = env.spawn_paused(&args, "backup-before-manifest:1000");
    signal(&stalled, "-STOP");
    // Past the lease's lifetime: host B takes over legitimately.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let b = second_host(&env);
    b.ok(&["forget", old["snapshot"].as_str().unwrap()]);
    b.json(&["gc", "--json"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g = b.json(&["gc", "--json"]);
    assert!(g["bytes_freed"].as_u64().unwrap() >= 2 << 20, "{g}");
    assert!(objects(&sw, &env, "packs/").is_empty());
    // B is done and has released its lease; A resumes.
    signal(&stalled, "-CONT");
    let out = stalled.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stalled backup published: {err}");
    assert!(err.contains("lease") && err.contains("lapsed"), "{err}");
    assert!(
        objects(&sw, &env, "snapshots/")
            .iter()
            .all(|o| !o.ends_with("manifest.json")),
        "no snapshot published"
    );
    // The store is sound for both hosts: a new backup stores the data again.
    let again = b.backup("a", std::slice::from_ref(&spec));
    b.assert_restores(again["snapshot"].as_str().unwrap(), "d.img", &img);
    let v = env.json(&["verify", "--json"]);
    assert_eq!(v["bad_chunks"].as_array().unwrap().len(), 0, "{v}");
}

/// A loopback HTTP proxy in front of `upstream` (host:port) that passes
/// every request on, one per connection, except that the first PUT whose
/// path ends with `victim` is stored upstream and then answered `503` (as a
/// load balancer that lost the answer would). Returns its address.
fn lying_proxy(upstream: String, victim: &'static str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let lied = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (upstream, lied) = (upstream.clone(), lied.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut head = Vec::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("connection:") {
                        continue;
                    }
                    if line == "\r\n" {
                        head.extend_from_slice(b"Connection: close\r\n\r\n");
                        break;
                    }
                    head.extend_from_slice(line.as_bytes());
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let first = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                up.write_all(&head).unwrap();
                up.write_all(&body).unwrap();
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let path = first.split(' ').nth(1).unwrap_or("");
                let mut client = client;
                if first.starts_with("PUT ")
                    && path.split('?').next().unwrap_or("").ends_with(victim)
                    && !lied.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                } else {
                    let _ = client.write_all(&answer);
                }
            });
        }
    });
    addr
}

/// Issue 28, item 11: a manifest (or a pack) stored but answered with a
/// 503: the retry finds it there, and hoard reads it back and reports the
/// snapshot it published instead of failing.
#[test]
fn a_write_stored_but_answered_503_is_read_back() {
    let Some(sw) = Seaweed::start() else { return };
    for victim in ["manifest.json", ".pack"] {
        let env = Env::in_bucket(&sw, "hoard", &format!("lying-{}", victim.trim_start_matches('.')));
        env.ok(&["init", "--chunk-size", "64K"]);
        let endpoint = sw.endpoint().trim_start_matches("http://").to_string();
        let proxy = lying_proxy(endpoint.clone(), victim);
        // A second host's view (a cache of its own), through the proxy.
        let mut through = second_host(&env);
        through.store = std::path::PathBuf::from(env.store.to_str().unwrap().replace(&endpoint, &proxy));
        let img = env.path("disk.raw");
        fs::write(&img, common::noise(8, 1 << 20)).unwrap();
        let out = through.run(&[
            "backup",
            "--id",
            "a",
            "--json",
            &format!("d.img:{}", img.display()),
        ]);
        assert!(
            out.status.success(),
            "{victim}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        env.assert_restores(done["snapshot"].as_str().unwrap(), "d.img", &img);
    }
}
