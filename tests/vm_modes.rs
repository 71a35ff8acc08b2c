//! VM backup modes against a real guest: qemu-system-x86_64 (TCG) booting
//! Debian's kernel with busybox and the real qemu-ga (scripts/guest.sh),
//! writing numbered lines to its ext4 disk while it is backed up.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::{check_restored_disk, Guest};
use common::Env;
use serde_json::{json, Value};

fn boot(env: &Env) -> Option<Guest> {
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let g = Guest::boot(&dir)?;
    // Let the guest write a few lines first.
    std::thread::sleep(Duration::from_secs(1));
    Some(g)
}

fn backup_vm_args(g: &Guest, mode: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["backup-vm", "--json", "--id", "100", "--mode", mode, "--qmp"]
        .map(String::from)
        .to_vec();
    a.push(g.qmp_path().display().to_string());
    a.extend(["--disk".to_string(), "disk0=vda.img".to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn backup_vm(env: &Env, g: &Guest, mode: &str, extra: &[&str]) -> Value {
    let args = backup_vm_args(g, mode, extra);
    env.json(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Restores vda.img of `snap` and checks it; returns the number of log lines.
fn restored_lines(env: &Env, snap: &str) -> u64 {
    let img = env.path(&format!("{}.img", snap.replace('/', "-")));
    env.ok(&["restore", snap, "vda.img", img.to_str().unwrap()]);
    check_restored_disk(&img)
}

#[test]
fn snapshot_mode_freezes_the_guest_only_around_the_point_in_time() {
    if !common::have_failpoints("snapshot_mode_freezes_the_guest_only_around_the_point_in_time") {
        return;
    }
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    // Held just before the point in time, frozen: the test asks the agent.
    let child = env.spawn_paused(
        &backup_vm_args(&g, "snapshot", &["--qga", &qga]),
        "vm-before-point:3000",
    );
    assert_eq!(g.agent("guest-fsfreeze-status"), json!("frozen"));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g.agent("guest-fsfreeze-status"), json!("thawed"));
    assert_eq!(g.status(), "running");
    assert_eq!(v["mode"], "snapshot");
    assert_eq!(v["vm"]["guest_agent"], "frozen", "{v}");
    assert_eq!(v["vm"]["downtime_secs"], 0.0);
    assert!(v["vm"]["frozen_secs"].as_f64().unwrap() >= 3.0, "{v}");
    assert_eq!(v["vm"]["disks"][0]["bitmap"], "new bitmap");
    let snap = v["snapshot"].as_str().unwrap().to_string();
    let lines = restored_lines(&env, &snap);
    assert!(lines > 0, "the guest had written before the point in time");
    let show = env.ok(&["show", &snap]);
    assert!(
        show.contains("mode     snapshot") && show.contains("agent frozen"),
        "{show}"
    );

    // The incremental reads only what the guest wrote since.
    std::thread::sleep(Duration::from_secs(1));
    let v2 = backup_vm(&env, &g, "snapshot", &["--qga", &qga]);
    let bitmap = v2["vm"]["disks"][0]["bitmap"].as_str().unwrap();
    assert!(bitmap.starts_with("OK ("), "{v2}");
    let snap2 = v2["snapshot"].as_str().unwrap();
    assert!(restored_lines(&env, snap2) > lines);
}

#[test]
fn suspend_mode_pauses_only_around_the_point_in_time() {
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    let v = backup_vm(&env, &g, "suspend", &["--qga", &qga]);
    assert_eq!(g.status(), "running");
    assert_eq!(v["mode"], "suspend");
    let downtime = v["vm"]["downtime_secs"].as_f64().unwrap();
    // Paused for one QMP transaction, not for the copy.
    assert!(downtime > 0.0 && downtime < 2.0, "{v}");
    eprintln!(
        "suspend mode downtime: {downtime:.3} s, backup {} s",
        v["duration_secs"]
    );
    let lines = restored_lines(&env, v["snapshot"].as_str().unwrap());
    assert!(lines > 0);
    std::thread::sleep(Duration::from_secs(1));
    let v = backup_vm(&env, &g, "suspend", &["--qga", &qga]);
    assert!(
        v["vm"]["disks"][0]["bitmap"]
            .as_str()
            .unwrap()
            .starts_with("OK ("),
        "{v}"
    );
    assert!(restored_lines(&env, v["snapshot"].as_str().unwrap()) > lines);

    // A VM that was paused before stays paused (QMP serves one client at
    // a time: each request on its own connection).
    g.qmp().execute_value("stop", json!({})).unwrap();
    let v = backup_vm(&env, &g, "suspend", &["--no-fsfreeze"]);
    assert_eq!(g.status(), "paused");
    assert_eq!(v["vm"]["downtime_secs"], 0.0);
    g.qmp().execute_value("cont", json!({})).unwrap();
}

/// A stand-in agent on its own socket: answers the sync and pings, never
/// answers a freeze, and notes the thaw.
fn hanging_agent(path: &Path) -> std::thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for conn in listener.incoming().take(3) {
            let Ok(conn) = conn else { break };
            let mut out = conn.try_clone().unwrap();
            for line in BufReader::new(conn).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_start_matches('\u{FFFD}')
                    .to_string();
                let Ok(cmd) = serde_json::from_str::<Value>(text.trim()) else {
                    continue;
                };
                let name = cmd["execute"].as_str().unwrap_or("").to_string();
                seen.push(name.clone());
                let reply = match name.as_str() {
                    "guest-sync-delimited" => format!("\u{ff}{{\"return\": {}}}\n", cmd["arguments"]["id"]),
                    "guest-ping" => "{\"return\": {}}\n".into(),
                    "guest-fsfreeze-thaw" => "{\"return\": 0}\n".into(),
                    _ => continue, // the freeze hangs
                };
                let bytes: Vec<u8> = reply.chars().map(|c| c as u32 as u8).collect();
                if out.write_all(&bytes).is_err() {
                    break;
                }
                if name == "guest-fsfreeze-thaw" {
                    return seen;
                }
            }
        }
        seen
    })
}

#[test]
fn a_hanging_agent_times_out_thaws_and_the_backup_goes_on() {
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let sock = env.path("fake-qga.sock");
    let agent = hanging_agent(&sock);
    let started = Instant::now();
    let args = backup_vm_args(
        &g,
        "snapshot",
        &["--qga", sock.to_str().unwrap(), "--freeze-timeout", "2"],
    );
    let out = env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("crash-consistent"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = v["vm"]["guest_agent"].as_str().unwrap();
    assert!(
        state.starts_with("freeze failed") && state.contains("no reply"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let seen = agent.join().unwrap();
    assert!(seen.contains(&"guest-fsfreeze-thaw".to_string()), "{seen:?}");
    assert_eq!(g.status(), "running");

    // No agent at all: crash-consistent, said so.
    let v = backup_vm(&env, &g, "snapshot", &[]);
    assert!(
        v["vm"]["guest_agent"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{v}"
    );
}

/// `hoard ARGS` with the test's hook script failing in `phase`.
fn with_hook_failing_at(env: &Env, args: &[String], phase: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--store")
        .arg(env.path("store"))
        .args(args)
        .env("FAIL_AT", phase)
        .output()
        .unwrap()
}

#[test]
fn hooks_run_in_order_and_a_failing_pre_hook_aborts_cleanly() {
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let log = env.path("hook.log");
    let hook = env.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            // It also talks on standard output, which must not end up in --json.
            "#!/bin/sh\necho \"hook says $1\"\necho \"$1 $HOARD_ID $HOARD_MODE\" >>{}\n\
             [ \"$1\" = \"$HANG_AT\" ] && sleep 600\n[ \"$1\" != \"$FAIL_AT\" ]\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook_arg = hook.display().to_string();
    backup_vm(&env, &g, "suspend", &["--no-fsfreeze", "--hook", &hook_arg]);
    let phases = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        phases,
        "job-start 100 suspend\npre-stop 100 suspend\npre-snapshot 100 suspend\npost-snapshot 100 suspend\nbackup-end 100 suspend\n"
    );
    std::fs::remove_file(&log).unwrap();
    let before = env.snapshot_names();
    let args = backup_vm_args(&g, "snapshot", &["--no-fsfreeze", "--hook", &hook_arg]);
    let out = with_hook_failing_at(&env, &args, "pre-snapshot");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pre-snapshot"), "{err}");
    let phases = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        phases,
        "job-start 100 snapshot\npre-snapshot 100 snapshot\njob-abort 100 snapshot\n"
    );
    assert_eq!(env.snapshot_names(), before);
    assert_eq!(g.status(), "running");

    // A hook that hangs is killed at its timeout and fails the job.
    std::fs::remove_file(&log).unwrap();
    let started = Instant::now();
    let args = backup_vm_args(
        &g,
        "snapshot",
        &["--no-fsfreeze", "--hook", &hook_arg, "--hook-timeout", "2"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("--store")
        .arg(env.path("store"))
        .args(&args)
        .env("HANG_AT", "pre-snapshot")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pre-snapshot") && err.contains("killed"), "{err}");
    assert!(
        err.contains("hook says job-start"),
        "hook output goes to stderr: {err}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .ends_with("job-abort 100 snapshot\n"));
    assert_eq!(env.snapshot_names(), before);
    assert_eq!(g.status(), "running");

    // In stop mode, a failure once the guest is off boots it again.
    let args = backup_vm_args(&g, "stop", &["--hook", &hook_arg]);
    let out = with_hook_failing_at(&env, &args, "pre-snapshot");
    assert!(!out.status.success());
    assert!(g.serial().contains("guest: /mnt unmounted"));
    assert_eq!(g.status(), "running");
    assert!(g.wait_serial_count("guest: ready", 2, Duration::from_secs(60)));
    assert_eq!(env.snapshot_names(), before);
}

#[test]
fn stop_mode_shuts_down_in_order_and_boots_the_guest_again() {
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    let v = backup_vm(&env, &g, "stop", &["--qga", &qga]);
    let serial = g.serial();
    assert!(
        serial.contains("guest: /mnt unmounted"),
        "no orderly shutdown:\n{serial}"
    );
    assert!(
        g.wait_serial_count("guest: ready", 2, Duration::from_secs(60)),
        "the guest did not boot again:\n{}",
        g.serial()
    );
    assert_eq!(g.status(), "running");
    assert_eq!(v["mode"], "stop");
    assert_eq!(v["vm"]["guest_agent"], "not running");
    let downtime = v["vm"]["downtime_secs"].as_f64().unwrap();
    assert!(downtime > 0.0, "{v}");
    eprintln!(
        "stop mode downtime (shutdown to boot): {downtime:.3} s, backup {} s",
        v["duration_secs"]
    );
    // Unmounted before the point in time: clean, every line complete.
    let lines = restored_lines(&env, v["snapshot"].as_str().unwrap());
    assert!(lines > 0);

    // The bitmap lives on in the same QEMU: the next one is incremental.
    std::thread::sleep(Duration::from_secs(1));
    let v = backup_vm(&env, &g, "stop", &[]);
    assert!(
        v["vm"]["disks"][0]["bitmap"]
            .as_str()
            .unwrap()
            .starts_with("OK ("),
        "{v}"
    );
    assert!(restored_lines(&env, v["snapshot"].as_str().unwrap()) > lines);
    assert!(g.wait_serial_count("guest: ready", 3, Duration::from_secs(60)));

    // A VM that is not running is not shut down, and stays as it was.
    g.qmp().execute_value("stop", json!({})).unwrap();
    backup_vm(&env, &g, "stop", &[]);
    assert_eq!(g.status(), "paused");
    assert_eq!(g.serial().matches("guest: /mnt unmounted").count(), 2);
}

/// No snapshot, no node of hoard's left in QEMU, the guest running.
fn assert_nothing_left(env: &Env, g: &Guest) {
    assert!(env.snapshot_names().is_empty(), "{:?}", env.snapshot_names());
    let nodes: Vec<Value> = g
        .qmp()
        .execute("query-named-block-nodes", json!({"flat": true}))
        .unwrap();
    let ours: Vec<_> = nodes
        .iter()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("hoard-"))
        .collect();
    assert!(ours.is_empty(), "left in QEMU: {ours:?}");
    assert_eq!(g.status(), "running");
}

#[test]
fn a_full_store_fails_cleanly_and_the_guest_is_thawed_and_running() {
    let env = Env::new("64K");
    let Some(g) = Guest::boot_with(
        &{
            let d = env.path("vm");
            std::fs::create_dir_all(&d).unwrap();
            d
        },
        24,
    ) else {
        return;
    };
    let Some(small) = common::Tmpfs::mount(env.path("small"), 8, "a_full_store_fails_cleanly") else {
        return;
    };
    let store = small.path.join("store");
    let out = common::hoard_at(&store, &["init"]);
    assert!(out.status.success());
    let qga = g.qga_path().display().to_string();
    let args = backup_vm_args(&g, "snapshot", &["--qga", &qga]);
    let mut full = vec!["--store".to_string(), store.display().to_string()];
    full.extend(args);
    let out = Command::new(env!("CARGO_BIN_EXE_hoard"))
        .args(&full)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left") || err.contains("space"), "{err}");
    assert_eq!(g.agent("guest-fsfreeze-status"), json!("thawed"));
    let snaps = common::hoard_at(&store, &["snapshots"]);
    assert!(String::from_utf8_lossy(&snaps.stdout).trim().is_empty());
    assert_nothing_left(&env, &g);
}

#[test]
fn ctrl_c_at_the_point_in_time_still_thaws_the_guest() {
    if !common::have_failpoints("ctrl_c_at_the_point_in_time_still_thaws_the_guest") {
        return;
    }
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    let child = env.spawn_paused(
        &backup_vm_args(&g, "snapshot", &["--qga", &qga]),
        "vm-before-point:2000",
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait_with_output().unwrap().status;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert_eq!(g.agent("guest-fsfreeze-status"), json!("thawed"));
    assert_eq!(g.status(), "running");
    assert!(env.snapshot_names().is_empty());
    // What the interrupted run left in QEMU is removed by the next one.
    let v = backup_vm(&env, &g, "snapshot", &["--qga", &qga]);
    assert_eq!(v["vm"]["guest_agent"], "frozen");
    assert!(restored_lines(&env, v["snapshot"].as_str().unwrap()) > 0);
}

#[test]
fn qemu_killed_mid_backup_leaves_no_snapshot_and_the_next_backup_reads_everything() {
    if !common::have_failpoints(
        "qemu_killed_mid_backup_leaves_no_snapshot_and_the_next_backup_reads_everything",
    ) {
        return;
    }
    let env = Env::new("64K");
    let Some(mut g) = boot(&env) else { return };
    backup_vm(&env, &g, "snapshot", &[]);
    let before = env.snapshot_names();
    let child = env.spawn_paused(
        &backup_vm_args(&g, "snapshot", &["--timeout", "10"]),
        "live-after-snapshot-point:2000",
    );
    g.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("QMP") || err.contains("NBD"), "{err}");
    assert_eq!(env.snapshot_names(), before, "no partial snapshot");
    // QEMU comes back: the killed run's bitmap cannot be trusted.
    g.restart();
    std::thread::sleep(Duration::from_secs(1));
    let v = backup_vm(&env, &g, "snapshot", &[]);
    let bitmap = v["vm"]["disks"][0]["bitmap"].as_str().unwrap();
    assert!(
        bitmap.starts_with("bitmap invalid") || bitmap == "new bitmap",
        "{v}"
    );
    let snap = v["snapshot"].as_str().unwrap();
    let img = env.path("after-kill.img");
    env.ok(&["restore", snap, "vda.img", img.to_str().unwrap()]);
    // Crash-consistent (no agent, QEMU killed before): the journal may
    // need replaying, which e2fsck -fy on a copy does.
    let fsck = Command::new("e2fsck").args(["-fy"]).arg(&img).output().unwrap();
    assert!(
        fsck.status.code().unwrap_or(8) <= 1,
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn the_nbd_export_vanishing_mid_backup_fails_cleanly() {
    if !common::have_failpoints("the_nbd_export_vanishing_mid_backup_fails_cleanly") {
        return;
    }
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    let child = env.spawn_paused(
        &backup_vm_args(&g, "snapshot", &["--qga", &qga, "--timeout", "10"]),
        "live-exported:3000",
    );
    // hoard's NBD server goes away under it (on the test's own monitor).
    g.test_qmp().execute_value("nbd-server-stop", json!({})).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NBD") || err.contains("nbd"), "{err}");
    assert_eq!(g.agent("guest-fsfreeze-status"), json!("thawed"));
    assert_nothing_left(&env, &g);
    // Tracking went on: the next backup still has its base... or reads all.
    let v = backup_vm(&env, &g, "snapshot", &["--qga", &qga]);
    assert!(restored_lines(&env, v["snapshot"].as_str().unwrap()) > 0);
}

#[test]
fn a_guest_that_ignores_the_power_button_is_left_alone_or_stopped_hard() {
    let env = Env::new("64K");
    let Some(g) = boot(&env) else { return };
    // Through the real agent: the guest's acpid goes, the button does nothing.
    g.agent_with("guest-exec", json!({"path": "/bin/killall", "arg": ["acpid"]}));
    std::thread::sleep(Duration::from_millis(500));
    let args = backup_vm_args(&g, "stop", &["--stop-timeout", "2"]);
    let err = env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("did not shut down within 2 s"), "{err}");
    assert_eq!(g.status(), "running");
    assert!(env.snapshot_names().is_empty());

    let args = backup_vm_args(&g, "stop", &["--stop-timeout", "2", "--force-stop"]);
    let out = env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped hard"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g.status(), "running");
    assert!(
        g.wait_serial_count("guest: ready", 2, Duration::from_secs(60)),
        "not booted again"
    );
    assert!(!g.serial().contains("guest: /mnt unmounted"));
    let img = env.path("forced.img");
    env.ok(&[
        "restore",
        v["snapshot"].as_str().unwrap(),
        "vda.img",
        img.to_str().unwrap(),
    ]);
    let fsck = Command::new("e2fsck").args(["-fy"]).arg(&img).output().unwrap();
    assert!(
        fsck.status.code().unwrap_or(8) <= 1,
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Snapshot mode into a store in a bucket of a real SeaweedFS: the same
/// point in time, frozen by the agent, and an incremental from the bitmap.
#[test]
fn snapshot_mode_into_a_bucket() {
    let Some(sw) = common::seaweed::Seaweed::start() else {
        return;
    };
    let env = Env::in_bucket(&sw, "hoard", "vm");
    env.ok(&["init", "--chunk-size", "64K"]);
    let Some(g) = boot(&env) else { return };
    let qga = g.qga_path().display().to_string();
    let v = backup_vm(&env, &g, "snapshot", &["--qga", &qga]);
    assert_eq!(v["vm"]["guest_agent"], "frozen", "{v}");
    assert_eq!(g.status(), "running");
    let lines = restored_lines(&env, v["snapshot"].as_str().unwrap());
    assert!(lines > 0);
    std::thread::sleep(Duration::from_secs(1));
    let v2 = backup_vm(&env, &g, "snapshot", &["--qga", &qga]);
    assert!(
        v2["vm"]["disks"][0]["bitmap"]
            .as_str()
            .unwrap()
            .starts_with("OK ("),
        "{v2}"
    );
    assert!(restored_lines(&env, v2["snapshot"].as_str().unwrap()) > lines);
}
