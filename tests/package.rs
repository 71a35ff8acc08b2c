//! The Debian package (scripts/build-deb.sh) installed into a clean, minimal
//! Debian root (scripts/debroot.sh) as on a fresh machine: `dpkg -i`, its
//! dependencies from the mirror (`apt-get -f install`), then the example job
//! runs, its snapshot shows its log, and the completions, man pages, units
//! and docs are where Debian's tools look for them.

mod common;

use std::path::Path;
use std::process::Command;

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(cmd: &str) -> String {
    let (good, text) = sh(cmd);
    assert!(good, "{cmd}: {text}");
    text
}

/// Unmounts the chroot's /proc however the test ends.
struct Chroot(std::path::PathBuf);

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}/proc", self.0.display()));
    }
}

#[test]
fn the_package_installs_on_a_fresh_debian_and_runs_the_example_job() {
    if !common::tree::is_root() || !Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("SKIPPED: needs root and dpkg-deb (a chroot)");
        assert!(std::env::var("CI").is_err(), "skipped under CI");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    // The binary these tests run, packaged as a release build would be.
    let deb = ok(&format!(
        "{}/build-deb.sh --binary {} --out {}",
        scripts.display(),
        env!("CARGO_BIN_EXE_hoard"),
        tmp.path().join("out").display()
    ));
    let deb = deb
        .lines()
        .find(|l| l.starts_with('/') && l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb printed: {deb}"))
        .to_string();
    let contents = ok(&format!("dpkg-deb -c {deb}"));
    for path in [
        "./usr/bin/hoard",
        "./usr/share/bash-completion/completions/hoard",
        "./usr/share/zsh/vendor-completions/_hoard",
        "./usr/share/fish/vendor_completions.d/hoard.fish",
        "./usr/share/man/man1/hoard.1.gz",
        "./usr/share/man/man1/hoard-job-run.1.gz",
        "./lib/systemd/system/hoard-job@.service",
        "./lib/systemd/system/hoard-serve.service",
        "./usr/share/doc/hoard/examples/serve.toml",
        "./usr/share/man/man1/hoard-serve.1.gz",
        "./etc/hoard/jobs/example.toml",
        "./usr/share/doc/hoard/copyright",
        "./usr/share/doc/hoard/changelog.Debian.gz",
        "./usr/share/doc/hoard/examples/reference.toml",
    ] {
        let line = contents
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"));
        assert!(line.contains("root/root"), "{line}");
        assert!(!line.starts_with("-rw-------"), "{path} is private: {line}");
    }
    // Every page the help text cites ships with it.
    let man = tmp.path().join("man");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("man")
        .arg(&man)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut cited = std::collections::BTreeSet::new();
    for page in std::fs::read_dir(&man).unwrap() {
        // roff writes a hyphen as \-.
        let text = std::fs::read_to_string(page.unwrap().path())
            .unwrap()
            .replace("\\-", "-");
        for dir in ["format-spec/", "docs/"] {
            for (at, _) in text.match_indices(dir) {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "-/._".contains(*c))
                    .collect();
                if let Some(end) = name.find(".md").filter(|_| !name.contains("NAME")) {
                    cited.insert(name[..end + 3].to_string());
                }
            }
        }
    }
    assert!(cited.contains("format-spec/json.md"), "{cited:?}");
    for page in &cited {
        let path = format!("./usr/share/doc/hoard/{page}");
        assert!(
            contents.lines().any(|l| l.ends_with(&path)),
            "{page} is cited by --help but not shipped"
        );
    }
    let control = ok(&format!("dpkg-deb -f {deb}"));
    assert!(control.contains("Depends: libc6"), "{control}");

    let root = tmp.path().join("root");
    ok(&format!("{}/debroot.sh {}", scripts.display(), root.display()));
    let _mounted = Chroot(root.clone());
    ok(&format!("mount -t proc proc {}/proc", root.display()));
    std::fs::copy(&deb, root.join("tmp/hoard.deb")).unwrap();
    let chroot = |cmd: &str| sh(&format!("chroot {} /bin/sh -c '{cmd}'", root.display()));
    assert!(!chroot("command -v hoard").0, "a fresh root has no hoard");
    // dpkg -i unpacks it; the libraries it needs come from the mirror.
    let (installed, text) = chroot("dpkg -i /tmp/hoard.deb");
    if !installed {
        assert!(text.contains("dependency problems"), "{text}");
        let (fixed, text) =
            chroot("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -f install -y -qq");
        assert!(fixed, "apt-get -f install: {text}");
    }
    let (good, status) = chroot("dpkg-query -W -f=\\${Status} hoard");
    assert!(good && status.contains("install ok installed"), "{status}");

    let (good, text) = chroot("hoard job check && hoard job list && hoard job run example");
    assert!(good, "{text}");
    assert!(text.contains("1 of 1 guests backed up"), "{text}");
    let (good, text) = chroot("hoard --store /var/lib/hoard/example show host/etc");
    assert!(good, "{text}");
    assert!(
        text.contains("log of the job run that made it:") && text.contains("job example on"),
        "{text}"
    );
    let (good, text) = chroot("hoard --store /var/lib/hoard/example restore host/etc root.tree /tmp/etc && diff -r /etc/apt /tmp/etc/apt");
    assert!(good, "{text}");
    let (good, text) = chroot("zcat /usr/share/man/man1/hoard-job-run.1.gz | head -5");
    assert!(good && text.contains(".TH"), "{text}");
    // Removing the package keeps the backups and the edited example job.
    let (good, text) = chroot("echo \"# mine\" >> /etc/hoard/jobs/example.toml && dpkg -r hoard && test -d /var/lib/hoard/example && test -f /etc/hoard/jobs/example.toml && ! command -v hoard");
    assert!(good, "{text}");
}
