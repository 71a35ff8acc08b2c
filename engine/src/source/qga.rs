//! A client for the QEMU guest agent (qemu-ga), through the chardev socket
//! QEMU exposes on the host.
//!
//! The agent sends no greeting, and the channel may still hold bytes of an
//! earlier client (a reply nobody read, half a command): every session
//! starts with `guest-sync-delimited`, whose reply follows a 0xFF byte, and
//! whatever came before it is dropped. Every call has its own deadline: an
//! agent that is not running, or a guest too busy to answer, must not hang
//! the backup.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Classify, Context, ErrorKind};
use serde_json::{json, Value};

/// Replies longer than this are refused (the agent's largest, guest-get-fsinfo
/// on a big guest, is a few KiB).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("guest agent {path}: no reply within {secs} s to {what}")]
    Timeout { path: PathBuf, what: String, secs: u64 },
    #[error("guest agent {path}: connection closed")]
    Closed { path: PathBuf },
    #[error("guest agent {path}: {detail}")]
    Protocol { path: PathBuf, detail: String },
    /// The agent refused a command; `class` and `desc` are its own words.
    #[error("guest agent {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

impl Classify for QgaError {
    fn kind(&self) -> ErrorKind {
        match self {
            QgaError::Timeout { .. } | QgaError::Closed { .. } => ErrorKind::Interrupted,
            _ => ErrorKind::Source,
        }
    }

    fn context(&self) -> Context {
        match self {
            QgaError::Io { path, .. }
            | QgaError::Timeout { path, .. }
            | QgaError::Closed { path }
            | QgaError::Protocol { path, .. } => Context::path(path),
            QgaError::Command { .. } => Context::default(),
        }
    }
}

/// A byte channel whose reads can be bounded in time.
pub trait Channel: Read + Write {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Channel for UnixStream {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        UnixStream::set_read_timeout(self, Some(timeout.max(Duration::from_millis(1))))
    }
}

pub struct Qga<S: Channel> {
    stream: S,
    path: PathBuf,
    buf: Vec<u8>,
}

impl Qga<UnixStream> {
    /// Connects and synchronises within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qga<UnixStream>, QgaError> {
        let stream = UnixStream::connect(path).map_err(|source| QgaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut qga = Qga::new(stream, path);
        qga.sync(timeout)?;
        Ok(qga)
    }
}

impl<S: Channel> Qga<S> {
    /// A client over an open channel; call [`sync`](Self::sync) first.
    pub fn new(stream: S, path: &Path) -> Qga<S> {
        Qga {
            stream,
            path: path.to_path_buf(),
            buf: Vec::new(),
        }
    }

    /// Drops whatever the channel held and checks that the agent answers.
    pub fn sync(&mut self, timeout: Duration) -> Result<(), QgaError> {
        let deadline = Instant::now() + timeout;
        let id = u64::from(uuid::Uuid::new_v4().as_fields().0);
        // A stray half-command from an earlier client ends at our first byte:
        // 0xFF makes the agent reset its parser.
        self.send(b"\xff")?;
        self.send_command("guest-sync-delimited", json!({ "id": id }))?;
        self.buf.clear();
        // Everything up to the agent's 0xFF is stale.
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == 0xff) {
                self.buf.drain(..=at);
                break;
            }
            self.buf.clear();
            self.fill(deadline, "guest-sync-delimited")?;
        }
        loop {
            let line = self.line(deadline, "guest-sync-delimited")?;
            match self.parse(&line, "guest-sync-delimited") {
                Ok(v) if v.as_u64() == Some(id) => return Ok(()),
                _ => continue, // a reply meant for an earlier client
            }
        }
    }

    /// Runs `command`; returns its `return` value. A timeout leaves the
    /// channel out of step: [`sync`](Self::sync) before the next command.
    pub fn execute(&mut self, command: &str, arguments: Value, timeout: Duration) -> Result<Value, QgaError> {
        let deadline = Instant::now() + timeout;
        self.send_command(command, arguments)?;
        let line = self.line(deadline, command)?;
        self.parse(&line, command)
    }

    fn send_command(&mut self, command: &str, arguments: Value) -> Result<(), QgaError> {
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .expect("JSON value serialises");
        line.push(b'\n');
        self.send(&line)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), QgaError> {
        self.stream.write_all(bytes).map_err(|source| QgaError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The next line (without its newline) that is not blank.
    fn line(&mut self, deadline: Instant, what: &str) -> Result<Vec<u8>, QgaError> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).take(at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(QgaError::Protocol {
                    path: self.path.clone(),
                    detail: format!("reply to {what} longer than {MAX_LINE} bytes"),
                });
            }
            self.fill(deadline, what)?;
        }
    }

    fn fill(&mut self, deadline: Instant, what: &str) -> Result<(), QgaError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = QgaError::Timeout {
            path: self.path.clone(),
            what: what.into(),
            secs: left.as_secs().max(1),
        };
        if left.is_zero() {
            return Err(timed_out);
        }
        let io_err = |source| QgaError::Io {
            path: self.path.clone(),
            source,
        };
        self.stream.set_read_timeout(left).map_err(io_err)?;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(QgaError::Closed {
                path: self.path.clone(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(timed_out)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// One reply line: its `return`, or the agent's error.
    fn parse(&self, line: &[u8], command: &str) -> Result<Value, QgaError> {
        let msg: Value = serde_json::from_slice(line).map_err(|e| QgaError::Protocol {
            path: self.path.clone(),
            detail: format!("reply to {command} is not JSON: {e}"),
        })?;
        if let Some(ret) = msg.get("return") {
            return Ok(ret.clone());
        }
        match msg.get("error") {
            Some(err) => {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                Err(QgaError::Command {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                })
            }
            None => Err(QgaError::Protocol {
                path: self.path.clone(),
                detail: format!("reply to {command} has neither return nor error"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fuzzing::Replay;

    fn client(input: &[u8]) -> Qga<Replay<'_>> {
        Qga::new(Replay::new(input), Path::new("qga.sock"))
    }

    #[test]
    fn replies_errors_and_timeouts() {
        let t = Duration::from_secs(1);
        let mut q =
            client(b"{\"return\": {}}\n\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n");
        assert_eq!(q.execute("guest-ping", json!({}), t).unwrap(), json!({}));
        let e = q.execute("guest-fsfreeze-freeze", json!({}), t).unwrap_err();
        assert!(e.to_string().contains("GenericError: no"), "{e}");
        let e = q.execute("guest-ping", json!({}), t).unwrap_err();
        assert!(matches!(e, QgaError::Closed { .. }), "{e}");
        assert!(String::from_utf8_lossy(&q.stream.written).contains("guest-fsfreeze-freeze"));
    }

    #[test]
    fn sync_skips_stale_bytes_and_foreign_replies() {
        // A stale reply, the delimiter, a reply with another id: none of
        // them is our sync; then the agent's bytes run out.
        let mut q = client(b"{\"return\": 7}\n\xff{\"return\": 7}\n");
        let e = q.sync(Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, QgaError::Closed { .. }), "{e}");
        let mut q = client(b"garbage\xff\n not json\n");
        assert!(q.sync(Duration::from_secs(1)).is_err());
    }
}
