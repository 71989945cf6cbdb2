//! Kept descriptors (data path step 5, the hit path): each worker's open descriptors of
//! committed files, beside its copy of the tag resolutions ([`super::tags::Local`]).

use std::rc::Rc;
use std::sync::Arc;

use super::index::Entry;
use crate::digest::Digest;

pub use crate::limits::KEPT_FILES_OPEN_MAX as FILES_OPEN_MAX;

/// Open descriptors of committed files, per worker: the hit path. A hit on a kept descriptor
/// needs no open/statx/close, no lock on the index, no reference-count increment and no lock on
/// the entry — nothing shared is written but the (millisecond-throttled) last access.
///
/// A kept descriptor holds its entry; once the index has dropped it (expiry, eviction, a
/// size mismatch: the entry is marked removed) the descriptor is no longer used, and [`Files::sweep`] closes it within one
/// heartbeat, so removal frees disk space. Bounded by [`FILES_OPEN_MAX`].
#[derive(Default)]
pub struct Files {
    open: std::cell::RefCell<std::collections::HashMap<Digest, Kept>>,
}

/// One kept descriptor: its entry, the file, and the repositories this worker has already
/// found the entry linked to.
struct Kept {
    entry: Arc<Entry>,
    file: Rc<monoio::fs::File>,
    repos: Vec<Box<str>>,
    /// The entry's media type when kept (manifests; a worker-local copy).
    media_type: Option<Rc<str>>,
}

/// A hit on a kept descriptor.
pub struct Hit {
    pub size: u64,
    pub file: Rc<monoio::fs::File>,
    pub media_type: Option<Rc<str>>,
}

impl Kept {
    /// Still in the index.
    fn live(&self) -> bool {
        !self.entry.removed()
    }
}

impl Files {
    /// Whether this worker keeps a descriptor for `digest` whose entry is still in the index.
    pub fn keeps(&self, digest: &Digest) -> bool {
        self.open.borrow().get(digest).is_some_and(|k| k.live())
    }

    /// A hit on a kept descriptor for `repo`: records the use and returns the size, the file
    /// and the media type. `None` sends the caller to the index (not kept, removed, or `repo`
    /// not yet seen).
    pub fn hit(&self, digest: &Digest, repo: &str) -> Option<Hit> {
        let mut open = self.open.borrow_mut();
        let kept = open.get_mut(digest).filter(|k| k.live())?;
        if !kept.repos.iter().any(|r| &**r == repo) {
            if !kept.entry.linked(repo) {
                return None;
            }
            kept.repos.push(repo.into());
        }
        kept.entry.touch();
        Some(Hit {
            size: kept.entry.size,
            file: kept.file.clone(),
            media_type: kept.media_type.clone(),
        })
    }

    pub fn put(
        &self,
        digest: Digest,
        entry: &Arc<Entry>,
        file: monoio::fs::File,
    ) -> Rc<monoio::fs::File> {
        let file = Rc::new(file);
        let mut open = self.open.borrow_mut();
        if open.len() >= FILES_OPEN_MAX {
            if let Some(k) = open.keys().next().copied() {
                open.remove(&k);
            }
        }
        open.insert(
            digest,
            Kept {
                entry: entry.clone(),
                file: file.clone(),
                repos: Vec::new(),
                media_type: entry.media_type().map(|m| Rc::from(&*m)),
            },
        );
        file
    }

    /// Close the descriptors of entries that left the index.
    pub fn sweep(&self) {
        self.open.borrow_mut().retain(|_, k| k.live());
    }
}
