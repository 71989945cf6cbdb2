//! Per-worker pools of read buffers, so memory follows what is *being done*, not how many
//! connections are open.
//!
//! - A connection holds a head buffer only while a request head is arriving or pipelined bytes
//!   wait; an idle connection (keep-alive, or not yet sent a byte) waits for readability
//!   holding no buffer at all.
//! - A response streamed from a file (hit or follower) borrows one body buffer for its
//!   duration. The first [`LARGE_PER_WORKER`] concurrent streams of a worker get
//!   [`CHUNK_BYTES`] (fewest syscalls per byte: one client pulling a 1 GiB layer); streams past
//!   that get [`SMALL_CHUNK_BYTES`], so 512 followers of one blob cost a few MiB, not 128.
//!
//! Free lists are bounded ([`FREE_MAX`] each); a buffer lost to a cancelled write is simply
//! not returned (the large count is kept per borrow, not per buffer, so it cannot leak).

use std::cell::{Cell, RefCell};

use crate::limits::CHUNK_BYTES;

/// Concurrent streams per worker that get a large buffer.
pub const LARGE_PER_WORKER: usize = 8;
/// The buffer of a stream past the first [`LARGE_PER_WORKER`].
pub const SMALL_CHUNK_BYTES: usize = 16 * 1024;
/// Free buffers kept per list.
pub const FREE_MAX: usize = 64;

#[derive(Default)]
pub struct Buffers {
    heads: RefCell<Vec<Vec<u8>>>,
    large: RefCell<Vec<Vec<u8>>>,
    small: RefCell<Vec<Vec<u8>>>,
    large_out: Cell<usize>,
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

    pub fn give_head(&self, mut v: Vec<u8>) {
        v.clear();
        let mut heads = self.heads.borrow_mut();
        if v.capacity() > 0 && heads.len() < FREE_MAX {
            heads.push(v);
        }
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
            b.give_head(Vec::with_capacity(64));
        }
        assert_eq!(b.heads.borrow().len(), FREE_MAX);
        assert!(b.head(128).capacity() >= 128);
    }
}
