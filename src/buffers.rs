//! Per-worker pools of read buffers, so memory follows what is *being done*, not how many
//! connections are open.
//!
//! - A connection holds a head buffer only while a request head is arriving or pipelined bytes
//!   wait; an idle connection (keep-alive, or not yet sent a byte) waits for readability
//!   holding no buffer at all.
//! - A head buffer starts at [`HEAD_FIRST_BYTES`] and grows only for a longer head, out of a
//!   per-worker budget ([`HEAD_ROOM_BYTES_PER_WORKER`], claimed through a [`HeadRoom`]): past
//!   it a connection that needs more room is refused (503), so clients that send most of a
//!   head and stop hold 4 KiB each plus that budget in all, not `head_bytes_max` each. Only
//!   first-size buffers are kept for reuse; grown ones are freed when given back.
//! - A response streamed from a file (hit or follower) borrows one body buffer for its
//!   duration. The first [`LARGE_PER_WORKER`] concurrent streams of a worker get
//!   [`CHUNK_BYTES`] (fewest syscalls per byte: one client pulling a 1 GiB layer); streams past
//!   that get [`SMALL_CHUNK_BYTES`], so 512 followers of one blob cost a few MiB, not 128.
//!
//! Free lists are bounded ([`FREE_MAX`] each); a buffer lost to a cancelled write is simply
//! not returned (the large count is kept per borrow, not per buffer, so it cannot leak).

use std::cell::{Cell, RefCell};

use crate::limits::{CHUNK_BYTES, HEAD_ROOM_BYTES_PER_WORKER};

pub use crate::limits::BUFFERS_FREE_MAX as FREE_MAX;
pub use crate::limits::HEAD_FIRST_BYTES;
pub use crate::limits::LARGE_BUFFERS_PER_WORKER as LARGE_PER_WORKER;
pub use crate::limits::SMALL_CHUNK_BYTES;

#[derive(Default)]
pub struct Buffers {
    heads: RefCell<Vec<Vec<u8>>>,
    large: RefCell<Vec<Vec<u8>>>,
    small: RefCell<Vec<Vec<u8>>>,
    large_out: Cell<usize>,
    /// Head-buffer bytes past [`HEAD_FIRST_BYTES`] claimed by this worker's connections.
    head_room: Cell<usize>,
}

/// What a body borrow was (returned with [`Buffers::give_body`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lent {
    #[default]
    None,
    Large,
    Small,
}

impl Buffers {
    /// An empty head buffer with room for `cap` bytes.
    pub fn head(&self, cap: usize) -> Vec<u8> {
        match self.heads.borrow_mut().pop() {
            Some(mut v) => {
                v.reserve(cap);
                v
            }
            None => Vec::with_capacity(cap),
        }
    }

    /// Take a head buffer back: kept for reuse if it is of the first size (and the list has
    /// room), freed if it grew.
    pub fn give_head(&self, mut v: Vec<u8>) {
        v.clear();
        let mut heads = self.heads.borrow_mut();
        if v.capacity() == HEAD_FIRST_BYTES && heads.len() < FREE_MAX {
            heads.push(v);
        }
    }

    /// A connection's claim on this worker's head budget (none yet).
    pub fn head_room(&self) -> HeadRoom<'_> {
        HeadRoom {
            pool: self,
            held: Cell::new(0),
        }
    }

    /// Head-buffer bytes past the first size claimed now, by all of this worker's connections.
    pub fn head_room_used(&self) -> usize {
        self.head_room.get()
    }

    /// A body buffer for one streamed response.
    pub fn body(&self) -> (Vec<u8>, Lent) {
        if self.large_out.get() < LARGE_PER_WORKER {
            self.large_out.set(self.large_out.get() + 1);
            let v = self.large.borrow_mut().pop();
            (
                v.unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES)),
                Lent::Large,
            )
        } else {
            let v = self.small.borrow_mut().pop();
            (
                v.unwrap_or_else(|| Vec::with_capacity(SMALL_CHUNK_BYTES)),
                Lent::Small,
            )
        }
    }

    /// End of a body borrow: `v` is the buffer (or an empty one if it was lost).
    pub fn give_body(&self, lent: Lent, mut v: Vec<u8>) {
        if lent == Lent::Large {
            self.large_out.set(self.large_out.get() - 1);
        }
        v.clear();
        let list = match v.capacity() {
            CHUNK_BYTES => &self.large,
            SMALL_CHUNK_BYTES => &self.small,
            _ => return,
        };
        let mut list = list.borrow_mut();
        if list.len() < FREE_MAX {
            list.push(v);
        }
    }

    /// Streams holding a large buffer now.
    pub fn large_out(&self) -> usize {
        self.large_out.get()
    }
}

/// One connection's claim on its worker's head budget: the capacity of its head buffer past
/// [`HEAD_FIRST_BYTES`]. Given back with the buffer ([`HeadRoom::give`]), and whole when the
/// connection ends however it ends (a buffer lost to a cancelled read included): the claim is
/// kept per connection, not per buffer, so it cannot leak.
pub struct HeadRoom<'a> {
    pool: &'a Buffers,
    held: Cell<usize>,
}

impl HeadRoom<'_> {
    /// Grow `buf` to a capacity of `cap` if the worker's budget has room for what that takes
    /// past [`HEAD_FIRST_BYTES`]; `false` (and `buf` unchanged) if it has not.
    pub fn grow(&self, buf: &mut Vec<u8>, cap: usize) -> bool {
        let more = cap
            .saturating_sub(HEAD_FIRST_BYTES)
            .saturating_sub(self.held.get());
        let used = self.pool.head_room.get();
        if used + more > HEAD_ROOM_BYTES_PER_WORKER {
            return false;
        }
        self.pool.head_room.set(used + more);
        self.held.set(self.held.get() + more);
        buf.reserve_exact(cap.saturating_sub(buf.len()));
        true
    }

    /// Give the connection's head buffer back to the pool, and its claim with it.
    pub fn give(&self, buf: Vec<u8>) {
        self.pool.give_head(buf);
        self.release();
    }

    fn release(&self) {
        let held = self.held.replace(0);
        self.pool.head_room.set(self.pool.head_room.get() - held);
    }
}

impl Drop for HeadRoom<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_go_to_the_first_streams_then_small_ones() {
        let b = Buffers::default();
        let mut held = Vec::new();
        for i in 0..LARGE_PER_WORKER + 3 {
            let (v, lent) = b.body();
            if i < LARGE_PER_WORKER {
                assert_eq!((lent, v.capacity()), (Lent::Large, CHUNK_BYTES));
            } else {
                assert_eq!((lent, v.capacity()), (Lent::Small, SMALL_CHUNK_BYTES));
            }
            held.push((v, lent));
        }
        assert_eq!(b.large_out(), LARGE_PER_WORKER);
        // A large buffer lost to a cancelled write still ends its borrow.
        let (lost, lent) = held.remove(0);
        drop(lost);
        b.give_body(lent, Vec::new());
        assert_eq!(b.large_out(), LARGE_PER_WORKER - 1);
        for (v, lent) in held {
            b.give_body(lent, v);
        }
        assert_eq!(b.large_out(), 0);
        // Reused, not reallocated, and bounded.
        let (v, lent) = b.body();
        assert_eq!(lent, Lent::Large);
        assert_eq!(b.large.borrow().len(), LARGE_PER_WORKER - 2);
        b.give_body(lent, v);
        for _ in 0..FREE_MAX * 2 {
            b.give_head(Vec::with_capacity(HEAD_FIRST_BYTES));
        }
        assert_eq!(b.heads.borrow().len(), FREE_MAX);
        assert!(b.head(128).capacity() >= 128);
    }

    #[test]
    fn head_room_is_a_budget_per_worker_given_back_with_the_buffer_or_the_connection() {
        let b = Buffers::default();
        let big = 32 * 1024;
        let per = big - HEAD_FIRST_BYTES;
        let n = HEAD_ROOM_BYTES_PER_WORKER / per;
        let rooms: Vec<_> = (0..n).map(|_| b.head_room()).collect();
        let mut bufs = Vec::new();
        for r in &rooms {
            let mut v = b.head(HEAD_FIRST_BYTES);
            // Growing in steps claims only the difference.
            assert!(r.grow(&mut v, 2 * HEAD_FIRST_BYTES));
            assert!(r.grow(&mut v, big));
            assert!(v.capacity() >= big);
            bufs.push(v);
        }
        assert_eq!(b.head_room_used(), n * per);
        // Over budget: refused, unchanged; the first size needs no room.
        let last = b.head_room();
        let mut v = b.head(HEAD_FIRST_BYTES);
        assert!(!last.grow(&mut v, big));
        assert_eq!(v.capacity(), HEAD_FIRST_BYTES);
        assert!(last.grow(&mut v, HEAD_FIRST_BYTES));
        // Given back: a grown buffer is freed, not kept; the claim goes with it.
        let kept = b.heads.borrow().len();
        rooms[0].give(bufs.remove(0));
        assert_eq!(b.heads.borrow().len(), kept);
        assert!(last.grow(&mut v, big));
        // A connection that ends (its buffer lost or not) releases its claim.
        drop(rooms);
        drop(last);
        assert_eq!(b.head_room_used(), 0);
    }
}
