//! hoard's QMP and NBD clients against the real servers: qemu-nbd (unix
//! socket and TCP), qemu-system-x86_64 (QMP events; a live backup of a disk
//! attached to a virtio device), and silent peers that must time out.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::qemu::{have_qemu, make_image, run};
use common::Env;
use hoard_engine::{Address, NbdClient, NbdError, Qmp, QmpError, STATE_HOLE, STATE_ZERO};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < T, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// qemu-nbd serving `img` read-only as export "e", killed when dropped.
fn qemu_nbd(img: &Path, args: &[&str]) -> Killed {
    let child = Command::new("qemu-nbd")
        .args(["-r", "-f", "raw", "-x", "e"])
        .args(args)
        .arg(img)
        .spawn()
        .unwrap();
    Killed(child)
}

/// A raw image: 1 MiB of 0x11, 3 MiB hole, 1 MiB of 0x22, 3 MiB hole.
fn image(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("img.raw");
    make_image(
        &p,
        "raw",
        "8M",
        &["write -P 0x11 0 1M".into(), "write -P 0x22 4M 1M".into()],
    );
    p
}

fn check_export(c: &NbdClient) {
    assert_eq!(c.size(), 8 << 20);
    let mut buf = vec![0xffu8; 6 << 20];
    c.read(0, &mut buf).unwrap();
    assert!(buf[..1 << 20].iter().all(|&b| b == 0x11));
    assert!(buf[1 << 20..4 << 20].iter().all(|&b| b == 0));
    assert!(buf[4 << 20..5 << 20].iter().all(|&b| b == 0x22));
    let id = c.context_id("base:allocation").expect("base:allocation agreed");
    let map = c.map(id).unwrap();
    let zero_bytes: u64 = map
        .iter()
        .filter(|e| e.flags & STATE_ZERO != 0)
        .map(|e| e.len)
        .sum();
    let hole_bytes: u64 = map
        .iter()
        .filter(|e| e.flags & STATE_HOLE != 0)
        .map(|e| e.len)
        .sum();
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), 8 << 20);
    assert_eq!(zero_bytes, 6 << 20, "{map:?}");
    assert_eq!(hole_bytes, 6 << 20, "{map:?}");
    // Many threads, many requests in flight, one connection.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..20u64 {
                    let mut b = vec![0u8; 300_000];
                    let off = (t * 977 + i * 100_003) % ((8 << 20) - 300_000);
                    c.read(off, &mut b).unwrap();
                }
            });
        }
    });
    // Past the end: the server's error comes back as a request error.
    let mut b = [0u8; 4096];
    assert!(matches!(c.read(8 << 20, &mut b), Err(NbdError::Request { .. })));
}

#[test]
fn nbd_client_reads_and_maps_qemu_nbd_over_unix_and_tcp() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let sock = dir.path().join("nbd.sock");
    let _unix = qemu_nbd(&img, &["-k", sock.to_str().unwrap()]);
    wait_for(&sock);
    let c = NbdClient::connect(&Address::Unix(sock.clone()), "e", &["base:allocation"], T).unwrap();
    check_export(&c);
    drop(c);
    // TCP on loopback, on a port picked by the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = port.to_string();
    let _tcp = qemu_nbd(&img, &["-e", "4", "-b", "127.0.0.1", "-p", &port, "--persistent"]);
    let addr = Address::Tcp(format!("127.0.0.1:{port}"));
    let t = Instant::now();
    let c = loop {
        match NbdClient::connect(&addr, "e", &["base:allocation"], T) {
            Ok(c) => break c,
            Err(e) if t.elapsed() < T => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    };
    check_export(&c);
    // An export that does not exist is refused by name.
    let err = NbdClient::connect(&addr, "nope", &[], T)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope") && err.contains("refused"), "{err}");
}

#[test]
fn silent_peers_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let _keep = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let short = Duration::from_millis(300);
    let t = Instant::now();
    assert!(matches!(
        Qmp::connect(&sock, short),
        Err(QmpError::Timeout { .. })
    ));
    let err = NbdClient::connect(&Address::Unix(sock.clone()), "e", &[], short)
        .err()
        .unwrap();
    assert!(matches!(err, NbdError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

struct Vm {
    _proc: Killed,
    qmp: std::path::PathBuf,
    disk: std::path::PathBuf,
}

fn have_qemu_system() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: qemu-system-x86_64 missing (scripts/setup.sh installs it from bookworm-backports)"
        );
    }
    ok && have_qemu()
}

/// A qemu-system-x86_64 with a qcow2 disk on a virtio-blk device `vd0` and
/// its CPUs stopped (-S): the block layer of a real VM, no guest needed.
fn start_vm(dir: &Path) -> Vm {
    let disk = dir.join("vm.qcow2");
    make_image(&disk, "qcow2", "32M", &["write -P 0x5c 2M 6M".into()]);
    let qmp = dir.join("vm.qmp");
    let p = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "64",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-blockdev")
        .arg(format!("driver=file,node-name=f0,filename={}", disk.display()))
        .args(["-blockdev", "driver=qcow2,node-name=drive0,file=f0"])
        .args(["-device", "virtio-blk-pci,drive=drive0,id=vd0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&qmp);
    Vm {
        _proc: Killed(p),
        qmp,
        disk,
    }
}

#[test]
fn qmp_events_and_a_live_backup_of_a_vm_disk() {
    if !have_qemu_system() {
        return;
    }
    let env = Env::new("64K");
    let vm = start_vm(env.dir.path());
    // Typed replies, events, errors with QEMU's class.
    let mut q = Qmp::connect(&vm.qmp, T).unwrap();
    let status: Value = q.execute("query-status", json!({})).unwrap();
    assert_eq!(status["status"], "prelaunch");
    q.execute_value("cont", json!({})).unwrap();
    q.wait_event("RESUME", T, |_| true).unwrap();
    q.execute_value("stop", json!({})).unwrap();
    q.wait_event("STOP", T, |_| true).unwrap();
    match q.execute_value("blockdev-del", json!({"node-name": "nope"})) {
        Err(QmpError::Command { class, desc, .. }) => {
            assert_eq!(class, "GenericError");
            assert!(desc.contains("nope"));
        }
        other => panic!("{other:?}"),
    }
    drop(q);
    // Default disks come from query-block; hoard runs its own NBD server.
    let qmp = vm.qmp.to_str().unwrap();
    let out = env.json(&["backup-qemu", "--qmp", qmp, "--id", "200", "--json"]);
    assert_eq!(out["disks"][0]["archive"], "vd0.img");
    assert_eq!(out["disks"][0]["bitmap"], "new bitmap");
    let again = env.json(&["backup-qemu", "--qmp", qmp, "--id", "200", "--json"]);
    assert_eq!(again["disks"][0]["bitmap"], "clean");
    let restored = env.path("vd0.raw");
    env.ok(&[
        "restore",
        again["snapshot"].as_str().unwrap(),
        "vd0.img",
        restored.to_str().unwrap(),
    ]);
    // -U: read the image QEMU holds open.
    let cmp = run(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-F",
            "raw",
            vm.disk.to_str().unwrap(),
            restored.to_str().unwrap(),
        ],
    );
    assert!(cmp.contains("identical"), "{cmp}");
    // Nothing of hoard is left, and the server it started is gone.
    let mut q = Qmp::connect(&vm.qmp, T).unwrap();
    let nodes: Vec<Value> = q
        .execute("query-named-block-nodes", json!({"flat": true}))
        .unwrap();
    assert!(nodes
        .iter()
        .all(|n| !n["node-name"].as_str().unwrap().starts_with("hoard-")));
    q.execute_value(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": env.path("x.sock")}}}),
    )
    .expect("hoard stopped its NBD server");
    q.execute_value("quit", json!({})).unwrap();
    q.wait_event("SHUTDOWN", T, |_| true).unwrap();
}
