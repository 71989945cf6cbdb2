//! The content-addressed store (data path steps 5 and 7): committed files, the in-memory
//! index of what is committed ([`index`]), ingest (temp files being filled, [`ingest`]), each
//! worker's kept descriptors ([`kept`]) and tag resolutions ([`tags`]), and the changes the
//! expiry thread journals ([`changes`], [`state`]).
//!
//! ```text
//! <root>/
//!   lock                             held (flock) by the one process using this root
//!   blobs/sha256/<2 hex>/<64 hex>    committed content (blobs and manifests alike)
//!   ingest/<random>                  fills in progress; emptied at startup
//!   state/                           persisted index, tags and TTL state (atomic replace)
//! ```
//!
//! Invariant: a file under `blobs/` always hashes to its name. Content reaches `blobs/` only
//! by [`ingest::Ingest::commit`]: size and sha256 checked, fsync, rename, fsync of the
//! directory. A crash at any point leaves either no file or a complete one under its name;
//! partial files only ever live in `ingest/`, which startup empties.
//!
//! One process per root ([`lock`]). The tree below the root is walked without following
//! symbolic links ([`tree`]): at start a link where a directory belongs is replaced by a
//! directory, and a commit opens its shard directory the same way (making it again if it
//! was removed), so no commit lands outside the root and no sweep deletes outside it.

pub mod changes;
pub mod incident;
pub mod index;
pub mod ingest;
pub mod kept;
pub mod lock;
pub mod state;
pub mod tags;
pub mod tree;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::digest::Digest;
pub use index::{Entry, Index};
pub use ingest::Ingest;

pub struct Store {
    root: PathBuf,
    /// The root directory, opened once at start: every directory below it is opened from
    /// here ([`tree::dir`]).
    root_dir: File,
    pub index: Index,
    /// Disk-full, read-only and I/O incidents, logged once per class per minute.
    pub incidents: incident::Incidents,
    /// Fills write with `O_DIRECT` where the filesystem takes it (`ringcache.storage
    /// .direct_writes`; see [`ingest`]).
    pub direct_ingest: bool,
    /// Shard directories (by the digest's first byte) whose last commit failed, with the
    /// error: the health check's `store` entry until a commit there works again or the check
    /// finds the directory usable (a fill for that prefix may be long in coming).
    failing: Mutex<BTreeMap<u8, String>>,
    /// This root is ours while the store lives.
    _lock: lock::Lock,
}

/// The directories of the tree below the root, made at start (`blobs/sha256/<xx>` besides).
const TREE: [&[&str]; 4] = [&["blobs", "sha256"], &["ingest"], &["state"], &["blobs"]];

impl Store {
    /// Open (creating) the store at `root`: take its lock, make the tree (replacing links
    /// where its directories belong), empty `ingest/`, and index every committed file. Runs
    /// before any listener opens. Another process holding the root is an error carrying
    /// [`lock::InUse`].
    pub fn open(root: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(root)?;
        let lock = lock::Lock::acquire(root)?;
        let root_dir = tree::open_root(root)?;
        for parts in TREE {
            tree::dir(&root_dir, parts)?;
        }
        for i in 0..=255u8 {
            tree::dir(&root_dir, &["blobs", "sha256", &format!("{i:02x}")])?;
        }
        let blobs = root.join("blobs/sha256");
        let swept = tree::sweep(&root.join("ingest"))?;
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
                // Not followed: a link named by a digest is stray, not content.
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
            root_dir,
            index,
            incidents: Default::default(),
            direct_ingest: true,
            failing: Mutex::default(),
            _lock: lock,
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

    /// The commit's rename: move the verified temp file `from` to `digest`'s name in its shard
    /// directory, opened from the root without following links (made again if it is gone;
    /// once more if it goes between the open and the rename). Returns the directory, for
    /// the caller to fsync. A failure marks the shard in [`Store::commit_health`].
    pub fn commit_rename(&self, from: &Path, digest: &Digest) -> std::io::Result<File> {
        let hex = digest.hex();
        let shard = format!("{:02x}", digest.shard(256));
        let attempt = || -> std::io::Result<File> {
            let dir = tree::dir(&self.root_dir, &["blobs", "sha256", &shard])?;
            tree::rename_into(from, &dir, &hex)?;
            Ok(dir)
        };
        let result = match attempt() {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && from.exists() => attempt(),
            r => r,
        };
        // The first byte: `shard(256)` is below 256.
        let byte = digest.shard(256) as u8;
        let mut failing = self.failing.lock().unwrap();
        match &result {
            Ok(_) => {
                failing.remove(&byte);
            }
            Err(e) => {
                failing.insert(byte, e.to_string());
            }
        }
        result
    }

    /// Why commits fail, if they do: the shards whose last commit failed and whose directory
    /// still cannot be opened (or made) now. `None`: the store can commit.
    pub fn commit_health(&self) -> Option<String> {
        let mut failing = self.failing.lock().unwrap();
        failing.retain(|byte, _| {
            tree::dir(&self.root_dir, &["blobs", "sha256", &format!("{byte:02x}")]).is_err()
        });
        let (first, error) = failing.iter().next()?;
        Some(format!(
            "commits fail in {} of 256 directories under blobs/sha256 (blobs/sha256/{first:02x}: {error})",
            failing.len()
        ))
    }

    /// The store takes a new file: one is created and removed in `ingest/` (made again if it
    /// is gone), never through a link.
    pub fn probe(&self) -> std::io::Result<()> {
        use std::io::Write;
        // A name of its own per probe: two probes at once must not remove each other's file.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!(".health-probe-{n}");
        let dir = tree::dir(&self.root_dir, &["ingest"])?;
        tree::create_at(&dir, &probe)?.write_all(b"ok")?;
        tree::unlink_at(&dir, &tree::cstr(probe.as_bytes())?, 0)
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
    /// Directories of the tree that are links or not directories: neither read nor changed
    /// (`serve` replaces a link by a directory at start).
    pub not_dirs: Vec<String>,
}

/// Re-hash every committed file; remove those that do not match their name, and state records
/// without files. Takes the root's lock (fails with [`lock::InUse`] while a cache runs on it:
/// a running one would re-learn what this removes), follows no link below the root, and on a
/// dry run changes nothing (the lock file aside).
pub fn verify(root: &Path, dry_run: bool) -> std::io::Result<VerifyReport> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut report = VerifyReport::default();
    if !root.is_dir() {
        return Ok(report);
    }
    let _lock = lock::Lock::acquire(root)?;
    let real = |rel: &str, report: &mut VerifyReport| {
        let ok = tree::is_real_dir(root, rel);
        if !ok && std::fs::symlink_metadata(root.join(rel)).is_ok() {
            report.not_dirs.push(rel.to_string());
        }
        ok
    };
    let mut on_disk = std::collections::HashSet::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..=255u8 {
        let rel = format!("blobs/sha256/{i:02x}");
        if !real(&rel, &mut report) {
            continue;
        }
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let path = e.path();
            let Some(digest) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Digest::from_hex)
            else {
                continue;
            };
            // Not followed: a link here is not content (and not ours to hash or remove).
            if !e.file_type()?.is_file() {
                continue;
            }
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ctx.update(buf.get(..n).unwrap_or_default());
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
    if real("ingest", &mut report) {
        report.ingest_leftovers = if dry_run {
            std::fs::read_dir(root.join("ingest"))?.count() as u64
        } else {
            tree::sweep(&root.join("ingest"))?
        };
    }
    if real("state", &mut report) {
        let (mut journal, mut loaded) = state::Journal::open(&root.join("state"))?;
        let before = loaded.entries.len();
        loaded.entries.retain(|d, _| on_disk.contains(d));
        loaded.tags.retain(|_, (d, _)| on_disk.contains(d));
        report.orphan_records = before.saturating_sub(loaded.entries.len()) as u64;
        if !dry_run {
            journal.compact(&loaded)?;
        }
    }
    Ok(report)
}
