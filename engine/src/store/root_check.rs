//! Whether a store's directory can be opened by this user, said in the
//! user's terms: a path that is a file, or a store another user owns, is
//! named as such before any file inside it is tried.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{access, AccessFlags, Uid, User};

/// What stands between this user and the store's directory.
pub(crate) enum RootProblem {
    Missing,
    NotADirectory,
    NoAccess { owner: String, me: String, mode: u32 },
    Io(std::io::Error),
}

pub(crate) fn check_root(root: &Path) -> Result<(), RootProblem> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RootProblem::Missing),
        Err(e) => return Err(RootProblem::Io(e)),
    };
    if !meta.is_dir() {
        return Err(RootProblem::NotADirectory);
    }
    if access(root, AccessFlags::R_OK | AccessFlags::X_OK).is_err() {
        let name = |uid: u32| {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |u| u.name)
        };
        return Err(RootProblem::NoAccess {
            owner: name(meta.uid()),
            me: name(Uid::effective().as_raw()),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}
