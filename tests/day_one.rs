//! Issue 29: day one for a Proxmox Backup Server or restic user. Each test
//! is a reproduction of something that hurt, run against the binary.

mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::process::Stdio;

use common::{noise, Env};

/// A 3 MiB image with a run of zeros in the middle, backed up as `d.img`
/// of group host/a; returns its bytes.
fn image_backed_up(env: &Env) -> Vec<u8> {
    let mut data = noise(7, 3 << 20);
    data[1 << 20..2 << 20].fill(0);
    let img = env.path("disk.raw");
    fs::write(&img, &data).unwrap();
    env.backup("a", &[format!("d.img:{}", img.display())]);
    data
}

/// Item 1: a restore writes a block device in place, replaces or creates a
/// regular file, streams to standard output with `-`, and refuses anything
/// else, --force or not, leaving it as it was. Before, a character device
/// (as root, /dev/null itself), a FIFO and the /dev/stdout symlink were
/// each replaced by a 0600 regular file.
#[test]
fn a_restore_never_replaces_what_is_not_a_file() {
    let env = Env::new("64K");
    let data = image_backed_up(&env);
    let restore = |target: &std::path::Path, force: bool| {
        let mut args = vec!["restore", "host/a", "d.img", target.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        env.run(&args)
    };
    let refused = |target: &std::path::Path, what: &str| {
        for force in [false, true] {
            let out = restore(target, force);
            let e = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{}: {e}", target.display());
            assert!(
                e.contains(&format!("{} is {what}", target.display())) && e.contains("nothing was written"),
                "{e}"
            );
        }
    };

    // A copy of /dev/null (as root: mknod), a FIFO, and a symlink to the
    // device, as /dev/stdout is to a terminal or pipe.
    let null = env.path("null");
    let made = std::process::Command::new("mknod")
        .args([null.to_str().unwrap(), "c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod needs root: run the tests as root");
    let fifo = env.path("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let link = env.path("stdout");
    std::os::unix::fs::symlink(&null, &link).unwrap();
    refused(&null, "a character device");
    refused(&fifo, "a FIFO");
    refused(&link, "a symlink to a character device");
    assert!(fs::metadata(&null).unwrap().file_type().is_char_device());
    assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    // A symlink to a regular file: renaming over it would replace the link.
    let file = env.path("file.img");
    fs::write(&file, b"old").unwrap();
    let file_link = env.path("file-link.img");
    std::os::unix::fs::symlink(&file, &file_link).unwrap();
    refused(&file_link, "a symlink to a regular file");
    assert_eq!(fs::read(&file).unwrap(), b"old");

    // A directory: said the first time, not "use --force" then "Is a directory".
    let dir = env.path("dir");
    fs::create_dir(&dir).unwrap();
    for force in [false, true] {
        let out = restore(&dir, force);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(e.contains("is a directory") && e.contains("NAME.img"), "{e}");
    }

    // A directory that does not exist is named.
    let missing = env.path("no/such/dir/x.img");
    let e = String::from_utf8_lossy(&restore(&missing, false).stderr).into_owned();
    assert!(
        e.contains(&format!(
            "{}: no such directory",
            env.path("no/such/dir").display()
        )),
        "{e}"
    );

    // A regular file: created, then replaced only with --force.
    let out = restore(&file, false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use --force"));
    assert!(restore(&file, true).status.success());
    assert_eq!(fs::read(&file).unwrap(), data);

    // `-`: every byte in order on stdout, the summary on stderr.
    let out = env
        .hoard()
        .args(["restore", "host/a", "d.img", "-", "--threads", "3"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data, "the stream differs from the image");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to standard output"));
    assert!(!env.path("-").exists() && !std::path::Path::new("-").exists());
}

/// Item 4: Ctrl-C in the middle of a backup says so, removes the partial
/// pack and the unpublished snapshot it was writing, and ends by SIGINT
/// (a shell shows 130). Before, it died at once, silently, leaving both
/// for the next gc.
#[test]
fn ctrl_c_mid_backup_says_so_and_leaves_nothing() {
    use std::os::unix::process::ExitStatusExt;
    if !common::have_failpoints("ctrl_c_mid_backup_says_so_and_leaves_nothing") {
        return;
    }
    let env = Env::new("64K");
    let img = env.path("disk.raw");
    fs::write(&img, noise(3, 8 << 20)).unwrap();
    let spec = format!("d.img:{}", img.display());
    let partial = |env: &Env| {
        common::walk(&env.store)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .count()
    };
    let args = ["backup".to_string(), "--id".into(), "a".into(), spec.clone()];
    let child = env.spawn_paused(&args, "backup-image-half-read:1500");
    assert!(partial(&env) > 0, "the run is writing a pack when it is stopped");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{:?}", out.status);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("interrupted by SIGINT: nothing was published, and what this run wrote was removed"),
        "{e}"
    );
    assert_eq!(partial(&env), 0, "a partial pack was left");
    assert!(env.snapshot_names().is_empty());
    let host = env.store.join("snapshots/host");
    assert!(
        !host.exists() || common::walk(&host).is_empty(),
        "an unpublished snapshot directory was left"
    );
    // The next run has nothing to step around.
    env.backup("a", std::slice::from_ref(&spec));
    env.ok(&["verify"]);
}

/// Two real users of one group and the accounts' cleanup.
struct Members {
    group: String,
    users: [String; 2],
    gid: u32,
    uids: [u32; 2],
}

impl Members {
    /// Creates group `hd1-PID` and two members (root only).
    fn create() -> Members {
        let tag = std::process::id();
        let group = format!("hd1g{tag}");
        let users = [format!("hd1a{tag}"), format!("hd1b{tag}")];
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["groupadd", &group]);
        for u in &users {
            run(&["useradd", "-M", "-N", "-g", &group, "-s", "/usr/sbin/nologin", u]);
        }
        let id = |flag: &str, name: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        Members {
            gid: id("-g", &users[0]),
            uids: [id("-u", &users[0]), id("-u", &users[1])],
            group,
            users,
        }
    }

    /// An env whose directory the members may pass through, the members,
    /// and an empty directory `shared` in it for the store (root only).
    fn beside_a_store() -> (Env, Members, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test makes users: run the tests as root"
        );
        let env = Env::new("64K");
        let m = Members::create();
        fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let shared = env.path("shared");
        fs::create_dir(&shared).unwrap();
        (env, m, shared)
    }

    /// `hoard ARGS` as member `i` (primary group: the shared one).
    fn hoard(&self, env: &Env, i: usize, args: &[&str]) -> std::process::Output {
        use std::os::unix::process::CommandExt;
        let state = env.path(&format!("state-{i}"));
        fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(self.uids[i]), Some(self.gid)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOARD_STORE", env.path("shared/store"))
            .env("HOARD_STATE_DIR", &state)
            .args(args)
            .uid(self.uids[i])
            .gid(self.gid)
            .output()
            .unwrap()
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = std::process::Command::new("userdel").arg(u).output();
        }
        let _ = std::process::Command::new("groupdel").arg(&self.group).output();
    }
}

/// Item 2: a group store works for every member, whoever made which file.
/// Before, RocksDB's files came out 0640 and its directory 0750 (it uses
/// 0644 and 0755 whatever the umask), so the second member's backup of new
/// data and their gc failed on `index/LOCK: Permission denied`.
#[test]
fn two_members_of_a_group_store_back_up_restore_and_collect_in_turn() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (env, m, shared) = Members::beside_a_store();
    // A directory both may reach and write; images both may read.
    std::os::unix::fs::chown(&shared, None, Some(m.gid)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2770)).unwrap();
    let image = |name: &str, seed: u64| {
        let p = env.path(name);
        fs::write(&p, noise(seed, 2 << 20)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p.display().to_string()
    };
    let (one, two) = (image("one.raw", 1), image("two.raw", 2));
    let ok = |i: usize, args: &[&str]| {
        let out = m.hoard(&env, i, args);
        assert!(
            out.status.success(),
            "member {i}: hoard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(0, &["init", "--group", &m.group]);
    ok(0, &["backup", "--id", "one", &format!("d.img:{one}")]);
    // A store made by an older hoard: its LOCK is a's and 0640. b is told
    // whose it is and what shares it; a's next index write does.
    let lock = env.path("shared/store/index/LOCK");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o640)).unwrap();
    let e = String::from_utf8_lossy(
        &m.hoard(&env, 1, &["backup", "--id", "two", &format!("d.img:{two}")])
            .stderr,
    )
    .into_owned();
    assert!(
        e.contains(&format!(
            "belongs to {} and is not writable by the store's group",
            m.users[0]
        )),
        "{e}"
    );
    ok(
        0,
        &["backup", "--id", "old", &format!("d.img:{}", image("old.raw", 3))],
    );
    // Member b: new data (an index write), a restore of a's, verify, gc.
    ok(1, &["backup", "--id", "two", &format!("d.img:{two}")]);
    let out = env.path("shared/restored-by-b.img");
    ok(1, &["restore", "host/one", "d.img", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&one).unwrap());
    ok(1, &["verify"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(1, &["snapshots", "host/one", "--json"])).unwrap();
    ok(
        1,
        &["forget", listed["snapshots"][0]["snapshot"].as_str().unwrap()],
    );
    ok(1, &["gc"]);
    ok(0, &["gc"]);
    ok(0, &["backup", "--id", "one", &format!("d.img:{one}")]);
    ok(
        0,
        &[
            "restore",
            "host/two",
            "d.img",
            env.path("shared/restored-by-a.img").to_str().unwrap(),
        ],
    );
    ok(1, &["index", "rebuild"]);
    ok(0, &["backup", "--id", "three", &format!("d.img:{two}")]);
    // Every file of the store is the group's to read and write, every
    // directory the group's to enter and fill.
    for p in common::walk(&env.path("shared/store")) {
        let meta = fs::symlink_metadata(&p).unwrap();
        assert_eq!(meta.gid(), m.gid, "{} is not the group's", p.display());
        assert_eq!(
            meta.mode() & 0o060,
            0o060,
            "{} is {:o}",
            p.display(),
            meta.mode() & 0o7777
        );
    }
}

/// Item 10: `init --encrypt` takes the new store's passphrase from
/// HOARD_PASSWORD_FILE or HOARD_PASSWORD_COMMAND, as restic and borg do;
/// before, it insisted on HOARD_NEW_PASSWORD_FILE and its error named the
/// variable the user had already set.
#[test]
fn init_takes_the_passphrase_from_where_restic_and_borg_do() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    fs::write(&pass, "pw\n").unwrap();
    let hoard = |store: &str, vars: &[(&str, String)], args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
            .env("HOARD_STORE", dir.path().join(store))
            .env("HOARD_STATE_DIR", dir.path().join("state"))
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(args)
            .args(
                ["--kdf-memory-kib", "8192", "--kdf-iterations", "1"]
                    .iter()
                    .filter(|_| args[0] == "init"),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let file = [("HOARD_PASSWORD_FILE", pass.display().to_string())];
    let command = [("HOARD_PASSWORD_COMMAND", format!("cat {}", pass.display()))];
    for (store, vars) in [("a", &file[..]), ("b", &command[..])] {
        let out = hoard(store, vars, &["init", "--encrypt"]);
        assert!(
            out.status.success(),
            "{store}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = hoard(store, &file, &["snapshots"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let wrong = [("HOARD_PASSWORD", "not it".to_string())];
        assert!(
            !hoard(store, &wrong, &["snapshots"]).status.success(),
            "snapshots unlocks"
        );
    }
}

/// Item 5: `hoard snapshots` says what each snapshot is, for a group or all:
/// its size (a tree's is its files' bytes, not its metadata stream's), what
/// it added, protection, verification; `show` counts a tree's chunks in
/// both streams and shows protection. Item 9: `KIND/ID/latest`.
#[test]
fn snapshots_say_what_each_one_is() {
    let env = Env::new("64K");
    image_backed_up(&env);
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    for i in 0..20u64 {
        fs::write(tree.join(format!("d/f{i}")), noise(i + 10, 300 << 10)).unwrap();
    }
    let t = env.json(&[
        "backup",
        "--kind",
        "ct",
        "--id",
        "t",
        "--json",
        &format!("root.tree:{}", tree.display()),
    ]);
    let tsnap = t["snapshot"].as_str().unwrap().to_string();
    env.ok(&["protect", &tsnap]);
    env.ok(&["verify", "ct/t"]);

    assert_eq!(env.snapshot_names().len(), 2);
    let only: serde_json::Value = env.json(&["snapshots", "ct/t", "--json"])["snapshots"].clone();
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    let s = &only[0];
    assert_eq!(s["snapshot"], tsnap.as_str());
    assert_eq!(
        s["size"],
        20 * (300 << 10),
        "a tree's size is its files' bytes: {s}"
    );
    assert!(s["new_bytes"].as_u64().unwrap() >= 20 * (300 << 10), "{s}");
    assert_eq!(s["protected"], true);
    assert_eq!(s["verify"]["state"], "ok");
    let table = env.ok(&["snapshots", "ct/t"]);
    assert!(table.starts_with("SNAPSHOT"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains(&tsnap) && row.contains("5.9 MiB") && row.contains("yes") && row.contains("ok 20"),
        "{row}"
    );
    assert!(!table.contains("host/a"), "{table}");

    // show: both streams' chunks, the files' size, protection; `latest`.
    let show = env.ok(&["show", "ct/t/latest"]);
    let m: serde_json::Value = env.json(&["show", &tsnap, "--json"]);
    let a = &m["archives"][0];
    let chunks = a["chunk_count"].as_u64().unwrap() + a["payload"]["chunk_count"].as_u64().unwrap();
    let new = a["stats"]["new_chunks"].as_u64().unwrap();
    assert!(show.contains(&format!("chunks {chunks} ({new} new")), "{show}");
    assert!(show.contains("5.9 MiB") && show.contains("protected"), "{show}");
    assert_eq!(m["protected"], true);
    assert_eq!(m["snapshot"], tsnap.as_str());
}

/// Item 9: `hoard prune vm/100 --keep-last 1`, PBS style, prunes that group
/// and no other; a snapshot where a group is meant is refused.
#[test]
fn prune_takes_groups_as_pbs_does() {
    let env = Env::new("64K");
    let img = env.path("disk.raw");
    fs::write(&img, noise(5, 256 << 10)).unwrap();
    let spec = format!("d.img:{}", img.display());
    for id in ["a", "a", "b", "b", "c", "c"] {
        env.backup(id, std::slice::from_ref(&spec));
    }
    let out = env.ok(&["prune", "host/a", "host/b", "--keep-last", "1"]);
    assert!(out.contains("removed 2 snapshots, kept 2"), "{out}");
    let left: Vec<String> = env.snapshot_names();
    assert_eq!(
        left.iter().filter(|n| n.starts_with("host/c/")).count(),
        2,
        "{left:?}"
    );
    assert_eq!(left.len(), 4, "{left:?}");
    let e = env.fails(&["prune", &left[0], "--keep-last", "1"]);
    assert!(e.contains("give a group, KIND/ID"), "{e}");
}

/// Items 5 and 7: notes on a snapshot and on a group (sealed in an
/// encrypted store, and only as their own); the host and each archive's
/// source in the manifest; the guest's configuration stored as
/// `config.tree` and given back by restore.
#[test]
fn notes_host_source_and_the_guests_configuration_go_with_the_snapshot() {
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    fs::write(&img, noise(3, 1 << 20)).unwrap();
    let conf = env.path("100.conf");
    fs::write(&conf, "memory: 2048\nscsi0: local:vm-100-disk-0\n").unwrap();
    let xml = env.path("domain.xml");
    fs::write(&xml, "<domain type='kvm'><name>web</name></domain>\n").unwrap();
    let m = env.json(&[
        "backup",
        "--kind",
        "vm",
        "--id",
        "100",
        "--json",
        "--config",
        conf.to_str().unwrap(),
        "--config",
        xml.to_str().unwrap(),
        &format!("d.img:{}", img.display()),
    ]);
    let snap = m["snapshot"].as_str().unwrap().to_string();
    let shown = env.json(&["show", &snap, "--json"]);
    assert_eq!(shown["version"], 6);
    assert!(!shown["host"].as_str().unwrap().is_empty(), "{shown}");
    let archives = shown["archives"].as_array().unwrap();
    assert_eq!(archives[0]["source"], img.to_str().unwrap());
    assert_eq!(archives[1]["name"], "config.tree");
    assert_eq!(
        archives[1]["source"],
        format!("{} {}", conf.display(), xml.display()).as_str()
    );
    let out = env.path("conf-out");
    env.ok(&["restore", &snap, "config.tree", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("100.conf")).unwrap(), fs::read(&conf).unwrap());
    assert_eq!(fs::read(out.join("domain.xml")).unwrap(), fs::read(&xml).unwrap());
    assert_eq!(
        env.ok(&["cat", &snap, "config.tree", "100.conf"]),
        "memory: 2048\nscsi0: local:vm-100-disk-0\n"
    );
    // Encrypted like the rest: no pack holds the text.
    for p in env.packs() {
        let bytes = fs::read(p).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"memory: 2048"));
    }
    // Not a file, or two of one name: refused before anything is stored.
    for bad in [
        vec![env.path("").to_str().unwrap().to_string()],
        vec![conf.to_str().unwrap().into(), conf.to_str().unwrap().into()],
    ] {
        let mut args = vec!["backup", "--kind", "vm", "--id", "100"];
        for b in &bad {
            args.extend(["--config", b]);
        }
        let d = format!("d.img:{}", img.display());
        args.push(&d);
        let e = env.fails(&args);
        assert!(e.contains("configuration file"), "{e}");
    }
    assert_eq!(env.snapshot_names().len(), 1);

    // Notes: on the snapshot and the group, sealed, shown by show and
    // snapshots, removed by --clear.
    env.ok(&["notes", "vm/100", "--set", "web server, rebuilt in 2026"]);
    env.ok(&["notes", "vm/100/latest", "--set", "before the upgrade to 8.3"]);
    assert_eq!(env.ok(&["notes", "vm/100"]), "web server, rebuilt in 2026\n");
    let show = env.ok(&["show", &snap]);
    assert!(
        show.contains("notes:\n  before the upgrade to 8.3") && show.contains("group notes:\n  web server"),
        "{show}"
    );
    let list = env.json(&["snapshots", "--json"]);
    assert_eq!(list["snapshots"][0]["notes"], "before the upgrade to 8.3");
    let dir = env.snapshot_dir(&snap);
    let sealed = fs::read(dir.join("notes")).unwrap();
    assert!(sealed.starts_with(b"hoard sealed notes 1\n"));
    assert!(!String::from_utf8_lossy(&sealed).contains("upgrade"));
    // Without the key: sealed, not shown.
    let out = env.keyless(&["notes", "vm/100/latest", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "sealed");
    assert_eq!(v["notes"], serde_json::Value::Null);
    // Another snapshot's sealed note moved in does not open as this one's.
    let group_notes = fs::read(dir.parent().unwrap().join("notes")).unwrap();
    fs::write(dir.join("notes"), &group_notes).unwrap();
    let v = env.json(&["notes", &snap, "--json"]);
    assert_eq!(v["state"], "damaged", "{v}");
    env.ok(&["notes", &snap, "--clear"]);
    assert!(!dir.join("notes").exists());
    let e = env.fails(&["notes", "vm/101", "--set", "x"]);
    assert!(e.contains("no snapshot vm/101"), "{e}");
    let long = "x".repeat(70_000);
    let e = env.fails(&["notes", "vm/100", "--set", &long]);
    assert!(e.contains("at most 65536"), "{e}");
}

/// Item 6: space per group and snapshot from the indexes: what each
/// references, what only it holds, and the store's factors.
#[test]
fn stats_say_what_each_snapshot_costs_and_what_forgetting_it_frees() {
    let env = Env::new("64K");
    let a = noise(21, 3 << 20);
    let mut b = a.clone();
    b.extend(noise(22, 1 << 20));
    b.extend(vec![0; 1 << 20]);
    fs::write(env.path("a.raw"), &a).unwrap();
    fs::write(env.path("b.raw"), &b).unwrap();
    env.backup("1", &[format!("d.img:{}", env.path("a.raw").display())]);
    env.backup("2", &[format!("d.img:{}", env.path("b.raw").display())]);
    env.backup("2", &[format!("d.img:{}", env.path("b.raw").display())]);

    let v = env.json(&["stats", "--json"]);
    let store = &v["store"];
    assert_eq!(store["logical_bytes"], (3 + 5 + 5) << 20);
    assert_eq!(store["chunk_bytes"], 4 << 20, "zeros are not stored: {store}");
    assert_eq!(store["referenced_bytes"], (3 + 4 + 4) << 20);
    assert_eq!(store["unique_bytes"], 4 << 20);
    assert!(store["stored_bytes"].as_u64().unwrap() >= 4 << 20);
    assert_eq!(store["factors"]["dedup"], 11.0 / 4.0);
    let group = |g: &str| {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["group"] == g)
            .unwrap()
            .clone()
    };
    assert_eq!(
        group("host/1")["unique_bytes"],
        0,
        "all its chunks are in host/2 too"
    );
    assert_eq!(group("host/2")["unique_bytes"], 1 << 20);
    assert_eq!(group("host/2")["snapshot_count"], 2);
    // Each snapshot of host/2 shares everything with the other: forgetting
    // one frees nothing.
    for s in v["snapshots"].as_array().unwrap() {
        assert_eq!(s["unique_bytes"], 0, "{s}");
    }
    // A filter shows fewer rows; the totals still count every snapshot.
    let only = env.json(&["stats", "host/1", "--json"]);
    assert_eq!(only["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(only["groups"].as_array().unwrap().len(), 1);
    assert_eq!(only["store"], v["store"]);
    let table = env.ok(&["stats"]);
    assert!(
        table.contains("host/2") && table.contains("1.0 MiB") && table.contains("deduplication 2.75x"),
        "{table}"
    );

    // Forget host/2's newest: now the older one alone holds 1 MiB.
    let newest = env
        .snapshot_names()
        .into_iter()
        .filter(|n| n.starts_with("host/2/"))
        .max()
        .unwrap();
    env.ok(&["forget", &newest]);
    let v = env.json(&["stats", "host/2", "--json"]);
    assert_eq!(v["snapshots"][0]["unique_bytes"], 1 << 20);
}

/// Item 8: `hoard diff` between two tree snapshots (added, removed,
/// changed with what changed; unchanged files not read when their chunks
/// say so) and two image snapshots (changed ranges per chunk), and
/// `hoard find` (which snapshots hold a path).
#[test]
fn diff_and_find_say_what_changed_and_where_a_file_is() {
    let env = Env::new("64K");
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc/nginx")).unwrap();
    fs::create_dir_all(tree.join("data")).unwrap();
    fs::write(tree.join("etc/nginx/nginx.conf"), "worker_processes 1;\n").unwrap();
    for i in 0..8u64 {
        fs::write(tree.join(format!("data/f{i}")), noise(40 + i, 2 << 20)).unwrap();
    }
    fs::write(tree.join("gone"), "x").unwrap();
    let first = env.backup_tree("1", &tree);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(tree.join("etc/nginx/nginx.conf"), "worker_processes 4;\n").unwrap();
    fs::remove_file(tree.join("gone")).unwrap();
    fs::write(tree.join("etc/added"), "new").unwrap();
    nix::unistd::chown(
        &tree.join("data/f7"),
        Some(nix::unistd::Uid::from_raw(1234)),
        None,
    )
    .unwrap();
    let second = env.backup_tree("1", &tree);

    let v = env.json(&["diff", &first, &second, "--json"]);
    let a = &v["archives"][0];
    let changes: Vec<(String, String, String)> = a["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
                c["what"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect();
    let has = |p: &str, c: &str, w: &str| changes.iter().any(|x| x.0 == p && x.1 == c && x.2.starts_with(w));
    assert!(has("etc/added", "added", ""), "{changes:?}");
    assert!(has("gone", "removed", ""), "{changes:?}");
    assert!(has("etc/nginx/nginx.conf", "changed", "content"), "{changes:?}");
    assert!(has("data/f7", "changed", "owner"), "{changes:?}");
    assert_eq!(a["stats"]["changed"], 2, "{changes:?}");
    // The seven 2 MiB files the second backup reused are not read: their
    // chunks say "same". f7 (re-read for its new ctime, so cut anew) and
    // nginx.conf are.
    assert_eq!(a["stats"]["files_read"], 2, "{a}");
    assert!(
        a["stats"]["bytes_read"].as_u64().unwrap() <= 2 * ((2 << 20) + 100),
        "{a}"
    );
    let text = env.ok(&["diff", &first, &second, "root.tree"]);
    assert!(
        text.contains("+ root.tree/etc/added") && text.contains("- root.tree/gone"),
        "{text}"
    );
    assert!(text.contains("M root.tree/data/f7  (owner)"), "{text}");

    // Images: the changed ranges, chunk-aligned.
    let mut img = noise(50, 1 << 20);
    fs::write(env.path("d.raw"), &img).unwrap();
    env.backup("img", &[format!("d.img:{}", env.path("d.raw").display())]);
    let one = env
        .snapshot_names()
        .into_iter()
        .find(|n| n.starts_with("host/img/"))
        .unwrap();
    img[100_000] ^= 1;
    img[700_000] ^= 1;
    img.extend(noise(51, 10_000));
    fs::write(env.path("d.raw"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.backup("img", &[format!("d.img:{}", env.path("d.raw").display())]);
    let v = env.json(&["diff", &one, "host/img/latest", "d.img", "--json"]);
    let ranges = &v["archives"][0]["ranges"];
    assert_eq!(
        ranges,
        &serde_json::json!([
            {"offset": 65536, "len": 65536},
            {"offset": 655360, "len": 65536},
            {"offset": 1 << 20, "len": 10_000}
        ]),
        "{v}"
    );

    // find: which snapshots hold nginx.conf, and nothing for a name absent.
    let hits = env.json(&["find", "nginx.conf", "--json"])["matches"].clone();
    let snaps: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps, [first.as_str(), second.as_str()]);
    assert_eq!(hits[0]["path"], "etc/nginx/nginx.conf");
    let hits = env.json(&["find", "added", "ct/1", "--json"])["matches"].clone();
    assert_eq!(hits.as_array().unwrap().len(), 1);
    assert_eq!(
        env.json(&["find", "nothing-here", "--json"])["matches"],
        serde_json::json!([])
    );
}

/// Item 9: `--include` that matches nothing warns and exits 3; `init` on
/// the root of a file system suggests a directory of its own; restic
/// habits get a pointer; `--kind` lists its values.
#[test]
fn habits_and_slips_get_a_clear_word() {
    let env = Env::new("64K");
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "h\n").unwrap();
    let snap = env.backup_tree("1", &tree);
    let out = env.run(&[
        "restore",
        &snap,
        "root.tree",
        env.path("out").to_str().unwrap(),
        "--include",
        "/etc",
        "--include",
        "ect",
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{e}");
    assert!(e.contains("--include ect matched nothing"), "{e}");
    assert!(env.path("out/etc/hostname").exists());

    let fsroot = env.path("fsroot");
    fs::create_dir_all(fsroot.join("lost+found")).unwrap();
    let out = common::hoard_at(&fsroot, &["init"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("root of a file system") && e.contains(&format!("--store {}/hoard", fsroot.display())),
        "{e}"
    );

    for (args, hint) in [
        (
            &["forget", "vm/100", "--keep-daily", "7"][..],
            "hoard prune [GROUP ...] --keep-*",
        ),
        (
            &["dump", "ct/1", "root.tree", "etc/hostname"][..],
            "hoard cat SNAPSHOT NAME.tree PATH",
        ),
    ] {
        let out = env.run(args);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(e.contains(hint), "{e}");
    }
    let help = env.ok(&["backup", "--help"]);
    assert!(help.contains("[possible values: vm, ct, host]"), "{help}");
    assert!(help.contains("backup-vm"), "{help}");
}

/// Item 10: errors name what the user gave. A user on a root-owned
/// store hears whose it is and about --group (before: `remote.json:
/// Permission denied`, a file a local store does not have); --store on a
/// file or a plain directory says so, without a chmod warning first.
#[test]
fn errors_name_what_the_user_gave() {
    use std::os::unix::fs::PermissionsExt;
    let (env, m, shared) = Members::beside_a_store();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let store = shared.join("store");
    assert!(common::hoard_at(&store, &["init"]).status.success());
    let out = m.hoard(&env, 0, &["snapshots"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "cannot open store {}: it belongs to root (mode 700) and {} cannot enter it",
            store.display(),
            m.users[0]
        )) && e.contains("--group"),
        "{e}"
    );
    assert!(!e.contains("remote.json"), "{e}");

    let file = env.path("a-file");
    fs::write(&file, "x").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let plain = env.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o777)).unwrap();
    for (at, says) in [
        (&file, "is a file, not a store"),
        (&plain, "is not a hoard store"),
    ] {
        let out = common::hoard_at(at, &["snapshots"]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{e}");
        assert!(e.contains(says) && !e.contains("chmod"), "{e}");
    }
}

/// Runs `hoard ARGS` on a pseudo-terminal (util-linux `script`), with the
/// env's store; returns what the terminal showed.
fn on_a_terminal(env: &Env, args: &[&str], extra_env: &[(&str, &std::path::Path)]) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_hoard"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = std::process::Command::new("script");
    c.args(["-qefc", &line, "/dev/null"])
        .env("HOARD_STORE", &env.store)
        .env("HOARD_STATE_DIR", env.path("state"))
        .env("COLUMNS", "200");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c.output().expect("script (util-linux) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Item 13: progress. A tree (total unknown) shows a spinner with files and
/// bytes so far, not a full bar at "X/0 B"; `hoard job run` on a terminal
/// draws each guest's progress from its backup's progress lines, which never
/// reach the stored log; a restore takes --bwlimit.
#[test]
fn progress_says_what_is_known_and_restores_take_a_bwlimit() {
    let env = Env::new("64K");
    let tree = env.path("tree");
    fs::create_dir_all(&tree).unwrap();
    for i in 0..300u64 {
        fs::write(tree.join(format!("f{i}")), noise(i, 16 << 10)).unwrap();
    }
    let shown = on_a_terminal(
        &env,
        &[
            "backup",
            "--kind",
            "ct",
            "--id",
            "t",
            &format!("root.tree:{}", tree.display()),
        ],
        &[],
    );
    assert!(shown.contains("files"), "{shown}");
    assert!(!shown.contains("/0 B"), "a tree's total is not known: {shown}");

    // A job: its backup's progress lines are drawn, not logged.
    let jobs = env.path("jobs");
    fs::create_dir_all(&jobs).unwrap();
    fs::write(env.path("d.raw"), noise(9, 4 << 20)).unwrap();
    fs::write(
        jobs.join("j.toml"),
        format!(
            "store = \"{}\"\nbwlimit = \"2M\"\n[[images]]\nid = \"d\"\npath = \"{}\"\n",
            env.store.display(),
            env.path("d.raw").display()
        ),
    )
    .unwrap();
    let run = env.path("run");
    let shown = on_a_terminal(
        &env,
        &["job", "run", "j"],
        &[("HOARD_JOBS_DIR", &jobs), ("HOARD_RUN_DIR", &run)],
    );
    assert!(shown.contains("host/d disk.img"), "the guest's bar: {shown}");
    let snap = env
        .snapshot_names()
        .into_iter()
        .find(|n| n.starts_with("host/d/"))
        .unwrap();
    let log = env.ok(&["show", &snap]);
    assert!(!log.contains("hoard-progress"), "{log}");
    // The job's limit goes whole to its backups, which share one bucket.
    assert!(log.contains("--bwlimit 2097152"), "{log}");
    assert!(run.join("bwlimit-j").exists());

    // restore --bwlimit 1M: 4 MiB take at least 3.5 s (a lower bound:
    // a slow machine only makes it longer).
    let started = std::time::Instant::now();
    env.ok(&[
        "restore",
        &snap,
        "disk.img",
        env.path("r.img").to_str().unwrap(),
        "--bwlimit",
        "1M",
    ]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
}
