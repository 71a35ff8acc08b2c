//! prune, protect, unprotect, forget through the CLI.

mod common;

use common::{mixed_image, Env};

#[test]
fn prune_keeps_policy_and_protected_snapshots() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 300_000, 1);
    let spec = format!("d.img:{}", env.path("a").display());
    let snaps: Vec<String> = (0..4)
        .map(|_| {
            env.json(&["backup", "--kind", "vm", "--id", "9", "--json", &spec])["snapshot"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    env.backup("other", std::slice::from_ref(&spec));
    env.ok(&["protect", &snaps[0]]);

    let err = env.fails(&["prune", "--kind", "vm", "--id", "9"]);
    assert!(err.contains("--keep"), "{err}");
    let dry = env.json(&[
        "prune",
        "--kind",
        "vm",
        "--id",
        "9",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry["would_remove"], 2);
    assert_eq!(dry["removed"], 0, "a dry run removes nothing");
    assert_eq!(env.snapshot_names().len(), 5, "dry run removes nothing");

    let text = env.ok(&["prune", "--kind", "vm", "--id", "9", "--keep-last", "1"]);
    assert!(text.contains("removed 2 snapshots, kept 2"), "{text}");
    assert!(text.contains(&format!("protected {}", snaps[0])), "{text}");
    let left: Vec<String> = env.snapshot_names();
    assert!(
        left.contains(&snaps[0]) && left.contains(&snaps[3]) && left.len() == 3,
        "{left:?}"
    );

    let err = env.fails(&["forget", &snaps[0]]);
    assert!(err.contains("protected"), "{err}");
    env.ok(&["unprotect", &snaps[0]]);
    env.ok(&["forget", &snaps[0]]);
    assert!(env.fails(&["show", &snaps[0]]).contains("no snapshot"));
    let out = env.path("out");
    env.ok(&["restore", &snaps[3], "d.img", out.to_str().unwrap()]);
    common::assert_same_file(&env.path("a"), &out);
}
