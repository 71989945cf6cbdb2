//! Where upstream body bytes are read to (step 6: a fill reads straight into its block).

use monoio::buf::IoBufMut;

/// Where body bytes are read to: a `Vec` (grown as needed), or a fill's block (fixed room,
/// so upstream's bytes land where they are written and sent from, with no copy).
pub trait Sink: IoBufMut + monoio::buf::IoBuf {
    /// Bytes in it.
    fn filled(&self) -> usize;
    /// Bytes it takes without growing.
    fn room(&self) -> usize;
    /// Make room for `n` more bytes (a block has at most `room()`).
    fn make_room(&mut self, n: usize);
    fn push_slice(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn filled(&self) -> usize {
        self.len()
    }

    fn room(&self) -> usize {
        self.capacity() - self.len()
    }

    fn make_room(&mut self, n: usize) {
        self.reserve(n);
    }

    fn push_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}
