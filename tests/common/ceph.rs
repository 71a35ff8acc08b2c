//! A real one-node Ceph cluster (monitor, BlueStore OSD, radosgw) in a
//! temporary directory, started by scripts/ceph-rgw.sh with the same SigV4
//! keys as SeaweedFS; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::seaweed::{ACCESS_KEY, SECRET_KEY};
use super::S3Server;

pub struct Ceph {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ceph-rgw.sh")
}

impl Ceph {
    /// Starts the cluster (about 20 s), or None with a loud reason (a
    /// failure under CI).
    pub fn start() -> Option<Ceph> {
        let have = ["ceph-mon", "ceph-osd", "radosgw"]
            .iter()
            .all(|b| Path::new("/usr/bin").join(b).exists());
        if !have {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "Ceph missing under CI (scripts/setup.sh installs it)"
            );
            eprintln!("SKIPPED: Ceph RGW missing (run scripts/setup.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (port, mon) = (super::free_port(None), super::free_port(None));
        let out = Command::new(script())
            .arg("start")
            .arg(dir.path())
            .args([&port.to_string(), ACCESS_KEY, SECRET_KEY, &mon.to_string()])
            .output()
            .unwrap();
        let ceph = Ceph {
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        assert!(
            out.status.success(),
            "Ceph did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(ceph)
    }
}

impl S3Server for Ceph {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn create_bucket(&self, name: &str) {
        let out = Command::new(script())
            .arg("bucket")
            .arg(self.dir.path())
            .arg(name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot create bucket {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}
