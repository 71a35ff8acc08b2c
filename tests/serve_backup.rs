//! Backups through `hoard serve` (issue 31): real server and client
//! processes on loopback. Every snapshot restores bit-identical; a backup
//! token appends and can do nothing else; the server checks every chunk
//! and index it is sent; a cut connection is retried and a dead client
//! leaves no snapshot; an unchanged incremental sends almost nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::{client, client_fails, client_ok, make_token, Proxy, Server};
use common::{assert_same_file, mixed_image, noise, walk, Env};
use hoard_engine::server::client::{Client, RemoteRepo};
use hoard_engine::server::wire;
use hoard_engine::{ChunkEncoder, Compression, Digest};
use reqwest::Method;

/// A server on `env`'s store with a backup, a reader and an admin token.
struct Remote {
    server: Server,
    backup: String,
    reader: String,
    admin: String,
}

impl Remote {
    fn start(env: &Env) -> Remote {
        let backup = make_token(env, "node1", "backup");
        let reader = make_token(env, "auditor", "reader");
        let admin = make_token(env, "root", "admin");
        Remote {
            server: Server::start_with(env, &["--idle-timeout", "2"]),
            backup,
            reader,
            admin,
        }
    }

    /// `hoard` as a client with token `secret`, straight to the server.
    fn hoard(&self, env: &Env, secret: &str) -> Command {
        client(env, &self.server.repo(""), &self.server.fingerprint, secret)
    }

    /// Restores image archive `disk.img` of `snap` as the reader and
    /// compares it with `expected`.
    fn assert_restores_image(&self, env: &Env, snap: &str, expected: &Path) {
        let out = env.path(&format!("restored-{}.img", common::next_number()));
        client_ok(
            self.hoard(env, &self.reader)
                .args(["restore", snap, "disk.img", out.to_str().unwrap()]),
        );
        assert_same_file(expected, &out);
    }

    /// Restores tree archive `root.tree` of `snap` as the reader and
    /// compares it with `expected`.
    fn assert_restores_tree(&self, env: &Env, snap: &str, expected: &Path) {
        let out = env.path(&format!("restored-{}", common::next_number()));
        client_ok(
            self.hoard(env, &self.reader)
                .args(["restore", snap, "root.tree", out.to_str().unwrap()]),
        );
        same_trees(expected, &out);
    }

    /// The API as token `secret` speaks it, for requests the CLI never makes.
    fn api(&self, secret: &str) -> Client {
        let repo = RemoteRepo::parse(&self.server.repo("")).unwrap();
        Client::new(repo, Some(&self.server.fingerprint), secret).unwrap()
    }
}

/// Starts one backup per host at once (`node0`, `node1`, ... with the
/// given archives) as token `secret`.
fn start_backups(
    remote: &Remote,
    env: &Env,
    secret: &str,
    hosts: &[Vec<String>],
) -> Vec<std::process::Child> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, archives)| {
            remote
                .hoard(env, secret)
                .args(["backup", "--id", &format!("node{i}")])
                .args(archives)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for backups; their snapshots, each checked to have succeeded.
fn finished(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn write_tree(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/hostname"), format!("host{seed}\n")).unwrap();
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    std::fs::write(dir.join("data.bin"), big).unwrap();
}

fn same_trees(a: &Path, b: &Path) {
    let (mut wa, mut wb) = (walk(a), walk(b));
    wa.sort();
    wb.sort();
    assert_eq!(
        wa.iter().map(|p| p.strip_prefix(a).unwrap()).collect::<Vec<_>>(),
        wb.iter().map(|p| p.strip_prefix(b).unwrap()).collect::<Vec<_>>()
    );
    for (x, y) in wa.iter().zip(&wb) {
        if x.is_file() {
            assert_eq!(
                std::fs::read(x).unwrap(),
                std::fs::read(y).unwrap(),
                "{}",
                x.display()
            );
        }
    }
}

#[test]
fn backups_through_the_server_restore_bit_identical() {
    let env = Env::new("64K");
    let remote = Remote::start(&env);
    let (img, tree) = (env.path("disk.img"), env.path("tree"));
    mixed_image(&img, 8 << 20, 1);
    write_tree(&tree, 1);
    let archives = [
        format!("disk.img:{}", img.display()),
        format!("root.tree:{}", tree.display()),
    ];
    let backup = |what: &str| -> serde_json::Value {
        let out = client_ok(
            remote
                .hoard(&env, &remote.backup)
                .args(["backup", "--id", what, "--json"])
                .args(&archives),
        );
        serde_json::from_str(&out).unwrap()
    };
    let first = backup("h1");
    // Unchanged: the base's index makes every chunk known, none is sent.
    let second = backup("h1");
    let image = &second["archives"][0]["stats"];
    assert_eq!(image["new_chunks"], 0, "{second}");
    assert!(image["reused_chunks"].as_u64().unwrap() > 0);
    std::fs::write(tree.join("etc/hostname"), "renamed\n").unwrap();
    let third = backup("h1");

    // The reader lists and restores; the server's store holds all three.
    let listed = client_ok(remote.hoard(&env, &remote.reader).args(["snapshots", "--json"]));
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed).unwrap()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    let made: Vec<&str> = [&first, &second, &third]
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(names, made);
    assert_eq!(env.snapshot_names(), made);
    for snap in &made {
        remote.assert_restores_image(&env, snap, &img);
    }
    remote.assert_restores_tree(&env, made[2], &tree);
    let ls = client_ok(
        remote
            .hoard(&env, &remote.reader)
            .args(["ls", made[2], "root.tree"]),
    );
    assert!(ls.contains("etc/hostname"), "{ls}");

    // Verify reads every chunk back through the server and checks it
    // here; a reader's result is not recorded, an admin's is.
    let out = remote
        .hoard(&env, &remote.reader)
        .args(["verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not recorded"));
    client_ok(remote.hoard(&env, &remote.admin).args(["verify"]));
    let shown = client_ok(
        remote
            .hoard(&env, &remote.reader)
            .args(["show", made[0], "--json"]),
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["verify"]["state"], "ok", "{shown}");
    // The server's own maintenance runs on its store beside it.
    env.ok(&["gc"]);
    client_ok(
        remote
            .hoard(&env, &remote.admin)
            .args(["prune", "host/h1", "--keep-last", "1"]),
    );
    assert_eq!(env.snapshot_names(), [made[2]]);
    remote.assert_restores_image(&env, made[2], &img);
}

#[test]
fn encrypted_backups_through_the_server_leave_it_nothing_to_read() {
    let env = Env::protected("64K", "encrypt");
    let remote = Remote::start(&env);
    let marker = b"PLAINTEXT MARKER OF ISSUE 31 ";
    let (img, tree) = (env.path("disk.img"), env.path("tree"));
    std::fs::write(&img, marker.repeat(100_000)).unwrap();
    write_tree(&tree, 7);
    std::fs::write(tree.join("secret.txt"), marker.repeat(1000)).unwrap();
    let archives = [
        format!("disk.img:{}", img.display()),
        format!("root.tree:{}", tree.display()),
    ];
    // The client holds the passphrase (HOARD_PASSWORD_FILE); the server not.
    let out = client_ok(
        remote
            .hoard(&env, &remote.backup)
            .args(["backup", "--id", "h1"])
            .args(&archives),
    );
    let snap = out.lines().next().unwrap().trim().to_string();
    client_ok(
        remote
            .hoard(&env, &remote.backup)
            .args(["backup", "--id", "h1"])
            .args(&archives),
    );
    for file in walk(&env.store) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker)
                && !bytes.windows(10).any(|w| w == b"secret.txt"),
            "plaintext in {}",
            file.display()
        );
    }
    remote.assert_restores_image(&env, &snap, &img);
    remote.assert_restores_tree(&env, &snap, &tree);
    // Without the passphrase a client can neither back up nor read.
    let refused = client_fails(
        remote
            .hoard(&env, &remote.backup)
            .env_remove("HOARD_PASSWORD_FILE")
            .stdin(std::process::Stdio::null())
            .args(["backup", "--id", "h1"])
            .args(&archives),
    );
    assert!(refused.contains("passphrase"), "{refused}");
    // The server's maintenance works without the key: verify by CRC,
    // prune, GC.
    let verified = env.keyless(&["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    client_ok(
        remote
            .hoard(&env, &remote.admin)
            .env_remove("HOARD_PASSWORD_FILE")
            .args(["prune", "host/h1", "--keep-last", "1"]),
    );
    let collected = env.keyless(&["gc"]);
    assert!(
        collected.status.success(),
        "{}",
        String::from_utf8_lossy(&collected.stderr)
    );
    let last = env.snapshot_names().pop().unwrap();
    client_ok(remote.hoard(&env, &remote.reader).args([
        "restore",
        &last,
        "disk.img",
        env.path("last.img").to_str().unwrap(),
    ]));
    assert_same_file(&img, &env.path("last.img"));
}

#[test]
fn a_backup_token_appends_and_can_do_nothing_else() {
    let env = Env::new("64K");
    let remote = Remote::start(&env);
    let img = env.path("disk.img");
    mixed_image(&img, 2 << 20, 2);
    let archive = format!("disk.img:{}", img.display());
    let backup = || {
        let out = client_ok(
            remote
                .hoard(&env, &remote.backup)
                .args(["backup", "--id", "h1", &archive]),
        );
        out.lines().next().unwrap().trim().to_string()
    };
    let older = backup();
    let snap = backup();

    // No forget, prune, protect or unprotect; a reader never writes.
    let b = |args: &[&str]| client_fails(remote.hoard(&env, &remote.backup).args(args));
    assert!(b(&["forget", &older]).contains("needs role admin"));
    assert!(b(&["prune", "host/h1", "--keep-last", "1"]).contains("needs role admin"));
    assert!(b(&["protect", &snap]).contains("needs role admin"));
    client_ok(remote.hoard(&env, &remote.admin).args(["protect", &snap]));
    assert!(b(&["unprotect", &snap]).contains("needs role admin"));
    let refused = client_fails(
        remote
            .hoard(&env, &remote.reader)
            .args(["backup", "--id", "h9", &archive]),
    );
    assert!(refused.contains("needs role backup or admin"), "{refused}");
    let refused = client_fails(remote.hoard(&env, &remote.reader).args(["forget", &older]));
    assert!(refused.contains("needs role admin"), "{refused}");

    let api = remote.api(&remote.backup);
    let begin = |id: &str, time: &str| {
        let body = serde_json::json!({ "kind": "host", "id": id, "time": time });
        api.json(Method::POST, "backup", body.to_string().into_bytes())
    };
    let now = |ahead: u64| {
        humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(ahead),
        )
        .to_string()
    };
    // Dated in the future, or not newer than the group's newest: refused.
    let e = begin("h1", &now(3600)).unwrap_err().to_string();
    assert!(e.contains("in the future"), "{e}");
    let time = snap.rsplit('/').next().unwrap();
    let e = begin("h1", time).unwrap_err().to_string();
    assert!(e.contains("not newer than the group's newest"), "{e}");

    // A backup token may read an index (the base of a backup of that
    // group), never the chunks it names.
    let index = format!("snapshot/{snap}/disk.img.fidx");
    api.call(Method::GET, &index, Vec::new()).unwrap();

    // A session of another group cannot claim h1's chunks: its index
    // names chunks the session neither uploaded nor read in a base.
    let session = begin("h2", &now(0)).unwrap();
    let sid = session["session"].as_u64().unwrap();
    let h2 = session["snapshot"].as_str().unwrap().to_string();
    let dir = env.snapshot_dir(&snap);
    api.call(
        Method::PUT,
        &format!("backup/{sid}/file/disk.img.fidx"),
        std::fs::read(dir.join("disk.img.fidx")).unwrap(),
    )
    .unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest["id"] = "h2".into();
    manifest["time"] = h2.rsplit('/').next().unwrap().into();
    let e = api
        .call(
            Method::POST,
            &format!("backup/{sid}/publish"),
            manifest.to_string().into_bytes(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither uploaded nor read in a base"), "{e}");
    // Nor can it read them.
    let some_chunk = std::fs::read(dir.join("disk.img.fidx")).unwrap();
    let digest = &some_chunk[some_chunk.len() - 32..];
    let answer = api.call(Method::POST, "chunks", digest.to_vec()).unwrap();
    let answers = wire::parse_answers(&answer, 1).unwrap();
    assert!(
        answers[0]
            .as_ref()
            .unwrap_err()
            .contains("not a chunk of an index"),
        "{answers:?}"
    );

    // A chunk whose bytes are not its digest's is refused.
    let mut encoder = ChunkEncoder::new(Compression::None).unwrap();
    let record = encoder.encode(b"the real bytes", Digest::of(b"other bytes"));
    let mut batch = Vec::new();
    wire::push_upload(&mut batch, &Digest::of(b"other bytes"), 14, &record);
    let e = api
        .call(Method::POST, &format!("backup/{sid}/chunks"), batch)
        .unwrap_err()
        .to_string();
    assert!(e.contains("400"), "{e}");
    drop(api);
    // Nothing of h2 is visible, then or after the client is forgotten.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(env.snapshot_names(), [older.as_str(), snap.as_str()]);
    assert!(!env
        .store
        .join("snapshots/host/h2")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
    // Every refusal is in the server's log.
    let log = std::fs::read_to_string(env.path("serve.log")).unwrap();
    assert!(log.matches("\"refused\"").count() >= 8, "{log}");
}

#[test]
fn a_cut_connection_is_retried_and_a_dead_client_leaves_nothing() {
    let env = Env::new("64K");
    let remote = Remote::start(&env);
    let img = env.path("disk.img");
    // Noise: what goes on the wire is what changed, not what compresses.
    std::fs::write(&img, noise(3, 24 << 20)).unwrap();
    let archive = format!("disk.img:{}", img.display());
    let via = |proxy: &Proxy| client(&env, &proxy.repo(), &remote.server.fingerprint, &remote.backup);

    // The first connection is cut after 4 MiB: the client reconnects,
    // its session lives on, and the backup completes.
    let proxy = Proxy::start(&remote.server.addr);
    proxy
        .cut_after
        .store(4 << 20, std::sync::atomic::Ordering::Relaxed);
    let out = client_ok(via(&proxy).args(["backup", "--id", "h1", &archive]));
    let snap = out.lines().next().unwrap().trim().to_string();
    remote.assert_restores_image(&env, &snap, &img);

    // A client that stalls and is killed mid-upload: once the server
    // forgets it, no snapshot and no unpublished directory is left.
    std::fs::write(&img, noise(4, 24 << 20)).unwrap();
    let stalled = Proxy::start(&remote.server.addr);
    stalled
        .stall_after
        .store(2 << 20, std::sync::atomic::Ordering::Relaxed);
    let mut child = via(&stalled)
        .args(["backup", "--id", "h1", &archive])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while stalled.up.load(std::sync::atomic::Ordering::Relaxed) < 2 << 20 {
        assert!(started.elapsed().as_secs() < 60, "the client never sent 2 MiB");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(env.snapshot_names(), [snap.as_str()]);
    let group = env.store.join("snapshots/host/h1");
    assert_eq!(
        std::fs::read_dir(&group).unwrap().count(),
        1,
        "an unpublished directory was left"
    );

    // The next backup works; unchanged, it sends under 1% of the image.
    client_ok(
        remote
            .hoard(&env, &remote.backup)
            .args(["backup", "--id", "h1", &archive]),
    );
    let counted = Proxy::start(&remote.server.addr);
    client_ok(via(&counted).args(["backup", "--id", "h1", &archive]));
    let size = 24u64 << 20;
    assert!(
        counted.bytes() < size / 100,
        "{} bytes on the wire for an unchanged {size}",
        counted.bytes()
    );
    // After changing 5% of it: about 5% plus the index.
    let mut data = std::fs::read(&img).unwrap();
    for block in (0..data.len()).step_by(20 * 65536) {
        data[block] ^= 0xff;
    }
    std::fs::write(&img, &data).unwrap();
    let changed = Proxy::start(&remote.server.addr);
    client_ok(via(&changed).args(["backup", "--id", "h1", &archive]));
    let ratio = changed.bytes() as f64 / size as f64;
    assert!(
        (0.03..0.08).contains(&ratio),
        "{ratio} of the image on the wire after a 5% change"
    );
}

#[test]
fn eight_clients_at_once_while_the_server_collects_and_prunes() {
    let env = Env::new("64K");
    let remote = Remote::start(&env);
    let hosts: Vec<(std::path::PathBuf, std::path::PathBuf)> = (0..8)
        .map(|i| {
            let (img, tree) = (env.path(&format!("disk{i}.img")), env.path(&format!("tree{i}")));
            mixed_image(&img, 3 << 20, 10 + i as u64);
            write_tree(&tree, i as u8);
            (img, tree)
        })
        .collect();
    let archives: Vec<Vec<String>> = hosts
        .iter()
        .map(|(img, tree)| {
            vec![
                format!("disk.img:{}", img.display()),
                format!("root.tree:{}", tree.display()),
            ]
        })
        .collect();
    let children = start_backups(&remote, &env, &remote.backup, &archives);
    // Meanwhile: GC on the server's store, and prune through the server.
    for _ in 0..3 {
        env.ok(&["gc"]);
        client_ok(
            remote
                .hoard(&env, &remote.admin)
                .args(["prune", "--keep-last", "5"]),
        );
    }
    let snaps = finished(children);
    env.ok(&["gc"]);
    for (snap, (img, tree)) in snaps.iter().zip(&hosts) {
        remote.assert_restores_image(&env, snap, img);
        remote.assert_restores_tree(&env, snap, tree);
    }
}

/// The server's store in a bucket of a real SeaweedFS: the server is its
/// one writer, so clients back up at once (a store in a bucket used
/// directly admits one writing host at a time).
#[test]
fn clients_at_once_into_a_store_in_a_bucket() {
    let Some(sw) = common::seaweed::Seaweed::start() else {
        return;
    };
    let env = Env::in_bucket(&sw, "hoard", "served");
    env.ok(&["init", "--chunk-size", "64K"]);
    let remote = Remote::start(&env);
    let images: Vec<std::path::PathBuf> = (0..4)
        .map(|i| {
            let img = env.path(&format!("disk{i}.img"));
            mixed_image(&img, 3 << 20, 20 + i);
            img
        })
        .collect();
    let archives: Vec<Vec<String>> = images
        .iter()
        .map(|img| vec![format!("disk.img:{}", img.display())])
        .collect();
    let children = start_backups(&remote, &env, &remote.backup, &archives);
    client_ok(
        remote
            .hoard(&env, &remote.admin)
            .args(["prune", "--keep-last", "3"]),
    );
    let snaps = finished(children);
    for (snap, img) in snaps.iter().zip(&images) {
        remote.assert_restores_image(&env, snap, img);
    }
    // In the bucket itself, not only in the server's cache.
    drop(remote);
    let listed = env.ok(&["snapshots"]);
    for snap in &snaps {
        assert!(listed.contains(snap.as_str()), "{listed}");
    }
}

/// SIGTERM while a client is backing up: running requests finish, the
/// server stops within moments with status 0, and the backup it could not
/// finish is aborted (no snapshot, no directory); the client retries and
/// then says what it gave up on.
#[test]
fn a_stopping_server_publishes_nothing_half_done() {
    let env = Env::new("64K");
    let mut remote = Remote::start(&env);
    let img = env.path("disk.img");
    std::fs::write(&img, noise(5, 256 << 20)).unwrap();
    let archive = format!("disk.img:{}", img.display());
    let client = remote
        .hoard(&env, &remote.backup)
        .args(["backup", "--id", "h1", &archive])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = env.path("serve.log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("backup started")
    {
        assert!(started.elapsed().as_secs() < 30, "the backup never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(remote.server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = std::time::Instant::now();
    let status = remote.server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed().as_secs() < 20,
        "took {:?} to stop",
        stopping.elapsed()
    );
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("gave up after"), "{said}");
    assert!(env.snapshot_names().is_empty());
    let group = env.store.join("snapshots/host/h1");
    assert!(
        !group.exists() || std::fs::read_dir(&group).unwrap().count() == 0,
        "a half-written snapshot was left"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("backup aborted"), "{log}");
}
