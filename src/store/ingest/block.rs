//! Block memory (data path step 6, [`super`]): the aligned pieces of a body that a fill reads
//! upstream into, shares with its followers, and hands to the write and hash jobs; and the
//! process-wide budget of bytes they hold ([`BLOCKS_BUDGET`]), with spare allocations kept for
//! reuse while fills run.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{ALIGN, BLOCKS_BUDGET, BLOCK_BYTES, SPARE_IDLE};

use crate::limits::BLOCKS_SPARE_MAX as SPARE_MAX;

/// Bytes of blocks alive (in flight, recent, or held by a follower sending from one).
static BLOCKS_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether the blocks alive are within [`BLOCKS_BUDGET`]: a follower may then keep one alive
/// while it sends from it ([`Recent::piece_at`](super::Recent::piece_at)); past it, followers copy into their own
/// buffers, so followers stalled on old blocks never hold more than the budget.
pub fn blocks_within_budget() -> bool {
    BLOCKS_LIVE.load(Ordering::Relaxed) <= BLOCKS_BUDGET
}

/// Freed allocations, reused before new ones.
static SPARE: Mutex<Vec<Alloc>> = Mutex::new(Vec::new());
/// When the last block was made ([`crate::store::index::now_ms`]).
static LAST_MADE_MS: AtomicU64 = AtomicU64::new(0);

/// Unmap the spare block allocations if no block was made in the last [`SPARE_IDLE`] (called
/// now and then by the expiry thread).
pub fn trim_spares() {
    let idle = crate::store::index::now_ms().saturating_sub(LAST_MADE_MS.load(Ordering::Relaxed));
    if idle >= SPARE_IDLE.as_millis() as u64 {
        let spare = std::mem::take(&mut *SPARE.lock().unwrap());
        for a in spare {
            a.unmap();
        }
    }
}

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
        LAST_MADE_MS.store(crate::store::index::now_ms(), Ordering::Relaxed);
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
        let with_spares = BLOCKS_LIVE.load(Ordering::Relaxed) + (spare.len() + 1) * Self::SIZE;
        if spare.len() < SPARE_MAX && with_spares <= BLOCKS_BUDGET {
            spare.push(self);
        } else {
            drop(spare);
            self.unmap();
        }
    }

    fn unmap(self) {
        // SAFETY: mapped in `get` with this size, and owned here.
        unsafe { libc::munmap(self.0.as_ptr().cast(), Self::SIZE) };
    }
}

/// A piece of the body at a file offset, in aligned memory: filled on the event loop, shared
/// (`Arc`) with followers as it grows, and with the jobs that write and hash it once sealed.
pub struct Block {
    mem: Option<Alloc>,
    /// Where the bytes start in `mem`: the file offset's distance past an [`ALIGN`] boundary,
    /// so that aligned file offsets fall on aligned memory.
    skew: usize,
    /// Bytes published: `[0, len)` are written and never change again; only the fill, through
    /// the block's [`OpenBlock`], writes, and only past `len`. Stored with Release after the
    /// bytes, loaded with Acquire before reading them; it never decreases.
    pub(super) len: AtomicUsize,
    /// File offset of the first byte.
    pub(super) at: u64,
}

// SAFETY: readers see only the published bytes `[0, len)`, which are never written again; the
// one writer (the fill's `OpenBlock`) writes only past `len` and publishes with Release.
unsafe impl Sync for Block {}

impl Block {
    /// An empty block for the bytes at file offset `at`.
    pub(super) fn open(at: u64) -> Block {
        BLOCKS_LIVE.fetch_add(Alloc::SIZE, Ordering::Relaxed);
        Block {
            mem: Some(Alloc::get()),
            skew: (at % ALIGN as u64) as usize,
            len: AtomicUsize::new(0),
            at,
        }
    }

    /// Where the block's bytes start.
    fn base(&self) -> *mut u8 {
        let p = self.mem.as_ref().expect("a live block has memory").0;
        // SAFETY: `skew < ALIGN`, inside the allocation.
        unsafe { p.as_ptr().add(self.skew) }
    }

    /// Bytes published so far.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The published bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes past `base` were written before `len` was published
        // (Release, paired with the Acquire in `len()`) and are never written again; the
        // allocation holds `skew + BLOCK_BYTES >= skew + len` bytes.
        unsafe { std::slice::from_raw_parts(self.base(), self.len()) }
    }

    pub fn end(&self) -> u64 {
        self.at + self.len() as u64
    }
}

/// The fill's handle on the block it is filling (see [`Ingest::open_block`](super::Ingest::open_block)): upstream's
/// bytes are read straight into it, past what is published; [`Ingest::publish`](super::Ingest::publish) shows them to
/// followers, [`Ingest::accept`](super::Ingest::accept) seals the block. The only writer of the block's memory.
pub struct OpenBlock {
    pub(super) block: Arc<Block>,
    /// Bytes in the block: `[0, block.len)` published, `[block.len, filled)` not yet.
    pub(super) filled: usize,
}

impl OpenBlock {
    /// Bytes in the block, published or not.
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Bytes received since the last publish.
    pub fn unpublished(&self) -> usize {
        self.filled - self.block.len()
    }

    /// Whether the block has no room left.
    pub fn is_full(&self) -> bool {
        self.filled == BLOCK_BYTES
    }

    /// Drop the first `n` of the bytes not yet published (upstream resent what we have).
    pub fn drop_unpublished(&mut self, n: usize) {
        let published = self.block.len();
        let fresh = self.filled - published;
        let n = n.min(fresh);
        // SAFETY: `[published, filled)` past `base` is initialised, inside the allocation, and
        // read by no one else (only published bytes are shared).
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(self.block.base().add(published), fresh) };
        bytes.copy_within(n.., 0);
        self.filled -= n;
    }
}

// SAFETY: the pointer is into the block's own mapping, which does not move while the `Arc`
// lives; `filled` bytes past it are initialised.
unsafe impl monoio::buf::IoBuf for OpenBlock {
    fn read_ptr(&self) -> *const u8 {
        self.block.base()
    }

    fn bytes_init(&self) -> usize {
        self.filled
    }
}

// SAFETY: as for `IoBuf`; the mapping holds `BLOCK_BYTES` past `base`. Reads land past
// `filled` (`Sink::filled`), never in the published bytes.
unsafe impl monoio::buf::IoBufMut for OpenBlock {
    fn write_ptr(&mut self) -> *mut u8 {
        self.block.base()
    }

    fn bytes_total(&mut self) -> usize {
        BLOCK_BYTES
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.filled = pos;
    }
}

impl crate::http::sink::Sink for OpenBlock {
    fn filled(&self) -> usize {
        self.filled
    }

    fn room(&self) -> usize {
        BLOCK_BYTES - self.filled
    }

    fn make_room(&mut self, n: usize) {
        assert!(n <= self.room(), "a block does not grow");
    }

    fn push_slice(&mut self, bytes: &[u8]) {
        assert!(bytes.len() <= self.room(), "a block does not grow");
        // SAFETY: `filled + bytes.len() <= BLOCK_BYTES` past `base`, inside the allocation,
        // past the published bytes (no one else reads there); `bytes` is not in it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.block.base().add(self.filled),
                bytes.len(),
            );
        }
        self.filled += bytes.len();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        BLOCKS_LIVE.fetch_sub(Alloc::SIZE, Ordering::Relaxed);
        if let Some(m) = self.mem.take() {
            m.put();
        }
    }
}
