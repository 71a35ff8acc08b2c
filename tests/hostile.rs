//! hoard among other local users and hostile snapshots: nothing it creates
//! can be redirected, a store is private whatever the umask, and no path
//! from a manifest leads a restore out of its target.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::Env;

/// A container snapshot (`root.tree` and `mp1.tree`) whose manifest says
/// `mp1.tree` goes to `mount_point`.
fn ct_snapshot_with_mount_point(env: &Env, mount_point: &str, root_symlink: Option<(&str, &str)>) -> String {
    let root = env.path("root");
    let vol = env.path("vol");
    fs::create_dir_all(root.join("mnt/data")).unwrap();
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("payload"), b"volume file").unwrap();
    if let Some((link, to)) = root_symlink {
        symlink(to, root.join(link)).unwrap();
    }
    let out = env.json(&[
        "backup",
        "--kind",
        "ct",
        "--id",
        "200",
        "--json",
        &format!("root.tree:{}", root.display()),
        &format!("mp1.tree:{}", vol.display()),
    ]);
    let snap = out["snapshot"].as_str().unwrap().to_string();
    let path = env.snapshot_dir(&snap).join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    m["ct"] = serde_json::json!({
        "downtime_secs": 0.0, "frozen_secs": 0.0, "first_pass_secs": 0.0,
        "volumes": [
            {"archive": "root.tree", "mount_point": "/", "source": "/x"},
            {"archive": "mp1.tree", "mount_point": mount_point, "source": "/y"}
        ],
        "skipped_mounts": []
    });
    fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    snap
}

#[test]
fn a_manifest_mount_point_cannot_lead_a_restore_out_of_its_target() {
    let env = Env::new("64K");
    let snap = ct_snapshot_with_mount_point(&env, "/../../escaped", None);
    let target = env.path("t/a/b");
    let err = env.fails(&["restore", &snap, target.to_str().unwrap()]);
    assert!(err.contains("mount point") && err.contains(".."), "{err}");
    assert!(!env.path("escaped").exists() && !env.path("t/escaped").exists());
}

#[test]
fn a_symlink_in_the_restored_root_cannot_carry_a_volume_elsewhere() {
    let env = Env::new("64K");
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let snap = ct_snapshot_with_mount_point(&env, "/link/data", Some(("link", outside.to_str().unwrap())));
    let target = env.path("t");
    let err = env.fails(&["restore", &snap, target.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the link"
    );
    // A sound mount point restores.
    let env = Env::new("64K");
    let snap = ct_snapshot_with_mount_point(&env, "/mnt/data", None);
    let target = env.path("t");
    env.ok(&["restore", &snap, target.to_str().unwrap()]);
    assert_eq!(fs::read(target.join("mnt/data/payload")).unwrap(), b"volume file");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs hoard under `umask MASK` (as a shell would start it).
fn hoard_with_umask(env: &Env, mask: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_hoard"))
        .args(args)
        .env("HOARD_STORE", &env.store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file and directory below (and including) `root` with a mode
/// that lets anybody but the owner (and `group`, if shared) in.
fn too_open(root: &Path, allowed: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.mode() & 0o777 & !allowed != 0 {
            out.push(format!("{} {:o}", p.display(), m.mode() & 0o7777));
        }
        if m.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[test]
fn a_store_is_private_whatever_the_umask() {
    for mask in ["022", "000"] {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            store: dir.path().join("store"),
            dir,
            vars: Vec::new(),
        };
        hoard_with_umask(&env, mask, &["init", "--chunk-size", "64K"]);
        fs::write(env.path("img"), common::noise(1, 300_000)).unwrap();
        let img = format!("d.img:{}", env.path("img").display());
        hoard_with_umask(&env, mask, &["backup", "--id", "p", &img]);
        hoard_with_umask(&env, mask, &["verify"]);
        hoard_with_umask(&env, mask, &["gc"]);
        let open = too_open(&env.store, 0o700);
        assert!(open.is_empty(), "umask {mask}: {open:?}");
        hoard_with_umask(
            &env,
            mask,
            &["restore", "host/p", "d.img", env.path("out").to_str().unwrap()],
        );
        assert_eq!(fs::metadata(env.path("out")).unwrap().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_group_store_is_shared_with_its_group_only() {
    if !is_root() {
        eprintln!("SKIPPING a_group_store_is_shared_with_its_group_only: chgrp to another group needs root");
        assert!(std::env::var("CI").is_err(), "skipped under CI");
        return;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(1))
        .unwrap()
        .expect("group 1 (daemon)");
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        store: dir.path().join("store"),
        dir,
        vars: Vec::new(),
    };
    hoard_with_umask(
        &env,
        "022",
        &["init", "--chunk-size", "64K", "--group", &group.name],
    );
    let root = fs::metadata(&env.store).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o2770);
    assert_eq!(root.gid(), 1);
    fs::write(env.path("img"), common::noise(2, 300_000)).unwrap();
    let img = format!("d.img:{}", env.path("img").display());
    hoard_with_umask(&env, "077", &["backup", "--id", "g", &img]);
    let open = too_open(&env.store, 0o770);
    assert!(open.is_empty(), "{open:?}");
    for p in common::walk(&env.store) {
        assert_eq!(fs::metadata(&p).unwrap().gid(), 1, "{}", p.display());
    }
}

#[test]
fn a_restore_never_writes_through_a_planted_temporary_file() {
    if !common::have_failpoints("a_restore_never_writes_through_a_planted_temporary_file") {
        return;
    }
    let env = Env::new("64K");
    fs::write(env.path("img"), common::noise(3, 200_000)).unwrap();
    env.backup("r", &[format!("d.img:{}", env.path("img").display())]);
    let victim = env.path("victim");
    fs::write(&victim, b"precious").unwrap();
    let target = env.path("out");
    let child = env.spawn_paused(
        &[
            "restore".into(),
            "host/r".into(),
            "d.img".into(),
            target.display().to_string(),
        ],
        "restore-started:1500",
    );
    // Another user guesses the temporary name from the PID.
    symlink(&victim, env.path(&format!(".out.hoard-restore-{}", child.id()))).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hoard-restore") && err.contains("exists"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(!target.exists());
}

#[test]
fn a_killed_restores_temporary_file_is_removed_by_the_next_one() {
    let env = Env::new("64K");
    fs::write(env.path("img"), common::noise(4, 200_000)).unwrap();
    env.backup("r", &[format!("d.img:{}", env.path("img").display())]);
    let stale = env.path(".out.hoard-restore-4194302"); // no such PID
    fs::write(&stale, b"half a disk").unwrap();
    let out = env.run(&["restore", "host/r", "d.img", env.path("out").to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left by a killed restore"), "{err}");
    assert!(!stale.exists());
}

#[test]
fn a_live_copy_work_dir_of_another_user_is_never_reused() {
    use hoard_engine::lock_work_dir;
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"root's file").unwrap();
    // A planted `lock` symlink in a work dir of ours: refused, victim intact.
    let ours = tmp.path().join("qemu-ours");
    fs::create_dir(&ours).unwrap();
    symlink(&victim, ours.join("lock")).unwrap();
    let err = lock_work_dir(&ours).unwrap_err().to_string();
    assert!(err.contains("lock"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"root's file");
    // A symlink instead of the directory.
    symlink(tmp.path(), tmp.path().join("qemu-link")).unwrap();
    assert!(lock_work_dir(&tmp.path().join("qemu-link")).is_err());
    if !is_root() {
        eprintln!("SKIPPING the foreign-owner case: chown needs root");
        return;
    }
    let theirs = tmp.path().join("qemu-theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = lock_work_dir(&theirs).unwrap_err().to_string();
    assert!(err.contains("belongs to uid 65534"), "{err}");
    assert!(!theirs.join("lock").exists());
}
