//! A real SeaweedFS (master, volume server, filer and S3 gateway in one
//! `weed server` process) in a temporary directory, on loopback ports,
//! with SigV4 credentials; stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKHOARDTEST";
pub const SECRET_KEY: &str = "SKHOARDTESTSECRET";

pub struct Seaweed {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    master: u16,
    /// master, volume, filer, S3
    ports: [u16; 4],
}

fn weed() -> Option<PathBuf> {
    let p = PathBuf::from("/var/cache/hoard/seaweedfs/bin/weed");
    p.exists().then_some(p)
}

/// A port that is free now, and whose gRPC twin (port + 10000, SeaweedFS's
/// rule) is too.
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

impl Seaweed {
    /// Starts SeaweedFS, or None with a loud reason (a failure under CI).
    pub fn start() -> Option<Seaweed> {
        if weed().is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "SeaweedFS missing under CI (scripts/seaweedfs.sh installs it)"
            );
            eprintln!("SKIPPED: SeaweedFS missing (run scripts/seaweedfs.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"hoard","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let ports = [(); 4].map(|_| free_port_pair());
        let mut sw = Seaweed {
            child: None,
            dir,
            endpoint: format!("http://127.0.0.1:{}", ports[3]),
            master: ports[0],
            ports,
        };
        sw.resume();
        Some(sw)
    }

    /// Kills the server (as a crash would): requests fail until
    /// [`resume`](Self::resume).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on its ports and data, and waits for S3.
    pub fn resume(&mut self) {
        let [master, volume, filer, s3] = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let child = Command::new(weed().unwrap())
            .arg("server")
            .arg(format!("-dir={}", self.dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .args(["-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=16"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!(
                "-s3.config={}",
                self.dir.path().join("s3.json").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", s3)).is_err() {
            assert!(Instant::now() < end, "SeaweedFS S3 never came up: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Creates bucket `name` (through `weed shell`, as an admin would).
    pub fn create_bucket(&self, name: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let mut sh = Command::new(weed().unwrap())
                .args(["shell", &format!("-master=127.0.0.1:{}", self.master)])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            writeln!(sh.stdin.take().unwrap(), "s3.bucket.create -name {name}").unwrap();
            let out = sh.wait_with_output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("created bucket") {
                return;
            }
            assert!(Instant::now() < end, "cannot create bucket {name}: {out:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
    }
}
