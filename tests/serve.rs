//! `hoard serve` as a real process on loopback (issue 31, first part):
//! its self-signed certificate and the fingerprint clients pin, tokens
//! stored hashed and revoked at once, every refusal a clear message.

mod common;

use std::process::{Command, Stdio};

use common::server::Server;
use common::Env;

fn token(env: &Env, args: &[&str]) -> std::process::Output {
    env.hoard().arg("token").args(args).output().unwrap()
}

fn whoami(env: &Env, repo: &str, fingerprint: Option<&str>, secret: &str) -> std::process::Output {
    let mut c: Command = env.hoard();
    c.env("HOARD_TOKEN", secret)
        .args(["whoami", "--json", "--repo", repo]);
    if let Some(f) = fingerprint {
        c.args(["--fingerprint", f]);
    }
    c.output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_client_pins_the_server_and_a_revoked_token_is_refused_at_once() {
    let env = Env::new("64K");
    let made = token(
        &env,
        &[
            "create",
            "node1",
            "--role",
            "backup",
            "--namespace",
            "cluster/node1",
        ],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_string();
    // Only the hash is kept.
    let stored = std::fs::read_to_string(env.path("server/tokens.json")).unwrap();
    assert!(!stored.contains(secret.split_once(':').unwrap().1));

    let server = Server::start(&env);
    let first = server.fingerprint.clone();
    let repo = server.repo("cluster/node1");

    let ok = whoami(&env, &repo, Some(&first), &secret);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let me: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    // The fields format-spec/json.md lists for `hoard whoami`.
    let fields: Vec<&str> = me.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["name", "namespace", "role", "schema", "store"]);
    assert_eq!(me["name"], "node1");
    assert_eq!(me["role"], "backup");
    assert_eq!(me["namespace"], "cluster/node1");

    // Another certificate than the pinned one: refused by the client,
    // naming both fingerprints.
    let wrong = format!("00{}", &first[2..]);
    let out = whoami(&env, &repo, Some(&wrong), &secret);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not the pinned 00:"), "{}", stderr(&out));
    // No pin and no CA that vouches for it: refused, with the way out.
    let out = whoami(&env, &repo, None, &secret);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--fingerprint"), "{}", stderr(&out));
    // A wrong secret, a malformed token.
    let forged = format!("node1:{}", "ab".repeat(32));
    let out = whoami(&env, &repo, Some(&first), &forged);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let out = whoami(&env, &repo, Some(&first), "node1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NAME:SECRET"), "{}", stderr(&out));

    // Revoked while the server runs: the very next request is refused.
    let revoked = token(&env, &["revoke", "node1"]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let out = whoami(&env, &repo, Some(&first), &secret);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    drop(server);
    // Every refusal is an event in the server's log, with its fields.
    let log = std::fs::read_to_string(env.path("serve.log")).unwrap();
    let refusals: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e: &serde_json::Value| e["fields"]["message"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    for r in &refusals {
        assert_eq!(r["fields"]["status"], 401, "{r}");
        assert_eq!(r["fields"]["path"], "/api/v1/whoami", "{r}");
        assert!(
            r["fields"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    assert!(log.contains("TLS handshake failed"), "{log}");

    // The certificate is made once: a restarted server keeps its fingerprint.
    let again = Server::start(&env);
    assert_eq!(again.fingerprint, first);
}

#[test]
fn tokens_are_listed_and_bad_names_refused() {
    let env = Env::new("64K");
    for (name, role) in [("a", "reader"), ("b", "admin")] {
        let out = token(&env, &["create", name, "--role", role]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = token(&env, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(list.to_string().contains("\"hash\""));
    for bad in [
        &["create", "a", "--role", "reader"][..],
        &["create", "-x", "--role", "reader"],
        &["create", "c", "--role", "reader", "--namespace", "a//b"],
        &["revoke", "nobody"],
    ] {
        let out = token(&env, bad);
        assert!(!out.status.success(), "{bad:?} passed");
        assert!(!stderr(&out).is_empty());
    }
}

/// The packaged unit runs `hoard serve --config /etc/hoard/serve.toml`:
/// a server started from such a file (its store, listen address and
/// directory there, no options) serves, and the unit passes systemd's
/// verifier with this build's binary in its ExecStart.
#[test]
fn a_server_runs_from_its_configuration_file_as_the_unit_starts_it() {
    let env = Env::new("64K");
    let config = env.path("serve.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstore = \"{}\"\nserver_dir = \"{}\"\ncert_names = [\"localhost\"]\n",
            env.store.display(),
            env.path("elsewhere").display()
        ),
    )
    .unwrap();
    let made = env
        .hoard()
        .env("HOARD_SERVER_DIR", env.path("elsewhere"))
        .args(["token", "create", "n", "--role", "reader"])
        .output()
        .unwrap();
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let mut serve = env.hoard();
    // Neither the store nor the directory from the environment: the file's.
    serve
        .env_remove("HOARD_STORE")
        .env_remove("HOARD_SERVER_DIR")
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(Stdio::null());
    let server = Server::spawn(serve);
    assert!(env.path("elsewhere/server-cert.pem").exists());
    let out = whoami(&env, &server.repo(""), Some(&server.fingerprint), &secret);
    assert!(out.status.success(), "{}", stderr(&out));
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["store"], env.store.display().to_string());
    drop(server);

    // A bad file is named, with what is wrong.
    std::fs::write(&config, "store = \"/s\"\nlisten_on = \"x:1\"\n").unwrap();
    let out = env.run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("serve.toml") && stderr(&out).contains("listen_on"),
        "{}",
        stderr(&out)
    );

    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze missing (scripts/setup.sh installs systemd)");
        assert!(
            std::env::var("CI").is_err(),
            "skipped under CI: systemd-analyze missing"
        );
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/hoard-serve.service"
    ))
    .unwrap()
    .replace("/usr/bin/hoard", env!("CARGO_BIN_EXE_hoard"));
    let path = env.path("hoard-serve.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(
        String::from_utf8_lossy(&verify.stderr).trim().is_empty(),
        "systemd-analyze verify complains: {}",
        stderr(&verify)
    );
}
