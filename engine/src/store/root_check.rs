//! Whether a store's directory can be opened by this user, said in the
//! user's terms: a path that is a file, or a store another user owns, is
//! named as such before any file inside it is tried.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{access, AccessFlags, Uid, User};

use super::StoreError;

pub(crate) fn check_root(root: &Path) -> Result<(), StoreError> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(root.to_path_buf()))
        }
        Err(e) => return Err(super::io_err(root)(e)),
    };
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory(root.to_path_buf()));
    }
    if access(root, AccessFlags::R_OK | AccessFlags::X_OK).is_err() {
        let name = |uid: u32| {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {uid}"), |u| u.name)
        };
        return Err(StoreError::NoAccess {
            path: root.to_path_buf(),
            owner: name(meta.uid()),
            me: name(Uid::effective().as_raw()),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}
