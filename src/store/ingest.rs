//! Ingest (data path steps 6–7): a temp file in `ingest/` that a fill appends to while
//! hashing, and the commit that turns it into content under its digest.
//!
//! An `Ingest` is an obligation: dropped uncommitted, it removes its temp file.
//!
//! **Blocks.** Each piece the fill receives (one upstream read, up to [`BLOCK_BYTES`]) is
//! copied into a [`Block`] of aligned memory and handed to two jobs on the blocking pool,
//! one writing it and one hashing it, in parallel with each other and with the fill's next
//! upstream read; the written byte count is published (the followers' limit) as each write
//! completes. While a block is being written, upstream's bytes wait in the socket, so the
//! next read, and the next write, is larger: writes grow when the disk is the slower side.
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
//! **Recent blocks.** Followers take what was just written from the fill's [`Recent`]
//! blocks in memory ([`RECENT_KEEP`] per fill, within a process-wide [`BLOCKS_BUDGET`]), and
//! only what is older from the file. A block joins `Recent` before its write and leaves only
//! once it is in the file, so every published byte is always in one or the other.

use std::collections::VecDeque;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Store;
use crate::digest::Digest;

/// Alignment of direct writes (file offset, length and memory): a multiple of every common
/// logical block size (512, 4096).
pub const ALIGN: usize = 4096;
/// Largest block: the fill's upstream read size.
pub const BLOCK_BYTES: usize = 1024 * 1024;
/// Written blocks a fill keeps in memory for its followers (besides those not written yet).
pub const RECENT_KEEP: usize = 8;
/// Bytes of blocks alive in the process past which fills keep only unwritten blocks.
pub const BLOCKS_BUDGET: usize = 64 * 1024 * 1024;
/// Freed block allocations kept for reuse (touched memory is cheaper than fresh).
const SPARE_MAX: usize = 2;

/// Told the written byte count as each write completes (the fill publishes it to followers);
/// called on the blocking pool.
pub type OnWritten = Arc<dyn Fn(u64) + Send + Sync>;

/// Bytes of blocks alive (in flight, recent, or held by a follower sending from one).
static BLOCKS_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether the blocks alive are within [`BLOCKS_BUDGET`]: a follower may then keep one alive
/// while it sends from it ([`Recent::piece_at`]); past it, followers copy into their own
/// buffers, so followers stalled on old blocks never hold more than the budget.
pub fn blocks_within_budget() -> bool {
    BLOCKS_LIVE.load(Ordering::Relaxed) <= BLOCKS_BUDGET
}

/// Freed allocations, reused before new ones.
static SPARE: Mutex<Vec<Alloc>> = Mutex::new(Vec::new());

/// One mapping of [`BLOCK_BYTES`] plus [`ALIGN`] (room for a block's skew), aligned to
/// [`ALIGN`].
struct Alloc(NonNull<u8>);

// SAFETY: an `Alloc` is plain memory owned by whoever holds it.
unsafe impl Send for Alloc {}

impl Alloc {
    const SIZE: usize = BLOCK_BYTES + ALIGN;

    /// A spare allocation, or a fresh mapping: blocks are mapped and unmapped on their own,
    /// not taken from the heap, which would keep their pages after a burst of fills.
    fn get() -> Alloc {
        if let Some(a) = SPARE.lock().unwrap().pop() {
            return a;
        }
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let layout = std::alloc::Layout::from_size_align(Self::SIZE, ALIGN);
            std::alloc::handle_alloc_error(layout.expect("a valid layout"));
        }
        // Mappings are page-aligned, which covers ALIGN.
        Alloc(NonNull::new(p.cast()).expect("mmap does not return null"))
    }

    fn put(self) {
        let mut spare = SPARE.lock().unwrap();
        if spare.len() < SPARE_MAX {
            spare.push(self);
        } else {
            drop(spare);
            // SAFETY: mapped in `get` with this size, and owned here.
            unsafe { libc::munmap(self.0.as_ptr().cast(), Self::SIZE) };
        }
    }
}

/// A piece of the body at a file offset, in aligned memory: copied in on the event loop,
/// then shared read-only (`Arc`) with the jobs that write and hash it and with followers.
pub struct Block {
    mem: Option<Alloc>,
    /// Where the bytes start in `mem`: the file offset's distance past an [`ALIGN`] boundary,
    /// so that aligned file offsets fall on aligned memory.
    skew: usize,
    len: usize,
    /// File offset of the first byte.
    at: u64,
}

// SAFETY: a shared `Block` is never written (only `Block::new` fills it).
unsafe impl Sync for Block {}

impl Block {
    /// `data` (at most [`BLOCK_BYTES`]) at file offset `at`.
    fn new(at: u64, data: &[u8]) -> Block {
        assert!(data.len() <= BLOCK_BYTES, "a block holds one piece");
        BLOCKS_LIVE.fetch_add(Alloc::SIZE, Ordering::Relaxed);
        let mem = Alloc::get();
        let skew = (at % ALIGN as u64) as usize;
        // SAFETY: `skew + len <= ALIGN + BLOCK_BYTES`, the allocation's size; `data` is not
        // in it.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), mem.0.as_ptr().add(skew), data.len());
        }
        Block {
            mem: Some(mem),
            skew,
            len: data.len(),
            at,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        let p = self.mem.as_ref().expect("a live block has memory").0;
        // SAFETY: these bytes were written by `new`.
        unsafe { std::slice::from_raw_parts(p.as_ptr().add(self.skew), self.len) }
    }

    pub fn end(&self) -> u64 {
        self.at + self.len as u64
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(m) = self.mem.take() {
            m.put();
        }
        BLOCKS_LIVE.fetch_sub(Alloc::SIZE, Ordering::Relaxed);
    }
}

/// Bytes of a block, to send without copying them.
pub struct Piece {
    block: Arc<Block>,
    from: usize,
    len: usize,
}

impl Piece {
    pub fn bytes(&self) -> &[u8] {
        &self.block.bytes()[self.from..self.from + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: the bytes live in the block's allocation, which the `Arc` keeps alive and in place
// for as long as the `Piece` exists, and which no one writes once shared.
unsafe impl monoio::buf::IoBuf for Piece {
    fn read_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

/// A fill's most recent blocks, shared with its followers (see the module docs).
#[derive(Default)]
pub struct Recent {
    blocks: Mutex<VecDeque<Arc<Block>>>,
}

impl Recent {
    /// Up to `want` bytes of the body at `pos`, if a recent block has them (`None`: read the
    /// file): the block stays alive (and in memory) while the `Piece` does.
    pub fn piece_at(&self, pos: u64, want: usize) -> Option<Piece> {
        let block = {
            let blocks = self.blocks.lock().unwrap();
            blocks
                .iter()
                .rev()
                .find(|b| b.at <= pos && pos < b.end())?
                .clone()
        };
        let from = (pos - block.at) as usize;
        let len = want.min(block.len - from);
        Some(Piece { block, from, len })
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.blocks.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, b: Arc<Block>) {
        self.blocks.lock().unwrap().push_back(b);
    }

    /// Drop the oldest blocks that are wholly in the file (`written`), beyond `keep` of them
    /// (or all of them while blocks past the process budget are alive).
    fn evict(&self, written: u64, keep: usize) {
        let mut blocks = self.blocks.lock().unwrap();
        while blocks.front().is_some_and(|b| b.end() <= written)
            && (blocks.len() > keep || BLOCKS_LIVE.load(Ordering::Relaxed) > BLOCKS_BUDGET)
        {
            blocks.pop_front();
        }
    }
}

pub struct Ingest {
    path: PathBuf,
    /// The temp file for followers: read-only, buffered (each follower reads through its own
    /// `dup` of it, which keeps working after the rename into `blobs/`).
    reader: Arc<std::fs::File>,
    /// Ordinary writes: the last block's unaligned tail, and every write where `O_DIRECT` is
    /// refused.
    writer: Arc<std::fs::File>,
    /// `O_DIRECT` writes, where the filesystem takes them.
    direct: Option<Arc<std::fs::File>>,
    /// The same file on the event loop, for the commit's fsync.
    file: monoio::fs::File,
    recent: Arc<Recent>,
    /// The write and hash jobs of the last block handed over.
    flight: Option<Flight>,
    /// Bytes handed to [`Ingest::append`].
    accepted: u64,
    /// Blocks written (for the fill's log line: average write size).
    pieces: u64,
    /// Time the write and the hash jobs took, in all (for the fill's log line).
    busy: (Duration, Duration),
    on_written: Option<OnWritten>,
    /// `None` while a hash job holds it.
    hasher: Option<ring::digest::Context>,
    written: u64,
    /// Set once the file is renamed into the store; Drop then leaves it alone.
    committed: bool,
    /// Set once size and sha256 are checked.
    verified: bool,
}

type Job<T> = monoio::task::JoinHandle<Result<T, monoio::blocking::JoinError>>;

/// One block's jobs: the write's result; the hash context; each, how long it took.
struct Flight {
    write: Job<std::io::Result<Duration>>,
    hash: Job<(ring::digest::Context, Duration)>,
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

/// Whether `O_DIRECT` may still be tried (cleared, with one log line, the first time the
/// filesystem refuses it).
static DIRECT_OK: AtomicBool = AtomicBool::new(true);

fn direct_refused(e: &std::io::Error) {
    if DIRECT_OK.swap(false, Ordering::Relaxed) {
        tracing::info!(error = %e, "the store's filesystem refuses O_DIRECT; fills write through the page cache");
    }
}

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
            flight: None,
            accepted: 0,
            pieces: 0,
            busy: Default::default(),
            on_written: None,
            hasher: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            written: 0,
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

    /// Call `f` with the written byte count each time a write completes.
    pub fn on_written(&mut self, f: OnWritten) {
        self.on_written = Some(f);
    }

    /// Bytes whose write has completed (what followers may read).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Blocks written so far.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Time the blocks' writes and hashes took so far (each in all, on the pool).
    pub fn busy(&self) -> (Duration, Duration) {
        self.busy
    }

    /// Bytes handed to [`Ingest::append`] (written, or being written).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Append `data` after what was accepted: the previous block's jobs are completed, and
    /// this data's (a block each [`BLOCK_BYTES`]) started and left in flight, so the fill
    /// reads the next piece meanwhile. An error is that of a write.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        for piece in data.chunks(BLOCK_BYTES) {
            self.complete().await?;
            let block = Arc::new(Block::new(self.accepted, piece));
            self.accepted += piece.len() as u64;
            self.start(block);
        }
        Ok(())
    }

    /// Start `block`'s write and hash jobs (none may be in flight).
    fn start(&mut self, block: Arc<Block>) {
        debug_assert_eq!(block.at, self.written);
        self.recent.push(block.clone());
        self.pieces += 1;
        let write = {
            let block = block.clone();
            let (writer, direct, on_written) = (
                self.writer.clone(),
                self.direct.clone(),
                self.on_written.clone(),
            );
            monoio::spawn_blocking(move || {
                let t = std::time::Instant::now();
                write_block(&block, &writer, direct.as_deref())?;
                if let Some(f) = on_written {
                    f(block.end());
                }
                Ok(t.elapsed())
            })
        };
        let mut hasher = self.hasher.take().expect("no hash job in flight");
        let hash = monoio::spawn_blocking(move || {
            let t = std::time::Instant::now();
            hasher.update(block.bytes());
            (hasher, t.elapsed())
        });
        self.flight = Some(Flight { write, hash });
    }

    /// Wait for the jobs in flight, then let `Recent` drop what is in the file.
    async fn complete(&mut self) -> std::io::Result<()> {
        let Some(f) = self.flight.take() else {
            return Ok(());
        };
        let (hasher, hashing) = f.hash.await.expect("the blocking pool runs every job");
        self.hasher = Some(hasher);
        self.busy.1 += hashing;
        self.busy.0 += f.write.await.expect("the blocking pool runs every job")?;
        // Blocks are written one at a time: the one just done ends what was accepted.
        self.written = self.accepted;
        self.recent.evict(self.written, RECENT_KEEP);
        Ok(())
    }

    /// Wait for the jobs in flight: afterwards `written() == accepted()` and every written
    /// byte is hashed.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.complete().await
    }

    /// Check that what was written is `size` bytes (when known) and hashes to `expected` —
    /// the first half of [`Ingest::commit`], callable on its own so followers can finish
    /// before the fsync.
    pub async fn verify(&mut self, expected: Digest, size: Option<u64>) -> Result<(), CommitError> {
        self.flush().await.map_err(CommitError::Io)?;
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
            .expect("no hash job in flight");
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

/// Write `block` at its offset: its aligned middle by `direct` when there is one, its
/// unaligned ends (and everything, without `direct`) by `writer`. A direct write the
/// filesystem refuses is done again through `writer`.
fn write_block(
    block: &Block,
    writer: &std::fs::File,
    direct: Option<&std::fs::File>,
) -> std::io::Result<()> {
    let (at, end, bytes) = (block.at, block.end(), block.bytes());
    let Some(direct) = direct else {
        return writer.write_all_at(bytes, at);
    };
    let align = ALIGN as u64;
    let first = at.next_multiple_of(align).min(end);
    let last = (end / align * align).max(first);
    let part = |from: u64, to: u64| &bytes[(from - at) as usize..(to - at) as usize];
    writer.write_all_at(part(at, first), at)?;
    match direct.write_all_at(part(first, last), first) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            direct_refused(&e);
            writer.write_all_at(part(first, last), first)?;
        }
        Err(e) => return Err(e),
    }
    writer.write_all_at(part(last, end), last)
}

impl Drop for Ingest {
    fn drop(&mut self) {
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
                ingest.on_written(Arc::new(move |n| {
                    assert!(
                        n >= p.swap(n, Ordering::SeqCst),
                        "published count went back"
                    );
                }));
                let mut at = 0;
                for &n in &sizes {
                    ingest.append(&body[at..at + n]).await.unwrap();
                    at += n;
                }
                ingest
                    .verify(digest, Some(body.len() as u64))
                    .await
                    .unwrap();
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
