//! A real VM for whole-flow tests: qemu-system-x86_64 under TCG booting the
//! guest of scripts/guest.sh (Debian kernel, busybox, the real qemu-ga) on a
//! fresh ext4 disk that the guest keeps appending numbered lines to.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoard_engine::Qmp;
use serde_json::{json, Value};

pub struct Guest {
    pub dir: PathBuf,
    pub disk: PathBuf,
    child: Child,
}

/// The directory with vmlinuz and initrd.gz, built (or found cached) by
/// scripts/guest.sh; None, loudly, when it cannot be built here.
fn guest_files() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest.sh");
    let out = Command::new(&script).stderr(Stdio::inherit()).output();
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        other => {
            eprintln!("SKIPPED: the test guest could not be built ({other:?}); run scripts/setup.sh");
            None
        }
    }
}

impl Guest {
    /// Boots the guest on a new 64 MiB ext4 qcow2 disk (node `disk0`) in
    /// `dir`, and waits until it writes. None, loudly, when qemu-system or
    /// the guest cannot be had.
    pub fn boot(dir: &Path) -> Option<Guest> {
        Guest::boot_with(dir, 0)
    }

    /// As [`boot`](Self::boot), with a file of `data_mb` MiB of noise
    /// (`/data.bin`) on the disk.
    pub fn boot_with(dir: &Path, data_mb: usize) -> Option<Guest> {
        if Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: qemu-system-x86_64 missing (scripts/setup.sh installs it)");
            return None;
        }
        let files = guest_files()?;
        let content = dir.join("content");
        std::fs::create_dir_all(&content).unwrap();
        if data_mb > 0 {
            std::fs::write(content.join("data.bin"), super::noise(7, data_mb << 20)).unwrap();
        }
        let raw = dir.join("vm.raw");
        std::fs::File::create(&raw).unwrap().set_len(64 << 20).unwrap();
        super::qemu::run(
            "mkfs.ext4",
            &["-q", "-F", "-d", content.to_str().unwrap(), raw.to_str().unwrap()],
        );
        std::fs::remove_dir_all(&content).unwrap();
        let disk = dir.join("vm.qcow2");
        super::qemu::run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "qcow2",
                raw.to_str().unwrap(),
                disk.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(&raw).unwrap();
        let mut g = Guest {
            dir: dir.to_path_buf(),
            disk,
            child: Command::new("true").spawn().unwrap(),
        };
        g.start(&files);
        Some(g)
    }

    /// Boots the guest on an existing qcow2 `disk` (which may have a backing
    /// file anywhere qemu reaches, an NBD export for one), in `dir`.
    pub fn boot_on(dir: &Path, disk: &Path) -> Option<Guest> {
        let files = guest_files()?;
        let mut g = Guest {
            dir: dir.to_path_buf(),
            disk: disk.to_path_buf(),
            child: Command::new("true").spawn().unwrap(),
        };
        g.start(&files);
        Some(g)
    }

    /// Starts QEMU again on the same disk (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        let files = guest_files().expect("built before");
        self.start(&files);
    }

    fn start(&mut self, files: &Path) {
        let d = &self.dir;
        for s in ["qmp.sock", "qmp-test.sock", "qga.sock", "serial.log"] {
            let _ = std::fs::remove_file(d.join(s));
        }
        let p = |name: &str| d.join(name).display().to_string();
        self.child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "256",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
            ])
            .args(["-no-user-config", "-no-shutdown"])
            .args(["-kernel", &files.join("vmlinuz").display().to_string()])
            .args(["-initrd", &files.join("initrd.gz").display().to_string()])
            .args(["-append", "console=ttyS0 quiet panic=-1 nokaslr"])
            .args(["-serial", &format!("file:{}", p("serial.log"))])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", p("qmp.sock"))])
            // A second monitor for the test itself while hoard holds the first.
            .args(["-qmp", &format!("unix:{},server=on,wait=off", p("qmp-test.sock"))])
            .args([
                "-blockdev",
                &format!("driver=file,node-name=file0,filename={}", self.disk.display()),
            ])
            .args(["-blockdev", "driver=qcow2,node-name=disk0,file=file0"])
            .args([
                "-device",
                "virtio-blk-pci,drive=disk0,id=vd0",
                "-device",
                "virtio-serial-pci",
            ])
            .args([
                "-chardev",
                &format!("socket,path={},server=on,wait=off,id=qga0", p("qga.sock")),
            ])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        assert!(
            self.wait_serial("guest: ready", Duration::from_secs(60)),
            "guest did not boot:\n{}",
            self.serial()
        );
    }

    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn qga_path(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }

    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.qmp_path(), Duration::from_secs(30)).unwrap()
    }

    /// The test's own monitor: usable while hoard is connected to the first.
    pub fn test_qmp(&self) -> Qmp {
        Qmp::connect(&self.dir.join("qmp-test.sock"), Duration::from_secs(30)).unwrap()
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    pub fn wait_serial(&self, text: &str, timeout: Duration) -> bool {
        self.wait_serial_count(text, 1, timeout)
    }

    /// Waits until the serial log holds `text` at least `count` times.
    pub fn wait_serial_count(&self, text: &str, count: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.serial().matches(text).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn status(&self) -> String {
        let v: Value = self.qmp().execute_value("query-status", json!({})).unwrap();
        v["status"].as_str().unwrap_or("?").to_string()
    }

    /// Asks the guest agent (its own connection) for `command`.
    pub fn agent(&self, command: &str) -> Value {
        self.agent_with(command, json!({}))
    }

    pub fn agent_with(&self, command: &str, arguments: Value) -> Value {
        let t = Duration::from_secs(10);
        let mut q = hoard_engine::Qga::connect(&self.qga_path(), t).unwrap();
        q.execute(command, arguments, t).unwrap()
    }

    /// Kills QEMU (the disk stays).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Checks a restored disk image: `e2fsck -fn` is clean, and /log.txt holds
/// complete, consecutive lines "line 1".."line N"; returns N.
pub fn check_restored_disk(image: &Path) -> u64 {
    let fsck = Command::new("e2fsck").args(["-fn"]).arg(image).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let dump = Command::new("debugfs")
        .args(["-R", "cat /log.txt"])
        .arg(image)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        log.is_empty() || log.ends_with('\n'),
        "log ends inside a line: {:?}",
        &log[log.len().saturating_sub(40)..]
    );
    let mut n = 0;
    for line in log.lines() {
        n += 1;
        assert_eq!(line, format!("line {n}"), "log line {n} of {}", image.display());
    }
    n
}
