//! `hoard`: the command line. Argument parsing and output only; the work is
//! done by hoard-engine.

mod bench;
mod ct;
mod diff;
mod export;
mod find;
mod generate;
mod job;
mod keys;
mod known;
mod listing;
mod maintenance;
mod mount;
mod notes;
mod output;
mod progress;
mod qemu;
mod stats;
mod tree;

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hoard_engine::chunking::chunker::ChunkSize;
use hoard_engine::format::chunk::Compression;
use hoard_engine::format::fixed_index::FixedIndex;
use hoard_engine::format::snapshot::{self, Kind};
use hoard_engine::ops::backup::{backup, BackupOptions, ImageInput, Input};
use hoard_engine::ops::restore::{restore_image, restore_image_to_stream, RestoreOptions};
use hoard_engine::source::FileSource;
use hoard_engine::store::{remote, Access, Store};

use crate::output::{print_backup, print_restore};
use crate::progress::Bar;

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Deduplicating backups of VM disks and container trees",
    after_help = "Pages cited as format-spec/NAME.md and docs/NAME.md are in /usr/share/doc/hoard/ (installed with the package)."
)]
struct Cli {
    /// Store: a directory, or an S3 bucket as http(s)://HOST[:PORT]/BUCKET[/PREFIX]
    /// (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_REGION, else from profile AWS_PROFILE (default) of
    /// ~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE; per-request timeout
    /// HOARD_S3_TIMEOUT seconds, default 30).
    #[arg(long, env = "HOARD_STORE", global = true, value_name = "DIR|URL")]
    store: Option<PathBuf>,
    /// Cache directory of a store in a bucket: its chunk index and copies of
    /// its config, keys and snapshot indexes. It may be deleted at any time
    /// (it is rebuilt from the bucket). Default: ~/.cache/hoard/HASH-OF-URL.
    #[arg(long, env = "HOARD_CACHE_DIR", global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Key file of an encrypted or signed store, instead of its key slots
    /// (its passphrase comes from HOARD_PASSWORD_FILE, HOARD_PASSWORD_COMMAND,
    /// HOARD_PASSWORD or the prompt, as a slot's does).
    #[arg(long, env = "HOARD_KEYFILE", global = true, value_name = "FILE")]
    keyfile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create a new, empty store.
    Init {
        /// Default chunk size for image archives: a power of two, 64K..16M.
        /// 64K matches QEMU's dirty-bitmap granularity, so scattered writes
        /// cost an incremental only the clusters they touched; larger
        /// chunks make a slightly faster first backup and a smaller index.
        #[arg(long, default_value = "64K", value_parser = parse_chunk_size)]
        chunk_size: ChunkSize,
        /// Share the store with this group's members (directories 2770,
        /// files 0660). Without it the store is private to its owner
        /// (0700 / 0600), whatever the umask.
        #[arg(long)]
        group: Option<String>,
        /// none; sign (keyed digests, manifest MACs: changes are found,
        /// content stays readable); or encrypt (also AES-256-GCM chunks).
        /// The secret goes into key slot key-1 under a new passphrase
        /// (HOARD_NEW_PASSWORD_FILE, HOARD_PASSWORD_FILE,
        /// HOARD_PASSWORD_COMMAND, HOARD_PASSWORD, or asked twice), or with
        /// --keyfile into that file only (or an existing key file's secret
        /// is used).
        #[arg(long, default_value = "none")]
        encryption: hoard_engine::crypto::Protection,
        /// Shorthand for --encryption encrypt.
        #[arg(long, conflicts_with = "encryption")]
        encrypt: bool,
        #[command(flatten)]
        kdf: keys::KdfArgs,
    },
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
    Backup {
        /// Snapshot kind: vm, ct or host.
        #[arg(long, default_value = "host", value_parser = kind_arg())]
        kind: Kind,
        /// Backup group id (for example the VM id): A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        /// Compression of new chunks: none, zstd or zstd:LEVEL (1..19).
        #[arg(long = "compress", default_value = "zstd:1")]
        compression: Compression,
        /// Chunk size for this backup (default: the store's).
        #[arg(long, value_parser = parse_chunk_size)]
        chunk_size: Option<ChunkSize>,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0, value_parser = crate::parse_threads)]
        threads: usize,
        #[command(flatten)]
        bwlimit: BwLimit,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tree: tree::TreeArgs,
        /// A configuration file of the guest (a Proxmox qemu-server conf, a
        /// libvirt domain XML, a script with the QEMU command line), stored with
        /// the snapshot in archive config.tree; repeatable. `hoard restore SNAP
        /// config.tree DIR` gives the files back.
        #[arg(long = "config", value_name = "FILE")]
        config_files: Vec<PathBuf>,
        /// Archives: NAME.img:PATH for an image (file or block device),
        /// NAME.tree:DIR for a file tree, for example root.tree:/srv/ct/100.
        #[arg(required = true, value_name = "NAME.img:PATH|NAME.tree:DIR")]
        images: Vec<String>,
    },
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
    Snapshots {
        /// Only these groups (KIND/ID, e.g. vm/100) or snapshots
        /// (KIND/ID/TIME).
        #[arg(value_name = "GROUP")]
        groups: Vec<String>,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Space per group and snapshot: what it references, what it stores,
    /// what only it holds (what forgetting it would free), and the store's
    /// deduplication and compression factors.
    ///
    /// From the index files and the chunk index alone; no pack is read.
    /// Uniqueness counts every snapshot of the store, whichever are shown.
    Stats {
        /// Only these groups (KIND/ID, e.g. vm/100) or snapshots
        /// (KIND/ID/TIME); the store's totals always cover all.
        #[arg(value_name = "GROUP")]
        groups: Vec<String>,
        /// Print a JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What changed between two snapshots: files added, removed and
    /// changed (content, size, mode, owner, xattrs, target, mtime) in tree
    /// archives; changed byte ranges (per chunk) in images.
    ///
    /// A file's content counts as unchanged without reading it when both
    /// versions lie in the same chunks; otherwise both are read and
    /// compared. Images are compared by chunk digests alone.
    Diff {
        /// The older snapshot: KIND/ID/TIME or KIND/ID/latest.
        from: String,
        /// The newer snapshot.
        to: String,
        /// Only this archive (NAME.img or NAME.tree).
        archive: Option<String>,
        /// Print one JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Which snapshots hold a path: every entry of every tree archive whose
    /// path matches PATTERN (gitignore syntax: `nginx.conf` matches that
    /// name anywhere, `etc/nginx/*.conf` from the root), as restic's `find`.
    Find {
        /// gitignore-style pattern.
        pattern: String,
        /// Only these groups (KIND/ID) or snapshots (KIND/ID/TIME).
        #[arg(value_name = "GROUP")]
        groups: Vec<String>,
        /// Print a JSON array of matches.
        #[arg(long)]
        json: bool,
    },
    /// Show a snapshot's archives, sizes and chunk counts, and the log of
    /// the job run that made it (`hoard job run`).
    Show {
        /// KIND/ID/TIME, or KIND/ID for the newest of that group.
        snapshot: String,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Read back and check every chunk the snapshots reference (each once).
    ///
    /// SNAPSHOT is KIND/ID/TIME, or KIND/ID for every snapshot of that group;
    /// none means all. The result is recorded per snapshot; damaged chunks are
    /// dropped from the index so the next backup stores them again. Exits with
    /// status 1 if a snapshot failed.
    Verify {
        /// Snapshots (KIND/ID/TIME) or groups (KIND/ID: every snapshot of
        /// it); none: all.
        snapshots: Vec<String>,
        /// Skip snapshots whose last verification passed.
        #[arg(long)]
        ignore_verified: bool,
        /// With --ignore-verified: re-verify snapshots verified more than DAYS ago.
        #[arg(long, value_name = "DAYS", requires = "ignore_verified")]
        outdated_after: Option<u64>,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0, value_parser = crate::parse_threads)]
        threads: usize,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots that a retention policy does not keep (PBS semantics).
    ///
    /// Per group, the options apply in the order last, hourly, daily, weekly,
    /// monthly, yearly; each keeps the newest snapshot of each of its N newest
    /// buckets (UTC) not already kept. Protected snapshots are always kept.
    /// Prune removes snapshots only: `hoard gc` frees their space. Only
    /// snapshots that count are counted or removed: a manifest that does not
    /// load (with a key source: fails its MAC), or a time more than 15
    /// minutes ahead, is named in `ignored` and left alone.
    Prune {
        /// Only these groups (KIND/ID, e.g. vm/100), as PBS's
        /// `prune vm/100`; without one, every group (or --kind/--id).
        #[arg(value_name = "GROUP", conflicts_with = "kind")]
        groups: Vec<String>,
        /// Only this kind (with --id: only this group).
        #[arg(long, value_parser = kind_arg())]
        kind: Option<Kind>,
        /// With --kind: only this group id.
        #[arg(long, requires = "kind")]
        id: Option<String>,
        /// Keep the N newest snapshots.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep the newest snapshot of each of the N newest hours that have one.
        #[arg(long)]
        keep_hourly: Option<usize>,
        /// Keep the newest snapshot of each of the N newest days (UTC) that have one.
        #[arg(long)]
        keep_daily: Option<usize>,
        /// Keep the newest snapshot of each of the N newest ISO weeks that have one.
        #[arg(long)]
        keep_weekly: Option<usize>,
        /// Keep the newest snapshot of each of the N newest months that have one.
        #[arg(long)]
        keep_monthly: Option<usize>,
        /// Keep the newest snapshot of each of the N newest years that have one.
        #[arg(long)]
        keep_yearly: Option<usize>,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
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
    Gc {
        /// Rewrite packs whose live share of bytes is below this fraction (0 disables).
        #[arg(long, default_value_t = 0.5)]
        repack_below: f64,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
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
    Check {
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0, value_parser = crate::parse_threads)]
        threads: usize,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
    },
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
    Restore {
        /// Restore from this fixed index file instead of a snapshot.
        #[arg(long, value_name = "FILE.fidx")]
        index: Option<PathBuf>,
        /// Overwrite TARGET if it exists: a regular file (replaced whole) or a
        /// block device (written in place).
        #[arg(long)]
        force: bool,
        /// Fill missing or damaged chunks with zeros and list them instead of
        /// stopping; exits with status 3 if any range was filled.
        #[arg(long)]
        ignore_missing: bool,
        /// Worker threads (default: two per core).
        #[arg(long, default_value_t = 0, value_parser = crate::parse_threads)]
        threads: usize,
        #[command(flatten)]
        bwlimit: BwLimit,
        /// Print JSON instead of text (format-spec/json.md).
        #[arg(long)]
        json: bool,
        /// Tree archives: restore only this path (and what is below it);
        /// repeat for more.
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Tree archives: do not restore paths matching this gitignore-style
        /// pattern; repeat for more.
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// SNAPSHOT NAME.img TARGET, SNAPSHOT NAME.tree TARGET_DIR, SNAPSHOT
        /// TARGET_ROOT (a container backup: every volume), or TARGET with
        /// --index.
        #[arg(required = true, num_args = 1..=3, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// List the entries of a tree archive (from its metadata alone).
    Ls {
        /// KIND/ID/TIME, or KIND/ID for the newest.
        snapshot: String,
        /// NAME.tree
        archive: String,
        /// Only this path and what is below it.
        path: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Write one file of a tree archive to standard output.
    Cat {
        /// The snapshot: KIND/ID/TIME, or KIND/ID (KIND/ID/latest) for the newest of a group.
        snapshot: String,
        /// The tree archive (NAME.tree).
        archive: String,
        /// The file, relative to the archive's root (etc/hostname).
        path: String,
    },
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

/// `--bwlimit` of the backup commands.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct BwLimit {
    /// Read at most this fast, in bytes per second: 50M, 1G, 200000000 (K,
    /// M, G are powers of 1024): a backup's source, a restore's store.
    /// Rsync's copy of a container backup with --tmpdir is not limited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
}

impl BwLimit {
    pub(crate) fn apply(self) -> Result<()> {
        let Some(rate) = self.bwlimit else {
            return Ok(());
        };
        match std::env::var_os(hoard_engine::throttle::SHARED_VAR) {
            Some(file) => hoard_engine::throttle::set_shared_read_limit(rate, Path::new(&file))
                .with_context(|| format!("bwlimit bucket {}", Path::new(&file).display())),
            None => {
                hoard_engine::throttle::set_read_limit(rate);
                Ok(())
            }
        }
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match hoard_engine::format::job_file::parse_size(s) {
        Some(n) if n >= 1 << 20 => Ok(n),
        Some(_) => Err("at least 1M (bytes per second)".into()),
        None => Err(format!("{s:?} is not a rate: give bytes per second, like 50M")),
    }
}

fn parse_chunk_size(s: &str) -> Result<ChunkSize, String> {
    ChunkSize::parse(s).map_err(|e| e.to_string())
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

/// The store's directory: the one given, or the cache of a store in a
/// bucket (created from the bucket if needed). A group store (`hoard init
/// --group`) gets a group umask, so its members can use what this run
/// creates; a store that other users can enter is reported.
pub(crate) fn store_path(cli_store: &Option<PathBuf>) -> Result<PathBuf> {
    let path = cli_store
        .as_deref()
        .context("no store given: use --store DIR or set HOARD_STORE")?;
    if let Some(url) = store_url(path) {
        let cache = cache_dir(url);
        remote::attach(url, &cache)?;
        return Ok(cache);
    }
    use std::os::unix::fs::MetadataExt;
    // Only a store is judged by its mode: a file or another directory gets
    // its own error when it is opened.
    if let Some(m) = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir() && path.join("config.json").exists())
    {
        if matches!(Access::of(path), Ok(Access::Group(_))) {
            hoard_engine::umask::make_private(true);
        }
        if m.mode() & 0o007 != 0 {
            eprintln!(
                "hoard: warning: store {} can be entered by every user (mode {:o}), who can then read the backed-up data: `chmod 700 {}` (or 2770 for a group store)",
                path.display(),
                m.mode() & 0o7777,
                path.display()
            );
        }
    }
    Ok(path.to_path_buf())
}

/// The URL of a store in a bucket, if `--store` names one.
fn store_url(store: &Path) -> Option<&str> {
    store.to_str().filter(|s| remote::is_url(s))
}

static CACHE_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Sets the cache directory of stores in buckets (`--cache-dir`, or a job's
/// `cache-dir`) for the rest of this run; None means the default.
pub(crate) fn set_cache_dir(dir: Option<PathBuf>) {
    let _ = CACHE_DIR.set(dir);
}

/// The cache directory of the store at `url`: `--cache-dir`, or the default.
fn cache_dir(url: &str) -> PathBuf {
    CACHE_DIR
        .get()
        .cloned()
        .flatten()
        .unwrap_or_else(|| remote::default_cache_dir(url))
}

/// Opens the store and checks it against this host's memory of it (uuid,
/// protection mode, key), refusing a store that changed.
fn open_checked(cli_store: &Option<PathBuf>) -> Result<Store> {
    let store = Store::open(&store_path(cli_store)?)?;
    known::check(&store)?;
    Ok(store)
}

/// Opens the store without its key: enough for listing, prune, forget,
/// GC, check and index rebuild, and for everything on a plain store.
pub(crate) fn open_store(cli_store: &Option<PathBuf>) -> Result<Store> {
    let store = open_checked(cli_store)?;
    known::observe(&store)?;
    Ok(store)
}

/// Opens the store and, if it is encrypted or signed, unlocks it: for
/// backup, restore, ls, cat, export and mount.
pub(crate) fn open_unlocked(cli_store: &Option<PathBuf>) -> Result<Store> {
    let mut store = open_checked(cli_store)?;
    keys::unlock(&mut store)?;
    known::observe(&store)?;
    Ok(store)
}

/// `--kind vm|ct|host`, with its values listed (help and completions).
fn kind_arg() -> impl clap::builder::TypedValueParser<Value = Kind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["vm", "ct", "host"]).try_map(|s| s.parse::<Kind>())
}

/// `--threads N`: 0 (the default for the command) up to the engine's cap,
/// so that an absurd number is an error here instead of a hang.
pub(crate) fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= hoard_engine::MAX_THREADS => Ok(n),
        _ => Err(format!("use 0 (the default) to {}", hoard_engine::MAX_THREADS)),
    }
}

/// Opens the store unlocked when this run was given a key source, and
/// without the key otherwise: what verify and prune do (keyless, they
/// work at the CRC and name level, as a server without the key does).
pub(crate) fn open_keyed_if_given(cli_store: &Option<PathBuf>) -> Result<Store> {
    if keys::key_source_given() {
        open_unlocked(cli_store)
    } else {
        open_store(cli_store)
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Job(args) = cli.command {
        if cli.cache_dir.is_some() || cli.keyfile.is_some() {
            bail!("a job names its own cache directory and key file (in its file); do not give --cache-dir or --keyfile to `hoard job`");
        }
        return job::run(&cli.store, args);
    }
    keys::set_keyfile(cli.keyfile.clone());
    set_cache_dir(cli.cache_dir.clone());
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
        Command::Key { command } => keys::run(&cli.store, command),
        Command::KnownStores { command } => known::run(command),
        Command::Init {
            chunk_size,
            group,
            encryption,
            encrypt,
            kdf,
        } => {
            let given = cli
                .store
                .as_deref()
                .context("no store given: use --store DIR|URL or set HOARD_STORE")?;
            let url = store_url(given);
            let cache = url.map(cache_dir);
            let path = cache.as_deref().unwrap_or(given);
            if url.is_some() && group.is_some() {
                bail!("--group is for a store directory; a store in a bucket is shared through the bucket's credentials");
            }
            let shown = url.map_or_else(
                || path.display().to_string(),
                |u| format!("{u} (cache {})", path.display()),
            );
            let access = match group {
                None => Access::Private,
                Some(name) => {
                    let g = nix::unistd::Group::from_name(&name)
                        .with_context(|| format!("looking up group {name}"))?
                        .with_context(|| format!("no group {name}"))?;
                    hoard_engine::umask::make_private(true);
                    Access::Group(g.gid.as_raw())
                }
            };
            let protection = if encrypt {
                hoard_engine::crypto::Protection::Encrypt
            } else {
                encryption
            };
            if protection == hoard_engine::crypto::Protection::None {
                let store = match url {
                    Some(url) => Store::init_remote(url, path, chunk_size, None)?,
                    None => Store::init_with(path, chunk_size, access)?,
                };
                known::remember_new(&store);
                println!(
                    "created store {shown} (uuid {}, chunk size {chunk_size})",
                    store.config().uuid
                );
                return Ok(());
            }
            let (key, slot, told) = keys::first_key(protection, kdf, path)?;
            let new_key = hoard_engine::store::NewStoreKey {
                protection,
                key: &key,
                slot: slot.as_ref().map(|f| ("key-1", f)),
            };
            let store = match url {
                Some(url) => Store::init_remote(url, path, chunk_size, Some(new_key))?,
                None => Store::init_protected(path, chunk_size, access, Some(new_key))?,
            };
            known::remember_new(&store);
            println!(
                "created {protection}ed store {shown} (uuid {}, chunk size {chunk_size}, key fingerprint {}); {told}",
                store.config().uuid,
                store.config().key_fingerprint.as_deref().unwrap_or("")
            );
            eprintln!(
                "hoard: keep a recovery copy of the key (`hoard key export --paper`, or --recipient AGE_PUBLIC_KEY): without the passphrase or a copy the backups cannot be read"
            );
            Ok(())
        }
        Command::Ls {
            snapshot,
            archive,
            path,
            json,
        } => tree::ls(
            &open_unlocked(&cli.store)?,
            &snapshot,
            &archive,
            path.as_deref(),
            json,
        ),
        Command::Cat {
            snapshot,
            archive,
            path,
        } => tree::cat(&open_unlocked(&cli.store)?, &snapshot, &archive, &path),
        Command::BackupQemu(args) => qemu::run(&open_unlocked(&cli.store)?, args),
        Command::BackupVm(args) => qemu::run_vm(&open_unlocked(&cli.store)?, args),
        Command::BackupCt(args) => ct::run(&open_unlocked(&cli.store)?, args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(&open_unlocked(&cli.store)?, args),
        Command::Mount(args) => mount::run(open_unlocked(&cli.store)?, args),
        Command::Backup {
            kind,
            id,
            compression,
            chunk_size,
            threads,
            bwlimit,
            json,
            tree,
            config_files,
            images,
        } => {
            bwlimit.apply()?;
            let store = open_unlocked(&cli.store)?;
            let inputs = images
                .iter()
                .map(|spec| parse_input(spec, &tree))
                .collect::<Result<Vec<_>>>()?;
            let opts = BackupOptions {
                compression,
                chunk_size,
                threads,
                config_files,
                ..BackupOptions::new(kind, id)
            };
            let (manifest, warnings) = backup(&store, &opts, inputs, &Bar::new(json))?;
            for w in &warnings {
                eprintln!("hoard: warning: {w}");
            }
            print_backup(&manifest, json)?;
            let unreadable: u64 = manifest
                .archives
                .iter()
                .filter_map(|a| a.tree.as_ref())
                .map(|t| t.unreadable)
                .sum();
            if unreadable > 0 {
                eprintln!(
                    "hoard: warning: {unreadable} entries could not be read and are not in the snapshot"
                );
                // As for restore --ignore-missing: finished, but incomplete.
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Snapshots { groups, json } => {
            // With a key source, only snapshots whose manifest passes its
            // MAC are listed; the others are named on stderr.
            listing::snapshots(&open_keyed_if_given(&cli.store)?, &groups, json)
        }
        Command::Notes(args) => {
            // Writing in an encrypted store needs the key; reading takes it if given.
            let store = if args.changes() {
                open_unlocked(&cli.store)?
            } else {
                open_keyed_if_given(&cli.store)?
            };
            notes::run(store.catalog(), args)
        }
        Command::Diff {
            from,
            to,
            archive,
            json,
        } => diff::diff(&open_unlocked(&cli.store)?, &from, &to, archive.as_deref(), json),
        Command::Find {
            pattern,
            groups,
            json,
        } => find::find(&open_unlocked(&cli.store)?, &pattern, &groups, json),
        Command::Stats { groups, json } => stats::run(&open_keyed_if_given(&cli.store)?, &groups, json),
        Command::Show { snapshot, json } => {
            // With a key source, the sealed job log and notes of an
            // encrypted store open.
            listing::show(&open_keyed_if_given(&cli.store)?, &snapshot, json)
        }
        cmd @ (Command::Verify { .. }
        | Command::Prune { .. }
        | Command::Protect { .. }
        | Command::Unprotect { .. }
        | Command::Forget { .. }
        | Command::Gc { .. }
        | Command::Index { .. }
        | Command::Check { .. }) => maintenance::run(&cli.store, cmd),
        Command::Restore {
            index,
            force,
            ignore_missing,
            threads,
            bwlimit,
            json,
            include,
            exclude,
            args,
        } => {
            bwlimit.apply()?;
            let store = open_unlocked(&cli.store)?;
            let stream = args.last().is_some_and(|t| t == "-");
            if let (None, [snap, target]) = (&index, args.as_slice()) {
                if stream {
                    bail!("restore {snap} -: standard output takes one image archive (SNAPSHOT NAME.img -)");
                }
                if target.ends_with(".img") || target.ends_with(".tree") {
                    bail!("restore {snap} {target}: where to? expected SNAPSHOT NAME.img TARGET (or SNAPSHOT TARGET_ROOT for a container backup)");
                }
                return ct::restore(&store, snap, Path::new(target), force, json);
            }
            if let (None, [snap, archive, target]) = (&index, args.as_slice()) {
                if snapshot::is_tree(archive) {
                    if stream {
                        bail!("{archive} is a tree: it is restored into a directory (`hoard cat` prints one file of it)");
                    }
                    let report = tree::restore(
                        &store,
                        tree::RestoreTree {
                            snap,
                            archive,
                            target: Path::new(target),
                            shown: Path::new(target),
                            force,
                            include: &include,
                            exclude: &exclude,
                            json,
                        },
                    )?;
                    if json {
                        let mut v = serde_json::to_value(&report)?;
                        v["target"] = serde_json::json!(target);
                        output::print_json(v)?;
                    }
                    if !report.unmatched_includes.is_empty() {
                        std::process::exit(3);
                    }
                    return Ok(());
                }
            }
            if !include.is_empty() || !exclude.is_empty() {
                bail!("--include and --exclude apply to tree archives only");
            }
            let Some((target, image)) = args.split_last() else {
                bail!("give SNAPSHOT NAME.img TARGET (or --index FILE.fidx TARGET)");
            };
            let target = PathBuf::from(target);
            let (fidx, label) = image_index(&store, image, &index)
                .context("restore SNAPSHOT NAME.img TARGET, or --index FILE.fidx TARGET")?;
            let opts = RestoreOptions {
                force,
                threads,
                ignore_missing,
            };
            let report = if stream {
                let stdout = std::io::stdout();
                if stdout.is_terminal() {
                    bail!("standard output is a terminal: send the image somewhere (`hoard restore SNAPSHOT NAME.img - | ...`)");
                }
                // The descriptor itself: Stdout's line buffering would split
                // every extent at its newlines.
                let out = std::fs::File::from(stdout.as_fd().try_clone_to_owned()?);
                restore_image_to_stream(&store, &fidx, &label, out, &opts, &Bar::new(json))?
            } else {
                restore_image(&store, &fidx, &label, &target, &opts, &Bar::new(json))?
            };
            print_restore(&report, &target, json);
            if !report.missing.is_empty() {
                if !json {
                    for m in &report.missing {
                        eprintln!(
                            "  zero-filled {} bytes at offset {}: {}",
                            m.len, m.offset, m.reason
                        );
                    }
                }
                eprintln!(
                    "hoard: warning: {} ranges could not be restored and were filled with zeros",
                    report.missing.len()
                );
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

fn parse_input(spec: &str, tree_args: &tree::TreeArgs) -> Result<Input> {
    let (name, path) = spec
        .split_once(':')
        .with_context(|| format!("{spec:?}: expected NAME.img:PATH or NAME.tree:DIR"))?;
    snapshot::validate_archive_name(name)?;
    if snapshot::is_tree(name) {
        return Ok(Input::Tree(tree::parse_tree(name, path, tree_args)?));
    }
    // Absolute: the manifest records it as the archive's source.
    let source = std::path::absolute(path)
        .and_then(|p| FileSource::open(&p))
        .with_context(|| format!("cannot open source {path}"))?;
    Ok(Input::Image(ImageInput::full(name.to_string(), Box::new(source))))
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
