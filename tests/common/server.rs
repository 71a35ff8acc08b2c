//! `hoard serve` as a real process for the tests, its tokens, and a TCP
//! proxy between client and server that counts, cuts or stalls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::Env;

/// A running `hoard serve` on an ephemeral loopback port; killed (SIGTERM,
/// then waited for) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub fingerprint: String,
}

impl Server {
    pub fn start(env: &Env) -> Server {
        Server::start_with(env, &[])
    }

    /// [`start`](Self::start) with more options (`--idle-timeout 2`).
    pub fn start_with(env: &Env, args: &[&str]) -> Server {
        let mut serve = env.hoard();
        // A server holds no key, whatever its store.
        serve
            .env_remove("HOARD_PASSWORD_FILE")
            .args(["serve", "--listen", "127.0.0.1:0", "--cert-name", "localhost"])
            .args(["--log-format", "json"])
            .args(args)
            .stderr(std::fs::File::create(env.path("serve.log")).unwrap());
        Server::spawn(serve)
    }

    /// Starts `serve` (a `hoard serve` command) and reads the two lines
    /// it prints once it listens.
    pub fn spawn(mut serve: Command) -> Server {
        let mut child = serve.stdout(Stdio::piped()).spawn().expect("start hoard serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || lines.next().expect("a line from hoard serve").unwrap();
        let addr = next()
            .strip_prefix("hoard serve: listening on ")
            .expect("the listening line")
            .to_string();
        let fingerprint = next()
            .strip_prefix("fingerprint ")
            .expect("the fingerprint line")
            .to_string();
        Server {
            child,
            addr,
            fingerprint,
        }
    }

    pub fn repo(&self, namespace: &str) -> String {
        format!("https://{}/{namespace}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Makes a token with `role` and returns its secret (NAME:HEX).
pub fn make_token(env: &Env, name: &str, role: &str) -> String {
    let out = env
        .hoard()
        .args(["token", "create", name, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `hoard` as a client of `repo` with token `secret`.
pub fn client(env: &Env, repo: &str, fingerprint: &str, secret: &str) -> Command {
    let mut c = env.hoard();
    c.env_remove("HOARD_STORE")
        .env("HOARD_REPO", repo)
        .env("HOARD_FINGERPRINT", fingerprint)
        .env("HOARD_TOKEN", secret);
    c
}

/// Runs a client command; panics with its stderr if it fails.
pub fn client_ok(c: &mut Command) -> String {
    let out: Output = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a client command that must fail; returns its stderr.
pub fn client_fails(c: &mut Command) -> String {
    let out: Output = c.output().unwrap();
    assert!(
        !out.status.success(),
        "{:?} succeeded",
        c.get_args().collect::<Vec<_>>()
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A TCP proxy on loopback in front of `target`: counts the bytes each
/// way, and can cut the first connection after so many bytes from the
/// client (the client must reconnect), or stall every connection after
/// so many (nothing more passes).
pub struct Proxy {
    pub addr: String,
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// Cut the first connection once this many bytes went up (0: never).
    pub cut_after: Arc<AtomicU64>,
    /// Pass nothing more once this many bytes went up (0: never).
    pub stall_after: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let p = Proxy {
            addr,
            up: Arc::default(),
            down: Arc::default(),
            cut_after: Arc::default(),
            stall_after: Arc::default(),
            stop: Arc::default(),
        };
        let (up, down, cut, stall, stop) = (
            p.up.clone(),
            p.down.clone(),
            p.cut_after.clone(),
            p.stall_after.clone(),
            p.stop.clone(),
        );
        let target = target.to_string();
        std::thread::spawn(move || {
            let mut first = true;
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let cut_this = first.then(|| cut.load(Ordering::Relaxed)).filter(|&c| c > 0);
                first = false;
                let pipe = |mut from: TcpStream,
                            mut to: TcpStream,
                            count: Arc<AtomicU64>,
                            limit: Option<u64>,
                            stall: Arc<AtomicU64>| {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut passed = 0u64;
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let stall_at = stall.load(Ordering::Relaxed);
                            if stall_at > 0 && count.load(Ordering::Relaxed) >= stall_at {
                                // Hold the connection open and pass nothing.
                                std::thread::sleep(std::time::Duration::from_secs(3600));
                            }
                            passed += n as u64;
                            count.fetch_add(n as u64, Ordering::Relaxed);
                            if limit.is_some_and(|l| passed >= l) {
                                break;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    up.clone(),
                    cut_this,
                    stall.clone(),
                );
                pipe(server, client, down.clone(), None, Arc::default());
            }
        });
        p
    }

    pub fn repo(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Bytes both ways so far.
    pub fn bytes(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}
