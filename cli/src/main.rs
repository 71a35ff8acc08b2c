//! `hoard`: the command line. Argument parsing and output only; the work is
//! done by hoard-engine.

mod args;
mod backup;
mod bench;
mod ct;
mod diff;
mod export;
mod find;
mod generate;
mod init;
mod job;
mod keys;
mod known;
mod listing;
mod maintenance;
mod mount;
mod notes;
mod open;
mod output;
mod progress;
mod qemu;
mod restore;
mod stats;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use hoard_engine::format::fixed_index::FixedIndex;
use hoard_engine::store::Store;

use crate::open::{open_keyed_if_given, open_unlocked, StoreArgs};

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Deduplicating backups of VM disks and container trees",
    after_help = "Pages cited as format-spec/NAME.md and docs/NAME.md are in /usr/share/doc/hoard/ (installed with the package)."
)]
struct Cli {
    #[command(flatten)]
    at: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create a new, empty store.
    Init(init::Init),
    /// Key slots, passphrases and recovery copies of an encrypted or signed store.
    Key {
        #[command(subcommand)]
        command: keys::KeyCommand,
    },
    /// This host's memory of the stores it has used: their uuid, protection
    /// mode, key fingerprint and newest snapshot per group. A store that
    /// changed behind its back (encryption switched off, re-keyed, rolled
    /// back) is refused or reported; `forget` accepts a change you made.
    KnownStores {
        #[command(subcommand)]
        command: known::KnownStoresCommand,
    },
    /// Back up disk images (files or block devices) and file trees as one snapshot.
    ///
    /// Prints the snapshot name, KIND/ID/TIME. Chunks the store already has are
    /// neither compressed nor written again. What it reads must not change
    /// meanwhile: for a running VM use `backup-vm` (vzdump's snapshot,
    /// suspend and stop modes, guest agent, hooks), for an LXC container
    /// `backup-ct`.
    Backup(backup::Backup),
    /// Back up the disks of a running QEMU, live, with point-in-time
    /// semantics and dirty-bitmap incrementals.
    ///
    /// One QMP transaction is the snapshot point for all disks: a
    /// copy-before-write filter keeps the old data of blocks the guest
    /// overwrites, and the dirty bitmap since the last backup is frozen while
    /// a new one starts. hoard reads the point-in-time view over NBD, only
    /// the chunks that changed when the previous snapshot of the same id is
    /// a valid base, then removes everything it inserted. The VM keeps
    /// running throughout.
    ///
    /// This is `backup-vm --mode snapshot` without the guest agent and
    /// hooks (a crash-consistent point in time); `backup-vm` is the command
    /// a vzdump user wants.
    BackupQemu(qemu::BackupQemu),
    /// Back up a running VM's disks in one of vzdump's modes (the VM command).
    ///
    /// snapshot (default): the guest keeps running; with its agent
    /// (--qga), its file systems are frozen just before the point in time
    /// and thawed right after it (always, also on error or Ctrl-C).
    /// suspend: the VM is paused just before the point in time and resumed
    /// right after it; kept for compatibility, snapshot mode gives the same
    /// point in time without the pause. stop: ACPI shutdown, the point in
    /// time on the powered-off disks, then the guest boots again at once
    /// while hoard reads (QEMU must run with -no-shutdown). The mode, the agent's state, the
    /// downtime and each disk's bitmap state go into the manifest.
    BackupVm(qemu::BackupVm),
    /// How fast this machine runs each backup stage, or what a full backup
    /// of a disk would take and store, estimated from a random sample.
    ///
    /// Without PATH: MB/s of each stage on generated data next to a
    /// reference machine's. With PATH (a file or block device of any
    /// size): reads --samples random 4 MiB regions cold, and reports read
    /// speed, zero fraction, compression, dedup within the disk and the
    /// projected store size and backup time with 95% intervals; --full
    /// reads everything.
    Bench(bench::Bench),
    /// Serve an image archive over NBD without restoring it.
    ///
    /// `hoard export SNAPSHOT NAME.img` (or `--index FILE.fidx`) serves the
    /// image read-only to any number of NBD clients (qemu, qemu-img, nbdcopy,
    /// nbdinfo, the kernel's nbd-client) until Ctrl-C: chunks are read on
    /// demand through a shared cache, sequential readers get read-ahead, and
    /// zero chunks are holes (`base:allocation`). A chunk that cannot be read
    /// fails that request with EIO and is logged; the export goes on.
    ///
    /// Examples: `qemu-img convert -O raw nbd+unix:///disk.img?socket=S out.raw`,
    /// `nbdinfo --map nbd+unix:///disk.img?socket=S`, or as a VM's read-only
    /// backing node; with --writable, clients may write into a temporary
    /// overlay.
    Export(export::Export),
    /// Mount an archive read-only through FUSE, without restoring it.
    ///
    /// `hoard mount SNAPSHOT NAME.tree DIR` shows the file tree with its
    /// owners, modes, times, symlinks, hardlinks and xattrs; file contents
    /// are read on demand. `hoard mount SNAPSHOT NAME.img DIR` shows a
    /// directory holding the image as one file (loop-mount it read-only to
    /// browse its file systems). Runs until Ctrl-C or `umount DIR`.
    Mount(mount::Mount),
    /// Back up an LXC container in one of vzdump's modes.
    ///
    /// stop: lxc-stop (orderly, --stop-timeout), archive, lxc-start.
    /// suspend: a first pass while it runs, lxc-freeze, a second pass over
    /// what changed, lxc-unfreeze; no temporary copy. snapshot (default):
    /// frozen only while storage snapshots of its volumes are taken (btrfs
    /// subvolumes here; LVM-thin and ZFS), archived from the snapshots.
    /// Only the root file system unless --include-mount names volumes; bind
    /// and device mounts are never archived and are listed as skipped.
    /// `hoard restore SNAPSHOT TARGET_ROOT` restores it all.
    BackupCt(ct::BackupCt),
    /// Backup jobs from job files (/etc/hoard/jobs/NAME.toml), as vzdump
    /// runs them: which guests, which mode, when, how long kept, who is told.
    ///
    /// `hoard job run NAME` backs up every guest of the job and applies its
    /// retention; `hoard job install NAME` schedules it with a systemd timer;
    /// `hoard job check` checks every job file. The file format, field by
    /// field: format-spec/job-file.md (packaged as
    /// /usr/share/doc/hoard/job-file.md), with every field in
    /// /usr/share/doc/hoard/examples/reference.toml.
    Job(job::JobArgs),
    /// Print a shell completion script: `hoard completions bash >
    /// /etc/bash_completion.d/hoard` (zsh: a `_hoard` file in $fpath; fish:
    /// ~/.config/fish/completions/hoard.fish).
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages of hoard and each of its commands into DIR
    /// (hoard.1, hoard-backup.1, hoard-job-run.1, ...).
    Man {
        /// Directory to write them into.
        dir: PathBuf,
    },
    /// List snapshots, each with its size (an image's bytes, a tree's
    /// files' bytes), the bytes it added, protection, last verification and
    /// how its job ended: with a key source, only those whose manifest passes
    /// its MAC; none dated more than 15 minutes ahead. The others are named
    /// on stderr ("does not count as a snapshot").
    Snapshots(listing::Snapshots),
    /// Space per group and snapshot: what it references, what it stores,
    /// what only it holds (what forgetting it would free), and the store's
    /// deduplication and compression factors.
    ///
    /// From the index files and the chunk index alone; no pack is read.
    /// Uniqueness counts every snapshot of the store, whichever are shown.
    Stats(stats::Stats),
    /// What changed between two snapshots: files added, removed and
    /// changed (content, size, mode, owner, xattrs, target, mtime) in tree
    /// archives; changed byte ranges (per chunk) in images.
    ///
    /// A file's content counts as unchanged without reading it when both
    /// versions lie in the same chunks; otherwise both are read and
    /// compared. Images are compared by chunk digests alone.
    Diff(diff::Diff),
    /// Which snapshots hold a path: every entry of every tree archive whose
    /// path matches PATTERN (gitignore syntax: `nginx.conf` matches that
    /// name anywhere, `etc/nginx/*.conf` from the root), as restic's `find`.
    Find(find::Find),
    /// Show a snapshot's archives, sizes and chunk counts, and the log of
    /// the job run that made it (`hoard job run`).
    Show(listing::Show),
    /// Read back and check every chunk the snapshots reference (each once).
    ///
    /// SNAPSHOT is KIND/ID/TIME, or KIND/ID for every snapshot of that group;
    /// none means all. The result is recorded per snapshot; damaged chunks are
    /// dropped from the index so the next backup stores them again. Exits with
    /// status 1 if a snapshot failed.
    Verify(maintenance::Verify),
    /// Remove snapshots that a retention policy does not keep (PBS semantics).
    ///
    /// Per group, the options apply in the order last, hourly, daily, weekly,
    /// monthly, yearly; each keeps the newest snapshot of each of its N newest
    /// buckets (UTC) not already kept. Protected snapshots are always kept.
    /// Prune removes snapshots only: `hoard gc` frees their space. Only
    /// snapshots that count are counted or removed: a manifest that does not
    /// load (with a key source: fails its MAC), or a time more than 15
    /// minutes ahead, is named in `ignored` and left alone.
    Prune(maintenance::Prune),
    /// Read or write the notes of a snapshot or a group.
    ///
    /// Without --set, --file or --clear, prints them. Notes are kept beside
    /// the snapshot (not in its manifest, so they can change); in an
    /// encrypted store they are sealed with its key.
    Notes(notes::Notes),
    /// Protect a snapshot from prune and forget. In an encrypted or signed
    /// store this needs the key: the marker carries a MAC, and readers with
    /// the key ignore a marker whose MAC fails (one planted by whoever holds
    /// the store)
    Protect {
        /// The snapshot: KIND/ID/TIME, or KIND/ID (KIND/ID/latest) for the newest of a group.
        snapshot: String,
    },
    /// Remove a snapshot's protection.
    Unprotect {
        /// The snapshot: KIND/ID/TIME, or KIND/ID (KIND/ID/latest) for the newest of a group.
        snapshot: String,
    },
    /// Remove one snapshot (its chunks are freed by `hoard gc`).
    Forget {
        /// The snapshot: KIND/ID/TIME (a group's newest as KIND/ID/latest).
        snapshot: String,
    },
    /// Free the space of chunks no snapshot references, safely next to running backups.
    ///
    /// A chunk is removed at the second gc after it became unreferenced, once
    /// no backup that could still claim it is running (format-spec/gc.md).
    /// A pack is walked before it is deleted or rewritten: a damaged one, or
    /// one holding chunks that snapshots reference but the index does not
    /// list, is kept (exit status 3: run `hoard index rebuild`). A snapshot
    /// whose manifest or index file cannot be read or does not match stops
    /// gc with an error naming it (`hoard forget` gives it up). A second gc
    /// at the same time is refused. In an encrypted or signed store a copy
    /// of a chunk is given up for another only if that one passes a full
    /// check, which needs the key: without it such packs are kept
    /// (`packs_kept_for_key`, not an error).
    Gc(maintenance::Gc),
    /// Maintain the chunk index.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Read and verify every record of every pack; list damaged packs and chunks.
    ///
    /// In an encrypted or signed store, given the key (HOARD_PASSWORD_FILE,
    /// --keyfile, ...) every record is checked in full (tag, keyed digest);
    /// without it, by CRC only. Entries of packs that are gone are dropped.
    /// Exits with status 1 if anything is damaged or missing.
    Check(maintenance::Check),
    /// Restore an image archive to a file, a block device or standard output.
    ///
    /// `hoard restore SNAPSHOT NAME.img TARGET`, or `hoard restore --index
    /// FILE.fidx TARGET` to restore from an index file alone (its chunks are
    /// read from --store). TARGET is a new file (in a directory that
    /// exists), a regular file (replaced whole with --force), a block device
    /// or a symlink to one (written in place, with --force), or `-`: every
    /// byte in order to standard output, the summary on stderr. Anything
    /// else (a directory, a character device, a FIFO, a socket, a symlink to
    /// a file) is refused, and nothing is written. Zero chunks and 4 KiB
    /// blocks of zeros become holes in a file target.
    Restore(restore::Restore),
    /// List the entries of a tree archive (from its metadata alone).
    Ls(tree::Ls),
    /// Write one file of a tree archive to standard output.
    Cat(tree::Cat),
}

#[derive(Subcommand)]
pub(crate) enum IndexCommand {
    /// Rebuild the RocksDB chunk index from the packs alone.
    ///
    /// Every record is checked in full before it is indexed (in an
    /// encrypted or signed store only with the key, HOARD_PASSWORD_FILE or
    /// --keyfile; without it by CRC); the walk goes on past damaged bytes. A damaged pack's intact records are copied to
    /// a new pack and the pack is kept as PACKID.pack.bad. Exits with status
    /// 3, listing every damaged byte range, when anything was skipped.
    /// Needs the store to itself: refused while backups or other maintenance run.
    Rebuild {
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
}

/// A one-line pointer for a restic or borg habit that clap refused.
fn habit_hint(args: &[String]) -> Option<&'static str> {
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args: Vec<String> = std::env::args().collect();
            let hint = (e.use_stderr()).then(|| habit_hint(&args)).flatten();
            let _ = e.print();
            if let Some(hint) = hint {
                eprintln!("hoard: {hint}");
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    // Everything hoard creates is private (store files, restored images,
    // sockets, fleecing images); hooks and LXC's tools get the user's umask.
    hoard_engine::umask::make_private(false);
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
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
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
fn error_chain(e: &anyhow::Error) -> String {
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

/// The index named by `SNAPSHOT NAME.img` or `--index FILE.fidx`, and its
/// label for messages.
pub(crate) fn image_index(
    store: &Store,
    args: &[String],
    index: &Option<PathBuf>,
) -> Result<(FixedIndex, String)> {
    match (index, args) {
        (Some(path), []) => Ok((FixedIndex::open(path)?, path.display().to_string())),
        (Some(_), _) => bail!("with --index, give no SNAPSHOT or archive"),
        (None, [snap, archive]) => {
            let name = store.catalog().find(snap)?;
            let fidx = store.catalog().open_image_index(&name, archive)?;
            Ok((fidx, format!("{name} {archive}")))
        }
        (None, _) => bail!("give SNAPSHOT NAME.img (or --index FILE.fidx)"),
    }
}

fn run(cli: Cli) -> Result<()> {
    let at = &cli.at;
    if let Command::Job(args) = cli.command {
        return job::run(at, args);
    }
    // A backup publishes nothing until its last step: Ctrl-C (or SIGTERM,
    // SIGHUP) makes it stop, remove what it wrote and say so (`main`).
    let _interrupt = matches!(
        cli.command,
        Command::Backup { .. } | Command::BackupQemu(_) | Command::BackupVm(_) | Command::BackupCt(_)
    )
    .then(hoard_engine::signals::Interrupt::start);
    match cli.command {
        Command::Job(_) => unreachable!("handled above"),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { dir } => generate::man_pages(&dir),
        Command::Key { command } => keys::run(at, command),
        Command::KnownStores { command } => known::run(command),
        Command::Init(args) => init::run(at, args),
        Command::Ls(a) => tree::ls(
            &open_unlocked(at)?,
            &a.snapshot,
            &a.archive,
            a.path.as_deref(),
            a.json,
        ),
        Command::Cat(a) => tree::cat(&open_unlocked(at)?, &a.snapshot, &a.archive, &a.path),
        Command::BackupQemu(args) => qemu::run(&open_unlocked(at)?, args),
        Command::BackupVm(args) => qemu::run_vm(&open_unlocked(at)?, args),
        Command::BackupCt(args) => ct::run(&open_unlocked(at)?, args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(&open_unlocked(at)?, args),
        Command::Mount(args) => mount::run(open_unlocked(at)?, args),
        Command::Backup(args) => backup::run(at, args),
        Command::Snapshots(a) => {
            // With a key source, only snapshots whose manifest passes its
            // MAC are listed; the others are named on stderr.
            listing::snapshots(&open_keyed_if_given(at)?, &a.groups, a.json)
        }
        Command::Notes(args) => {
            // Writing in an encrypted store needs the key; reading takes it if given.
            let store = if args.changes() {
                open_unlocked(at)?
            } else {
                open_keyed_if_given(at)?
            };
            notes::run(store.catalog(), args)
        }
        Command::Diff(a) => diff::diff(&open_unlocked(at)?, &a.from, &a.to, a.archive.as_deref(), a.json),
        Command::Find(a) => find::find(&open_unlocked(at)?, &a.pattern, &a.groups, a.json),
        Command::Stats(a) => stats::run(&open_keyed_if_given(at)?, &a.groups, a.json),
        Command::Show(a) => {
            // With a key source, the sealed job log and notes of an
            // encrypted store open.
            listing::show(&open_keyed_if_given(at)?, &a.snapshot, a.json)
        }
        Command::Verify(args) => maintenance::verify(at, args),
        Command::Prune(args) => maintenance::prune_groups(at, args),
        Command::Protect { snapshot } => maintenance::set_protected(at, &snapshot, true),
        Command::Unprotect { snapshot } => maintenance::set_protected(at, &snapshot, false),
        Command::Forget { snapshot } => maintenance::forget(at, &snapshot),
        Command::Gc(args) => maintenance::collect(at, args),
        Command::Index {
            command: IndexCommand::Rebuild { json },
        } => maintenance::rebuild(at, json),
        Command::Check(args) => maintenance::check(at, args),
        Command::Restore(args) => restore::run(at, args),
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every argument of every command says what it is for (issue 29,
    /// item 9): `--help`, the man pages and completions are built from it.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !cmd.is_hide_set() {
                missing.push(format!("{path} (the command)"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help text:\n{}", missing.join("\n"));
    }
}
