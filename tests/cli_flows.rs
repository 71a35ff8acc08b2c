//! Whole flows through the `hoard` binary: backup, list, show, restore.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{assert_same_file, ext4_image, mixed_image, Env, Tmpfs};

fn round_trip(env: &Env, name: &str, id: &str) {
    let img = env.path(name);
    let out = env.path(&format!("{name}.restored"));
    let summary = env.backup(id, &[format!("d.img:{}", img.display())]);
    let snap = summary["snapshot"].as_str().unwrap();
    assert!(snap.starts_with(&format!("host/{id}/")));
    env.ok(&["restore", snap, "d.img", out.to_str().unwrap()]);
    assert_same_file(&img, &out);
}

#[test]
fn round_trips_edge_sizes_bit_exactly() {
    let env = Env::new("64K");
    let cases: [(&str, u64); 5] = [
        ("empty", 0),
        ("one", 1),
        ("odd", (1 << 20) + 123),
        ("exact", 4 << 20),
        ("chunk-minus-one", 65535),
    ];
    for (name, size) in cases {
        mixed_image(&env.path(name), size, size + 7);
        if size == 1 {
            fs::write(env.path(name), b"x").unwrap();
        }
        round_trip(&env, name, name);
    }
}

#[test]
fn sparse_image_restores_with_holes() {
    let env = Env::new("64K");
    let img = env.path("sparse");
    let f = fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"boot sector", 0).unwrap();
    f.write_all_at(&common::noise(3, 1 << 20), 100 << 20).unwrap();
    let summary = env.backup("sparse", &[format!("d.img:{}", img.display())]);
    assert_eq!(summary["new_chunks"], 17);
    assert_eq!(summary["zero_chunks"], 4096 - 17);
    let out = env.path("out");
    let r: serde_json::Value =
        serde_json::from_str(&env.ok(&["restore", "host/sparse", "d.img", out.to_str().unwrap(), "--json"]))
            .unwrap();
    assert_eq!(r["zero_chunks"], 4096 - 17);
    assert_same_file(&img, &out);
    // Zero chunks were never written: the restored file is as sparse as the source.
    assert!(fs::metadata(&out).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn one_gib_real_filesystem_round_trip_and_dedup() {
    let env = Env::new("4M");
    let img = env.path("fs.img");
    if ext4_image(&img, 1024, "/usr/lib").is_none() {
        mixed_image(&img, 1 << 30, 11);
    }
    let spec = format!("root.img:{}", img.display());
    let first = env.backup("100", std::slice::from_ref(&spec));
    assert!(first["new_chunks"].as_u64().unwrap() > 100);
    assert!(first["stored_bytes"].as_u64().unwrap() < first["new_bytes"].as_u64().unwrap());

    // Unchanged: under 0.1% new bytes, and nothing compressed or written.
    let packs_before = env.packs().len();
    let second = env.backup("100", std::slice::from_ref(&spec));
    assert_eq!(second["new_chunks"], 0);
    assert_eq!(second["stored_bytes"], 0);
    assert!(second["new_bytes"].as_u64().unwrap() * 1000 < second["bytes_read"].as_u64().unwrap());
    assert_eq!(env.packs().len(), packs_before);

    // One changed byte: one new chunk.
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(b"!", 500 << 20)
        .unwrap();
    let third = env.backup("100", std::slice::from_ref(&spec));
    assert_eq!(third["new_chunks"], 1);

    env.assert_restores(third["snapshot"].as_str().unwrap(), "root.img", &img);
    assert_eq!(env.snapshot_names().len(), 3);
}

#[test]
fn multi_disk_snapshot_and_show() {
    let env = Env::new("1M");
    mixed_image(&env.path("a"), 5 << 20, 1);
    mixed_image(&env.path("b"), 3 << 20, 2);
    let s = env.backup(
        "vm1",
        &[
            format!("sda.img:{}", env.path("a").display()),
            format!("sdb.img:{}", env.path("b").display()),
        ],
    );
    let snap = s["snapshot"].as_str().unwrap().to_string();
    let shown = env.json(&["show", &snap, "--json"]);
    let names: Vec<&str> = shown["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sda.img", "sdb.img"]);
    let text = env.ok(&["show", "host/vm1"]);
    assert!(text.contains("sda.img") && text.contains("sdb.img"), "{text}");
    for (disk, src) in [("sda.img", "a"), ("sdb.img", "b")] {
        env.assert_restores(&snap, disk, &env.path(src));
    }
    let err = env.fails(&["restore", &snap, "sdc.img", env.path("x").to_str().unwrap()]);
    assert!(err.contains("sdc.img") && err.contains("sda.img"), "{err}");
}

#[test]
fn kind_and_newest_resolution() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 300_000, 1);
    let spec = format!("d.img:{}", env.path("a").display());
    let first = env.json(&["backup", "--kind", "vm", "--id", "7", "--json", &spec]);
    let second = env.json(&["backup", "--kind", "vm", "--id", "7", "--json", &spec]);
    assert_ne!(first["snapshot"], second["snapshot"]);
    let newest = env.json(&["show", "vm/7", "--json"]);
    assert_eq!(
        format!("vm/7/{}", newest["time"].as_str().unwrap()),
        second["snapshot"].as_str().unwrap()
    );
    assert!(env.fails(&["show", "ct/7"]).contains("no snapshot ct/7"));
}

#[test]
fn restore_from_a_copied_index_file() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 2 << 20, 5);
    let s = env.backup("idx", &[format!("d.img:{}", env.path("a").display())]);
    let fidx = env
        .snapshot_dir(s["snapshot"].as_str().unwrap())
        .join("d.img.fidx");
    let copied = env.path("elsewhere.fidx");
    fs::copy(&fidx, &copied).unwrap();
    env.assert_restores("--index", copied.to_str().unwrap(), &env.path("a"));
}

#[test]
fn restore_refuses_existing_target_unless_forced() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 1 << 20, 5);
    env.backup("f", &[format!("d.img:{}", env.path("a").display())]);
    let out = env.path("out");
    fs::write(&out, b"precious").unwrap();
    let err = env.fails(&["restore", "host/f", "d.img", out.to_str().unwrap()]);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    env.ok(&["restore", "host/f", "d.img", out.to_str().unwrap(), "--force"]);
    assert_same_file(&env.path("a"), &out);
}

#[test]
fn block_device_round_trip() {
    let env = Env::new("64K");
    let backing = env.path("loop.img");
    mixed_image(&backing, 8 << 20, 9);
    let attach = |file: &std::path::Path| {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(dev) = attach(&backing) else {
        eprintln!("SKIPPING block_device_round_trip: losetup cannot attach a loop device here (needs root)");
        return;
    };
    let target_file = env.path("target.img");
    fs::write(&target_file, vec![0xee; 8 << 20]).unwrap();
    let result = std::panic::catch_unwind(|| {
        let target = attach(&target_file).expect("second loop device");
        let r = std::panic::catch_unwind(|| {
            env.backup("blk", &[format!("d.img:{dev}")]);
            let err = env.fails(&["restore", "host/blk", "d.img", &target]);
            assert!(err.contains("--force"), "{err}");
            env.ok(&["restore", "host/blk", "d.img", &target, "--force"]);
            assert_eq!(fs::read(&dev).unwrap(), fs::read(&target).unwrap());
        });
        let _ = Command::new("losetup").args(["-d", &target]).status();
        r
    });
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    result.unwrap().unwrap();
    // Zero chunks were written as zeros over the old 0xee contents.
    assert_same_file(&backing, &target_file);
}

#[test]
fn text_output_and_help() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 1 << 20, 1);
    let out = env.run(&[
        "backup",
        "--id",
        "t",
        &format!("d.img:{}", env.path("a").display()),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.trim().starts_with("host/t/"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("chunks") && stderr.contains("MiB/s"), "{stderr}");
    assert!(!stderr.contains('\r'), "no progress bar on a pipe");
    let help = env.ok(&["backup", "--help"]);
    assert!(help.contains("NAME.img:PATH") && help.contains("--compress"));
}

/// tmpfs may refuse O_DIRECT: restore falls back to buffered writes.
#[test]
fn restore_onto_tmpfs() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), (3 << 20) + 4097, 3);
    env.backup("t", &[format!("d.img:{}", env.path("a").display())]);
    let Some(mnt) = Tmpfs::mount(env.path("tmpfs"), 64, "restore_onto_tmpfs") else {
        return;
    };
    let out = mnt.path.join("out");
    let r = env.run(&["restore", "host/t", "d.img", out.to_str().unwrap()]);
    let same = r.status.success() && fs::read(&out).ok() == fs::read(env.path("a")).ok();
    assert!(same, "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn a_reader_that_goes_away_ends_hoard_quietly() {
    let env = Env::new("64K");
    fs::write(env.path("a"), b"some bytes").unwrap();
    env.backup("a", &[format!("d.img:{}", env.path("a").display())]);
    for args in [
        &["snapshots", "--json"][..],
        &["snapshots"],
        &["show", "host/a", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hoard"))
            .args(args)
            .env("HOARD_STORE", &env.store)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // `| head -c 0`: gone before hoard writes
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: as if killed by SIGPIPE");
    }
}
