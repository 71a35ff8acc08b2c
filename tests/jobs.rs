//! `hoard job`: job files checked with file, line and field; jobs run over
//! real containers, a real QEMU guest and a plain image, in three modes,
//! with retention; one guest failing while the others back up; overlapping
//! runs; notifications by mail (sendmail interface) and webhook (a loopback
//! HTTP server); the systemd units checked by systemd-analyze.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::guest::Guest;
use common::lxc::Container;
use common::Env;
use serde_json::Value;

/// Runs `hoard job ARGS` with the jobs and lock directories of `env`.
fn job(env: &Env, args: &[&str]) -> Output {
    job_cmd(env, args).output().expect("run hoard")
}

fn job_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = env.hoard();
    c.env_remove("HOARD_STORE")
        .env("HOARD_JOBS_DIR", env.path("jobs"))
        .env("HOARD_RUN_DIR", env.path("run"))
        .arg("job")
        .args(args);
    c
}

/// Starts `hoard job run NAME` with its first backup held for `ms` just
/// before its manifest, and returns once the backup is there.
fn spawn_paused(env: &Env, name: &str, ms: u64) -> std::process::Child {
    let mark = env.path("pause-mark");
    let _ = std::fs::remove_file(&mark);
    let child = job_cmd(env, &["run", name])
        .env("HOARD_TEST_PAUSE", format!("backup-before-manifest:{ms}"))
        .env("HOARD_TEST_PAUSE_MARK", &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !mark.exists() {
        assert!(
            std::time::Instant::now() < end,
            "job {name} never reached its pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `hoard job install NAME --unit-dir UNITS` with the test binary named
/// (from its build tree, install refuses without --binary).
fn install(env: &Env, name: &str, units: &Path) -> Output {
    let bin = env!("CARGO_BIN_EXE_hoard");
    job(
        env,
        &[
            "install",
            name,
            "--unit-dir",
            units.to_str().unwrap(),
            "--binary",
            bin,
        ],
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write_job(env: &Env, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(env.path("jobs")).unwrap();
    let path = env.path("jobs").join(format!("{name}.toml"));
    std::fs::write(&path, body).unwrap();
    path
}

/// A loopback HTTP server that answers 200 to every POST and hands each
/// body to the test.
fn webhook_server() -> (u16, mpsc::Receiver<Value>) {
    let port = common::free_port(None);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(request_line.starts_with("POST /hook "), "{request_line}");
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    assert_eq!(v.trim(), "application/json");
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send(serde_json::from_slice(&body).expect("a JSON body"));
        }
    });
    (port, rx)
}

/// A program with sendmail's interface that keeps what it is given: its
/// arguments, then the message.
fn sendmail(env: &Env) -> PathBuf {
    let path = env.path("sendmail");
    let out = env.path("mail.txt");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"ARGS: $*\" >> {0}\ncat >> {0}\necho '-- end --' >> {0}\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
    assert!(std::env::var("CI").is_err(), "skipped under CI: {why}");
}

#[test]
fn a_job_backs_up_containers_a_vm_and_an_image_and_goes_on_when_one_fails() {
    if !common::tree::is_root() {
        return skip("containers and loop mounts need root");
    }
    let env = Env::new("64K");
    let vm_dir = env.path("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let Some(mut vm) = Guest::boot(&vm_dir) else {
        return skip("no test guest");
    };
    // The btrfs one first: it holds the mount the other lives on, and is
    // dropped (unmounted) last.
    let Some(ct_a) = Container::create(&env.path("cts"), "jobct-a", true, 2) else {
        return skip("no LXC or btrfs");
    };
    let Some(ct_b) = Container::create(&env.path("cts"), "jobct-b", false, 1) else {
        return skip("no LXC");
    };
    ct_a.start();
    ct_b.start();
    let image = env.path("disk.img");
    common::mixed_image(&image, 8 << 20, 5);
    let (port, bodies) = webhook_server();
    let mail = sendmail(&env);
    write_job(
        &env,
        "nightly",
        &format!(
            r#"store = "{store}"
max-workers = 2

[keep]
last = 1

[notify]
when = "always"
mailto = ["root@localhost"]
sendmail = "{mail}"
webhook = "http://127.0.0.1:{port}/hook"

[vms]
mode = "suspend"
guests = [{{ id = "100", qmp = "{qmp}", qga = "{qga}" }}]

[containers]
lxcpath = "{lxcpath}"
mode = "stop"
all = true
guests = [{{ name = "jobct-a", id = "201", mode = "snapshot" }}]

[[images]]
id = "disk"
path = "{image}"
"#,
            store = env.store.display(),
            mail = mail.display(),
            qmp = vm.qmp_path().display(),
            qga = vm.qga_path().display(),
            lxcpath = ct_a.lxcpath.display(),
            image = image.display(),
        ),
    );

    // First run: all four, in three modes.
    let out = job(&env, &["run", "nightly"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("4 of 4 guests backed up"), "{table}");
    for (guest, mode) in [
        ("vm/100", "suspend"),
        ("ct/201", "snapshot"),
        ("ct/jobct-b", "stop"),
        ("host/disk", "image"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(guest))
            .unwrap_or_else(|| panic!("no row of {guest}: {table}"));
        assert!(row.contains(mode) && row.contains(" ok "), "{row}");
    }
    assert_eq!(vm.status(), "running", "the VM runs again after its backup");
    assert_eq!(ct_a.state(), "RUNNING");
    assert_eq!(ct_b.state(), "RUNNING", "the stopped container was started again");
    let body = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");
    assert_eq!(body["job"], "nightly");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["guests"].as_array().unwrap().len(), 4);
    assert!(body["guests"][0]["bytes_read"].as_u64().unwrap() > 0);
    let mail_text = std::fs::read_to_string(env.path("mail.txt")).unwrap();
    assert!(mail_text.contains("ARGS: -t -oi"), "{mail_text}");
    assert!(mail_text.contains("To: root@localhost"), "{mail_text}");
    assert!(
        mail_text.contains("Subject: hoard job nightly on "),
        "{mail_text}"
    );
    assert!(mail_text.contains("4 of 4 guests backed up"), "{mail_text}");

    // The per-guest log is stored with the snapshot.
    let show = env.ok(&["show", "vm/100"]);
    assert!(show.contains("log of the job run that made it:"), "{show}");
    assert!(
        show.contains("job nightly on ") && show.contains("vm/100 in suspend mode"),
        "{show}"
    );
    let shown: Value = serde_json::from_str(&env.ok(&["show", "--json", "ct/jobct-b"])).unwrap();
    assert!(
        shown["log"]
            .as_str()
            .unwrap()
            .contains("retention: kept 1, removed 0"),
        "{shown}"
    );

    // Second run, one container snapshot protected: retention keeps the
    // newest of each group, and the protected one.
    let protected = env
        .snapshot_names()
        .into_iter()
        .find(|n| n.starts_with("ct/201/"))
        .unwrap();
    env.ok(&["protect", &protected]);
    std::thread::sleep(Duration::from_millis(1100));
    let out = job(&env, &["run", "nightly"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names = env.snapshot_names();
    let count = |group: &str| names.iter().filter(|n| n.starts_with(group)).count();
    assert_eq!(count("vm/100/"), 1, "{names:?}");
    assert_eq!(count("ct/jobct-b/"), 1, "{names:?}");
    assert_eq!(count("host/disk/"), 1, "{names:?}");
    assert_eq!(count("ct/201/"), 2, "the protected snapshot is kept: {names:?}");
    assert!(names.contains(&protected));
    let _ = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");

    // The VM's QEMU killed: its backup fails, the others are made.
    vm.kill();
    std::thread::sleep(Duration::from_millis(1100));
    let out = job(&env, &["run", "nightly"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "some, not all, backed up: {all}");
    assert!(
        all.contains("3 of 4 guests backed up, 1 failed (vm/100)"),
        "{all}"
    );
    let row = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("vm/100"))
        .map(String::from)
        .unwrap();
    assert!(row.contains("failed"), "{row}");
    let body = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");
    assert_eq!(body["status"], "partial");
    let vm_row = &body["guests"][0];
    assert_eq!(vm_row["guest"], "vm/100");
    assert_eq!(vm_row["status"], "failed");
    assert!(
        vm_row["error"]
            .as_str()
            .unwrap()
            .contains(&vm.qmp_path().display().to_string()),
        "{vm_row}"
    );
    assert!(vm_row["log"].as_str().unwrap().contains("FAILED"), "{vm_row}");
    for g in &body["guests"].as_array().unwrap()[1..] {
        assert_eq!(g["status"], "ok", "{g}");
    }
    let mail_text = std::fs::read_to_string(env.path("mail.txt")).unwrap();
    assert!(mail_text.contains("log of vm/100 (failed):"), "{mail_text}");
    drop(ct_b);
    drop(ct_a);
}

#[test]
fn a_job_with_every_guest_failing_exits_1_and_a_broken_webhook_is_only_a_warning() {
    let env = Env::new("64K");
    let tree = env.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a"), b"hello").unwrap();
    let port = common::free_port(None); // nothing listens
    let body = |images: &str| {
        format!(
            "store = \"{}\"\n[notify]\nwebhook = \"http://127.0.0.1:{port}/hook\"\n{images}",
            env.store.display()
        )
    };
    write_job(
        &env,
        "some",
        &body(&format!(
            "[[images]]\nid = \"gone\"\npath = \"{}\"\n[[trees]]\nid = \"t\"\npath = \"{}\"\n",
            env.path("missing.img").display(),
            tree.display()
        )),
    );
    let out = job(&env, &["run", "--json", "some"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "partial");
    assert_eq!(summary["guests"][0]["status"], "failed");
    assert!(
        summary["guests"][0]["error"]
            .as_str()
            .unwrap()
            .contains("missing.img"),
        "{summary}"
    );
    assert_eq!(summary["guests"][1]["status"], "ok");
    assert!(
        text(&out).contains("warning: webhook http://127.0.0.1:"),
        "{}",
        text(&out)
    );

    write_job(
        &env,
        "none",
        &body(&format!(
            "[[images]]\nid = \"gone\"\npath = \"{}\"\n",
            env.path("missing.img").display()
        )),
    );
    let out = job(&env, &["run", "none"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("job none: 0 of 1 guests backed up, 1 failed (host/gone)"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_bad_job_file_is_named_with_its_line_and_field_and_nothing_runs() {
    let env = Env::new("64K");
    let store = env.path("new-store");
    let ok_tail = "[[trees]]\nid = \"t\"\npath = \"/etc\"\n";
    let cases: &[(&str, String, &str)] = &[
        ("unknown", format!("store = \"{}\"\ncolour = \"red\"\n{ok_tail}", store.display()), ":2: colour: unknown field `colour`"),
        ("schedule", format!("store = \"{}\"\nschedule = \"every day at noon\"\n{ok_tail}", store.display()), ":2: schedule: systemd does not accept"),
        ("delay", format!("store = \"{}\"\nschedule = \"daily\"\nrandomized-delay = \"soon\"\n{ok_tail}", store.display()), ":3: randomized-delay: systemd does not accept"),
        ("mode", format!("store = \"{}\"\n[containers]\nall = true\nmode = \"hibernate\"\n", store.display()), ":4: containers.mode: unknown variant `hibernate`"),
        ("keep", format!("store = \"{}\"\n[keep]\nweekly = -1\n{ok_tail}", store.display()), ":3: keep.weekly:"),
        ("dup", format!("store = \"{}\"\n[[images]]\nid = \"a\"\npath = \"/x\"\n[[images]]\nid = \"a\"\npath = \"/y\"\n", store.display()), ":5: images.id: host/a is already backed up by this job (line 2)"),
        ("empty", format!("store = \"{}\"\n", store.display()), ":1: (job): the job does nothing"),
        ("syntax", format!("store = \"{}\n{ok_tail}", store.display()), ":1: store:"),
    ];
    for (name, body, expected) in cases {
        let path = write_job(&env, name, body);
        let out = job(&env, &["check", name]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        let want = format!("{}{expected}", path.display());
        assert!(
            text(&out).contains(&want),
            "{name}: expected {want:?} in {}",
            text(&out)
        );
        let out = job(&env, &["run", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out).contains(&want), "{name}: {}", text(&out));
        assert!(!store.exists(), "{name}: a bad job touched nothing");
    }
    // `check` without names checks every file, and says which are bad.
    let out = job(&env, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!(
            "{} of {} job files are invalid",
            cases.len(),
            cases.len()
        )),
        "{}",
        text(&out)
    );
    let out = job(&env, &["run", "nosuch"]);
    assert!(text(&out).contains("no job nosuch:"), "{}", text(&out));
}

#[test]
fn installed_units_pass_systemd_analyze_and_uninstall_removes_them() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        return skip("systemd-analyze missing (scripts/setup.sh installs systemd)");
    }
    let env = Env::new("64K");
    write_job(
        &env,
        "nightly",
        &format!(
            "store = \"{}\"\nschedule = \"Mon..Fri *-*-* 02:30\"\nrandomized-delay = \"20min\"\n[[trees]]\nid = \"t\"\npath = \"/etc\"\n",
            env.store.display()
        ),
    );
    let units = env.path("units");
    let out = install(&env, "nightly", &units);
    assert!(out.status.success(), "{}", text(&out));
    let service = units.join("hoard-job@nightly.service");
    let timer = units.join("hoard-job@nightly.timer");
    let timer_text = std::fs::read_to_string(&timer).unwrap();
    assert!(
        timer_text.contains("OnCalendar=Mon..Fri *-*-* 02:30\n"),
        "{timer_text}"
    );
    assert!(timer_text.contains("Persistent=true\n") && timer_text.contains("RandomizedDelaySec=20min\n"));
    let service_text = std::fs::read_to_string(&service).unwrap();
    assert!(
        service_text.contains(&format!(
            "ExecStart={} job run --jobs-dir {} nightly\n",
            env!("CARGO_BIN_EXE_hoard"),
            env.path("jobs").display()
        )),
        "{service_text}"
    );
    // --man=no: the man page of Documentation= is installed by the package
    // (tests/package.rs checks it there), not on this machine.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args([&service, &timer])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stderr).trim().is_empty(),
        "systemd-analyze verify complains: {}",
        text(&verify)
    );
    let calendar = Command::new("systemd-analyze")
        .args(["calendar", "--iterations=3", "Mon..Fri *-*-* 02:30"])
        .output()
        .unwrap();
    let cal = String::from_utf8_lossy(&calendar.stdout);
    assert!(
        cal.contains("02:30:00") && !cal.contains(" Sat ") && !cal.contains(" Sun "),
        "{cal}"
    );
    // The timer is enabled as `systemctl enable` would.
    let link = units.join("timers.target.wants/hoard-job@nightly.timer");
    assert_eq!(std::fs::read_link(&link).unwrap(), timer);
    // `show` and `list` give systemd's next elapse.
    let show =
        String::from_utf8(job(&env, &["show", "nightly", "--unit-dir", units.to_str().unwrap()]).stdout)
            .unwrap();
    let next = cal
        .lines()
        .find_map(|l| l.trim().strip_prefix("Next elapse:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(show.contains(&format!("next run {next}")), "{show} vs {next}");
    let list: Value =
        serde_json::from_slice(&job(&env, &["list", "--json", "--unit-dir", units.to_str().unwrap()]).stdout)
            .unwrap();
    assert_eq!(list["jobs"][0]["next"], next.as_str());

    let out = job(
        &env,
        &["uninstall", "nightly", "--unit-dir", units.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!service.exists() && !timer.exists() && link.symlink_metadata().is_err());
    let out = job(
        &env,
        &["uninstall", "nightly", "--unit-dir", units.to_str().unwrap()],
    );
    assert!(text(&out).contains("not installed"), "{}", text(&out));

    // No schedule, no timer.
    write_job(
        &env,
        "manual",
        &format!(
            "store = \"{}\"\n[[trees]]\nid = \"t\"\npath = \"/etc\"\n",
            env.store.display()
        ),
    );
    let out = install(&env, "manual", &units);
    assert!(text(&out).contains("has no schedule"), "{}", text(&out));
}

#[test]
fn a_second_run_of_a_running_job_is_refused_or_waits_and_one_guest_is_never_backed_up_twice_at_once() {
    if !common::have_failpoints("overlapping job runs") {
        return;
    }
    let env = Env::new("64K");
    let image = env.path("disk.img");
    common::mixed_image(&image, 4 << 20, 9);
    let body = |id: &str| {
        format!(
            "store = \"{}\"\n[[images]]\nid = \"{id}\"\npath = \"{}\"\n",
            env.store.display(),
            image.display()
        )
    };
    write_job(&env, "a", &body("disk-a"));
    write_job(&env, "b", &body("disk-b"));
    // Run a, its backup held just before its manifest for 3 s.
    let first = spawn_paused(&env, "a", 3000);
    // A second run of a: refused, naming the first.
    let out = job(&env, &["run", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("job a is already running (pid {}", first.id())),
        "{}",
        text(&out)
    );
    // Job b backs up the same image: it waits for a's backup of it.
    let second = job_cmd(&env, &["run", "b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // And `--wait` waits for a, then runs.
    let waited = job(&env, &["run", "--wait", "a"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert!(waited.status.success(), "{}", text(&waited));
    assert!(
        text(&waited).contains("waiting for the run in progress"),
        "{}",
        text(&waited)
    );
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let log: Value = serde_json::from_str(&env.ok(&["show", "--json", "host/disk-b"])).unwrap();
    let log = log["log"].as_str().unwrap();
    assert!(
        log.contains(&format!(
            "waiting: another backup of {} is running",
            image.display()
        )),
        "{log}"
    );
    // Every backup's time span is its own: none overlaps another.
    let names = env.snapshot_names();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn a_job_into_a_bucket_keeps_its_retention_and_logs_there() {
    let Some(sw) = common::seaweed::Seaweed::start() else {
        return;
    };
    let env = Env::in_bucket(&sw, "jobs", "nightly");
    env.ok(&["init"]);
    let tree = env.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a"), common::noise(1, 1 << 20)).unwrap();
    let creds = env.path("aws-credentials");
    std::fs::write(
        &creds,
        format!(
            "[backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            common::seaweed::ACCESS_KEY,
            common::seaweed::SECRET_KEY
        ),
    )
    .unwrap();
    let cache = env.path("job-cache");
    write_job(
        &env,
        "bucket",
        &format!(
            "store = \"{}\"\ncache-dir = \"{}\"\naws-profile = \"backup\"\naws-credentials-file = \"{}\"\n[keep]\nlast = 1\n[[trees]]\nid = \"t\"\npath = \"{}\"\n",
            env.store.display(),
            cache.display(),
            creds.display(),
            tree.display()
        ),
    );
    let run = || {
        job_cmd(&env, &["run", "--json", "bucket"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("HOARD_CACHE_DIR")
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Read through another cache, straight from the bucket: one snapshot
    // left by retention, with its log.
    let names = env.snapshot_names();
    assert_eq!(names.len(), 1, "{names:?}");
    let shown: Value = serde_json::from_str(&env.ok(&["show", "--json", "host/t"])).unwrap();
    let log = shown["log"].as_str().unwrap();
    assert!(log.contains("retention: kept 1, removed 1"), "{log}");
}

#[test]
fn an_interrupted_job_starts_no_more_backups_reports_and_ends_by_the_signal() {
    use std::os::unix::process::ExitStatusExt;
    if !common::have_failpoints("an interrupted job") {
        return;
    }
    let env = Env::new("64K");
    let (one, two) = (env.path("one.img"), env.path("two.img"));
    common::mixed_image(&one, 1 << 20, 1);
    common::mixed_image(&two, 1 << 20, 2);
    write_job(
        &env,
        "two",
        &format!(
            "store = \"{}\"\n[[images]]\nid = \"one\"\npath = \"{}\"\n[[images]]\nid = \"two\"\npath = \"{}\"\n",
            env.store.display(),
            one.display(),
            two.display()
        ),
    );
    // Held for a minute: the signal, not the pause's end, must stop it.
    let run = spawn_paused(&env, "two", 60_000);
    // SIGTERM to the job's pid alone (as `kill PID` sends it): passed on
    // to the backup in progress, which ends without publishing.
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "the backup was not stopped"
    );
    assert_eq!(out.status.signal(), Some(15), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("0 of 2 guests backed up, 2 failed (host/one, host/two)"),
        "{}",
        text(&out)
    );
    assert!(
        table.contains("host/two: not started: the job was interrupted"),
        "{table}"
    );
    assert!(env.snapshot_names().is_empty());
}

/// Issue 28, item 12: `kill -9` of a job run must not orphan its backup:
/// the backup dies with it, and holds the guest's lock until it has, so
/// the next run never backs the same guest up beside it.
#[test]
fn a_killed_job_run_leaves_no_backup_running_beside_the_next() {
    if !common::have_failpoints("a killed job run") {
        return;
    }
    let env = Env::new("64K");
    let image = env.path("disk.img");
    common::mixed_image(&image, 1 << 20, 5);
    write_job(
        &env,
        "a",
        &format!(
            "store = \"{}\"\n[[images]]\nid = \"d\"\npath = \"{}\"\n",
            env.store.display(),
            image.display()
        ),
    );
    let mut first = spawn_paused(&env, "a", 4000);
    first.kill().unwrap();
    first.wait().unwrap();
    let second = job(&env, &["run", "a"]);
    assert!(second.status.success(), "{}", text(&second));
    // Past the killed run's pause: its backup, had it lived on, would have
    // published a second snapshot by now.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(env.snapshot_names().len(), 1, "{:?}", env.snapshot_names());
}

#[test]
fn an_encrypted_stores_job_logs_are_sealed() {
    let env = Env::protected("64K", "encrypt");
    let tree = env.path("private-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a"), b"hello").unwrap();
    let body = |extra: &str| {
        format!(
            "store = \"{}\"\n{extra}[[trees]]\nid = \"t\"\npath = \"{}\"\n",
            env.store.display(),
            tree.display()
        )
    };
    // Without a key source the job stops before it backs anything up.
    write_job(&env, "nokey", &body(""));
    let out = job_cmd(&env, &["run", "nokey"])
        .env_remove("HOARD_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("store of job nokey"), "{}", text(&out));
    assert!(env.snapshot_names().is_empty());

    write_job(
        &env,
        "sealed",
        &body(&format!(
            "password-file = \"{}\"\n",
            env.path("passphrase").display()
        )),
    );
    let out = job_cmd(&env, &["run", "sealed"])
        .env_remove("HOARD_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snap = env.snapshot_names().pop().unwrap();
    let raw = std::fs::read(env.snapshot_dir(&snap).join("task.log")).unwrap();
    assert!(raw.starts_with(b"hoard sealed task log 1\n"));
    assert!(
        !String::from_utf8_lossy(&raw).contains("private-tree"),
        "the log's paths are sealed"
    );
    // `show` opens it with the key, and says it is sealed without one.
    let shown = env.ok(&["show", &snap]);
    assert!(
        shown.contains("log of the job run that made it:") && shown.contains("private-tree"),
        "{shown}"
    );
    let out = env
        .hoard()
        .env_remove("HOARD_PASSWORD_FILE")
        .args(["show", &snap])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains("log of the job run that made it: sealed"),
        "{shown}"
    );
}

#[test]
fn shell_completions_and_man_pages_come_from_the_commands() {
    let env = Env::new("64K");
    for shell in ["bash", "zsh", "fish"] {
        let out = env.run(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("backup-vm") && script.contains("uninstall"),
            "{shell}"
        );
    }
    let dir = env.path("man");
    env.ok(&["man", dir.to_str().unwrap()]);
    for page in [
        "hoard.1",
        "hoard-backup-vm.1",
        "hoard-job.1",
        "hoard-job-run.1",
        "hoard-job-install.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let run_page = std::fs::read_to_string(dir.join("hoard-job-run.1")).unwrap();
    assert!(run_page.contains("max\\-workers"), "{run_page}");
}

/// Issue 29, item 3: a store looks after itself. A job of `[maintenance]`
/// alone prunes every group of its store by `[keep]`, runs gc and verifies
/// what was not verified lately, reports each step in its summary and
/// notification, and installs as a timer like any job. Before, nothing but
/// a hand-scheduled `hoard gc` freed space, and nothing verified.
#[test]
fn a_store_job_prunes_every_group_collects_and_verifies() {
    let env = Env::new("64K");
    let img = env.path("d.raw");
    common::mixed_image(&img, 1 << 20, 4);
    let spec = format!("d.img:{}", img.display());
    for id in ["a", "a", "a", "b", "b"] {
        env.backup(id, std::slice::from_ref(&spec));
    }
    let (port, bodies) = webhook_server();
    write_job(
        &env,
        "upkeep",
        &format!(
            "store = \"{}\"\nschedule = \"Sun 03:00\"\n[keep]\nlast = 1\n[maintenance]\nprune = true\ngc = true\nverify = true\nverify-outdated-after = 7\n[notify]\nwhen = \"always\"\nwebhook = \"http://127.0.0.1:{port}/hook\"\n",
            env.store.display()
        ),
    );
    let out = job(&env, &["run", "upkeep", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["summary"], "store: prune ok, gc ok, verify ok", "{report}");
    let steps: Vec<&str> = report["maintenance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["mode"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["prune", "gc", "verify"]);
    let log = |i: usize| report["maintenance"][i]["log"].as_str().unwrap().to_string();
    assert!(log(0).contains("prune: kept 2, removed 3"), "{}", log(0));
    assert!(log(1).contains("gc: "), "{}", log(1));
    assert!(log(2).contains("verify: 2 snapshots verified"), "{}", log(2));
    assert_eq!(env.snapshot_names().len(), 2, "one snapshot per group is left");
    let hook = bodies.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(hook["maintenance"][2]["status"], "ok", "{hook}");
    // A second run verifies nothing again within 7 days.
    let out = job(&env, &["run", "upkeep", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verify = report["maintenance"][2]["log"].as_str().unwrap();
    assert!(verify.contains("0 snapshots verified, 2 skipped"), "{verify}");
    // Installed as any job is.
    let units = env.path("units");
    let out = install(&env, "upkeep", &units);
    assert!(out.status.success(), "{}", text(&out));
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        return skip("systemd-analyze missing (scripts/setup.sh installs systemd)");
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args([
            units.join("hoard-job@upkeep.service"),
            units.join("hoard-job@upkeep.timer"),
        ])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}

/// Issue 29, item 14: jobs tell the truth. `list` shows whether the timer
/// is installed and enabled, its next run only when it is, and the last
/// run; `check` names every missing path of a file in one pass; `show`
/// includes [notify]; `install` refuses a binary in a build tree.
#[test]
fn jobs_tell_the_truth_about_timers_runs_and_missing_paths() {
    let env = Env::new("64K");
    std::fs::write(env.path("d.raw"), common::noise(1, 1 << 20)).unwrap();
    write_job(
        &env,
        "nightly",
        &format!(
            "store = \"{}\"\nschedule = \"daily\"\n[[images]]\nid = \"d\"\npath = \"{}\"\n[notify]\nmailto = [\"root@localhost\"]\nsendmail = \"{}\"\n",
            env.store.display(),
            env.path("d.raw").display(),
            sendmail(&env).display()
        ),
    );
    let units = env.path("units");
    let list = |env: &Env| -> Value {
        let out = job(env, &["list", "--json", "--unit-dir", units.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let l = list(&env);
    let j = &l["jobs"][0];
    assert_eq!(j["timer"]["installed"], false);
    assert_eq!(j["next"], Value::Null, "no timer, no next run: {j}");
    assert_eq!(j["last"], Value::Null);
    let table = text(&job(&env, &["list", "--unit-dir", units.to_str().unwrap()]));
    assert!(
        table.contains("not installed") && table.contains("never"),
        "{table}"
    );

    // From a build tree (the test binary's target/), install refuses.
    let out = job(
        &env,
        &["install", "nightly", "--unit-dir", units.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("build tree") && text(&out).contains("--binary"),
        "{}",
        text(&out)
    );
    assert!(!units.join("hoard-job@nightly.timer").exists());
    let out = job(
        &env,
        &[
            "install",
            "nightly",
            "--unit-dir",
            units.to_str().unwrap(),
            "--binary",
            env!("CARGO_BIN_EXE_hoard"),
            "--no-enable",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let j = list(&env)["jobs"][0].clone();
    assert_eq!(
        (j["timer"]["installed"].as_bool(), j["timer"]["enabled"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(j["next"], Value::Null, "not enabled, no next run: {j}");

    assert!(job(&env, &["run", "nightly"]).status.success());
    let j = list(&env)["jobs"][0].clone();
    assert_eq!(j["last"]["status"], "ok", "{j}");
    let show = text(&job(
        &env,
        &["show", "nightly", "--unit-dir", units.to_str().unwrap()],
    ));
    assert!(
        show.contains("notify    failure to root@localhost") && show.contains("last run  20"),
        "{show}"
    );
    let v: Value = serde_json::from_slice(&job(&env, &["show", "nightly", "--json"]).stdout).unwrap();
    assert_eq!(v["notify"]["mailto"][0], "root@localhost");

    // check: every missing path of the file at once.
    write_job(
        &env,
        "broken",
        &format!(
            "store = \"{}\"\n[[images]]\nid = \"a\"\npath = \"/nonexistent/a.img\"\n[[trees]]\nid = \"t\"\npath = \"/nonexistent/tree\"\n[notify]\nmailto = [\"root@localhost\"]\nsendmail = \"/nonexistent/sendmail\"\n",
            env.path("no-store").display()
        ),
    );
    let out = job(&env, &["check", "broken"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for m in [
        "store",
        "/nonexistent/a.img",
        "/nonexistent/tree",
        "/nonexistent/sendmail",
    ] {
        assert!(t.contains(m), "{m} not named: {t}");
    }
}
