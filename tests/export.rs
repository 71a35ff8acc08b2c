//! `hoard export` against the real NBD clients: qemu-img (convert, compare,
//! a qcow2 overlay with the export as backing file), qemu-io, nbdinfo --map
//! and nbdcopy; damaged chunks, writable overlays, garbage and refusals.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu::{have_qemu, run};
use common::{assert_same_file, mixed_image, noise, Env};
use serde_json::Value;

fn have_nbd_tools() -> bool {
    let ok = ["nbdinfo", "nbdcopy"].iter().all(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        eprintln!("SKIPPED: nbdinfo/nbdcopy missing (scripts/setup.sh installs libnbd-bin)");
    }
    ok && have_qemu()
}

/// A running `hoard export`, stopped (SIGKILL) when dropped.
struct Exported {
    child: Child,
    uri: String,
    log: PathBuf,
}

impl Exported {
    fn start(env: &Env, args: &[&str]) -> Exported {
        let log = env.path(&format!(
            "export-{}.log",
            std::process::id() as u64 + rand_suffix()
        ));
        let mut child = env
            .hoard()
            .arg("export")
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run hoard export");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "no ready line: {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap()
            )
        });
        assert_eq!(ready["event"], "ready");
        Exported {
            uri: ready["uri"].as_str().unwrap().to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Stops it with `signal`; returns how it ended and its last JSON line.
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, Value) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let mut rest = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        let status = self.child.wait().unwrap();
        let last = rest.lines().last().unwrap_or("null").to_string();
        (status, serde_json::from_str(&last).unwrap_or(Value::Null))
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A qcow2 at `top` with the export at `uri` as its (raw) backing file.
fn qcow2_on(uri: &str, top: &Path) {
    let top = top.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", uri, top],
    );
}

/// Backs up a generated 48 MiB image (data, text, repeats, holes) in 1 MiB chunks.
fn backed_up_image() -> (Env, PathBuf, String) {
    let env = Env::new("1M");
    let img = env.path("disk.raw");
    mixed_image(&img, 48 << 20, 5);
    let snap = env.backup("vm1", &[format!("disk.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    (env, img, snap)
}

/// `nbdinfo --map` as (offset, len, flags), and what the image's zero chunks predict.
fn map_of(uri: &str) -> Vec<(u64, u64, u32)> {
    run("nbdinfo", &["--map", uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

fn zero_map(img: &Path, chunk: usize) -> Vec<(u64, u64, u32)> {
    let data = std::fs::read(img).unwrap();
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for (i, c) in data.chunks(chunk).enumerate() {
        let flags = if c.iter().all(|b| *b == 0) { 3 } else { 0 };
        match out.last_mut() {
            Some(l) if l.2 == flags => l.1 += c.len() as u64,
            _ => out.push(((i * chunk) as u64, c.len() as u64, flags)),
        }
    }
    out
}

#[test]
fn qemu_img_nbdinfo_and_nbdcopy_read_the_export() {
    if !have_nbd_tools() {
        return;
    }
    let (env, img, snap) = backed_up_image();
    let sock = env.path("e.sock");
    let e = Exported::start(&env, &[&snap, "disk.img", "--socket", sock.to_str().unwrap()]);
    assert_eq!(e.uri, format!("nbd+unix:///disk.img?socket={}", sock.display()));
    let out = env.path("converted.raw");
    run(
        "qemu-img",
        &["convert", "-O", "raw", &e.uri, out.to_str().unwrap()],
    );
    common::assert_same_file(&img, &out);
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", img.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
    // Zero chunks are holes.
    assert_eq!(map_of(&e.uri), zero_map(&img, 1 << 20));
    let copied = env.path("copied.raw");
    run("nbdcopy", &[&e.uri, copied.to_str().unwrap()]);
    common::assert_same_file(&img, &copied);
    // Many clients at once.
    let compares: Vec<_> = (0..6)
        .map(|_| {
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", img.to_str().unwrap(), &e.uri])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in compares {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    // A read-only export refuses writes.
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4096", &e.uri])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&w.stdout).to_string() + &String::from_utf8_lossy(&w.stderr);
    assert!(said.contains("read-only") || said.contains("ermi"), "{said}");
    let (status, end) = e.stop(libc::SIGTERM);
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "ends by the signal it was sent"
    );
    assert_eq!(end["event"], "stopped");
    assert!(end["report"]["connections"].as_u64().unwrap() >= 9);
    assert!(!sock.exists(), "socket removed");

    // Loopback TCP, an index file instead of a snapshot name.
    let fidx = env.snapshot_dir(&snap).join("disk.img.fidx");
    let e = Exported::start(
        &env,
        &[
            "--index",
            fidx.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--insecure-tcp",
        ],
    );
    assert!(e.uri.starts_with("nbd://127.0.0.1:"), "{}", e.uri);
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", img.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
}

/// An encrypted store serves the same bytes: chunks are opened as they
/// are read, and the export needs the key (refused without it).
#[test]
fn an_encrypted_store_exports_the_same_image() {
    if !have_nbd_tools() {
        return;
    }
    let env = Env::protected("64K", "encrypt");
    let img = env.path("disk.raw");
    mixed_image(&img, 8 << 20, 9);
    let snap = env.backup("vm1", &[format!("disk.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let sock = env.path("e.sock");
    let e = Exported::start(&env, &[&snap, "disk.img", "--socket", sock.to_str().unwrap()]);
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", img.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
    drop(e);
    let out = env
        .hoard()
        .env_remove("HOARD_PASSWORD_FILE")
        .args(["export", &snap, "disk.img", "--socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("passphrase"),
        "{out:?}"
    );
}

#[test]
fn damaged_chunk_fails_its_reads_only_and_is_logged() {
    if !have_nbd_tools() {
        return;
    }
    let env = Env::new("1M");
    let img = env.path("disk.raw");
    // Four chunks of incompressible data: stored raw, so findable in the pack.
    std::fs::write(&img, noise(77, 4 << 20)).unwrap();
    let snap = env.backup("vm1", &[format!("disk.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let data = std::fs::read(&img).unwrap();
    env.damage(&data[(2 << 20) + 4096..(2 << 20) + 4096 + 64]);

    let e = Exported::start(&env, &[&snap, "disk.img"]);
    let read = |offset: u64| {
        Command::new("qemu-io")
            .args(["-r", "-f", "raw", "-c", &format!("read {offset} 65536"), &e.uri])
            .output()
            .unwrap()
    };
    let bad = read((2 << 20) + 8192);
    let said = String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("Input/output error"), "{said}");
    // Other ranges, before and after, still read; so does the damaged one again (still EIO).
    for offset in [0, 1 << 20, 3 << 20] {
        let ok = read(offset);
        assert!(ok.status.success() && !String::from_utf8_lossy(&ok.stdout).contains("error"));
    }
    assert!(String::from_utf8_lossy(&read(2 << 20).stdout).contains("Input/output error"));
    let conv = Command::new("qemu-img")
        .args([
            "convert",
            "-O",
            "raw",
            &e.uri,
            env.path("x.raw").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!conv.status.success());
    let log = e.log();
    assert!(
        log.contains("chunk ") && log.contains("at offset 2097152"),
        "{log}"
    );
    let (status, end) = e.stop(libc::SIGINT);
    assert_eq!(status.signal(), Some(libc::SIGINT));
    assert!(end["report"]["failed_requests"].as_u64().unwrap() >= 3);
}

fn store_fingerprint(env: &Env) -> Vec<(PathBuf, u64, Vec<u8>)> {
    let mut out: Vec<_> = common::walk(&env.store.join("packs"))
        .into_iter()
        .chain(common::walk(&env.store.join("snapshots")))
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data.len() as u64, blake3::hash(&data).as_bytes().to_vec())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn writable_overlay_takes_writes_and_serves_as_a_backing_file() {
    if !have_nbd_tools() {
        return;
    }
    let (env, img, snap) = backed_up_image();
    let before = store_fingerprint(&env);
    let e = Exported::start(
        &env,
        &[
            &snap,
            "disk.img",
            "--writable",
            "--overlay-dir",
            env.dir.path().to_str().unwrap(),
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1000 70000",
            "-c",
            "write -P 0xcd 3145728 4096",
            "-c",
            "flush",
            &e.uri,
        ],
    );
    let mut expect = std::fs::read(&img).unwrap();
    expect[1000..71000].fill(0xab);
    expect[3145728..3145728 + 4096].fill(0xcd);
    let want = env.path("expected.raw");
    std::fs::write(&want, &expect).unwrap();
    // Every client sees the writes.
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", want.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
    // The written hole is data now; the rest of the map is unchanged.
    let map = map_of(&e.uri);
    assert!(
        map.iter()
            .any(|&(o, l, f)| f == 0 && o <= 3145728 && o + l >= 3145728 + 4096),
        "{map:?}"
    );
    // A qcow2 overlay with the export as its backing file, as a VM would use it.
    let top = env.path("top.qcow2");
    qcow2_on(&e.uri, &top);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 5242880 65536",
            top.to_str().unwrap(),
        ],
    );
    expect[5242880..5242880 + 65536].fill(0x11);
    std::fs::write(&want, &expect).unwrap();
    assert!(run(
        "qemu-img",
        &[
            "compare",
            "-F",
            "raw",
            top.to_str().unwrap(),
            want.to_str().unwrap()
        ]
    )
    .contains("identical"));
    let (_, end) = e.stop(libc::SIGTERM);
    assert_eq!(end["event"], "stopped");
    // The overlay is gone with the export; the store was never written.
    assert!(std::fs::read_dir(env.dir.path()).unwrap().all(|f| !f
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("overlay")));
    assert_eq!(store_fingerprint(&env), before);
    env.assert_restores(&snap, "disk.img", &img);
}

#[test]
fn refusals_garbage_and_shutdown() {
    if !have_nbd_tools() {
        return;
    }
    let (env, img, snap) = backed_up_image();
    let err = env.fails(&["export", "host/nope", "disk.img"]);
    assert!(err.contains("no snapshot"), "{err}");
    let err = env.fails(&["export", &snap, "other.img"]);
    assert!(err.contains("has no archive other.img"), "{err}");
    let err = env.fails(&[
        "export",
        &snap,
        "disk.img",
        "--listen",
        "0.0.0.0:0",
        "--insecure-tcp",
    ]);
    assert!(err.contains("loopback"), "{err}");
    let file = env.path("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let err = env.fails(&["export", &snap, "disk.img", "--socket", file.to_str().unwrap()]);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let sock = env.path("e.sock");
    let e = Exported::start(&env, &[&snap, "disk.img", "--socket", sock.to_str().unwrap()]);
    let err = env.fails(&["export", &snap, "disk.img", "--socket", sock.to_str().unwrap()]);
    assert!(err.contains("in use"), "{err}");
    // Garbage, a truncated handshake, a client gone in the middle of a request.
    for garbage in [&[0xffu8; 300][..], b"NBDMAGIC", &[0, 0, 0, 3, 0x49, 0x48]] {
        let mut s = UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(garbage);
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    // Client flags, then NBD_OPT_EXPORT_NAME "", then half a read request.
    s.write_all(&[0, 0, 0, 3]).unwrap();
    s.write_all(b"IHAVEOPT").unwrap();
    s.write_all(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 48 << 20);
    s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0]).unwrap();
    drop(s);
    let t = Instant::now();
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", img.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
    assert!(t.elapsed() < Duration::from_secs(30));
    let (status, _) = e.stop(libc::SIGINT);
    assert_eq!(status.signal(), Some(libc::SIGINT));
    assert!(!sock.exists());
    assert!(
        std::fs::read_dir(env.store.join("sessions")).map_or(true, |mut d| d.next().is_none()),
        "session unregistered"
    );
}

#[test]
fn gc_keeps_what_a_running_export_serves() {
    if !have_nbd_tools() {
        return;
    }
    let (env, img, snap) = backed_up_image();
    let e = Exported::start(&env, &[&snap, "disk.img"]);
    env.ok(&["forget", &snap]);
    // The first run condemns the chunks, the later ones would remove them
    // (and their packs, past GC's one-second grace) if no session that
    // started earlier were alive.
    for _ in 0..3 {
        env.ok(&["gc"]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(run(
        "qemu-img",
        &["compare", "-f", "raw", img.to_str().unwrap(), &e.uri]
    )
    .contains("identical"));
    let (_, end) = e.stop(libc::SIGTERM);
    assert_eq!(end["report"]["failed_requests"], 0);
    // Once it has ended, the next GCs free everything (packs once older
    // than GC's one-second grace).
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["gc"]);
    env.ok(&["gc"]);
    assert!(env.packs().is_empty(), "{:?}", env.packs());
}

#[test]
fn a_vm_boots_and_runs_from_the_export_of_its_backup() {
    if !have_nbd_tools() {
        return;
    }
    let env = Env::new("1M");
    let vm_dir = env.path("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let Some(mut g) = common::guest::Guest::boot(&vm_dir) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(1));
    let (qmp, qga) = (
        g.qmp_path().display().to_string(),
        g.qga_path().display().to_string(),
    );
    let out = env.json(&[
        "backup-vm",
        "--json",
        "--id",
        "100",
        "--mode",
        "snapshot",
        "--qmp",
        &qmp,
        "--qga",
        &qga,
        "--disk",
        "disk0=vda.img",
    ]);
    let snap = out["snapshot"].as_str().unwrap().to_string();
    g.kill();
    let before = store_fingerprint(&env);

    // The backup, served; a qcow2 on top of it takes the guest's writes.
    let e = Exported::start(&env, &[&snap, "vda.img"]);
    let backed_up = env.path("backed-up.raw");
    run(
        "qemu-img",
        &["convert", "-O", "raw", &e.uri, backed_up.to_str().unwrap()],
    );
    let lines_then = common::guest::check_restored_disk(&backed_up);
    let run_dir = env.path("from-export");
    std::fs::create_dir(&run_dir).unwrap();
    let top = run_dir.join("top.qcow2");
    qcow2_on(&e.uri, &top);
    let mut g2 = common::guest::Guest::boot_on(&run_dir, &top).expect("guest boots from the export");
    assert!(!g2.serial().contains("cannot mount"), "{}", g2.serial());
    // It mounted the backed-up file system and goes on writing to it.
    std::thread::sleep(Duration::from_secs(1));
    g2.agent("guest-fsfreeze-freeze");
    let now = run_dir.join("now.raw");
    // -U: QEMU still has the (frozen) disk open.
    run(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            top.to_str().unwrap(),
            now.to_str().unwrap(),
        ],
    );
    g2.kill();
    let lines_now = common::guest::check_restored_disk(&now);
    assert!(
        lines_now > lines_then,
        "{lines_now} lines now, {lines_then} in the backup"
    );
    let (_, end) = e.stop(libc::SIGTERM);
    assert_eq!(end["report"]["failed_requests"], 0);
    assert_eq!(store_fingerprint(&env), before, "the store is never written");
}

/// Memory stays at the cache plus what is in flight, whatever the image size.
#[test]
fn export_memory_is_bounded() {
    if !have_nbd_tools() {
        return;
    }
    let env = Env::new("4M");
    let img = env.path("rand.raw");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&img).unwrap();
        for i in 0..64 {
            f.write_all(&noise(900 + i, 16 << 20)).unwrap();
        }
    }
    let snap = env.backup("big", &[format!("d.img:{}", img.display())])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(&img).unwrap();
    let e = Exported::start(&env, &[&snap, "d.img", "--cache-size", "64M"]);
    // Four connections with many requests in flight each, over all 1 GiB.
    run("nbdcopy", &["--connections=4", &e.uri, "null:"]);
    let (_, end) = e.stop(libc::SIGTERM);
    let peak = end["peak_rss_mib"].as_u64().unwrap();
    eprintln!("export peak RSS serving 1 GiB to nbdcopy with a 64 MiB cache: {peak} MiB");
    assert!(peak < 256, "peak RSS {peak} MiB");
}

/// A CA, a server certificate for 127.0.0.1 and client certificates, in
/// qemu's tls-creds-x509 layout: `server/` (ca-cert, server-cert,
/// server-key), `client/` and `stranger/` (ca-cert, client-cert,
/// client-key; the stranger's is signed by another CA).
fn make_certificates(dir: &std::path::Path) -> bool {
    let sh = format!(
        r#"set -e
mkdir -p {dir}
cd {dir}
mkdir -p server client stranger other
key() {{ openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }}
ca() {{ key "$1/ca-key.pem"; openssl req -x509 -new -key "$1/ca-key.pem" -out "$1/ca-cert.pem" -days 2 -subj "/CN=$2"; }}
sign() {{ # CA-DIR KEY CERT CN EXT
  openssl req -new -key "$2" -subj "/CN=$4" -out "$3.csr"
  printf '%s\n' "$5" > "$3.ext"
  openssl x509 -req -in "$3.csr" -CA "$1/ca-cert.pem" -CAkey "$1/ca-key.pem" -CAcreateserial -days 2 -extfile "$3.ext" -out "$3" 2>/dev/null
}}
ca server "hoard test CA"
ca other "someone else's CA"
key server/server-key.pem
sign server server/server-key.pem server/server-cert.pem 127.0.0.1 "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
for who in client stranger; do
  cp server/ca-cert.pem $who/
  key $who/client-key.pem
done
sign server client/client-key.pem client/client-cert.pem client "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
sign other stranger/client-key.pem stranger/client-cert.pem stranger "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
"#,
        dir = dir.display()
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPING TLS export test: openssl could not make certificates");
        assert!(std::env::var("CI").is_err(), "skipped under CI");
    }
    ok
}

#[test]
fn tcp_is_served_with_tls_and_client_certificates_only() {
    if !have_nbd_tools() {
        return;
    }
    let (env, img, snap) = backed_up_image();
    let certs = env.path("certs");
    if !make_certificates(&certs) {
        return;
    }
    // TCP without TLS is refused unless asked for explicitly.
    let err = env.fails(&["export", &snap, "disk.img", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("--tls-creds") && err.contains("--insecure-tcp"),
        "{err}"
    );
    let server = certs.join("server");
    let e = Exported::start(
        &env,
        &[
            &snap,
            "disk.img",
            "--listen",
            "127.0.0.1:0",
            "--tls-creds",
            server.to_str().unwrap(),
        ],
    );
    assert!(e.uri.starts_with("nbds://127.0.0.1:"), "{}", e.uri);
    let with_certs = |who: &str| format!("{}?tls-certificates={}", e.uri, certs.join(who).display());
    // libnbd's clients with a client certificate of the CA.
    let info = run("nbdinfo", &["--json", &with_certs("client")]);
    assert!(
        info.contains(&format!(
            "\"export-size\": {}",
            std::fs::metadata(&img).unwrap().len()
        )),
        "{info}"
    );
    let copy = env.path("copy.raw");
    run("nbdcopy", &[&with_certs("client"), copy.to_str().unwrap()]);
    assert_same_file(&img, &copy);
    // qemu's own TLS client.
    let (port, _) = e
        .uri
        .trim_start_matches("nbds://127.0.0.1:")
        .split_once('/')
        .unwrap();
    let by_qemu = env.path("by-qemu.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=client",
                certs.join("client").display()
            ),
            "--image-opts",
            &format!("driver=nbd,host=127.0.0.1,port={port},export=disk.img,tls-creds=tls0"),
            "-O",
            "raw",
            by_qemu.to_str().unwrap(),
        ],
    );
    assert_same_file(&img, &by_qemu);
    // No TLS, or a certificate of another CA: no data.
    let plain = e.uri.replacen("nbds://", "nbd://", 1);
    let out = Command::new("nbdinfo").arg(&plain).output().unwrap();
    assert!(!out.status.success(), "plain NBD got in");
    let out = Command::new("nbdinfo")
        .arg(with_certs("stranger"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a stranger's certificate got in");
    let log = e.log();
    assert!(log.contains("TLS established"), "{log}");
    assert!(log.contains("TLS handshake"), "the stranger is logged: {log}");
}
