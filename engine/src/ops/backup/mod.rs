//! Backup: inputs (images, trees) in, one published snapshot out.
//!
//! Every input is read into the store through one [`BackupSession`]; the
//! snapshot becomes visible only after every pack it references is sealed
//! and committed and every index file is fsynced: the session publishes its
//! manifest last. [`image`] backs up disk images, [`crate::archive`] trees.

mod chunk_ranges;
pub(crate) mod guest_config;
pub(crate) mod image;
mod read_ahead;
mod seed_ahead;

use std::collections::HashSet;
use std::fs;
use std::time::Instant;

pub use crate::pipeline::options::{BackupError, BackupOptions};
pub(crate) use chunk_ranges::ChunkRanges;
pub(crate) use image::{ImageInput, ReadPlan};

use crate::archive::create::{archive_tree, TreeInput};
use crate::format::snapshot::{self, Manifest, SnapshotError, MANIFEST_FORMAT, MANIFEST_VERSION};
use crate::progress::Progress;
use crate::store::Repository;

/// One archive of a snapshot: a disk image or a file tree.
pub enum Input {
    Image(ImageInput),
    Tree(TreeInput),
}

impl Input {
    pub fn name(&self) -> &str {
        match self {
            Input::Image(i) => &i.name,
            Input::Tree(t) => &t.name,
        }
    }
}

/// Backs up `images` as one new snapshot and returns its manifest.
pub fn backup_images(
    store: &dyn Repository,
    opts: &BackupOptions,
    images: Vec<ImageInput>,
    progress: &dyn Progress,
) -> crate::Result<Manifest> {
    Ok(back_up_images(store, opts, images, progress)?)
}

/// [`backup_images`] for the modes, which wrap its error in their own.
pub(crate) fn back_up_images(
    store: &dyn Repository,
    opts: &BackupOptions,
    images: Vec<ImageInput>,
    progress: &dyn Progress,
) -> Result<Manifest, BackupError> {
    let inputs = images.into_iter().map(Input::Image).collect();
    backup_passes(store, opts, inputs, None, progress).map(|(m, _)| m)
}

/// Backs up `inputs` as one new snapshot; returns its manifest and the
/// warnings of tree walks (unreadable files, files changed while read).
pub fn backup(
    store: &dyn Repository,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    progress: &dyn Progress,
) -> crate::Result<(Manifest, Vec<String>)> {
    Ok(back_up(store, opts, inputs, progress)?)
}

/// [`backup`] for the modes, which wrap its error in their own.
pub(crate) fn back_up(
    store: &dyn Repository,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    backup_passes(store, opts, inputs, None, progress)
}

/// A container mode's steps around the read of its trees (see
/// [`backup_quiesced`]): the callee's callback, declared here so that the
/// modes above implement it and this layer never imports them.
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

/// Backs up `inputs` with `q.quiesce()` before the (final) read of the trees
/// and `q.resume()` after it. With `q.first_pass()`, every tree is first
/// read while it changes, into the snapshot's private `pass1/` directory,
/// and the final read is an incremental against it that reads only what
/// changed: the snapshot holds only that consistent pass.
pub(crate) fn backup_quiesced(
    store: &dyn Repository,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    q: &mut dyn Quiesce,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    backup_passes(store, opts, inputs, Some(q), progress)
}

fn backup_passes(
    store: &dyn Repository,
    opts: &BackupOptions,
    inputs: Vec<Input>,
    mut quiesce: Option<&mut dyn Quiesce>,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<String>), BackupError> {
    let started = Instant::now();
    snapshot::validate_id(&opts.id)?;
    let mut seen = HashSet::new();
    if !opts.config_files.is_empty() {
        seen.insert(guest_config::ARCHIVE.to_string());
    }
    for input in &inputs {
        let name = input.name();
        snapshot::validate_archive_name(name)?;
        let kind_ok = matches!(input, Input::Tree(_)) == snapshot::is_tree(name);
        if !kind_ok {
            return Err(BackupError::Snapshot(SnapshotError::BadArchiveName(name.into())));
        }
        if !seen.insert(name.to_string()) {
            return Err(BackupError::DuplicateArchive(name.into()));
        }
    }
    let chunk_size = opts.chunk_size.unwrap_or_else(|| store.default_chunk_size());
    // Registered for the whole run, so that maintenance knows a backup is in
    // flight.
    let writer = store.begin_backup(&format!("backup {}/{}", opts.kind, opts.id))?;
    let writer = writer.as_ref();
    let (name, dir) = writer.create_snapshot(opts.kind, &opts.id)?;
    let mut inputs = inputs;
    let result = (|| {
        let staging = dir.join("config-files");
        if !opts.config_files.is_empty() {
            inputs.push(Input::Tree(guest_config::stage(&opts.config_files, &staging)?));
        }
        let mut archives = Vec::new();
        let mut warnings = Vec::new();
        // A first pass of every tree into pass1/ (the second one's base).
        let pass1 = dir.join("pass1");
        let mut firsts = Vec::new();
        if quiesce.as_ref().is_some_and(|q| q.first_pass()) {
            fs::create_dir(&pass1).map_err(|source| BackupError::Io {
                path: pass1.clone(),
                source,
            })?;
            for input in &inputs {
                if let Input::Tree(tree) = input {
                    let (entry, _) = archive_tree(store, writer, opts, tree, &pass1, None, progress)?;
                    firsts.push(entry);
                }
            }
            // The second pass reads the first one's metadata streams back:
            // their chunks must be in the index, not only in the open pack.
            writer.flush()?;
        }
        let quiesced = match quiesce.as_mut() {
            Some(q) => q.quiesce(),
            None => Ok(()),
        };
        let mut firsts = firsts.iter();
        let passes = quiesced.and_then(|()| {
            for input in &inputs {
                archives.push(match input {
                    Input::Image(img) => {
                        let fidx_path = dir.join(format!("{}.fidx", img.name));
                        image::back_up_image(store, opts, chunk_size, img, &fidx_path, writer, progress)?
                    }
                    Input::Tree(tree) => {
                        let base = firsts.next().map(|e| (pass1.as_path(), e));
                        let (entry, w) = archive_tree(store, writer, opts, tree, &dir, base, progress)?;
                        warnings.extend(w);
                        entry
                    }
                });
            }
            Ok::<(), BackupError>(())
        });
        let resumed = match quiesce.as_mut() {
            Some(q) => q.resume(),
            None => Ok(()),
        };
        passes?;
        resumed?;
        for scratch in [&pass1, &staging] {
            if scratch.exists() {
                fs::remove_dir_all(scratch).map_err(|source| BackupError::Io {
                    path: scratch.clone(),
                    source,
                })?;
            }
        }
        crate::failpoint::pause("backup-before-manifest");
        // The last moment a stop leaves nothing behind.
        if crate::signals::pending() {
            return Err(BackupError::Interrupted);
        }
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            kind: name.kind,
            id: name.id.clone(),
            time: name.time.clone(),
            mode: opts.mode.clone(),
            vm: opts.vm.clone(),
            ct: opts.ct.clone(),
            host: Some(crate::host::name()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            duration_secs: started.elapsed().as_secs_f64(),
            archives,
        };
        if let Some(q) = quiesce.as_ref() {
            q.annotate(&mut manifest);
        }
        // Every referenced chunk is durable and indexed before the manifest exists.
        writer.publish(&manifest)?;
        Ok((manifest, warnings))
    })();
    if result.is_err() {
        writer.abort();
    }
    result
}

/// For unit tests: backs up `data` as image `d.img` of host `a` (through a
/// file in `dir`) and returns the snapshot's index of it.
#[cfg(test)]
pub(crate) fn back_up_bytes(
    store: &dyn Repository,
    dir: &std::path::Path,
    data: &[u8],
) -> crate::format::fixed_index::FixedIndex {
    let path = dir.join("d.img");
    fs::write(&path, data).unwrap();
    let source = crate::source::FileSource::open(&path).unwrap();
    let input = ImageInput::full("d.img".into(), Box::new(source));
    let opts = BackupOptions::new(crate::format::snapshot::Kind::Host, "a");
    let m = backup_images(store, &opts, vec![input], &crate::progress::NoProgress).unwrap();
    store.catalogue().open_image_index(&m.name(), "d.img").unwrap()
}
