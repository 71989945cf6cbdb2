//! Ingest (data path steps 6–7): a temp file in `ingest/` that a fill appends to while
//! hashing, and the commit that turns it into content under its digest.
//!
//! An `Ingest` is an obligation: dropped uncommitted, it removes its temp file.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::Store;
use crate::digest::Digest;

pub struct Ingest {
    path: PathBuf,
    /// The temp file, shared with followers: each reads through its own `dup` of it, which
    /// keeps working after the rename into `blobs/`.
    shared: Arc<std::fs::File>,
    file: monoio::fs::File,
    hasher: ring::digest::Context,
    written: u64,
    /// Set once the file is renamed into the store; Drop then leaves it alone.
    committed: bool,
}

#[derive(Debug)]
pub enum CommitError {
    /// Upstream sent a different number of bytes than it declared.
    Size {
        expected: u64,
        got: u64,
    },
    /// The content does not hash to the digest it was asked for under.
    Digest {
        got: Digest,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Size { expected, got } => {
                write!(f, "size mismatch: expected {expected}, got {got}")
            }
            CommitError::Digest { got } => write!(f, "digest mismatch: content hashes to {got}"),
            CommitError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CommitError {}

impl Ingest {
    /// Create a new temp file in `ingest/` (O_EXCL, random name).
    pub fn create(store: &Store) -> std::io::Result<Ingest> {
        let mut name = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name)
            .map_err(|_| std::io::Error::other("no randomness"))?;
        let path = store.ingest_dir().join(crate::digest::hex(&name));
        let std_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        let shared = Arc::new(std_file.try_clone()?);
        let file = monoio::fs::File::from_std(std_file)?;
        Ok(Ingest {
            path,
            shared,
            file,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            written: 0,
            committed: false,
        })
    }

    pub fn shared_file(&self) -> Arc<std::fs::File> {
        self.shared.clone()
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append `buf` at the end of what is written, and hash it. The buffer comes back either way.
    pub async fn append(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        let (res, buf) = self.file.write_all_at(buf, self.written).await;
        if res.is_ok() {
            self.hasher.update(&buf);
            self.written += buf.len() as u64;
        }
        (res, buf)
    }

    /// Verify and commit: size and sha256 checked, fsync, rename into `blobs/`, fsync the
    /// directory. On any error nothing is committed and the temp file is removed (Drop).
    pub async fn commit(
        mut self,
        store: &Store,
        expected: Digest,
        size: Option<u64>,
    ) -> Result<u64, CommitError> {
        if let Some(expected) = size {
            if expected != self.written {
                return Err(CommitError::Size {
                    expected,
                    got: self.written,
                });
            }
        }
        let hasher = std::mem::replace(
            &mut self.hasher,
            ring::digest::Context::new(&ring::digest::SHA256),
        );
        let got = Digest::from_ring(&hasher.finish());
        if got != expected {
            return Err(CommitError::Digest { got });
        }
        crate::failpoint::hit("commit-before-fsync").await;
        self.file.sync_all().await.map_err(CommitError::Io)?;
        crate::failpoint::hit("commit-before-rename").await;
        let dest = store.blob_path(&expected);
        monoio::fs::rename(&self.path, &dest)
            .await
            .map_err(CommitError::Io)?;
        self.committed = true;
        crate::failpoint::hit("commit-after-rename").await;
        // The rename is durable only once the directory entry is: fsync the directory.
        let dir = std::fs::File::open(dest.parent().expect("blob paths have a parent"))
            .map_err(CommitError::Io)?;
        let dir = monoio::fs::File::from_std(dir).map_err(CommitError::Io)?;
        dir.sync_all().await.map_err(CommitError::Io)?;
        Ok(self.written)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
