//! `hoard`: the command line. Argument parsing and output only; the work is
//! done by hoard-engine.

mod args;
mod argv;
mod backup;
mod bench;
mod ct;
mod diff;
mod exit;
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
mod server;
mod stats;
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::open::{open_repo, open_unlocked, StoreArgs};

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
    Backup(backup::Backup),
    BackupQemu(qemu::BackupQemu),
    BackupVm(qemu::BackupVm),
    Bench(bench::Bench),
    Export(export::Export),
    Mount(mount::Mount),
    BackupCt(ct::BackupCt),
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
    Snapshots(listing::Snapshots),
    Stats(stats::Stats),
    Diff(diff::Diff),
    Find(find::Find),
    Show(listing::Show),
    Verify(maintenance::Verify),
    Prune(maintenance::Prune),
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
    Gc(maintenance::Gc),
    /// Maintain the chunk index.
    Index {
        #[command(subcommand)]
        command: maintenance::IndexCommand,
    },
    Check(maintenance::Check),
    Restore(restore::Restore),
    Ls(tree::Ls),
    Cat(tree::Cat),
    Serve(server::Serve),
    /// API tokens of `hoard serve`: made with a role (backup, reader,
    /// admin) and a namespace, stored hashed, revoked at once.
    Token {
        #[command(subcommand)]
        command: server::TokenCommand,
    },
    Whoami(server::Whoami),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::refused(e),
    };
    // Everything hoard creates is private (store files, restored images,
    // sockets, fleecing images); hooks and LXC's tools get the user's umask.
    hoard_engine::make_private(false);
    exit::finish(|| run(cli))
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
        Command::Serve(args) => server::serve(at, args),
        Command::Token { command } => server::token(command),
        Command::Whoami(args) => server::whoami(at, args),
        Command::Init(args) => init::run(at, args),
        Command::Ls(a) => tree::ls(
            &*open_repo(at, true)?,
            &a.snapshot,
            &a.archive,
            a.path.as_deref(),
            a.json,
        ),
        Command::Cat(a) => tree::cat(&*open_repo(at, true)?, &a.snapshot, &a.archive, &a.path),
        Command::BackupQemu(args) => qemu::run(at, args),
        Command::BackupVm(args) => qemu::run_vm(at, args),
        Command::BackupCt(args) => ct::run(at, args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(&open_unlocked(at)?, args),
        Command::Mount(args) => mount::run(open_unlocked(at)?, args),
        Command::Backup(args) => backup::run(at, args),
        Command::Snapshots(a) => {
            // With a key source, only snapshots whose manifest passes its
            // MAC are listed; the others are named on stderr.
            listing::snapshots(&*open_repo(at, false)?, &a.groups, a.json)
        }
        Command::Notes(args) => {
            // Writing in an encrypted store needs the key; reading takes it if given.
            let store = open_repo(at, args.changes())?;
            notes::run(store.catalogue(), args)
        }
        Command::Diff(a) => diff::diff(
            &*open_repo(at, true)?,
            &a.from,
            &a.to,
            a.archive.as_deref(),
            a.json,
        ),
        Command::Find(a) => find::find(&*open_repo(at, true)?, &a.pattern, &a.groups, a.json),
        Command::Stats(a) => stats::run(&*open_repo(at, false)?, &a.groups, a.json),
        Command::Show(a) => {
            // With a key source, the sealed job log and notes of an
            // encrypted store open.
            listing::show(&*open_repo(at, false)?, &a.snapshot, a.json)
        }
        Command::Verify(args) => maintenance::verify(at, args),
        Command::Prune(args) => maintenance::prune_groups(at, args),
        Command::Protect { snapshot } => maintenance::set_protected(at, &snapshot, true),
        Command::Unprotect { snapshot } => maintenance::set_protected(at, &snapshot, false),
        Command::Forget { snapshot } => maintenance::forget(at, &snapshot),
        Command::Gc(args) => maintenance::collect(at, args),
        Command::Index {
            command: maintenance::IndexCommand::Rebuild { json },
        } => maintenance::rebuild(at, json),
        Command::Check(args) => maintenance::check(at, args),
        Command::Restore(args) => restore::run(at, args),
    }
}
