//! What the VM and container backup modes share: the vzdump mode names and
//! the steps a mode takes around the read of its trees.

pub mod ct;
pub mod hooks;
pub mod live;
pub mod vm;

use crate::format::snapshot::Manifest;
use crate::ops::backup::options::BackupError;

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

/// A container mode's steps around the read of its trees (see
/// [`crate::ops::backup::backup_quiesced`]).
pub(crate) trait Quiesce {
    /// Suspend mode: read every tree once before `quiesce`, while it
    /// changes, so that the read after it only looks at what changed.
    fn first_pass(&self) -> bool;
    /// Stops the trees from changing (freezes or stops the container).
    fn quiesce(&mut self) -> Result<(), BackupError>;
    /// Lets them change again; called whenever `quiesce` was called.
    fn resume(&mut self) -> Result<(), BackupError>;
    /// Last word on the manifest before it is written (the times measured).
    fn annotate(&self, manifest: &mut Manifest);
}
