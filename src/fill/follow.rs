//! Followers (data path step 6): every client of a fill streams the body up to the
//! published byte count, waking when more is received. The final byte of the body is held back
//! until the fill has verified the body (size and sha256; before the commit's fsync), so a
//! body that fails verification is never delivered complete: on `Failed` the follower stops
//! and its connection is cut short.
//!
//! A slow client slows only itself: the fill waits for its furthest follower at most
//! [`super::PACE_WAIT`] per block ([`Fill::pace`]), and leaves a slower one behind. The
//! newest bytes go out from the fill's recent blocks in memory, a block's rest at a time: sent
//! as they are while the blocks alive are within their budget, else copied into the
//! follower's buffer from the worker's pool ([`crate::buffers`]). Older bytes go out by
//! sendfile where the page cache has them, and are read from the file otherwise.

use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBuf;

use super::{Fill, State, PACE_BLOCKS};
use crate::error::Kind;
use crate::http::response::send_within;
use crate::http::sendfile;
use crate::http::socket::Socket;
use crate::store::ingest;

/// Wait until the fill has an answer from upstream: its state then, never `Pending`.
pub async fn start(fill: &Fill) -> State {
    loop {
        let listener = fill.listen();
        match fill.state() {
            State::Pending => listener.await,
            answered => return answered,
        }
    }
}

/// Wait until the fill is over: its committed size, or why it failed.
/// `Err(None)`: the store failed (bypass).
pub async fn finish(fill: &Fill) -> Result<Finished, Option<Kind>> {
    loop {
        let listener = fill.listen();
        match fill.state() {
            State::Committed {
                file,
                size,
                media_type,
            } => return Ok((file, size, media_type)),
            State::Failed(kind) => return Err(Some(kind)),
            State::Bypass => return Err(None),
            _ => listener.await,
        }
    }
}

/// A committed fill: its file, size and media type.
pub type Finished = (Arc<std::fs::File>, u64, Option<Arc<str>>);

/// Why a follower stopped before the end of its range.
#[derive(Debug)]
pub enum Cut {
    /// The fill failed: the client's body is cut short.
    FillFailed(Kind),
    /// The client stopped reading (send stall) or went away.
    Client(std::io::Error),
    /// Reading the temp file failed.
    Read(std::io::Error),
    /// The fill made no progress for too long.
    Stalled,
    /// The store failed: `sent` bytes of the range went out; the rest must come from upstream.
    Bypass { sent: u64 },
}

/// What a follower sent, counted as it goes (so a cut stream still reports what went out).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Body bytes written to the client.
    pub body: u64,
    /// Of `body`, those that went by sendfile.
    pub by_sendfile: u64,
    /// Of `body`, those taken from the fill's recent blocks in memory.
    pub from_memory: u64,
}

/// Stream bytes `[start, end]` (inclusive) of the fill's body to `sock`. `size` is the body
/// size; if the range includes the last byte, that byte is sent only after the commit.
/// `buf` is this request's read buffer (reads of up to `chunk` bytes), returned for reuse.
/// What went out is added to `sent` as it goes. `policy` says whether file bytes may go by
/// sendfile.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    fill: &Fill,
    file: &std::fs::File,
    start: u64,
    end: u64,
    size: u64,
    sock: &mut Socket,
    mut buf: Vec<u8>,
    chunk: usize,
    send_stall: Duration,
    policy: sendfile::Policy,
    progress_stall: Duration,
    sent: &mut Sent,
) -> (Result<(), Cut>, Vec<u8>) {
    let file = match file.try_clone().and_then(monoio::fs::File::from_std) {
        Ok(f) => f,
        Err(e) => return (Err(Cut::Read(e)), buf),
    };
    let _following = fill.streaming();
    let _stream = sendfile::streaming();
    // Where this follower stands from the start: one whose range begins past what the fill
    // has (a resumed download) is ahead of it, and must not hold the fill back.
    fill.advanced(start);
    let mut pos = start;
    let includes_last = end + 1 == size;
    while pos <= end {
        let listener = fill.listen();
        let written = fill.written();
        let (committed, failed) = match fill.state() {
            State::Committed { .. } => (true, None),
            _ if fill.is_verified() => (true, None),
            State::Failed(kind) => (false, Some(kind)),
            State::Bypass => return (Err(Cut::Bypass { sent: pos - start }), buf),
            _ => (false, None),
        };
        if let Some(kind) = failed {
            return (Err(Cut::FillFailed(kind)), buf);
        }
        // Hold back the last byte until the content is verified.
        let limit = if includes_last && !committed {
            written.min(size - 1)
        } else {
            written.min(end + 1)
        };
        if pos >= limit {
            if monoio::time::timeout(progress_stall, listener)
                .await
                .is_err()
            {
                return (Err(Cut::Stalled), buf);
            }
            continue;
        }
        let want = ((limit - pos) as usize).min(chunk);
        buf.clear();
        let n = match fill.recent_piece(pos, (limit - pos) as usize) {
            // A recent block's bytes go out as they are (no copy, and the follower's buffer
            // stays untouched) to a follower near the front, while the blocks alive are within
            // their budget: it keeps that one block alive until the send is done, and the fill
            // keeps it anyway meanwhile. One further behind copies, so that it holds no block
            // the fill has let go.
            Some(piece) if ingest::blocks_within_budget() && piece.newer() < PACE_BLOCKS => {
                let n = piece.len();
                if let (Err(e), _) = send_within(sock, piece, send_stall).await {
                    return (Err(Cut::Client(e)), buf);
                }
                sent.from_memory += n as u64;
                sent.body += n as u64;
                pos += n as u64;
                fill.advanced(pos);
                continue;
            }
            // Behind, or past the budget: copied into the follower's buffer.
            Some(piece) => {
                let n = piece.len().min(want);
                buf.extend_from_slice(&piece.bytes()[..n]);
                sent.from_memory += n as u64;
                n
            }
            None => {
                // Only what the file holds: a span past its end would find the end's page
                // cached and send less than asked.
                let span = sendfile::span(policy, &file, pos, fill.in_file(limit).max(pos));
                // Over TLS the policy is `Never`, and there is no plain socket either.
                if let (Some(to), Some(plain)) = (span, sock.plain()) {
                    let from = pos;
                    let res = sendfile::send(plain, &file, &mut pos, to, send_stall).await;
                    sent.by_sendfile += pos - from;
                    sent.body += pos - from;
                    if let Err(e) = res {
                        return (Err(Cut::Client(e)), buf);
                    }
                    fill.advanced(pos);
                    continue;
                }
                buf.reserve(want);
                let slice = monoio::buf::IoBufMut::slice_mut(buf, 0..want);
                let (res, slice) = file.read_at(slice, pos).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) => {
                        return (
                            Err(Cut::Read(std::io::ErrorKind::UnexpectedEof.into())),
                            buf,
                        )
                    }
                    Ok(n) => n,
                    Err(e) => return (Err(Cut::Read(e)), buf),
                }
            }
        };
        let (res, back) = send_within(sock, buf.slice(0..n), send_stall).await;
        // A buffer that went with a cancelled write: the caller's pool makes a fresh one.
        buf = back.map_or_else(Vec::new, |slice| slice.into_inner());
        if let Err(e) = res {
            return (Err(Cut::Client(e)), buf);
        }
        sent.body += n as u64;
        pos += n as u64;
        fill.advanced(pos);
    }
    (Ok(()), buf)
}
