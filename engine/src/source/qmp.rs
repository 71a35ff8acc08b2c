//! A QMP client: QEMU's JSON machine protocol over a unix socket.
//!
//! Blocking and single-threaded on purpose: hoard issues a handful of block
//! layer commands per backup, in order, and must see each reply before the
//! next step. Replies are matched to commands by `id`; events that arrive in
//! between are queued for [`Qmp::wait_event`].

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Classify, Context, ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("QMP {path}: no reply within {secs} s to {what}")]
    Timeout { path: PathBuf, what: String, secs: u64 },
    #[error("QMP {path}: QEMU closed the connection")]
    Closed { path: PathBuf },
    #[error("QMP {path}: not QMP: {detail}")]
    Protocol { path: PathBuf, detail: String },
    /// QEMU refused a command; `class` and `desc` are QEMU's own words.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {command}: unexpected reply {reply}: {detail}")]
    Reply {
        command: String,
        reply: String,
        detail: String,
    },
}

impl Classify for QmpError {
    fn kind(&self) -> ErrorKind {
        match self {
            QmpError::Timeout { .. } | QmpError::Closed { .. } => ErrorKind::Interrupted,
            _ => ErrorKind::Source,
        }
    }

    fn context(&self) -> Context {
        match self {
            QmpError::Io { path, .. }
            | QmpError::Timeout { path, .. }
            | QmpError::Closed { path }
            | QmpError::Protocol { path, .. } => Context::path(path),
            QmpError::Command { .. } | QmpError::Reply { .. } => Context::default(),
        }
    }
}

/// An asynchronous QMP event.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// The longest QMP message read (a reply to query-named-block-nodes of a
/// VM with many disks is some hundred kilobytes).
const MAX_MESSAGE: u64 = 16 << 20;

pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    /// `timeout` bounds every later wait for a reply.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let io_err = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io_err)?;
        Qmp::over(stream, path, timeout)
    }

    /// [`connect`](Self::connect) over a stream already connected to
    /// `path` (the fuzz target uses one end of a socket pair).
    pub fn over(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let io_err = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        let writer = stream.try_clone().map_err(io_err)?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            next_id: 1,
            timeout,
        };
        let greeting = qmp.read_message(Instant::now() + timeout, "the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                path: path.to_path_buf(),
                detail: format!("greeting without \"QMP\": {greeting}"),
            });
        }
        qmp.execute_value("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `command` and decodes its `return` value as `T`.
    pub fn execute<T: DeserializeOwned>(&mut self, command: &str, arguments: Value) -> Result<T, QmpError> {
        let value = self.execute_value(command, arguments)?;
        serde_json::from_value(value.clone()).map_err(|e| QmpError::Reply {
            command: command.into(),
            reply: truncate(&value.to_string()),
            detail: e.to_string(),
        })
    }

    /// Runs `command`; returns its `return` value.
    pub fn execute_value(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments, "id": id}))
            .expect("JSON value serialises");
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|source| QmpError::Io {
            path: self.path.clone(),
            source,
        })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = self.read_message(deadline, command)?;
            if let Some(name) = msg.get("event").and_then(Value::as_str) {
                self.events.push_back(Event {
                    name: name.into(),
                    data: msg.get("data").cloned().unwrap_or(Value::Null),
                });
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // a reply to a command of an earlier, timed-out call
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            let err = msg.get("error");
            let field = |k: &str| {
                err.and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            if err.is_some() {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Reply {
                command: command.into(),
                reply: truncate(&msg.to_string()),
                detail: "neither return nor error".into(),
            });
        }
    }

    /// Runs the QMP `transaction` of `actions` (each `{"type", "data"}`):
    /// all take effect at one point in time, or none does.
    pub fn transaction(&mut self, actions: Vec<Value>) -> Result<(), QmpError> {
        self.execute_value("transaction", json!({ "actions": actions }))
            .map(drop)
    }

    /// Waits for the first event named `name` whose data satisfies `matches`;
    /// events already queued count. Other events stay queued.
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Event, QmpError> {
        if let Some(i) = self
            .events
            .iter()
            .position(|e| e.name == name && matches(&e.data))
        {
            return Ok(self.events.remove(i).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline, &format!("event {name}"))?;
            let Some(event) = msg.get("event").and_then(Value::as_str) else {
                continue;
            };
            let e = Event {
                name: event.into(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            };
            if e.name == name && matches(&e.data) {
                return Ok(e);
            }
            self.events.push_back(e);
        }
    }

    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error(what));
            }
            let io_err = |source| QmpError::Io {
                path: self.path.clone(),
                source,
            };
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(io_err)?;
            // A peer that never ends a line must not fill memory.
            let room = MAX_MESSAGE.saturating_sub(line.len() as u64);
            if room == 0 {
                return Err(QmpError::Protocol {
                    path: self.path.clone(),
                    detail: format!("a message longer than {MAX_MESSAGE} bytes"),
                });
            }
            match io::Read::take(&mut self.reader, room).read_line(&mut line) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(_) if line.ends_with('\n') => break,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(self.timeout_error(what))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol {
            path: self.path.clone(),
            detail: format!("{e}: {}", truncate(&line)),
        })
    }

    fn timeout_error(&self, what: &str) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            what: what.into(),
            secs: self.timeout.as_secs(),
        }
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim_end();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
