//! Crashes at every injected point of every operation (engine/src/failpoint.rs;
//! the binary must be built with the `failpoints` feature, as
//! scripts/test.sh does). For each operation the test first runs it once
//! to list the points it reaches, then, for each point, starts from the
//! same store again and kills the operation there (SIGKILL). After each
//! crash: the store opens, `hoard check` is clean, every visible snapshot
//! restores bit-identical, the next backup succeeds, and two GCs leave no
//! leftovers (and the snapshots still restore).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::tree::assert_same_tree;
use common::{assert_same_file, noise, Env};

/// The store an operation starts from, and what its snapshots hold.
#[derive(Default)]
struct World {
    /// Backup id -> the image file or directory all its snapshots hold.
    sources: HashMap<String, PathBuf>,
    /// A pack damaged on purpose: the only damage `check` may report.
    damaged_pack: Option<PathBuf>,
    /// Snapshots of this id lost a chunk on purpose and are not restored.
    damaged_id: Option<String>,
}

struct Case {
    name: &'static str,
    setup: fn(&Env) -> World,
    args: fn(&Env) -> Vec<String>,
}

fn image(env: &Env, name: &str, parts: &[(u64, usize)]) -> PathBuf {
    let mut data = Vec::new();
    for (seed, chunks) in parts {
        data.extend(noise(*seed, chunks * 65536));
    }
    let p = env.path(name);
    fs::write(&p, data).unwrap();
    p
}

fn backup(env: &Env, world: &mut World, id: &str, src: &Path) -> String {
    let s = env.backup(id, &[format!("d.img:{}", src.display())]);
    world.sources.insert(id.into(), src.to_path_buf());
    s["snapshot"].as_str().unwrap().to_string()
}

fn tree(env: &Env, name: &str, seed: u64) -> PathBuf {
    let dir = env.path(name);
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.bin"), noise(seed, 300_000)).unwrap();
    fs::write(dir.join("sub/b.txt"), b"tree file\n".repeat(1000)).unwrap();
    fs::write(dir.join("shared.bin"), noise(7, 200_000)).unwrap();
    dir
}

/// Sets the times of everything in the store back an hour, so GC's grace
/// period (files younger than the oldest writer are kept) does not hide
/// leftovers.
fn age(env: &Env) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for p in [env.store.join("packs"), env.store.join("snapshots")] {
        let mut todo = vec![p];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
            if let Ok(f) = fs::File::open(&p) {
                let _ = f.set_modified(old);
            }
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "backup of an image",
            setup: |env| {
                let mut w = World::default();
                backup(env, &mut w, "base", &image(env, "a", &[(1, 6), (2, 4)]));
                w.sources.insert("img".into(), image(env, "b", &[(1, 6), (3, 5)]));
                w
            },
            args: |env| {
                let src = format!("d.img:{}", env.path("b").display());
                ["backup", "--id", "img", &src].map(String::from).to_vec()
            },
        },
        Case {
            name: "backup of a tree",
            setup: |env| {
                let mut w = World::default();
                let t1 = tree(env, "t1", 1);
                env.backup_tree("tree1", &t1);
                w.sources.insert("tree1".into(), t1);
                w.sources.insert("tree2".into(), tree(env, "t2", 2));
                w
            },
            args: |env| {
                let src = format!("root.tree:{}", env.path("t2").display());
                ["backup", "--kind", "ct", "--id", "tree2", &src]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "gc (sweep, delete, repack, leftovers)",
            setup: |env| {
                let mut w = World::default();
                let a = backup(env, &mut w, "a", &image(env, "a", &[(1, 6), (2, 6)]));
                backup(env, &mut w, "b", &image(env, "b", &[(1, 6), (3, 2)]));
                let c = backup(env, &mut w, "c", &image(env, "c", &[(4, 5)]));
                env.ok(&["forget", &a]);
                env.ok(&["forget", &c]);
                age(env);
                env.ok(&["gc"]);
                // What crashed writers leave.
                let sub = fs::read_dir(env.store.join("packs"))
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path();
                fs::write(sub.join("00000000000000000000000000000000.pack.partial"), b"x").unwrap();
                fs::create_dir_all(env.store.join("snapshots/host/z/2026-01-01T00:00:00Z")).unwrap();
                age(env);
                w
            },
            args: |_| ["gc", "--repack-below", "0.9"].map(String::from).to_vec(),
        },
        Case {
            name: "prune",
            setup: |env| {
                let mut w = World::default();
                let img = image(env, "p", &[(5, 3)]);
                backup(env, &mut w, "p", &img);
                std::thread::sleep(Duration::from_millis(1100));
                backup(env, &mut w, "p", &img);
                w
            },
            args: |_| {
                ["prune", "--kind", "host", "--id", "p", "--keep-last", "1"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "forget",
            setup: |env| {
                let mut w = World::default();
                let s = backup(env, &mut w, "f", &image(env, "f", &[(6, 3)]));
                fs::write(env.path("forget-me"), s).unwrap();
                w
            },
            args: |env| {
                vec![
                    "forget".into(),
                    fs::read_to_string(env.path("forget-me")).unwrap(),
                ]
            },
        },
        Case {
            name: "index rebuild of a damaged store",
            setup: |env| {
                let mut w = World::default();
                backup(env, &mut w, "a", &image(env, "a", &[(1, 4)]));
                let before: Vec<PathBuf> = env.packs();
                backup(env, &mut w, "b", &image(env, "b", &[(8, 5)]));
                let pack = env.packs().into_iter().find(|p| !before.contains(p)).unwrap();
                common::cut_last_record(&pack, 100);
                w.damaged_pack = Some(pack);
                w.damaged_id = Some("b".into());
                w
            },
            args: |_| ["index", "rebuild"].map(String::from).to_vec(),
        },
        Case {
            name: "verify of a damaged store",
            setup: |env| {
                let mut w = World::default();
                backup(env, &mut w, "a", &image(env, "a", &[(1, 4)]));
                let before: Vec<PathBuf> = env.packs();
                backup(env, &mut w, "b", &image(env, "b", &[(9, 5)]));
                env.damage(&noise(9, 65536));
                w.damaged_pack = env.packs().into_iter().find(|p| !before.contains(p));
                w.damaged_id = Some("b".into());
                w
            },
            args: |_| ["verify"].map(String::from).to_vec(),
        },
    ]
}

fn hoard(env: &Env, args: &[String], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
    cmd.args(args).env("HOARD_STORE", &env.store);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The points an operation reaches, in order, each with how often.
fn points_of(case: &Case) -> Vec<(String, u32)> {
    let env = Env::new("64K");
    (case.setup)(&env);
    let log = env.path("points.log");
    let out = hoard(
        &env,
        &(case.args)(&env),
        &[("HOARD_FAILPOINTS_LOG", log.to_str().unwrap())],
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1 | 3)),
        "{}: {:?} {}",
        case.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut order = Vec::new();
    for line in fs::read_to_string(&log).unwrap_or_default().lines() {
        let c = counts.entry(line.to_string()).or_insert(0);
        if *c == 0 {
            order.push(line.to_string());
        }
        *c += 1;
    }
    order.into_iter().map(|p| (p.clone(), counts[&p])).collect()
}

/// Everything the issue asks to hold after a crash.
fn check_after_crash(env: &Env, world: &World, what: &str) {
    let fail = |msg: String| panic!("after a crash at {what}: {msg}");
    let listed = env.run(&["snapshots", "--json"]);
    if !listed.status.success() {
        fail(format!(
            "store does not open: {}",
            String::from_utf8_lossy(&listed.stderr)
        ));
    }
    check_clean(env, world, what);
    restore_all(env, world, what);
    let next = image(env, "next", &[(77, 3)]);
    let out = env.run(&["backup", "--id", "next", &format!("d.img:{}", next.display())]);
    if !out.status.success() {
        fail(format!("next backup: {}", String::from_utf8_lossy(&out.stderr)));
    }
    age(env);
    for _ in 0..2 {
        let out = env.run(&["gc"]);
        let damaged = world.damaged_id.is_some() && out.status.code() == Some(3);
        if !out.status.success() && !damaged {
            fail(format!("gc: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let leftovers: Vec<String> = common::walk(&env.store)
        .into_iter()
        .chain(fs::read_dir(&env.store).unwrap().map(|e| e.unwrap().path()))
        .chain(
            fs::read_dir(env.store.join("tmp"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        )
        .map(|p| p.strip_prefix(&env.store).unwrap().display().to_string())
        .filter(|p| {
            p.ends_with(".partial")
                || p.starts_with("tmp/")
                || p.starts_with("index.rebuild")
                || p.starts_with("index.old-")
                || p.starts_with("sessions/")
                || p.ends_with(".tmp")
        })
        .collect();
    if !leftovers.is_empty() {
        fail(format!("leftovers after gc: {leftovers:?}"));
    }
    for kind in fs::read_dir(env.store.join("snapshots")).unwrap() {
        for id in fs::read_dir(kind.unwrap().path()).unwrap() {
            for t in fs::read_dir(id.unwrap().path()).unwrap() {
                let t = t.unwrap().path();
                if !t.join("manifest.json").exists() {
                    fail(format!("unfinished snapshot left: {}", t.display()));
                }
            }
        }
    }
    check_clean(env, world, what);
    restore_all(env, world, what);
}

/// `hoard check` reports nothing but the damage planted on purpose.
fn check_clean(env: &Env, world: &World, what: &str) {
    let out = env.run(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("after {what}: check: {}", String::from_utf8_lossy(&out.stderr)));
    let foreign: Vec<&serde_json::Value> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            world
                .damaged_pack
                .as_ref()
                .is_none_or(|p| d["pack"] != p.display().to_string())
        })
        .collect();
    assert!(foreign.is_empty(), "after {what}: check found {foreign:?}");
    assert!(
        report["missing_packs"].as_array().unwrap().is_empty(),
        "after {what}: {report}"
    );
}

fn restore_all(env: &Env, world: &World, what: &str) {
    for snap in env.snapshot_names() {
        let id = snap.split('/').nth(1).unwrap();
        if world.damaged_id.as_deref() == Some(id) || id == "next" {
            continue;
        }
        let src = world
            .sources
            .get(id)
            .unwrap_or_else(|| panic!("after {what}: unexpected snapshot {snap}"));
        let out = env.path("restored");
        let _ = fs::remove_dir_all(&out);
        let _ = fs::remove_file(&out);
        let archive = if src.is_dir() { "root.tree" } else { "d.img" };
        let r = env.run(&["restore", &snap, archive, out.to_str().unwrap()]);
        assert!(
            r.status.success(),
            "after {what}: restore {snap}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        if src.is_dir() {
            assert_same_tree(src, &out);
        } else {
            assert_same_file(src, &out);
        }
    }
}

#[test]
fn a_crash_at_any_injected_point_loses_nothing() {
    if !common::have_failpoints("a_crash_at_any_injected_point_loses_nothing") {
        return;
    }
    let mut summary = Vec::new();
    for case in cases() {
        let points = points_of(&case);
        assert!(!points.is_empty(), "{}: no crash point reached", case.name);
        let mut crashes = 0;
        for (point, count) in &points {
            // The first time each point is reached, and the last if more.
            let nths: Vec<u32> = if *count > 1 { vec![1, *count] } else { vec![1] };
            for nth in nths {
                let env = Env::new("64K");
                let world = (case.setup)(&env);
                let at = format!("{point}#{nth}");
                let args = (case.args)(&env);
                env.crash_at(&args.iter().map(String::as_str).collect::<Vec<_>>(), &at);
                check_after_crash(&env, &world, &format!("{} / {at}", case.name));
                crashes += 1;
            }
        }
        let names: Vec<&str> = points.iter().map(|(p, _)| p.as_str()).collect();
        summary.push(format!(
            "{}: {} points, {crashes} crashes: {names:?}",
            case.name,
            points.len()
        ));
    }
    // The closing note reports these counts; cargo shows them with --nocapture.
    for line in &summary {
        println!("{line}");
    }
}
