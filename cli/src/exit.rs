//! How a run of hoard ends: its exit status, the error text (each cause
//! once), a quiet end for a closed pipe, death by the signal that
//! interrupted it, and hints for habits brought from restic or borg.

use std::process::ExitCode;

use anyhow::Result;

/// A command line clap refused: its message, a hint for a restic or borg
/// habit, its status.
pub(crate) fn refused(e: clap::Error) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let hint = (e.use_stderr()).then(|| habit_hint(&args)).flatten();
    let _ = e.print();
    if let Some(hint) = hint {
        eprintln!("hoard: {hint}");
    }
    ExitCode::from(e.exit_code() as u8)
}

/// Runs `run` and turns how it ended into hoard's exit status: 0, 1 with
/// the error's chain, 3 for [`Incomplete`], 141 for a reader that went
/// away, or death by the signal that interrupted it.
pub(crate) fn finish(run: impl FnOnce() -> Result<()>) -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a reader that went away (`hoard
    // snapshots --json | head`) panics. That panic unwinds like any other,
    // so guards still thaw and resume what they hold; it is only kept from
    // printing a backtrace and ends hoard quietly, with the status a shell
    // shows for a command killed by SIGPIPE (as coreutils are).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default_hook(info);
        }
    }));
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(payload) if is_broken_pipe(payload.as_ref()) => return ExitCode::from(141),
        Err(payload) => std::panic::resume_unwind(payload),
    };
    // Only a run the signal stopped (not one that failed, or finished,
    // before it arrived) stopped unpublished.
    let stopped = |e: &anyhow::Error| {
        e.chain().any(|c| {
            c.downcast_ref::<hoard_engine::Error>()
                .is_some_and(|e| e.kind() == hoard_engine::ErrorKind::Interrupted)
        })
    };
    if let (Err(e), Some(sig)) = (&result, hoard_engine::signals::interrupted()) {
        if !stopped(e) {
            eprintln!("hoard: error: {}", error_chain(e));
            hoard_engine::signals::die_by(sig);
        }
        eprintln!(
            "hoard: interrupted by {}: nothing was published, and what this run wrote was removed",
            hoard_engine::signals::name(sig)
        );
        // Ends by the signal, as the shell and a job expect (status 130
        // for SIGINT).
        hoard_engine::signals::die_by(sig);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A bare write error of our own output (engine errors name their
        // file or socket): the same quiet end.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::from(141)
        }
        Err(e) => match e.downcast_ref::<Incomplete>() {
            Some(Incomplete(why)) => {
                eprintln!("hoard: warning: {why}");
                ExitCode::from(3)
            }
            None => {
                eprintln!("hoard: error: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// A one-line pointer for a restic or borg habit that clap refused.
pub(crate) fn habit_hint(args: &[String]) -> Option<&'static str> {
    // The first word that is neither a flag nor a global option's value.
    let mut words = args.iter().skip(1);
    let command = loop {
        let a = words.next()?;
        if ["--store", "--cache-dir", "--keyfile"].contains(&a.as_str()) {
            words.next();
        } else if !a.starts_with('-') {
            break a;
        }
    };
    match command.as_str() {
        "forget" if args.iter().any(|a| a.starts_with("--keep-")) => Some(
            "restic's `forget --keep-*` is `hoard prune [GROUP ...] --keep-* [--dry-run]` here; `hoard forget` removes one snapshot",
        ),
        "dump" => Some(
            "restic's `dump` is `hoard cat SNAPSHOT NAME.tree PATH` (one file) or `hoard restore SNAPSHOT NAME.img -` (an image) here",
        ),
        "list" => Some("restic's `list snapshots` is `hoard snapshots` here"),
        "compact" => Some("borg's `compact` is `hoard gc` here"),
        _ => None,
    }
}

/// Whether a panic is std's "failed printing to stdout: Broken pipe".
fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    msg.starts_with("failed printing to std") && msg.contains("Broken pipe")
}

/// A command that finished its work but found the store damaged or could
/// not do all of it: exit status 3, as `restore --ignore-missing`.
#[derive(Debug)]
pub(crate) struct Incomplete(pub String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Incomplete {}

/// The error and its causes, each once: engine errors already include their
/// source's text in their own message, so a cause is added only if new.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}
