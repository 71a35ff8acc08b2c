//! A real SeaweedFS in a temporary directory, on loopback ports, with
//! SigV4 credentials; stopped when dropped. Either one `weed server`
//! process (master, volume server, filer and S3 gateway in one), or a
//! cluster of separate processes whose master places every volume on two
//! volume servers (replication 001), so that one of them can be killed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKHOARDTEST";
pub const SECRET_KEY: &str = "SKHOARDTESTSECRET";

pub struct Seaweed {
    /// Each process's `weed` arguments, and the process while it runs.
    procs: Vec<(Vec<String>, Option<Child>)>,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    master: u16,
    s3: u16,
}

fn weed() -> Option<PathBuf> {
    let p = PathBuf::from("/var/cache/hoard/seaweedfs/bin/weed");
    p.exists().then_some(p)
}

/// A port that is free now, and whose gRPC twin (port + 10000, SeaweedFS's
/// rule) is too.
fn free_port_pair() -> u16 {
    super::free_port(Some(|p| (p < 55000).then_some(p + 10000)))
}

const LOOPBACK: [&str; 2] = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"];

impl Seaweed {
    /// Starts one `weed server`, or None with a loud reason (a failure
    /// under CI).
    pub fn start() -> Option<Seaweed> {
        let mut sw = Seaweed::prepare()?;
        let [master, volume, filer] = [(); 3].map(|_| free_port_pair());
        let dir = sw.dir.path().to_path_buf();
        let mut args = vec![
            "server".to_string(),
            format!("-dir={}", dir.join("data").display()),
        ];
        args.extend(LOOPBACK.map(String::from));
        args.extend([
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            "-volume.max=16".into(),
            "-s3".into(),
        ]);
        args.extend(sw.s3_args());
        sw.master = master;
        sw.procs.push((args, None));
        sw.resume();
        Some(sw)
    }

    /// Starts a master with replication 001, two volume servers and a filer
    /// with the S3 gateway; [`kill_one`](Self::kill_one)`(1)` and
    /// `(2)` are the volume servers.
    pub fn start_replicated() -> Option<Seaweed> {
        let mut sw = Seaweed::prepare()?;
        let dir = sw.dir.path().to_path_buf();
        let master = free_port_pair();
        // Every process on loopback, at its own port.
        let at = |p: u16| {
            let mut a = vec![format!("-port={p}")];
            a.extend(LOOPBACK.map(String::from));
            a
        };
        std::fs::create_dir(dir.join("m")).unwrap();
        let mut m = vec!["master".to_string(), format!("-mdir={}", dir.join("m").display())];
        m.extend(at(master));
        m.extend(["-defaultReplication=001".into(), "-peers=none".into()]);
        sw.procs.push((m, None));
        for v in ["v1", "v2"] {
            std::fs::create_dir(dir.join(v)).unwrap();
            let mut a = vec!["volume".to_string(), format!("-dir={}", dir.join(v).display())];
            a.extend(at(free_port_pair()));
            a.extend([format!("-mserver=127.0.0.1:{master}"), "-max=16".into()]);
            sw.procs.push((a, None));
        }
        // The filer's metadata and socket in the temporary directory too
        // (by default: the working directory and /tmp).
        std::fs::create_dir(dir.join("f")).unwrap();
        let mut f = vec![
            "filer".to_string(),
            format!("-master=127.0.0.1:{master}"),
            format!("-defaultStoreDir={}", dir.join("f").display()),
            format!("-localSocket={}", dir.join("filer.sock").display()),
        ];
        f.extend(at(free_port_pair()));
        f.push("-s3".into());
        f.extend(sw.s3_args());
        sw.procs.push((f, None));
        sw.master = master;
        sw.resume();
        Some(sw)
    }

    /// A temporary directory with the S3 identities, and a port for S3.
    fn prepare() -> Option<Seaweed> {
        if weed().is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "SeaweedFS missing under CI (scripts/seaweedfs.sh installs it)"
            );
            eprintln!("SKIPPED: SeaweedFS missing (run scripts/seaweedfs.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"hoard","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let s3 = free_port_pair();
        Some(Seaweed {
            procs: Vec::new(),
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
            master: 0,
            s3,
        })
    }

    /// The S3 gateway's options (`weed server` and `weed filer` share them).
    fn s3_args(&self) -> Vec<String> {
        let dir = self.dir.path();
        vec![
            format!("-s3.port={}", self.s3),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
            format!("-s3.config={}", dir.join("s3.json").display()),
        ]
    }

    /// Kills every process (as a crash would): requests fail until
    /// [`resume`](Self::resume).
    pub fn kill(&mut self) {
        for i in 0..self.procs.len() {
            self.kill_one(i);
        }
    }

    /// Kills process `i` (SIGKILL) of [`start_replicated`](Self::start_replicated)'s
    /// cluster: 0 master, 1 and 2 volume servers, 3 filer.
    pub fn kill_one(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts what is not running (again) on its ports and data, and waits
    /// for S3.
    pub fn resume(&mut self) {
        let log = self.dir.path().join("weed.log");
        for (args, child) in &mut self.procs {
            if child.is_some() {
                continue;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            *child = Some(
                Command::new(weed().unwrap())
                    .args(args.iter())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start weed"),
            );
        }
        let end = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3)).is_err() {
            assert!(Instant::now() < end, "SeaweedFS S3 never came up: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }
}

impl super::S3Server for Seaweed {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Creates bucket `name` (through `weed shell`, as an admin would).
    fn create_bucket(&self, name: &str) {
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
            // An attempt that timed out may have created it all the same.
            if String::from_utf8_lossy(&out.stdout).contains("created bucket")
                || String::from_utf8_lossy(&out.stderr).contains("already exists")
            {
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
        // Its gRPC sockets go to /tmp whatever it is told, named by port
        // (its own, or + 10000), and a killed process leaves them.
        let ends: Vec<String> = self
            .procs
            .iter()
            .flat_map(|(args, _)| args.iter())
            .filter_map(|a| a.split_once("port=")?.1.parse::<u16>().ok())
            .flat_map(|p| [p, p.saturating_add(10000)])
            .map(|p| format!("-{p}.sock"))
            .collect();
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("seaweedfs-") && ends.iter().any(|end| name.ends_with(end)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
