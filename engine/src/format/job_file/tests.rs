//! Job files: what reads back, and every bad value named by line and field.

use super::*;

fn parse_text(text: &str) -> Result<Job, JobFileError> {
    parse(Path::new("/etc/hoard/jobs/nightly.toml"), text.as_bytes())
}

fn error(text: &str) -> (usize, String, String) {
    match parse_text(text) {
        Err(JobFileError::Invalid {
            line, field, message, ..
        }) => (line, field, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

const FULL: &str = r#"
store = "/srv/hoard"
schedule = "*-*-* 02:00"
randomized-delay = "15min"
max-workers = 2
bwlimit = "50M"
compress = "zstd:3"
chunk-size = "64K"

[keep]
daily = 7
weekly = 4

[notify]
when = "always"
mailto = ["root@example.org"]
webhook = "http://127.0.0.1:9/hook"

[vms]
mode = "snapshot"
guests = [{ id = "100", qmp = "/run/qemu/100.qmp", qga = "/run/qemu/100.qga" }]

[containers]
mode = "suspend"
guests = ["web", { name = "db", mode = "stop", include-mounts = ["/srv"] }]

[[images]]
id = "data"
path = "/dev/vdb"

[[trees]]
id = "etc"
path = "/etc"
exclude = ["*.cache"]
"#;

#[test]
fn a_full_job_file_reads_back() {
    let job = parse_text(FULL).unwrap();
    assert_eq!(job.name, "nightly");
    assert_eq!(
        job.schedule.as_ref().map(|s| (s.value.as_str(), s.line)),
        Some(("*-*-* 02:00", 3))
    );
    assert_eq!(job.bwlimit, Some(50 << 20));
    assert_eq!(job.max_workers, 2);
    assert_eq!(job.keep.as_ref().unwrap().daily, Some(7));
    let cts = job.containers.as_ref().unwrap();
    assert_eq!(cts.guests[1].get_ref().mode, Some(CtMode::Stop));
    assert_eq!(cts.guests[0].get_ref().name, "web");
    assert_eq!(job.images[0].get_ref().name, "disk.img");
    assert_eq!(job.trees[0].get_ref().name, "root.tree");
}

#[test]
fn every_bad_value_names_its_line_and_field() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "store = \"/s\"\nfrobnicate = 1\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "frobnicate",
            "unknown field",
        ),
        (
            "[[trees]]\nid=\"a\"\npath=\"/\"\n",
            1,
            "",
            "missing field `store`",
        ),
        (
            "store = \"/s\"\nmax-workers = 0\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "max-workers",
            "1..64",
        ),
        (
            "store = \"/s\"\nbwlimit = \"fast\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "bwlimit",
            "not a size",
        ),
        (
            "store = \"/s\"\ncompress = \"lz4\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "compress",
            "invalid compression",
        ),
        (
            "store = \"/s\"\nchunk-size = \"3K\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "chunk-size",
            "chunk size",
        ),
        (
            "store = \"/s\"\n[keep]\ndaily = 0\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            3,
            "keep.daily",
            "at least 1",
        ),
        (
            "store = \"/s\"\n[keep]\ndayly = 3\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            3,
            "keep.dayly",
            "unknown field",
        ),
        (
            "store = \"/s\"\n[vms]\nmode = \"fast\"\nguests = []\n",
            3,
            "vms.mode",
            "unknown variant",
        ),
        ("store = \"/s\"\n[vms]\nguests = []\n", 2, "vms", "no VM"),
        (
            "store = \"/s\"\n[vms]\nguests = [{ id = \"a/b\", qmp = \"/q\" }]\n",
            3,
            "vms.guests",
            "invalid id",
        ),
        (
            "store = \"/s\"\n[containers]\nguests = [{ name = \"a\", colour = 1 }]\n",
            3,
            "containers.guests",
            "unknown field",
        ),
        (
            "store = \"/s\"\n[containers]\nexclude = [\"x\"]\nguests = [\"a\"]\n",
            3,
            "containers.exclude",
            "all = true",
        ),
        (
            "store = \"/s\"\n[containers]\nguests = [\"a\", \"a\"]\n",
            3,
            "containers.guests",
            "already backed up",
        ),
        (
            "store = \"/s\"\n[notify]\nmailto = [\"a\\nBcc: x\"]\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            3,
            "notify.mailto",
            "invalid mail address",
        ),
        (
            "store = \"/s\"\n[notify]\nwebhook = \"ftp://x\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            3,
            "notify.webhook",
            "URL",
        ),
        (
            "store = \"/s\"\n[notify]\nwhen = \"always\"\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "notify",
            "mailto or webhook",
        ),
        (
            "store = \"/s\"\n[[images]]\nid = \"a\"\npath = \"/x\"\nname = \"x.tree\"\n",
            5,
            "images.name",
            "invalid archive name",
        ),
        ("store = \"/s\"\n", 1, "(job)", "the job does nothing"),
        (
            "store = \"/s\"\n[maintenance]\nprune = false\n",
            2,
            "maintenance",
            "nothing to do",
        ),
        (
            "store = \"/s\"\n[maintenance]\nprune = true\n",
            3,
            "maintenance.prune",
            "give [keep]",
        ),
        (
            "store = \"/s\"\n[maintenance]\nverify = true\nverify-outdated-after = 0\n",
            4,
            "maintenance.verify-outdated-after",
            "1..3650",
        ),
        (
            "store = \"/s\"\nschedule = 5\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "schedule",
            "invalid type",
        ),
        (
            "store = \"/s\"\n[[trees]\nid=\"a\"\n",
            2,
            "trees",
            "unclosed array table",
        ),
        (
            "store = \"http://h/b\"\ncreate-store = true\n[[trees]]\nid=\"a\"\npath=\"/\"\n",
            2,
            "create-store",
            "hoard init",
        ),
    ];
    for (text, line, field, msg) in cases {
        let (l, f, m) = error(text);
        assert!(
            l == *line && f.contains(field) && m.contains(msg),
            "{text:?}: got line {l} field {f:?} message {m:?}, expected {line} {field:?} {msg:?}"
        );
    }
}

#[test]
fn the_error_message_carries_file_line_and_field() {
    let e = parse_text("store = \"/s\"\nmax-workers = 99\n[[trees]]\nid=\"a\"\npath=\"/\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/hoard/jobs/nightly.toml:2: max-workers: 99: use 1..64"
    );
}

#[test]
fn job_names_are_checked() {
    let bad = parse(Path::new("/j/a@b.toml"), b"store = \"/s\"").unwrap_err();
    assert!(bad.to_string().contains("file name"), "{bad}");
    assert!(valid_job_name("nightly-2.x") && !valid_job_name(".hidden") && !valid_job_name("a b"));
    // A unit would run `hoard job run -rf`: an option, not a job.
    assert!(!valid_job_name("-rf"));
    let bad = parse(Path::new("/j/-rf.toml"), b"store = \"/s\"").unwrap_err();
    assert!(bad.to_string().contains("file name"), "{bad}");
}

#[test]
fn the_packaged_examples_are_valid_job_files() {
    for (name, text) in [
        ("example.toml", include_str!("../../../../packaging/example.toml")),
        (
            "reference.toml",
            include_str!("../../../../packaging/reference.toml"),
        ),
    ] {
        let job = parse(Path::new(name), text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!job.trees.is_empty(), "{name}");
    }
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("50M"), Some(50 << 20));
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_size("99999999999T"), None);
}

#[test]
fn a_job_of_maintenance_alone_is_a_store_job() {
    let job =
        parse_text("store = \"/s\"\n[keep]\nlast = 3\n[maintenance]\nprune = true\ngc = true\n").unwrap();
    let m = job.maintenance.unwrap();
    assert!(m.prune && m.gc && !m.verify);
    assert_eq!(m.verify_outdated_after, 30);
}
