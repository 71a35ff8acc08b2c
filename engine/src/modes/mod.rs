//! What the VM and container backup modes share: the vzdump mode names and
//! the steps a mode takes around the read of its trees.

pub(crate) mod ct;
pub(crate) mod hooks;
pub(crate) mod live;
pub(crate) mod vm;

/// vzdump's backup modes, for VMs ([`crate::modes::vm`]) and containers
/// ([`crate::modes::ct`]); each module says what a mode does to its guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stop,
    Suspend,
    Snapshot,
}

impl Mode {
    /// The name recorded in the manifest and passed to hook scripts.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Suspend => "suspend",
            Mode::Snapshot => "snapshot",
        }
    }
}
