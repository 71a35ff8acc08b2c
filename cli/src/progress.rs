//! Progress on a terminal: a bar when the total is known, a spinner with
//! what is done so far when it is not (a tree: files and bytes), and for a
//! backup that `hoard job run` started, lines its parent draws.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hoard_engine::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set by `hoard job run` for its backups when it draws their progress: they
/// print [`LINE_PREFIX`] lines on stderr instead of a bar.
pub const LINES_VAR: &str = "HOARD_PROGRESS_LINES";

/// `hoard-progress LABEL DONE TOTAL ENTRIES`: one backup's progress.
pub const LINE_PREFIX: &str = "hoard-progress ";

const BAR: &str = "{msg:24} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
const SPINNER: &str = "{spinner} {msg:24} {bytes} {binary_bytes_per_sec} {elapsed}";

fn style(total: u64) -> ProgressStyle {
    let (template, chars) = if total > 0 { (BAR, "=> ") } else { (SPINNER, "") };
    let s = ProgressStyle::with_template(template).expect("valid template");
    if chars.is_empty() {
        s
    } else {
        s.progress_chars(chars)
    }
}

pub struct Bar {
    pb: ProgressBar,
    label: Mutex<String>,
    entries: AtomicU64,
    /// Progress as lines for a parent (`hoard job run`), not drawn.
    lines: Option<Mutex<Instant>>,
}

impl Bar {
    /// A bar on stderr, or a hidden one when stderr is not a terminal or
    /// `quiet` is set (for example with --json); lines for `hoard job run`
    /// when it asked for them.
    pub fn new(quiet: bool) -> Bar {
        let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let lines = std::env::var_os(LINES_VAR).is_some();
        if quiet || lines || !std::io::stderr().is_terminal() {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        Bar {
            pb,
            label: Mutex::new(String::new()),
            entries: AtomicU64::new(0),
            lines: lines.then(|| Mutex::new(Instant::now() - Duration::from_secs(1))),
        }
    }

    fn message(&self) -> String {
        let label = self.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match self.entries.load(Ordering::Relaxed) {
            0 => label,
            n => format!("{label} {n} files"),
        }
    }

    /// At most twice a second: `hoard-progress LABEL DONE TOTAL ENTRIES`.
    fn line(&self, force: bool) {
        let Some(last) = &self.lines else { return };
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if !force && last.elapsed() < Duration::from_millis(500) {
            return;
        }
        *last = Instant::now();
        let label = self
            .label
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(' ', "_");
        eprintln!(
            "{LINE_PREFIX}{label} {} {} {}",
            self.pb.position(),
            self.pb.length().unwrap_or(0),
            self.entries.load(Ordering::Relaxed)
        );
    }
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: u64) {
        self.pb.reset();
        self.pb.set_style(style(total));
        self.pb.set_length(total);
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label.to_string();
        self.entries.store(0, Ordering::Relaxed);
        self.pb.set_message(label.to_string());
        if total == 0 {
            self.pb.enable_steady_tick(Duration::from_millis(200));
        }
        self.line(true);
    }

    fn advance(&self, bytes: u64) {
        self.pb.inc(bytes);
        self.line(false);
    }

    fn entry(&self) {
        let n = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(64) {
            self.pb.set_message(self.message());
        }
    }

    fn end(&self) {
        self.line(true);
        self.pb.finish_and_clear();
    }
}

/// The bars `hoard job run` draws for its running backups, from their
/// [`LINE_PREFIX`] lines; None when stderr is not a terminal.
pub struct Board(MultiProgress);

impl Board {
    pub fn new() -> Option<Board> {
        std::io::stderr()
            .is_terminal()
            .then(|| Board(MultiProgress::new()))
    }

    /// A bar for one guest, removed when dropped.
    pub fn guest(&self, guest: &str) -> GuestBar {
        let pb = self.0.add(ProgressBar::new(0));
        pb.set_style(style(0));
        pb.set_message(guest.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        GuestBar {
            pb,
            guest: guest.to_string(),
        }
    }

    /// Prints a line above the bars.
    pub fn println(&self, line: &str) {
        let _ = self.0.println(line);
    }
}

pub struct GuestBar {
    pb: ProgressBar,
    guest: String,
}

impl GuestBar {
    /// Takes a child's progress line; false if `line` is not one.
    pub fn update(&self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix(LINE_PREFIX) else {
            return false;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if let [label, done, total, entries] = f.as_slice() {
            let num = |s: &str| s.parse::<u64>().unwrap_or(0);
            if self.pb.length() != Some(num(total)) {
                self.pb.set_style(style(num(total)));
                self.pb.set_length(num(total));
            }
            self.pb.set_position(num(done));
            let files = match num(entries) {
                0 => String::new(),
                n => format!(" {n} files"),
            };
            self.pb.set_message(format!("{} {label}{files}", self.guest));
        }
        true
    }
}

impl Drop for GuestBar {
    fn drop(&mut self) {
        self.pb.finish_and_clear();
    }
}
