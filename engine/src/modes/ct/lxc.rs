//! An LXC container as hoard sees it: the root file system and mount
//! entries of its configuration, and its state, driven through the liblxc
//! command-line tools (behind [`Runner`], so that command sequences can be
//! checked where the real tools cannot run).

use std::path::{Path, PathBuf};

use super::error::CtError;
use super::runner::Runner;

/// Nested `lxc.include` deeper than this is refused (a loop).
const MAX_INCLUDE_DEPTH: usize = 8;

/// Where the root file system lives (`lxc.rootfs.path`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rootfs {
    /// A directory on the host (`dir:` or a plain path, also `btrfs:`).
    Dir(PathBuf),
    /// An LVM logical volume (`lvm:/dev/VG/LV`).
    Lvm(String),
    /// A ZFS dataset (`zfs:POOL/DATASET`).
    Zfs(String),
    /// Anything else (loop, overlay, nbd, rbd): named in errors as is.
    Other(String),
}

/// One `lxc.mount.entry`: fstab fields, the target relative to the rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: Vec<String>,
}

/// What the configuration says about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub rootfs: Rootfs,
    pub mounts: Vec<MountEntry>,
}

/// Parses a container configuration (`LXCPATH/NAME/config`); `lxc.include`
/// is read in place, as LXC reads it (a file, or a directory's `*.conf`
/// files; regular files of at most 1 MiB only). Also a fuzz target.
pub(crate) fn parse_config(path: &Path, text: &str) -> Result<Config, CtError> {
    let mut rootfs = None;
    let mut mounts = Vec::new();
    parse_into(path, text, 0, &mut rootfs, &mut mounts)?;
    let rootfs = rootfs.ok_or_else(|| CtError::Config {
        path: path.to_path_buf(),
        detail: "no lxc.rootfs.path".into(),
    })?;
    Ok(Config { rootfs, mounts })
}

fn parse_into(
    path: &Path,
    text: &str,
    depth: usize,
    rootfs: &mut Option<Rootfs>,
    mounts: &mut Vec<MountEntry>,
) -> Result<(), CtError> {
    let bad = |line: usize, detail: String| CtError::Config {
        path: path.to_path_buf(),
        detail: format!("line {line}: {detail}"),
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(n + 1, format!("not KEY = VALUE: {line:?}")));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "lxc.rootfs.path" => *rootfs = Some(parse_rootfs(value)),
            "lxc.mount.entry" => {
                let f: Vec<&str> = value.split_whitespace().collect();
                if f.len() < 4 {
                    return Err(bad(
                        n + 1,
                        format!("lxc.mount.entry needs at least 4 fields: {value:?}"),
                    ));
                }
                mounts.push(MountEntry {
                    source: f[0].to_string(),
                    target: f[1].trim_start_matches('/').to_string(),
                    fstype: f[2].to_string(),
                    options: f[3].split(',').map(str::to_string).collect(),
                });
            }
            "lxc.include" => {
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(bad(
                        n + 1,
                        format!("lxc.include nested deeper than {MAX_INCLUDE_DEPTH}"),
                    ));
                }
                for inc in include_files(Path::new(value))
                    .map_err(|e| bad(n + 1, format!("lxc.include {value}: {e}")))?
                {
                    let text = read_include(&inc)
                        .map_err(|e| bad(n + 1, format!("lxc.include {}: {e}", inc.display())))?;
                    parse_into(&inc, &text, depth + 1, rootfs, mounts)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An included file is read only up to this size: a configuration is a
/// few kilobytes, and an include of something endless must not hang.
const MAX_INCLUDE_BYTES: u64 = 1 << 20;

/// The files an `lxc.include` names, as LXC reads them: a file itself, or
/// a directory's `*.conf` files in name order.
fn include_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads an included file: a regular file of at most [`MAX_INCLUDE_BYTES`],
/// never a device or FIFO (`/dev/zero` would never end).
fn read_include(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_INCLUDE_BYTES {
        return Err(format!(
            "larger than {MAX_INCLUDE_BYTES} bytes; not a container configuration"
        ));
    }
    let mut text = String::new();
    file.take(MAX_INCLUDE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

fn parse_rootfs(value: &str) -> Rootfs {
    match value.split_once(':') {
        Some(("dir" | "btrfs", p)) => Rootfs::Dir(PathBuf::from(p)),
        Some(("lvm", dev)) => Rootfs::Lvm(dev.to_string()),
        Some(("zfs", ds)) => Rootfs::Zfs(ds.to_string()),
        None if value.starts_with('/') => Rootfs::Dir(PathBuf::from(value)),
        _ => Rootfs::Other(value.to_string()),
    }
}

/// Why a mount entry is, or is not, backed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountKind {
    /// A storage volume: a bind of the root of a file system or btrfs
    /// subvolume on the host. Backed up when included.
    Volume(PathBuf),
    /// A bind of an ordinary host directory or file: never backed up.
    Bind,
    /// A block or character device: never backed up.
    Device,
    /// tmpfs, proc, mqueue and the like: nothing stored.
    Pseudo,
}

impl MountKind {
    pub(crate) fn why_skipped(&self) -> &'static str {
        match self {
            MountKind::Volume(_) => "volume not included (--include-mount)",
            MountKind::Bind => "bind mount of a host path: never backed up",
            MountKind::Device => "device mount: never backed up",
            MountKind::Pseudo => "not storage (pseudo file system)",
        }
    }
}

pub(crate) fn classify(m: &MountEntry) -> MountKind {
    let bind = m.options.iter().any(|o| o == "bind" || o == "rbind");
    if m.source.starts_with("/dev/") {
        return MountKind::Device;
    }
    if !m.source.starts_with('/') {
        return MountKind::Pseudo;
    }
    let source = PathBuf::from(&m.source);
    if bind && is_volume_root(&source) {
        return MountKind::Volume(source);
    }
    MountKind::Bind
}

/// The root of a file system (its device differs from its parent's) or of
/// a btrfs subvolume (inode 256).
fn is_volume_root(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else { return false };
    if !m.is_dir() {
        return false;
    }
    let parent_dev = p
        .parent()
        .and_then(|q| std::fs::metadata(q).ok())
        .map(|q| q.dev());
    parent_dev != Some(m.dev()) || super::volume::is_btrfs_subvolume(p)
}

/// A container and the tools that drive it.
pub(crate) struct Lxc<'r> {
    pub name: String,
    pub lxcpath: PathBuf,
    pub runner: &'r mut dyn Runner,
}

impl Lxc<'_> {
    fn tool(&mut self, tool: &str, extra: &[&str]) -> Result<String, CtError> {
        let mut args = vec![
            "-P".to_string(),
            self.lxcpath.display().to_string(),
            "-n".to_string(),
            self.name.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.runner.run(tool, &args)
    }

    /// RUNNING, STOPPED, FROZEN, ...
    pub(crate) fn state(&mut self) -> Result<String, CtError> {
        Ok(self.tool("lxc-info", &["-s", "-H"])?.trim().to_string())
    }

    /// The PID of the container's init (while it runs).
    pub(crate) fn pid(&mut self) -> Result<u32, CtError> {
        let out = self.tool("lxc-info", &["-p", "-H"])?;
        out.trim().parse().map_err(|_| CtError::Command {
            command: format!("lxc-info -n {} -p", self.name),
            detail: format!("not a PID: {:?}", out.trim()),
        })
    }

    pub(crate) fn config(&self) -> Result<Config, CtError> {
        let path = self.lxcpath.join(&self.name).join("config");
        let text = std::fs::read_to_string(&path).map_err(|e| CtError::Config {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        parse_config(&path, &text)
    }

    pub(crate) fn stop(&mut self, timeout_secs: u64) -> Result<(), CtError> {
        self.tool("lxc-stop", &["-t", &timeout_secs.to_string()])
            .map(drop)
    }

    pub(crate) fn start(&mut self) -> Result<(), CtError> {
        self.tool("lxc-start", &[])?;
        self.tool("lxc-wait", &["-s", "RUNNING", "-t", "30"]).map(drop)
    }

    pub(crate) fn freeze(&mut self) -> Result<(), CtError> {
        self.tool("lxc-freeze", &[]).map(drop)
    }

    pub(crate) fn unfreeze(&mut self) -> Result<(), CtError> {
        self.tool("lxc-unfreeze", &[]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_rootfs_and_mounts() {
        let text = "# c\nlxc.rootfs.path = dir:/srv/ct/rootfs\nlxc.uts.name = \"ct1\"\n\
                    lxc.mount.entry = shm dev/shm tmpfs defaults,create=dir 0 0\n\
                    lxc.mount.entry = /lib lib none ro,bind 0 0\n\
                    lxc.mount.entry = /dev/sdb1 /mnt/disk ext4 defaults 0 0\n";
        let c = parse_config(Path::new("config"), text).unwrap();
        assert_eq!(c.rootfs, Rootfs::Dir("/srv/ct/rootfs".into()));
        assert_eq!(c.mounts.len(), 3);
        assert_eq!(c.mounts[2].target, "mnt/disk");
        let kinds: Vec<_> = c.mounts.iter().map(classify).collect();
        assert_eq!(kinds, [MountKind::Pseudo, MountKind::Bind, MountKind::Device]);
        assert_eq!(parse_rootfs("lvm:/dev/vg/lv"), Rootfs::Lvm("/dev/vg/lv".into()));
        assert_eq!(parse_rootfs("zfs:tank/ct1"), Rootfs::Zfs("tank/ct1".into()));
        assert_eq!(parse_rootfs("/plain"), Rootfs::Dir("/plain".into()));
        for bad in ["lxc.rootfs.path", "lxc.mount.entry = a b", "lxc.uts.name = x"] {
            let e = parse_config(Path::new("config"), bad).unwrap_err().to_string();
            assert!(e.contains("config"), "{e}");
        }
    }

    #[test]
    fn includes_are_read_as_lxc_reads_them_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("10-mnt.conf"),
            "lxc.mount.entry = /srv/a mnt/a none bind 0 0\n",
        )
        .unwrap();
        std::fs::write(
            d.join("20-mnt.conf"),
            "lxc.mount.entry = /srv/b mnt/b none bind 0 0\n",
        )
        .unwrap();
        std::fs::write(d.join("README"), "not = read\nlxc.mount.entry = x").unwrap();
        let text = format!("lxc.rootfs.path = /r\nlxc.include = {}\n", d.display());
        let c = parse_config(Path::new("config"), &text).unwrap();
        let targets: Vec<&str> = c.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["mnt/a", "mnt/b"]);
        // A device never ends: refused at once, not read.
        let e = parse_config(
            Path::new("config"),
            "lxc.rootfs.path = /r\nlxc.include = /dev/zero\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.conf");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_INCLUDE_BYTES + 1)
            .unwrap();
        let e = parse_config(Path::new("config"), &format!("lxc.include = {}\n", big.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
