//! `hoard mount` through the kernel's FUSE: a crafted tree (every file type,
//! xattrs, hardlinks, odd names) reads back as backed up; an image archive
//! shows up as a file that loop-mounts; damage, refusals and unmounting.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::{assert_same_tree_but_holes, crafted};
use common::{noise, Env};
use serde_json::Value;

/// Whether FUSE mounts work here (hoard's own check); says why not otherwise.
fn have_fuse() -> bool {
    match hoard_engine::fuse::usable() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("SKIPPED: hoard mount cannot run on this machine: {why}");
            false
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap()))
}

/// A running `hoard mount`; unmounted and stopped when dropped.
struct Mounted {
    child: Child,
    dir: PathBuf,
}

impl Mounted {
    fn start(env: &Env, snap: &str, archive: &str, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = env
            .hoard()
            .args(["mount", snap, archive, dir.to_str().unwrap(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("hoard mount failed: {err}");
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "mounted");
        Mounted {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for the process to end on its own; returns its stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(t.elapsed() < Duration::from_secs(30), "hoard mount did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tree_archive_mounts_with_all_metadata() {
    if have_fuse() {
        mounts_a_crafted_tree(Env::new("1M"));
    }
}

/// The same from an encrypted store: chunks are opened as they are read.
#[test]
fn an_encrypted_tree_archive_mounts_the_same() {
    if have_fuse() {
        mounts_a_crafted_tree(Env::protected("1M", "encrypt"));
    }
}

fn mounts_a_crafted_tree(env: Env) {
    let src = env.path("src");
    crafted(&src);
    let snap = env.backup_tree("7", &src);
    let mnt = env.path("mnt");
    let m = Mounted::start(&env, &snap, "root.tree", &mnt);
    assert_same_tree_but_holes(&src, &mnt);
    // Read-only.
    assert!(std::fs::write(mnt.join("new"), b"x").is_err());
    assert!(std::fs::remove_file(mnt.join("small.txt")).is_err());
    // `umount` from outside ends hoard cleanly.
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let (status, _) = m.wait();
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn image_archive_mounts_as_a_file_that_loop_mounts() {
    if !have_fuse() {
        return;
    }
    let env = Env::new("1M");
    let img = env.path("disk.raw");
    let files = env.path("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("inside.txt"), b"from inside the image\n").unwrap();
    std::fs::write(files.join("noise"), noise(4, 2 << 20)).unwrap();
    if common::ext4_image(&img, 32, files.to_str().unwrap()).is_none() {
        return;
    }
    let snap = env.backup("vm1", &[format!("disk.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let mnt = env.path("mnt");
    let m = Mounted::start(&env, &snap, "disk.img", &mnt);
    common::assert_same_file(&img, &mnt.join("disk.img"));
    let inner = env.path("inner");
    std::fs::create_dir(&inner).unwrap();
    let loop_mount = Command::new("mount")
        .args([
            "-o",
            "ro,loop,noload",
            mnt.join("disk.img").to_str().unwrap(),
            inner.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if loop_mount.status.success() {
        assert_eq!(
            std::fs::read(inner.join("inside.txt")).unwrap(),
            b"from inside the image\n"
        );
        assert_eq!(std::fs::read(inner.join("noise")).unwrap(), noise(4, 2 << 20));
        assert!(Command::new("umount").arg(&inner).status().unwrap().success());
    } else {
        eprintln!(
            "loop mount not possible here: {}",
            String::from_utf8_lossy(&loop_mount.stderr)
        );
    }
    // Ctrl-C unmounts and ends hoard by the signal.
    // SAFETY: signals our own child.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGINT) };
    let (status, _) = m.wait();
    assert_eq!(status.signal(), Some(libc::SIGINT));
    assert!(!is_mounted(&mnt));
    assert!(std::fs::read_dir(env.store.join("sessions")).map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn damaged_chunk_fails_that_file_only_and_refusals() {
    if !have_fuse() {
        return;
    }
    let env = Env::new("1M");
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    // Large enough that the damaged chunk in its middle holds nothing else.
    let bad = noise(9, 40 << 20);
    std::fs::write(src.join("a-good"), b"fine\n").unwrap();
    std::fs::write(src.join("b-bad"), &bad).unwrap();
    std::fs::write(src.join("c-good"), noise(10, 1000)).unwrap();
    let snap = env.backup_tree("7", &src);
    env.damage(&bad[20 << 20..(20 << 20) + 64]);

    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let nonempty = env.path("nonempty");
    std::fs::create_dir(&nonempty).unwrap();
    std::fs::write(nonempty.join("f"), b"x").unwrap();
    let err = env.fails(&["mount", &snap, "root.tree", nonempty.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    let err = env.fails(&["mount", "ct/8", "root.tree", mnt.to_str().unwrap()]);
    assert!(err.contains("no snapshot"), "{err}");

    let m = Mounted::start(&env, &snap, "root.tree", &mnt);
    let e = std::fs::read(mnt.join("b-bad")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(std::fs::read(mnt.join("a-good")).unwrap(), b"fine\n");
    assert_eq!(std::fs::read(mnt.join("c-good")).unwrap(), noise(10, 1000));
    // SAFETY: signals our own child.
    unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
    let (_, log) = m.wait();
    assert!(log.contains("payload chunk"), "{log}");
}
