//! Terminal progress bars (only when stderr is a terminal).

use std::io::IsTerminal;

use hoard_engine::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar(ProgressBar);

impl Bar {
    /// A bar on stderr, or a hidden one when stderr is not a terminal or
    /// `quiet` is set (for example with --json).
    pub fn new(quiet: bool) -> Bar {
        let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if quiet || !std::io::stderr().is_terminal() {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Bar(pb)
    }
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_message(label.to_string());
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn end(&self) {
        self.0.finish_and_clear();
    }
}
