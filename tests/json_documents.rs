//! Every command's `--json` document has exactly the top-level fields
//! format-spec/json.md lists for it (issue 29, item 12): the spec is read
//! here, so a field added, renamed or dropped on either side fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use common::{noise, Env};
use serde_json::Value;

/// The field tables of json.md: per `## ` heading, each table's fields
/// (first column, every backticked name) and whether it is optional.
fn spec() -> BTreeMap<String, Vec<Vec<(String, bool)>>> {
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../format-spec/json.md")).unwrap();
    let mut out: BTreeMap<String, Vec<Vec<(String, bool)>>> = BTreeMap::new();
    let mut heading = String::new();
    let mut in_table = false;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.trim().to_string();
            in_table = false;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols[1] == "field" || cols[1].starts_with("---") {
            continue;
        }
        let tables = out.entry(heading.clone()).or_default();
        if !in_table {
            tables.push(Vec::new());
            in_table = true;
        }
        let optional = cols[2].contains("optional");
        for name in cols[1].split('`').skip(1).step_by(2) {
            tables.last_mut().unwrap().push((name.to_string(), optional));
        }
    }
    out
}

/// Checks `doc` against table `table` of section `heading`.
fn check(spec: &BTreeMap<String, Vec<Vec<(String, bool)>>>, heading: &str, table: usize, doc: &Value) {
    let fields = &spec
        .get(heading)
        .unwrap_or_else(|| panic!("json.md has no section {heading:?}"))[table];
    let have: BTreeSet<&str> = doc
        .as_object()
        .unwrap_or_else(|| panic!("{heading}: not an object: {doc}"))
        .keys()
        .map(String::as_str)
        .collect();
    let documented: BTreeSet<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&str> = fields
        .iter()
        .filter(|(n, optional)| !optional && !have.contains(n.as_str()))
        .map(|(n, _)| n.as_str())
        .collect();
    let undocumented: Vec<&&str> = have.difference(&documented).collect();
    assert!(
        missing.is_empty() && undocumented.is_empty(),
        "{heading} (table {table}): missing {missing:?}, undocumented {undocumented:?} in {doc}"
    );
    assert_eq!(doc["schema"], 1, "{heading}");
}

#[test]
fn every_json_document_has_its_documented_fields() {
    let spec = spec();
    let env = Env::new("64K");
    fs::write(env.path("d.raw"), noise(1, 1 << 20)).unwrap();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "h\n").unwrap();
    let img = format!("d.img:{}", env.path("d.raw").display());
    let backup = env.json(&["backup", "--id", "1", "--json", &img]);
    check(
        &spec,
        "hoard backup, backup-qemu, backup-vm, backup-ct",
        0,
        &backup,
    );
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    let t = env.json(&[
        "backup",
        "--kind",
        "ct",
        "--id",
        "2",
        "--json",
        &format!("root.tree:{}", tree.display()),
    ]);
    let tsnap = t["snapshot"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.backup("1", std::slice::from_ref(&img));

    let out = env.path("out.img");
    check(
        &spec,
        "hoard restore",
        0,
        &env.json(&["restore", &snap, "d.img", out.to_str().unwrap(), "--json"]),
    );
    let dir = env.path("out-tree");
    check(
        &spec,
        "hoard restore",
        1,
        &env.json(&["restore", &tsnap, "root.tree", dir.to_str().unwrap(), "--json"]),
    );
    check(&spec, "hoard snapshots", 0, &env.json(&["snapshots", "--json"]));
    check(&spec, "hoard show", 0, &env.json(&["show", &snap, "--json"]));
    check(&spec, "hoard stats", 0, &env.json(&["stats", "--json"]));
    check(
        &spec,
        "hoard diff",
        0,
        &env.json(&["diff", &snap, "host/1", "--json"]),
    );
    check(&spec, "hoard find", 0, &env.json(&["find", "hostname", "--json"]));
    env.ok(&["notes", "host/1", "--set", "n"]);
    check(&spec, "hoard notes", 0, &env.json(&["notes", "host/1", "--json"]));
    check(&spec, "hoard verify", 0, &env.json(&["verify", "--json"]));
    check(
        &spec,
        "hoard prune",
        0,
        &env.json(&["prune", "--keep-last", "1", "--dry-run", "--json"]),
    );
    check(&spec, "hoard gc", 0, &env.json(&["gc", "--json"]));
    check(&spec, "hoard check", 0, &env.json(&["check", "--json"]));
    check(
        &spec,
        "hoard index rebuild",
        0,
        &env.json(&["index", "rebuild", "--json"]),
    );
    let ls = env.ok(&["ls", &tsnap, "root.tree", "--json"]);
    for line in ls.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["schema"], 1);
        assert!(v["mtime"].as_str().unwrap().ends_with('Z'), "{v}");
    }

    let keyed = Env::protected("64K", "encrypt");
    check(
        &spec,
        "hoard key list",
        0,
        &keyed.json(&["key", "list", "--json"]),
    );
    check(
        &spec,
        "hoard key show",
        0,
        &keyed.json(&["key", "show", "--json"]),
    );
    check(
        &spec,
        "hoard known-stores list",
        0,
        &keyed.json(&["known-stores", "list", "--json"]),
    );

    // A server's tokens (format-spec/server.md).
    check(
        &spec,
        "hoard token create",
        0,
        &env.json(&["token", "create", "node1", "--role", "backup", "--json"]),
    );
    check(
        &spec,
        "hoard token list",
        0,
        &env.json(&["token", "list", "--json"]),
    );

    // Jobs: a job file in a directory of its own.
    let jobs = env.path("jobs");
    fs::create_dir_all(&jobs).unwrap();
    fs::write(
        jobs.join("nightly.toml"),
        format!(
            "store = \"{}\"\n[[images]]\nid = \"1\"\npath = \"{}\"\n",
            env.store.display(),
            env.path("d.raw").display()
        ),
    )
    .unwrap();
    let job = |args: &[&str]| -> Value {
        let out = env
            .hoard()
            .env_remove("HOARD_STORE")
            .env("HOARD_JOBS_DIR", &jobs)
            .env("HOARD_RUN_DIR", env.path("run"))
            .arg("job")
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("job {args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    check(&spec, "hoard job run", 0, &job(&["run", "nightly", "--json"]));
    check(&spec, "hoard job list", 0, &job(&["list", "--json"]));
    check(&spec, "hoard job show", 0, &job(&["show", "nightly", "--json"]));
    check(&spec, "hoard bench", 0, &env.json(&["bench", "--json"]));
    check(
        &spec,
        "hoard bench",
        1,
        &env.json(&["bench", env.path("d.raw").to_str().unwrap(), "--json"]),
    );
}
