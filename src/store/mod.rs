//! The content-addressed store (data path steps 5 and 7): committed files, the in-memory
//! index of what is committed, and ingest (temp files being filled).
//!
//! ```text
//! <root>/
//!   blobs/sha256/<2 hex>/<64 hex>    committed content (blobs and manifests alike)
//!   ingest/<random>                  fills in progress; emptied at startup
//!   state/                           persisted index, tags and TTL state (atomic replace)
//! ```
//!
//! Invariant: a file under `blobs/` always hashes to its name. Content reaches `blobs/` only
//! by [`ingest::Ingest::commit`]: size and sha256 checked, fsync, rename, fsync of the
//! directory. A crash at any point leaves either no file or a complete one under its name;
//! partial files only ever live in `ingest/`, which startup empties.

pub mod incident;
pub mod index;
pub mod ingest;
pub mod state;
pub mod tags;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;
pub use index::{Entry, Index};
pub use ingest::Ingest;

pub struct Store {
    root: PathBuf,
    pub index: Index,
    /// Disk-full, read-only and I/O incidents, logged once per class per minute.
    pub incidents: incident::Incidents,
}

impl Store {
    /// Open (creating) the store at `root`: make the tree, empty `ingest/`, and index every
    /// committed file. Runs before any listener opens.
    pub fn open(root: &Path) -> std::io::Result<Store> {
        let blobs = root.join("blobs/sha256");
        for i in 0..=255u8 {
            std::fs::create_dir_all(blobs.join(format!("{i:02x}")))?;
        }
        let ingest = root.join("ingest");
        std::fs::create_dir_all(&ingest)?;
        std::fs::create_dir_all(root.join("state"))?;
        let mut swept = 0;
        for e in std::fs::read_dir(&ingest)? {
            let e = e?;
            std::fs::remove_file(e.path())?;
            swept += 1;
        }
        if swept > 0 {
            tracing::info!(swept, "removed unfinished fills from ingest/");
        }
        let index = Index::new();
        let mut stray = 0;
        for i in 0..=255u8 {
            let dir = blobs.join(format!("{i:02x}"));
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let name = e.file_name();
                let digest = name.to_str().and_then(Digest::from_hex);
                let meta = e.metadata()?;
                match digest {
                    Some(d) if meta.is_file() && d.hex()[..2] == format!("{i:02x}") => {
                        index.insert(d, Arc::new(Entry::new(meta.len(), None)));
                    }
                    _ => stray += 1,
                }
            }
        }
        if stray > 0 {
            tracing::warn!(
                stray,
                "files under blobs/ that are not named by their digest were left alone"
            );
        }
        tracing::info!(entries = index.len(), bytes = index.bytes(), root = %root.display(), "store opened");
        Ok(Store {
            root: root.to_path_buf(),
            index,
            incidents: Default::default(),
        })
    }

    /// Where committed content for `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
