//! Helpers shared by the whole-flow tests: run the real `hoard` binary
//! against a store in a temporary directory.

#![allow(dead_code)]

pub mod ceph;
pub mod guest;
pub mod lxc;
pub mod qemu;
pub mod seaweed;
pub mod server;
pub mod tree;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The argon2id cost tests give new key files.
pub const FAST_KDF: [&str; 4] = ["--kdf-memory-kib", "64", "--kdf-iterations", "1"];

/// A real S3 server the tests start (SeaweedFS, Ceph RGW), with the
/// credentials in `seaweed::{ACCESS_KEY, SECRET_KEY}`.
pub trait S3Server {
    /// `http://127.0.0.1:PORT`
    fn endpoint(&self) -> &str;
    /// Its temporary directory, for the test's scratch files too.
    fn dir(&self) -> &Path;
    fn create_bucket(&self, name: &str);
}

/// A loopback port free now and never handed out before in this process
/// (with `twin(port)`, if given, free too and reserved with it): servers
/// of tests running at once cannot be given the same port, as two binds
/// to port 0 and drops can be.
pub fn free_port(twin: Option<fn(u16) -> Option<u16>>) -> u16 {
    use std::collections::HashSet;
    use std::net::TcpListener;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.contains(&p) {
            continue;
        }
        let t = match twin {
            None => None,
            Some(f) => match f(p) {
                Some(t) if !given.contains(&t) && TcpListener::bind(("127.0.0.1", t)).is_ok() => Some(t),
                _ => continue,
            },
        };
        given.insert(p);
        given.extend(t);
        return p;
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// A directory, or the URL of a store in a bucket.
    pub store: PathBuf,
    /// Environment every run gets (credentials of a store in a bucket).
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A fresh store (`init` with the given chunk size) in a temporary directory.
    pub fn new(chunk_size: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let env = Env {
            dir,
            store,
            vars: Vec::new(),
        };
        env.ok(&["init", "--chunk-size", chunk_size]);
        env
    }

    /// An Env whose store is `BUCKET/PREFIX` of `server` (the bucket made
    /// now, the store not: tests init it as they need), its cache in
    /// `DIR/cache`, the server's credentials in every run.
    pub fn in_bucket(server: &dyn S3Server, bucket: &str, prefix: &str) -> Env {
        server.create_bucket(bucket);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        Env {
            store: PathBuf::from(format!("{}/{bucket}/{prefix}", server.endpoint())),
            vars: vec![
                ("AWS_ACCESS_KEY_ID".into(), seaweed::ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), seaweed::SECRET_KEY.into()),
                ("HOARD_CACHE_DIR".into(), cache.display().to_string()),
                ("HOARD_S3_TIMEOUT".into(), "5".into()),
            ],
            dir,
        }
    }

    /// A fresh store protected by `mode` (`sign` or `encrypt`), its
    /// passphrase in `DIR/passphrase`, which every run of this Env is given
    /// (HOARD_PASSWORD_FILE); a cheap argon2id cost, as nothing here needs
    /// guarding.
    pub fn protected(chunk_size: &str, mode: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let env = Env {
            dir,
            store,
            vars: Vec::new(),
        };
        env.init_protected(chunk_size, mode);
        env
    }

    /// `hoard init --encryption MODE` with the passphrase in `DIR/passphrase`.
    pub fn init_protected(&self, chunk_size: &str, mode: &str) {
        let env = self;
        fs::write(env.path("passphrase"), "correct horse\n").unwrap();
        let out = env
            .hoard()
            .args(["init", "--chunk-size", chunk_size, "--encryption", mode])
            .args(FAST_KDF)
            .env("HOARD_NEW_PASSWORD_FILE", env.path("passphrase"))
            .output()
            .expect("run hoard");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hoard` on this Env's store (with its passphrase, if protected).
    pub fn hoard(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hoard"));
        c.env("HOARD_STORE", &self.store);
        // This Env's host memory of stores (format-spec/known-store.md).
        c.env("HOARD_STATE_DIR", self.path("state"));
        // This Env's `hoard serve` directory (format-spec/server.md).
        c.env("HOARD_SERVER_DIR", self.path("server"));
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        let pass = self.path("passphrase");
        if pass.exists() {
            c.env("HOARD_PASSWORD_FILE", pass);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.hoard().args(args).output().expect("run hoard")
    }

    /// `hoard ARGS` with no key source and no terminal: what a holder of a
    /// protected store without its key (or a server) runs.
    pub fn keyless(&self, args: &[&str]) -> Output {
        self.hoard()
            .env_remove("HOARD_PASSWORD_FILE")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run hoard")
    }

    /// Starts `hoard ARGS` held at test pause point `pause` ("POINT:MS")
    /// and returns once it is there (HOARD_TEST_PAUSE_MARK).
    pub fn spawn_paused(&self, args: &[String], pause: &str) -> std::process::Child {
        let mark = self.path("pause-mark");
        let _ = fs::remove_file(&mark);
        let child = self
            .hoard()
            .args(args)
            .env("HOARD_TEST_PAUSE", pause)
            .env("HOARD_TEST_PAUSE_MARK", &mark)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run hoard");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !mark.exists() {
            assert!(std::time::Instant::now() < end, "hoard never reached {pause}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    /// Runs `hoard ARGS`, which must die at crash point `at` (`NAME` or
    /// `NAME#N`, engine/src/failpoint.rs).
    pub fn crash_at(&self, args: &[&str], at: &str) {
        use std::os::unix::process::ExitStatusExt;
        let out = self
            .hoard()
            .args(args)
            .env("HOARD_CRASH_AT", at)
            .output()
            .expect("run hoard");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "hoard {args:?} was not killed at {at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs hoard and returns stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "hoard {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Runs hoard expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "hoard {args:?} should have failed");
        assert_eq!(out.status.code(), Some(1), "errors exit with 1");
        String::from_utf8(out.stderr).expect("utf8 stderr")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON output")
    }

    /// Backs up `images` (NAME.img:PATH) and returns the JSON summary.
    pub fn backup(&self, id: &str, images: &[String]) -> serde_json::Value {
        let mut args = vec!["backup", "--id", id, "--json"];
        args.extend(images.iter().map(String::as_str));
        self.json(&args)
    }

    /// Names of the store's snapshots, as `hoard snapshots --json` lists them.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.json(&["snapshots", "--json"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["snapshot"].as_str().unwrap().to_string())
            .collect()
    }

    /// Restores `archive` of `snapshot` to a new file and checks it equals `expected`.
    pub fn assert_restores(&self, snapshot: &str, archive: &str, expected: &Path) {
        let out = self.dir.path().join(format!("restored-{}", next_number()));
        self.ok(&["restore", snapshot, archive, out.to_str().unwrap()]);
        assert_same_file(expected, &out);
        fs::remove_file(&out).unwrap();
    }

    /// Backs up directory `src` as `root.tree` of ct/ID; returns the snapshot name.
    pub fn backup_tree(&self, id: &str, src: &Path) -> String {
        let tree = format!("root.tree:{}", src.display());
        let out = self.json(&["backup", "--kind", "ct", "--id", id, "--json", &tree]);
        out["snapshot"].as_str().unwrap().to_string()
    }

    /// Damages the stored copy of `bytes` (which must be stored raw, as
    /// incompressible data is) by flipping its first byte in the pack.
    pub fn damage(&self, bytes: &[u8]) {
        for pack in self.packs() {
            let mut data = fs::read(&pack).unwrap();
            if let Some(at) = data.windows(bytes.len()).position(|w| w == bytes) {
                data[at] ^= 0xff;
                fs::write(&pack, &data).unwrap();
                return;
            }
        }
        panic!("{} bytes not found in any pack", bytes.len());
    }

    pub fn snapshot_dir(&self, snapshot: &str) -> PathBuf {
        self.store.join("snapshots").join(snapshot)
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in fs::read_dir(self.store.join("packs")).unwrap() {
            for f in fs::read_dir(d.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "pack") {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// Whether the hoard under test has its crash points compiled in (feature
/// `failpoints`, which scripts/test.sh turns on). Says so loudly when not,
/// and fails under CI.
/// Truncates a pack `into` bytes before the end of its last record (past
/// the trailer of a version 2 pack, which lists the records); returns the
/// new length.
pub fn cut_last_record(pack: &Path, into: u64) -> u64 {
    let bytes = fs::read(pack).unwrap();
    let scan = hoard_engine::pack::scan_bytes(&bytes, None);
    let (offset, h) = scan.records.last().expect("a pack with records");
    let len = offset + h.record_len() - into;
    fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .unwrap()
        .set_len(len)
        .unwrap();
    len
}

pub fn have_failpoints(test: &str) -> bool {
    if cfg!(feature = "failpoints") {
        return true;
    }
    eprintln!("SKIPPING {test}: hoard built without --features failpoints");
    assert!(std::env::var("CI").is_err(), "{test} skipped under CI");
    false
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for GiBs.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An image mixing what disks hold: incompressible data, text-like data,
/// repeated blocks and zero runs (left as holes).
pub fn mixed_image(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let block = 1 << 20;
    let mut off = 0u64;
    let mut i = 0u64;
    while off < size {
        let len = (size - off).min(block) as usize;
        let data = match (seed + i) % 4 {
            0 => noise(seed * 1000 + i, len),
            1 => (0..len)
                .map(|j| b"the quick brown fox jumps over the lazy dog\n"[j % 44])
                .collect(),
            2 => noise(seed, len), // repeats: the same block again and again
            _ => Vec::new(),       // a hole
        };
        if !data.is_empty() {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&data, off).unwrap();
        }
        off += len as u64;
        i += 1;
    }
    f.flush().unwrap();
}

pub fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

/// A real ext4 image built with `mkfs.ext4 -d` from a system directory, or
/// None (with a loud message) when mkfs.ext4 is unavailable.
pub fn ext4_image(path: &Path, size_mb: u64, from: &str) -> Option<()> {
    File::create(path).unwrap().set_len(size_mb << 20).unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d", from])
        .arg(path)
        .arg(format!("{size_mb}M"))
        .status();
    match status {
        Ok(s) if s.success() => Some(()),
        other => {
            eprintln!("SKIPPING ext4 image: mkfs.ext4 -d {from} failed: {other:?}");
            None
        }
    }
}

/// A size-limited tmpfs mounted for one test and unmounted on drop (also
/// when the test panics).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mb` MiB at `path`, or returns None (after a
    /// loud SKIPPING message naming `test`) when mounting is not allowed.
    pub fn mount(path: PathBuf, size_mb: u64, test: &str) -> Option<Tmpfs> {
        fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPING {test}: cannot mount a tmpfs (needs root)");
        }
        ok.then_some(Tmpfs { path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// CRC32C (Castagnoli), bitwise: what someone with write access but no
/// key computes to make a forged record's CRCs match. A test needs no speed.
pub fn crc32c(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Fills the file system of `dir` with `dir/filler` until `free` bytes
/// are left.
pub fn fill_leaving(dir: &Path, free: u64) {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    let len = fs::metadata(&filler).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(free))
        .unwrap();
}

/// Runs hoard on the store at `store` (not an Env's), returning its output.
pub fn hoard_at(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run hoard")
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn next_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
