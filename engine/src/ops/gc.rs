//! Garbage collection: the snapshots say which chunks are referenced, the
//! store does the rest ([`crate::store::gc::Collection`]'s phases).

use crate::format::snapshot::Manifest;
use crate::progress::Progress;
use crate::store::gc::Collection;
use crate::store::{Catalogue, Store};

pub(crate) use crate::store::gc::{GcError, GcOptions, GcReport};

pub fn gc(store: &Store, opts: &GcOptions, progress: &dyn Progress) -> crate::Result<GcReport> {
    let mut collection = Collection::begin(store)?;
    mark(store.catalog(), &mut collection, progress)?;
    Ok(collection.sweep(opts)?)
}

/// Marks every chunk of every published snapshot.
fn mark(catalog: &dyn Catalogue, c: &mut Collection, progress: &dyn Progress) -> Result<(), GcError> {
    let names = catalog.list()?;
    progress.begin("gc mark", names.len() as u64);
    for name in names {
        let mut mark_all = || -> Result<Manifest, GcError> {
            let manifest = catalog.load_manifest(&name)?;
            catalog.for_each_chunk(&name, &manifest, |_, _, d| c.mark(&d))?;
            Ok(manifest)
        };
        let manifest = match mark_all() {
            Ok(m) => m,
            // Forgotten or pruned since it was listed (it vanishes by one
            // rename, manifest and all): its chunks need no mark.
            Err(_) if !catalog.is_published(&name) => continue,
            // A published snapshot that cannot be read in full: its chunks
            // are unknown, so nothing may be condemned on its account.
            Err(GcError::Snapshot(source)) => {
                return Err(GcError::Unreadable {
                    snapshot: name.to_string(),
                    source,
                })
            }
            Err(e) => return Err(e),
        };
        c.marked_snapshot(&manifest);
        progress.advance(1);
    }
    progress.end();
    Ok(())
}
