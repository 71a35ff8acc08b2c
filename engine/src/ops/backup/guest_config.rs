//! The guest's configuration (a Proxmox `qemu-server` or LXC conf, a
//! libvirt domain XML, a QEMU command line) stored with its snapshot as the
//! tree archive `config.tree`, chunked and encrypted like the disks:
//! without it a guest cannot be recreated from its backup.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::create::TreeInput;
use crate::pipeline::options::BackupError;

/// The archive that holds the configuration files, each under its own name.
pub(crate) const ARCHIVE: &str = "config.tree";

/// Copies `files` into the new directory `staging` (inside the snapshot's
/// private directory) and returns the tree input that archives it. Every
/// file must be a regular file (symlinks are followed) and their names
/// distinct: they are restored side by side.
pub(crate) fn stage(files: &[PathBuf], staging: &Path) -> Result<TreeInput, BackupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { path, source }
    };
    fs::create_dir(staging).map_err(io(staging))?;
    let mut names = HashSet::new();
    for file in files {
        let bad = |why: &str| BackupError::ConfigFile {
            path: file.clone(),
            why: why.into(),
        };
        let meta = fs::metadata(file).map_err(io(file))?;
        if !meta.is_file() {
            return Err(bad("not a regular file"));
        }
        let Some(name) = file.file_name() else {
            return Err(bad("names no file"));
        };
        if !names.insert(name.to_owned()) {
            return Err(bad("a configuration file of the same name is already given"));
        }
        let copy = staging.join(name);
        fs::copy(file, &copy).map_err(io(file))?;
        // The copy keeps the original's time, so a restore shows when the
        // configuration last changed.
        if let Ok(mtime) = meta.modified() {
            let f = fs::File::options().write(true).open(&copy).map_err(io(&copy))?;
            f.set_modified(mtime).map_err(io(&copy))?;
        }
    }
    let origin = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(TreeInput {
        name: ARCHIVE.into(),
        root: staging.to_path_buf(),
        exclude: Vec::new(),
        one_file_system: true,
        include_mounts: Vec::new(),
        full_read: false,
        cdc: Default::default(),
        origin: Some(origin),
    })
}
