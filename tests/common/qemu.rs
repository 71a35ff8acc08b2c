//! A real qemu-storage-daemon for whole-flow tests: one qcow2 disk per node,
//! a QMP socket for hoard, and a writable NBD export per disk that plays the
//! guest (written with qemu-io).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn have_qemu() -> bool {
    let ok = ["qemu-storage-daemon", "qemu-img", "qemu-io"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        eprintln!("SKIPPED: qemu-storage-daemon, qemu-img or qemu-io missing (scripts/setup.sh installs qemu-utils)");
    }
    ok
}

pub struct Qsd {
    pub dir: PathBuf,
    pub disks: Vec<(String, PathBuf)>,
    pid: Option<u32>,
}

impl Qsd {
    /// Creates `disks` (node name, size in MiB, fill byte for the first
    /// `filled` MiB) in `dir` and starts the daemon on them.
    pub fn start(dir: &Path, disks: &[(&str, u64, u8, u64)]) -> Qsd {
        let mut out = Vec::new();
        for (node, mib, fill, filled) in disks {
            let path = dir.join(format!("{node}.qcow2"));
            let fill = format!("write -P {fill:#x} 0 {filled}M");
            let writes = if *filled > 0 { vec![fill] } else { vec![] };
            make_image(&path, "qcow2", &format!("{mib}M"), &writes);
            out.push((node.to_string(), path));
        }
        let mut q = Qsd {
            dir: dir.to_path_buf(),
            disks: out,
            pid: None,
        };
        q.launch();
        q
    }

    /// Starts (again) the daemon on the existing disk images.
    pub fn launch(&mut self) {
        let qmp = self.qmp();
        let nbd = self.nbd();
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&nbd);
        let pidfile = self.dir.join("qsd.pid");
        let mut args = vec![
            "--chardev".to_string(),
            format!("socket,path={},server=on,wait=off,id=qmp0", qmp.display()),
            "--monitor".into(),
            "chardev=qmp0".into(),
            "--nbd-server".into(),
            format!("addr.type=unix,addr.path={}", nbd.display()),
        ];
        for (node, path) in &self.disks {
            args.push("--blockdev".into());
            args.push(format!(
                "driver=file,node-name={node}-file,filename={}",
                path.display()
            ));
            args.push("--blockdev".into());
            args.push(format!("driver=qcow2,node-name={node},file={node}-file"));
            args.push("--export".into());
            args.push(format!(
                "type=nbd,id={node}-rw,node-name={node},name={node},writable=on"
            ));
        }
        args.extend([
            "--daemonize".into(),
            "--pidfile".into(),
            pidfile.display().to_string(),
        ]);
        let st = Command::new("qemu-storage-daemon")
            .args(&args)
            .status()
            .expect("start qsd");
        assert!(st.success(), "qemu-storage-daemon failed to start");
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        self.pid = Some(pid);
    }

    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn nbd(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    pub fn uri(&self, node: &str) -> String {
        format!("nbd+unix:///{node}?socket={}", self.nbd().display())
    }

    /// Writes as the guest does: qemu-io commands on the disk's NBD export.
    pub fn write(&self, node: &str, cmds: &[String]) {
        let mut args = vec!["-f".to_string(), "raw".into()];
        for c in cmds {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(self.uri(node));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run("qemu-io", &a);
    }

    /// The disk's current content as a raw file.
    pub fn copy(&self, node: &str, to: &Path) {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &self.uri(node),
                to.to_str().unwrap(),
            ],
        );
    }

    /// Ends the daemon: `kill` true is SIGKILL (bitmaps left in use), false
    /// is an orderly SIGTERM (bitmaps stored).
    pub fn stop(&mut self, kill: bool) {
        if let Some(pid) = self.pid.take() {
            let sig = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
            let t = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.stop(true);
    }
}

pub fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img compare` of two raw images.
pub fn assert_identical(a: &Path, b: &Path) {
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    assert!(out.contains("identical"), "{}", out);
}

/// Creates an image of `format` and `size` and applies qemu-io `writes`.
pub fn make_image(path: &Path, format: &str, size: &str, writes: &[String]) {
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", format, p, size]);
    if !writes.is_empty() {
        let mut args = vec!["-f", format];
        for w in writes {
            args.extend(["-c", w.as_str()]);
        }
        args.push(p);
        run("qemu-io", &args);
    }
}
