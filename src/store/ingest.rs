//! Ingest (data path steps 6–7): a temp file in `ingest/` that a fill appends to while
//! hashing, and the commit that turns it into content under its digest.
//!
//! An `Ingest` is an obligation: dropped uncommitted, it removes its temp file.
//!
//! Hashing runs off the event loop: each appended piece of [`HASH_OFFLOAD_MIN`] bytes or more
//! is hashed on the blocking pool while the fill reads and writes the next one, so one cold
//! pull uses two cores (the worker moves bytes, a hasher thread hashes them) instead of
//! serialising both on the worker.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use super::Store;
use crate::digest::Digest;

pub struct Ingest {
    path: PathBuf,
    /// The temp file, shared with followers: each reads through its own `dup` of it, which
    /// keeps working after the rename into `blobs/`.
    shared: Arc<std::fs::File>,
    file: Rc<monoio::fs::File>,
    /// The write of the last piece, in flight while the fill reads the next one.
    writing: Option<WriteJob>,
    /// Bytes handed to [`Ingest::append`]: where the next piece goes.
    accepted: u64,
    /// Pieces appended (for the fill's log line: average piece size).
    pieces: u64,
    /// Told the written byte count as each write completes (the fill publishes it).
    on_written: Option<Rc<dyn Fn(u64)>>,
    /// `None` while a hash job holds it.
    hasher: Option<ring::digest::Context>,
    /// The hash job of the last piece: gives back the context and the piece's buffer.
    hashing: Option<HashJob>,
    written: u64,
    /// Set once the file is renamed into the store; Drop then leaves it alone.
    committed: bool,
    /// Set once size and sha256 are checked.
    verified: bool,
}

type WriteJob = monoio::task::JoinHandle<(std::io::Result<()>, Vec<u8>)>;
type HashJob =
    monoio::task::JoinHandle<Result<(ring::digest::Context, Vec<u8>), monoio::blocking::JoinError>>;

/// Pieces smaller than this are hashed inline (a thread hop costs more than hashing them).
pub const HASH_OFFLOAD_MIN: usize = 64 * 1024;

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
            file: Rc::new(file),
            writing: None,
            accepted: 0,
            pieces: 0,
            on_written: None,
            hasher: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            hashing: None,
            written: 0,
            committed: false,
            verified: false,
        })
    }

    pub fn shared_file(&self) -> Arc<std::fs::File> {
        self.shared.clone()
    }

    /// Call `f` with the written byte count each time a write completes.
    pub fn on_written(&mut self, f: Rc<dyn Fn(u64)>) {
        self.on_written = Some(f);
    }

    /// Bytes whose write has completed (what followers may read).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Pieces appended so far.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Bytes handed to [`Ingest::append`] (written, or being written).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Append `buf` after what was accepted. Three stages overlap: this piece's write is
    /// started and left in flight (the fill reads the next piece meanwhile), the previous
    /// piece, now written, is hashed (on the blocking pool when large), and the piece before
    /// that gives its buffer back for the next read. An error is that of the previous write
    /// (the one that completed here); `buf` then comes back unwritten.
    pub async fn append(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        let spare = match self.complete_write().await {
            Err(e) => return (Err(e), buf),
            Ok(None) => None,
            Ok(Some(prev)) => self.hash(prev).await,
        };
        let cap = buf.capacity();
        let (file, at) = (self.file.clone(), self.accepted);
        self.accepted += buf.len() as u64;
        self.pieces += 1;
        let on_written = self.on_written.clone();
        self.writing = Some(monoio::spawn(async move {
            let (res, buf) = file.write_all_at(buf, at).await;
            if let (Ok(()), Some(f)) = (&res, on_written) {
                f(at + buf.len() as u64);
            }
            (res, buf)
        }));
        (Ok(()), spare.unwrap_or_else(|| Vec::with_capacity(cap)))
    }

    /// Wait for the write in flight and hash what it wrote: afterwards
    /// `written() == accepted()`.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(prev) = self.complete_write().await? {
            self.hash(prev).await;
        }
        Ok(())
    }

    /// The write in flight, completed: its buffer.
    async fn complete_write(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(job) = self.writing.take() else {
            return Ok(None);
        };
        let (res, buf) = job.await;
        res?;
        self.written += buf.len() as u64;
        Ok(Some(buf))
    }

    /// Hash a written piece after the one before it; returns a buffer free for reuse.
    async fn hash(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        let spare = self.settle().await;
        let mut ctx = self.hasher.take().expect("settled");
        if buf.len() < HASH_OFFLOAD_MIN {
            ctx.update(&buf);
            self.hasher = Some(ctx);
            return Some(buf);
        }
        self.hashing = Some(monoio::spawn_blocking(move || {
            ctx.update(&buf);
            (ctx, buf)
        }));
        spare
    }

    /// Wait for the hash job in flight, if any; returns its buffer.
    async fn settle(&mut self) -> Option<Vec<u8>> {
        let job = self.hashing.take()?;
        let (ctx, buf) = job
            .await
            .expect("the hasher pool runs every job it is given");
        self.hasher = Some(ctx);
        Some(buf)
    }

    /// Check that what was written is `size` bytes (when known) and hashes to `expected` —
    /// the first half of [`Ingest::commit`], callable on its own so followers can finish
    /// before the fsync.
    pub async fn verify(&mut self, expected: Digest, size: Option<u64>) -> Result<(), CommitError> {
        self.flush().await.map_err(CommitError::Io)?;
        self.settle().await;
        if let Some(expected) = size {
            if expected != self.written {
                return Err(CommitError::Size {
                    expected,
                    got: self.written,
                });
            }
        }
        let hasher = self
            .hasher
            .replace(ring::digest::Context::new(&ring::digest::SHA256))
            .expect("settled");
        let got = Digest::from_ring(&hasher.finish());
        if got != expected {
            return Err(CommitError::Digest { got });
        }
        self.verified = true;
        Ok(())
    }

    /// Verify (unless [`Ingest::verify`] already did) and commit: fsync, rename into
    /// `blobs/`, fsync the directory. On any error nothing is committed and the temp file is
    /// removed (Drop).
    pub async fn commit(
        mut self,
        store: &Store,
        expected: Digest,
        size: Option<u64>,
    ) -> Result<u64, CommitError> {
        if !self.verified {
            self.verify(expected, size).await?;
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
