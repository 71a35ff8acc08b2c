//! Real LXC containers for whole-flow tests: the busybox template in a
//! private lxcpath (optionally on a loop-mounted btrfs, the rootfs a
//! subvolume), whose init keeps appending numbered lines to /root/log.txt
//! and rewriting /root/counter with the last number.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Container {
    pub name: String,
    pub lxcpath: PathBuf,
    btrfs: bool,
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

fn ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Container {
    /// Creates container `name` under `dir` (on btrfs if asked) with
    /// `noise_mb` MiB of random data in /root/data.bin; None, loudly, when
    /// LXC (or btrfs) cannot run here.
    pub fn create(dir: &Path, name: &str, btrfs: bool, noise_mb: usize) -> Option<Container> {
        if !sh("command -v lxc-create && command -v mkfs.btrfs")
            .status
            .success()
        {
            eprintln!("SKIPPED: lxc or btrfs-progs missing (scripts/setup.sh installs them)");
            return None;
        }
        let lxcpath = dir.join("lxc");
        std::fs::create_dir_all(&lxcpath).unwrap();
        if btrfs {
            let img = dir.join("btrfs.img");
            ok(&format!(
                "truncate -s 1G {0} && mkfs.btrfs -q -f {0}",
                img.display()
            ));
            if !sh(&format!("mount -o loop {} {}", img.display(), lxcpath.display()))
                .status
                .success()
            {
                eprintln!("SKIPPED: cannot loop-mount a btrfs image (needs root)");
                return None;
            }
        }
        let conf = dir.join("default.conf");
        std::fs::write(
            &conf,
            "lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n",
        )
        .unwrap();
        let backing = if btrfs { "-B btrfs" } else { "" };
        let c = Container {
            name: name.into(),
            lxcpath: lxcpath.clone(),
            btrfs,
        };
        ok(&format!(
            "lxc-create -P {} -n {name} -t busybox {backing} -f {}",
            lxcpath.display(),
            conf.display()
        ));
        let rootfs = c.rootfs();
        let rcs = rootfs.join("etc/init.d/rcS");
        let mut text = std::fs::read_to_string(&rcs).unwrap();
        text.push_str(
            "n=0; [ -f /root/log.txt ] && n=$(wc -l </root/log.txt)\n\
             (while :; do n=$((n + 1)); echo \"line $n\" >>/root/log.txt; \
             echo $n >/root/counter.tmp; mv /root/counter.tmp /root/counter; usleep 5000; done) &\n",
        );
        std::fs::write(&rcs, text).unwrap();
        if noise_mb > 0 {
            std::fs::write(rootfs.join("root/data.bin"), super::noise(3, noise_mb << 20)).unwrap();
        }
        Some(c)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.lxcpath.join(&self.name).join("rootfs")
    }

    pub fn tool(&self, tool: &str, extra: &str) -> String {
        ok(&format!(
            "{tool} -P {} -n {} {extra}",
            self.lxcpath.display(),
            self.name
        ))
    }

    pub fn state(&self) -> String {
        self.tool("lxc-info", "-s -H").trim().to_string()
    }

    /// Starts it and waits until it writes.
    pub fn start(&self) {
        self.tool("lxc-start", "");
        let log = self.rootfs().join("root/log.txt");
        let end = Instant::now() + Duration::from_secs(30);
        while !log.exists() {
            assert!(Instant::now() < end, "the container never wrote");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn args(&self, mode: &str) -> Vec<String> {
        [
            "backup-ct",
            "--json",
            "--id",
            "200",
            "--mode",
            mode,
            "--name",
            &self.name,
            "--lxcpath",
        ]
        .map(String::from)
        .into_iter()
        .chain([self.lxcpath.display().to_string()])
        .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let p = self.lxcpath.display();
        sh(&format!(
            "lxc-stop -P {p} -n {} -k; lxc-destroy -P {p} -n {} -f",
            self.name, self.name
        ));
        if self.btrfs {
            sh(&format!("umount {p}"));
        }
    }
}

/// A restored container root: /root/log.txt holds complete consecutive
/// lines and /root/counter the number of the last one, or the one before
/// (it is rewritten right after each line: any other value means files
/// copied at different times). Returns N.
pub fn check_consistent(root: &Path) -> u64 {
    let log = std::fs::read_to_string(root.join("root/log.txt")).unwrap();
    assert!(log.ends_with('\n'), "log ends inside a line");
    let mut n = 0;
    for line in log.lines() {
        n += 1;
        assert_eq!(line, format!("line {n}"));
    }
    let counter: u64 = std::fs::read_to_string(root.join("root/counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        counter == n || counter + 1 == n,
        "counter {counter}, log {n} lines: not one point in time"
    );
    n
}
