//! Ingest (data path steps 6–7): a temp file in `ingest/` that a fill appends to while
//! hashing, and the commit that turns it into content under its digest.
//!
//! An `Ingest` is an obligation: dropped uncommitted, it removes its temp file.
//!
//! **Blocks.** The fill reads upstream's bytes into a [`Block`] of aligned memory, read after
//! read (and chunk after chunk of a chunked body) until it holds [`BLOCK_BYTES`] or the body
//! ends: however upstream cuts its body, a block is [`BLOCK_BYTES`] (the last one less).
//! After each read, what the open block holds is *published* ([`Ingest::publish`]): the block
//! joins the fill's [`Recent`] blocks and its bytes so far count as accepted, so followers
//! may send them from memory at once while the fill goes on appending past them. A full (or
//! last) block is *sealed* ([`Ingest::accept`]): its write and its hash are queued for two pool
//! jobs (a writer and a hasher per fill, each taking its blocks in order), which run in
//! parallel with each other and with the fill's next upstream reads. At most [`IN_FLIGHT`]
//! sealed blocks wait for either job; past that the fill waits before it opens another block,
//! and upstream's bytes wait in the socket.
//!
//! **Direct writes.** Blocks are written with `O_DIRECT` where the filesystem takes it: the
//! fill does not go through the page cache, so it pays neither for allocating page-cache pages
//! nor for their writeback, and the commit's fsync has nothing left to flush. A direct write
//! needs its file offset, length and memory aligned ([`ALIGN`]): a block lies in memory at
//! its file offset's alignment, its aligned middle goes out directly and its unaligned ends
//! (at most [`ALIGN`] bytes each) through an ordinary descriptor, so no page is written both
//! ways. Measured on this kind of VM (ext4, kernel 6.18): writing a GiB into page-cache pages
//! the hypervisor had reclaimed cost 3.5 s of CPU, 0.3 s into recently used ones; `O_DIRECT`
//! 1 MiB writes took 0.9 s of wall time and 0.3 s of CPU. Where `O_DIRECT` is refused, every
//! write is an ordinary one and nothing else changes.
//!
//! **Recent blocks.** Followers take the newest bytes from the fill's [`Recent`] blocks in
//! memory ([`RECENT_KEEP`] per fill, within a process-wide [`BLOCKS_BUDGET`]), and only what
//! is older from the file. A block joins `Recent` before it is accepted and leaves only once
//! it is in the file, so every accepted byte is always in one or the other, even after a
//! write fails (the bypass path hashes what a follower already sent from there).

//!
//! One concept per file: `block.rs` (block memory and the process's budget for it), `recent.rs`
//! (the followers' window of recent blocks), `pipeline.rs` (the write and hash jobs, direct
//! writes); this file holds the [`Ingest`] itself and its commit.

mod block;
mod pipeline;
mod recent;

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::digest::Digest;
use pipeline::{direct_refused, hash_job, write_job, Pipeline, Stages, DIRECT_OK};

pub use block::{blocks_within_budget, trim_spares, Block, OpenBlock};
pub use recent::{Piece, Recent};

pub use crate::limits::BLOCKS_BUDGET;
pub use crate::limits::BLOCKS_IN_FLIGHT as IN_FLIGHT;
pub use crate::limits::BLOCKS_SPARE_IDLE as SPARE_IDLE;
pub use crate::limits::BLOCK_BYTES;
pub use crate::limits::DIRECT_ALIGN as ALIGN;
pub use crate::limits::RECENT_KEEP;

/// Told the accepted byte count as it grows (the fill publishes it to followers); called on
/// the fill's event loop.
pub type OnAccepted = Arc<dyn Fn(u64) + Send + Sync>;

/// A temp file in `ingest/` being filled, and its pipeline (see the module docs).
pub struct Ingest {
    path: PathBuf,
    /// The temp file for followers: read-only, buffered (each follower reads through its own
    /// `dup` of it, which keeps working after the rename into `blobs/`).
    reader: Arc<std::fs::File>,
    /// Ordinary writes: the blocks' unaligned ends, and every write where `O_DIRECT` is
    /// refused.
    writer: Arc<std::fs::File>,
    /// `O_DIRECT` writes, where the filesystem takes them.
    direct: Option<Arc<std::fs::File>>,
    /// The same file on the event loop, for the commit's fsync.
    file: monoio::fs::File,
    recent: Arc<Recent>,
    /// The blocks on their way to the file and through the hash.
    pipe: Arc<Pipeline>,
    /// Bytes published: in a block, so readable by followers.
    accepted: u64,
    /// The block being filled, if any (shared with its [`OpenBlock`]): sealed from here when
    /// the fill could not keep its handle (an upstream read that failed took it).
    open: Option<Arc<Block>>,
    /// Blocks sealed (for the fill's log line: average block size).
    pieces: u64,
    on_accepted: Option<OnAccepted>,
    /// Set once the file is renamed into the store; Drop then leaves it alone.
    committed: bool,
    /// Set once size and sha256 are checked.
    verified: bool,
}

/// Why a commit failed.
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
        Self::create_with(store, store.direct_ingest)
    }

    /// [`Ingest::create`], with `O_DIRECT` writes (where the filesystem takes them) or not.
    pub fn create_with(store: &Store, direct: bool) -> std::io::Result<Ingest> {
        let mut name = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name)
            .map_err(|_| std::io::Error::other("no randomness"))?;
        let path = store.ingest_dir().join(crate::digest::hex(&name));
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        let mut ingest = Ingest {
            reader: Arc::new(std::fs::File::open(&path)?),
            direct: None,
            file: monoio::fs::File::from_std(writer.try_clone()?)?,
            writer: Arc::new(writer),
            path,
            recent: Arc::default(),
            pipe: Arc::new(Pipeline::new()),
            accepted: 0,
            open: None,
            pieces: 0,
            on_accepted: None,
            committed: false,
            verified: false,
        };
        if direct && DIRECT_OK.load(Ordering::Relaxed) {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&ingest.path)
            {
                Ok(f) => ingest.direct = Some(Arc::new(f)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct_refused(&e),
                Err(e) => return Err(e),
            }
        }
        Ok(ingest)
    }

    /// The temp file, for followers to read.
    pub fn shared_file(&self) -> Arc<std::fs::File> {
        self.reader.clone()
    }

    /// The blocks followers may read from memory.
    pub fn recent(&self) -> Arc<Recent> {
        self.recent.clone()
    }

    /// Whether blocks go to the file with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Call `f` with the accepted byte count each time it grows (on the event loop).
    pub fn on_accepted(&mut self, f: OnAccepted) {
        self.on_accepted = Some(f);
    }

    /// Bytes whose write has completed.
    pub fn written(&self) -> u64 {
        self.pipe.lock().written
    }

    /// Blocks sealed so far.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Time the blocks' writes and hashes took so far (each in all, on the pool).
    pub fn busy(&self) -> (Duration, Duration) {
        let st = self.pipe.lock();
        (st.write.busy, st.hash.busy)
    }

    /// Bytes published: readable from [`Recent`] or the file (written and hashed once their
    /// block is sealed).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Start a pool job for each stage that has blocks and none working on them.
    fn kick(&self) {
        let (write, hash) = {
            let mut st = self.pipe.lock();
            let write = !st.write.running && !st.write.queue.is_empty() && st.failed.is_none();
            let hash = !st.hash.running && !st.hash.queue.is_empty();
            st.write.running |= write;
            st.hash.running |= hash;
            (write, hash)
        };
        if write {
            let (pipe, writer, direct, recent) = (
                self.pipe.clone(),
                self.writer.clone(),
                self.direct.clone(),
                self.recent.clone(),
            );
            crate::jobs::spawn(move || write_job(pipe, writer, direct, recent));
        }
        if hash {
            let pipe = self.pipe.clone();
            crate::jobs::spawn(move || hash_job(pipe));
        }
    }

    /// Wait (keeping the stages' jobs going) until `done` holds.
    async fn wait_until(&self, done: impl Fn(&Stages) -> bool) {
        loop {
            let listener = self.pipe.event.listen();
            self.kick();
            if done(&self.pipe.lock()) {
                return;
            }
            listener.await;
        }
    }

    /// Append `data` after what was accepted, a block each [`BLOCK_BYTES`]
    /// ([`Ingest::ready`], [`Ingest::open_block`], [`Ingest::accept`]; the fill reads upstream
    /// straight into its blocks instead). An error is that of an earlier write.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        for piece in data.chunks(BLOCK_BYTES) {
            self.ready().await?;
            let mut block = self.open_block();
            crate::http::sink::Sink::push_slice(&mut block, piece);
            self.accept(block);
        }
        Ok(())
    }

    /// Wait until the pipeline has room for another block: fewer than [`IN_FLIGHT`] not yet
    /// written or not yet hashed (none, past the process's [`BLOCKS_BUDGET`]). An error is
    /// that of an earlier write.
    pub async fn ready(&mut self) -> std::io::Result<()> {
        // Room: fewer than IN_FLIGHT blocks queued, or none while the blocks alive in the
        // process are past their budget (then every fill has one block in flight at most).
        self.wait_until(|st| {
            let queued = st.write.queue.len().max(st.hash.queue.len());
            st.failed.is_some() || queued == 0 || (queued < IN_FLIGHT && blocks_within_budget())
        })
        .await;
        match self.pipe.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// An empty block for the bytes after those accepted (call [`Ingest::ready`] first). A
    /// block still open is sealed first ([`Ingest::seal_open`]).
    pub fn open_block(&mut self) -> OpenBlock {
        self.seal_open();
        let block = Arc::new(Block::open(self.accepted));
        self.open = Some(block.clone());
        OpenBlock { block, filled: 0 }
    }

    /// Publish what `block` (the open block) holds: it joins [`Recent`] with its first bytes,
    /// and they count as accepted (told to `on_accepted`): followers may send them right
    /// away. The block stays open for more.
    pub fn publish(&mut self, block: &OpenBlock) {
        let open = self.open.as_ref().expect("publish an open block");
        assert!(Arc::ptr_eq(open, &block.block), "publish the open block");
        let b = &block.block;
        let before = b.len();
        if block.filled == before {
            return;
        }
        assert!(
            block.filled > before,
            "a block's published bytes never shrink"
        );
        // The bytes were written before this store (Release): a reader that loads `len`
        // (Acquire) sees them.
        b.len.store(block.filled, Ordering::Release);
        if before == 0 {
            self.recent.push(b.clone());
        }
        self.accepted = b.end();
        if let Some(f) = &self.on_accepted {
            f(self.accepted);
        }
    }

    /// Publish and seal `block` (the open block): its write and hash are queued. No byte is
    /// added to it afterwards.
    pub fn accept(&mut self, block: OpenBlock) {
        self.publish(&block);
        self.seal_open();
    }

    /// Seal the open block as far as it is published (the fill's handle may be gone with a
    /// failed read; bytes read into it but never published are dropped): its write and hash
    /// are queued, and the next block starts after it. Nothing happens if no block is open.
    pub fn seal_open(&mut self) {
        let Some(block) = self.open.take() else {
            return;
        };
        assert_eq!(block.end(), self.accepted, "blocks are sealed in order");
        if block.is_empty() {
            return;
        }
        {
            let mut st = self.pipe.lock();
            st.write.queue.push_back(block.clone());
            st.hash.queue.push_back(block);
        }
        self.pieces += 1;
        self.kick();
    }

    /// Wait until every accepted block is in the file: afterwards `written() == accepted()`.
    /// A block still open is sealed first. An error is that of a write.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.seal_open();
        self.wait_until(|st| st.failed.is_some() || st.write.idle())
            .await;
        match self.pipe.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Check that what was accepted is `size` bytes (when known) and hashes to `expected` —
    /// the first half of [`Ingest::commit`], callable on its own so followers can finish
    /// while the last writes, the fsync and the rename are still to come. A block still open
    /// is sealed first.
    pub async fn verify(&mut self, expected: Digest, size: Option<u64>) -> Result<(), CommitError> {
        self.seal_open();
        self.wait_until(|st| st.hash.idle()).await;
        if let Some(expected) = size {
            if expected != self.accepted {
                return Err(CommitError::Size {
                    expected,
                    got: self.accepted,
                });
            }
        }
        let hasher = self
            .pipe
            .lock()
            .hasher
            .replace(ring::digest::Context::new(&ring::digest::SHA256))
            .expect("no hash job running");
        let got = Digest::from_ring(&hasher.finish());
        if got != expected {
            return Err(CommitError::Digest { got });
        }
        self.verified = true;
        Ok(())
    }

    /// Verify (unless [`Ingest::verify`] already did), wait for the writes, and commit: fsync,
    /// rename into `blobs/`, fsync the directory. On any error nothing is committed and the
    /// temp file is removed (Drop).
    pub async fn commit(
        mut self,
        store: &Store,
        expected: Digest,
        size: Option<u64>,
    ) -> Result<u64, CommitError> {
        if !self.verified {
            self.verify(expected, size).await?;
        }
        self.flush().await.map_err(CommitError::Io)?;
        crate::failpoint::hit("commit-before-fsync").await;
        self.file.sync_all().await.map_err(CommitError::Io)?;
        crate::failpoint::hit("commit-before-rename").await;
        // Into the shard directory opened from the store's root without following a link
        // (made again if it was removed): never outside the root. A blocking renameat, not
        // io_uring's: monoio's rename takes paths only; it is one metadata operation per fill.
        let dir = store
            .commit_rename(&self.path, &expected)
            .map_err(CommitError::Io)?;
        self.committed = true;
        crate::failpoint::hit("commit-after-rename").await;
        // The rename is durable only once the directory entry is: fsync the directory.
        let dir = monoio::fs::File::from_std(dir).map_err(CommitError::Io)?;
        dir.sync_all().await.map_err(CommitError::Io)?;
        Ok(self.accepted)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Jobs still running stop at their next block (they hold their own descriptors).
        self.pipe.lock().abandoned = true;
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Pieces of every awkward size, with and without `O_DIRECT`: the file is the body, the
    /// published count only grows and ends at the size, the hash is the body's, and the last
    /// blocks stay readable in memory.
    #[test]
    fn pieces_of_any_size_land_whole_with_and_without_direct_writes() {
        // More blocks than a fill keeps, so the first ones are evicted.
        let mut sizes = vec![
            1,
            4095,
            5000,
            4096,
            BLOCK_BYTES,
            300_000,
            2 * BLOCK_BYTES + 17,
        ];
        sizes.extend([BLOCK_BYTES - 1; RECENT_KEEP]);
        sizes.push(3);
        let body: Vec<u8> = (0..sizes.iter().sum::<usize>() as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let digest = Digest::of(&body);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .attach_thread_pool(Box::new(monoio::blocking::DefaultThreadPool::new(2)))
                .build()
                .unwrap();
            let published = Arc::new(AtomicU64::new(0));
            let (ingest, recent) = rt.block_on(async {
                let mut ingest = Ingest::create_with(&store, direct).unwrap();
                assert_eq!(ingest.is_direct(), direct, "tmp takes O_DIRECT");
                let p = published.clone();
                ingest.on_accepted(Arc::new(move |n| {
                    assert!(
                        n >= p.swap(n, Ordering::SeqCst),
                        "published count went back"
                    );
                }));
                let mut at = 0;
                for &n in &sizes {
                    ingest.append(&body[at..at + n]).await.unwrap();
                    at += n;
                    // What is accepted is published and readable at once, written or not.
                    assert_eq!(published.load(Ordering::SeqCst), at as u64);
                    let last = at as u64 - 1;
                    let p = ingest.recent().piece_at(last, 1).expect("the newest byte");
                    assert_eq!(p.bytes(), &body[at - 1..at]);
                    assert!(ingest.written() <= ingest.accepted());
                }
                ingest
                    .verify(digest, Some(body.len() as u64))
                    .await
                    .unwrap();
                ingest.flush().await.unwrap();
                assert_eq!(ingest.written(), body.len() as u64);
                let recent = ingest.recent();
                (ingest, recent)
            });
            assert_eq!(published.load(Ordering::SeqCst), body.len() as u64);
            assert_eq!(
                std::fs::read(&ingest.path).unwrap(),
                body,
                "direct: {direct}"
            );
            assert!(!recent.is_empty() && recent.len() <= RECENT_KEEP);
            let pos = body.len() as u64 - 10;
            // Up to the end of the block that holds `pos` (the last piece is 3 bytes).
            let (a, b) = (
                recent.piece_at(pos, 100).unwrap(),
                recent.piece_at(pos + 7, 100).unwrap(),
            );
            assert_eq!((a.len(), b.len()), (7, 3));
            assert_eq!([a.bytes(), b.bytes()].concat(), body[body.len() - 10..]);
            assert!(recent.piece_at(0, 100).is_none(), "evicted: in the file");
            drop(ingest);
        }
    }
}
