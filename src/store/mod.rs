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
    /// Fills write with `O_DIRECT` where the filesystem takes it (`ringcache.storage
    /// .direct_writes`; see [`ingest`]).
    pub direct_ingest: bool,
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
            direct_ingest: true,
        })
    }

    /// Where committed content for `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        // One allocation: this runs on every hit.
        let mut p = PathBuf::with_capacity(self.root.as_os_str().len() + 16 + 3 + 65);
        p.push(&self.root);
        p.push("blobs/sha256");
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// What `ringcache verify` found (and, unless it was a dry run, did).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: u64,
    pub bytes: u64,
    /// Files that do not hash to their name (removed unless dry run).
    pub corrupt: Vec<Digest>,
    /// Temp files left in `ingest/` (removed unless dry run).
    pub ingest_leftovers: u64,
    /// State records for content that is not on disk (dropped unless dry run).
    pub orphan_records: u64,
}

/// Re-hash every committed file; remove those that do not match their name, and state records
/// without files. Meant for a stopped cache (a running one would re-learn what it removes).
pub fn verify(root: &Path, dry_run: bool) -> std::io::Result<VerifyReport> {
    use std::io::Read;
    let mut report = VerifyReport::default();
    let blobs = root.join("blobs/sha256");
    let mut on_disk = std::collections::HashSet::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..=255u8 {
        let dir = blobs.join(format!("{i:02x}"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e?.path();
            let Some(digest) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Digest::from_hex)
            else {
                continue;
            };
            let mut f = std::fs::File::open(&path)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                report.bytes += n as u64;
            }
            report.files += 1;
            if Digest::from_ring(&ctx.finish()) == digest {
                on_disk.insert(digest);
            } else {
                report.corrupt.push(digest);
                if !dry_run {
                    std::fs::remove_file(&path)?;
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("ingest")) {
        for e in entries {
            report.ingest_leftovers += 1;
            if !dry_run {
                std::fs::remove_file(e?.path())?;
            }
        }
    }
    let state_dir = root.join("state");
    if state_dir.exists() {
        let (mut journal, mut loaded) = state::Journal::open(&state_dir)?;
        let before = loaded.entries.len();
        loaded.entries.retain(|d, _| on_disk.contains(d));
        loaded.tags.retain(|_, (d, _)| on_disk.contains(d));
        report.orphan_records = (before - loaded.entries.len()) as u64;
        if !dry_run {
            journal.compact(&loaded)?;
        }
    }
    Ok(report)
}
