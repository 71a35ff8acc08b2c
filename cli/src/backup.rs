//! `hoard backup`: disk images and file trees as one snapshot.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hoard_engine::{
    backup, is_tree, validate_archive_name, BackupOptions, ChunkSize, FileSource, ImageInput, Input, Kind,
};

use crate::args::{kind_arg, parse_chunk_size, WriteArgs};
use crate::open::open_repo;
use crate::open::StoreArgs;
use crate::output::print_backup;
use crate::progress::Bar;
use crate::tree;

/// Back up disk images (files or block devices) and file trees as one snapshot.
///
/// Prints the snapshot name, KIND/ID/TIME. Chunks the store already has are
/// neither compressed nor written again. What it reads must not change
/// meanwhile: for a running VM use `backup-vm` (vzdump's snapshot,
/// suspend and stop modes, guest agent, hooks), for an LXC container
/// `backup-ct`.
#[derive(clap::Args, serde::Serialize)]
pub(crate) struct Backup {
    /// Snapshot kind: vm, ct or host.
    #[arg(long, default_value = "host", value_parser = kind_arg())]
    #[serde(serialize_with = "crate::argv::as_text")]
    pub(crate) kind: Kind,
    /// Backup group id (for example the VM id): A-Z a-z 0-9 . _ -
    #[arg(long)]
    pub(crate) id: String,
    /// Chunk size of image archives in this backup (default: the store's).
    #[arg(long, value_parser = parse_chunk_size)]
    #[serde(serialize_with = "crate::argv::as_text_opt")]
    pub(crate) chunk_size: Option<ChunkSize>,
    #[command(flatten)]
    pub(crate) write: WriteArgs,
    #[command(flatten)]
    pub(crate) tree: tree::TreeArgs,
    /// A configuration file of the guest (a Proxmox qemu-server conf, a
    /// libvirt domain XML, a script with the QEMU command line), stored with
    /// the snapshot in archive config.tree; repeatable. `hoard restore SNAP
    /// config.tree DIR` gives the files back.
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) config_files: Vec<PathBuf>,
    /// Archives: NAME.img:PATH for an image (file or block device),
    /// NAME.tree:DIR for a file tree, for example root.tree:/srv/ct/100.
    #[arg(required = true, value_name = "NAME.img:PATH|NAME.tree:DIR")]
    pub(crate) images: Vec<String>,
}

pub(crate) fn run(at: &StoreArgs, a: Backup) -> Result<()> {
    let Backup {
        kind,
        id,
        chunk_size,
        write,
        tree,
        config_files,
        images,
    } = a;
    let opts = BackupOptions {
        chunk_size,
        config_files,
        ..write.begin(kind, id)?
    };
    let json = write.json;
    let store = open_repo(at, true)?;
    let inputs = images
        .iter()
        .map(|spec| parse_input(spec, &tree))
        .collect::<Result<Vec<_>>>()?;
    let (manifest, warnings) = backup(&*store, &opts, inputs, &Bar::new(json))?;
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
        eprintln!("hoard: warning: {unreadable} entries could not be read and are not in the snapshot");
        // As for restore --ignore-missing: finished, but incomplete.
        std::process::exit(3);
    }
    Ok(())
}

fn parse_input(spec: &str, tree_args: &tree::TreeArgs) -> Result<Input> {
    let (name, path) = spec
        .split_once(':')
        .with_context(|| format!("{spec:?}: expected NAME.img:PATH or NAME.tree:DIR"))?;
    validate_archive_name(name)?;
    if is_tree(name) {
        return Ok(Input::Tree(tree::parse_tree(name, path, tree_args)?));
    }
    // Absolute: the manifest records it as the archive's source.
    let source = std::path::absolute(path)
        .and_then(|p| FileSource::open(&p))
        .with_context(|| format!("cannot open source {path}"))?;
    Ok(Input::Image(ImageInput::full(name.to_string(), Box::new(source))))
}
