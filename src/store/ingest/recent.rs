//! The followers' recent window (data path step 6, [`super`]): a fill's newest blocks in
//! memory, from which followers send the newest bytes without reading the file.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::block::{blocks_within_budget, Block};

/// Bytes of a block, to send without copying them.
pub struct Piece {
    block: Arc<Block>,
    from: usize,
    len: usize,
    /// Blocks the fill holds that are newer than this one.
    newer: usize,
}

impl Piece {
    /// Blocks the fill holds that are newer than this piece's (0: the newest).
    pub fn newer(&self) -> usize {
        self.newer
    }

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
        let (newer, block, end) = {
            let blocks = self.blocks.lock().unwrap();
            let (newer, b, end) = blocks
                .iter()
                .rev()
                .enumerate()
                .map(|(newer, b)| (newer, b, b.end()))
                .find(|(_, b, end)| b.at <= pos && pos < *end)?;
            (newer, b.clone(), end)
        };
        let from = (pos - block.at) as usize;
        // What was published when it was found (a block being filled grows meanwhile).
        let len = want.min((end - pos) as usize);
        Some(Piece {
            block,
            from,
            len,
            newer,
        })
    }

    /// Where the oldest block held starts (`None`: none is held). Blocks are held in order and
    /// leave only once written, so every byte before it is in the file.
    pub fn oldest_at(&self) -> Option<u64> {
        self.blocks.lock().unwrap().front().map(|b| b.at)
    }

    /// Where the oldest of the newest `n` blocks starts (`None`: fewer than `n` are held).
    pub fn start_of_newest(&self, n: usize) -> Option<u64> {
        let blocks = self.blocks.lock().unwrap();
        let i = blocks.len().checked_sub(n.max(1))?;
        Some(blocks[i].at)
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.blocks.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&self, b: Arc<Block>) {
        self.blocks.lock().unwrap().push_back(b);
    }

    /// Drop the oldest blocks that are wholly in the file (`written`) while more than `keep`
    /// are held (or while blocks past the process budget are alive): blocks not yet written
    /// always stay (the block being filled joins only once it has bytes, so its end is past
    /// `written`).
    pub(super) fn evict(&self, written: u64, keep: usize) {
        let mut blocks = self.blocks.lock().unwrap();
        while blocks.front().is_some_and(|b| b.end() <= written)
            && (blocks.len() > keep || !blocks_within_budget())
        {
            blocks.pop_front();
        }
    }
}
