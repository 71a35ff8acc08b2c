//! Files and directories that hoard creates where other users can write
//! (a `--fleece-dir` such as /tmp, a restore target's directory, the
//! system's temporary directory): created so that nothing planted there
//! beforehand (a symlink, a directory of someone else's) can redirect them.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use nix::unistd::mkdir;

/// Opens directory `path`, creating it 0700 if absent, and makes sure it is
/// a real directory (not a symlink) owned by this user and closed to
/// everybody else. A directory that another user made is refused, never
/// reused: whoever owns it could replace anything hoard puts inside.
pub fn private_dir(path: &Path) -> io::Result<OwnedFd> {
    match mkdir(path, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            io::Error::other("is a symlink or not a directory; refusing to use it")
        }
        e => e.into(),
    })?;
    let st = fstat(&fd)?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "belongs to uid {}, not to this user ({me}); refusing to reuse it",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o077 != 0 {
        fchmod(&fd, Mode::S_IRWXU)?;
    }
    Ok(fd)
}

/// Opens (creating, 0600) file `name` in the directory `dir`, never
/// through a symlink.
pub fn open_in(dir: &OwnedFd, name: &str, extra: OFlag) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )?;
    Ok(File::from(fd))
}

/// Replaces file `name` in the private directory `dir` whole: a new file
/// beside it (0600, never through a symlink), synced, then renamed over it.
pub(crate) fn replace_in(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple());
    let mut f = open_in(dir, &tmp, OFlag::O_EXCL)?;
    f.write_all(bytes).and_then(|()| f.sync_all())?;
    nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

/// [`private_dir`], its missing parents created first (0700).
pub(crate) fn private_dir_all(path: &Path) -> io::Result<OwnedFd> {
    if let Some(parent) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    private_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // A symlink where the directory should be.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
        assert!(private_dir(&tmp.path().join("link")).is_err());
        // A symlink where a file inside should be.
        let dir = tmp.path().join("d");
        let fd = private_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("lock")).unwrap();
        assert!(open_in(&fd, "lock", OFlag::O_TRUNC).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // An existing directory of ours is tightened.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
