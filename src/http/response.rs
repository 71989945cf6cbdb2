//! The response side of every request: [`Exchange`], the one writer to a client socket (heads,
//! whole bodies from memory, files by sendfile or io_uring reads, all with the send-stall
//! timeout), and the reason phrases.

use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::AsyncWriteRentExt;

use super::sendfile;
use super::socket::Socket;
use crate::buffers::{Buffers, Lent, SMALL_CHUNK_BYTES};
use crate::error::{Error, Kind};
use crate::limits::CHUNK_BYTES;

/// One request's response side, handed to the proxy.
pub struct Exchange<'a> {
    pub sock: &'a mut Socket,
    /// HEAD: send the head only.
    pub head_only: bool,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    minor_version: u8,
    /// The body buffer (file reads) borrowed from the worker's pool for this request, if any.
    buf: Vec<u8>,
    lent: Lent,
    pool: &'a Buffers,
    /// A response head formatted but not yet written (see [`Exchange::defer_head`]).
    head: Vec<u8>,
    /// Set once a response head is written (or deferred): after that an error can only cut
    /// the connection.
    pub wrote_head: bool,
    pub status: u16,
    pub body_bytes: u64,
    /// Of `body_bytes`, those sent by sendfile straight from the page cache.
    pub sendfile_bytes: u64,
    /// Body bytes a follower copied from its fill's recent blocks in memory.
    pub memory_bytes: u64,
    pub send_stall: Duration,
    /// Whether file bytes may go by sendfile (decided per connection, by where the client is).
    pub sendfile: sendfile::Policy,
    /// Hit, miss, coalesced... (set by the proxy; for counters and the access log).
    pub cache: crate::metrics::Cache,
    /// Blob or manifest, when the request was for one.
    pub ty: Option<crate::metrics::Type>,
    /// Time spent waiting for upstream before the first byte (misses).
    pub upstream_ms: Option<u64>,
    /// The response is an error, and which side failed (for its `Cache-Status`).
    failed: Option<crate::error::Side>,
    /// Which upstream the request is for (0: the default; see [`crate::registry`]).
    pub upstream: usize,
}

/// The one send loop to a client socket: all of `buf`, or an error once the client has accepted
/// nothing for `stall` (then it is cut). The buffer comes back unless the write was cancelled
/// by the stall (a rented buffer goes with its cancelled operation).
pub async fn send_within<T: IoBuf>(
    sock: &mut Socket,
    buf: T,
    stall: Duration,
) -> (std::io::Result<()>, Option<T>) {
    match monoio::time::timeout(stall, sock.write_all(buf)).await {
        Ok((res, buf)) => (res.map(|_| ()), Some(buf)),
        Err(_) => (Err(std::io::ErrorKind::TimedOut.into()), None),
    }
}

impl<'a> Exchange<'a> {
    /// A response not yet started.
    pub fn new(
        sock: &'a mut Socket,
        pool: &'a Buffers,
        send_stall: Duration,
        head_only: bool,
        keep_alive: bool,
        minor_version: u8,
    ) -> Exchange<'a> {
        Exchange {
            sock,
            head_only,
            keep_alive,
            minor_version,
            buf: Vec::new(),
            lent: Lent::None,
            pool,
            head: Vec::new(),
            wrote_head: false,
            status: 0,
            body_bytes: 0,
            sendfile_bytes: 0,
            memory_bytes: 0,
            send_stall,
            sendfile: sendfile::Policy::Always,
            cache: Default::default(),
            ty: None,
            upstream_ms: None,
            failed: None,
            upstream: 0,
        }
    }

    /// This request's body buffer (borrowed from the worker's pool on first use); hand it back
    /// with [`Exchange::put_buf`] so later chunks reuse it.
    pub fn take_buf(&mut self) -> Vec<u8> {
        if self.lent == Lent::None {
            let (v, lent) = self.pool.body();
            self.lent = lent;
            return v;
        }
        let v = std::mem::take(&mut self.buf);
        if v.capacity() == 0 {
            // Lost to a cancelled write: a fresh one of the size this borrow allows.
            return Vec::with_capacity(self.chunk());
        }
        v
    }

    pub fn put_buf(&mut self, v: Vec<u8>) {
        self.buf = v;
    }

    /// Bytes per file read for this request.
    pub fn chunk(&self) -> usize {
        match self.lent {
            Lent::Small => SMALL_CHUNK_BYTES,
            _ => CHUNK_BYTES,
        }
    }

    /// End of the request: the body buffer goes back to the pool.
    pub fn release(&mut self) {
        let lent = std::mem::take(&mut self.lent);
        if lent != Lent::None {
            self.pool.give_body(lent, std::mem::take(&mut self.buf));
        }
    }

    /// Write a response head now. `headers` are added after the standard ones.
    pub async fn send_head(
        &mut self,
        status: u16,
        content_length: u64,
        headers: &[(&str, &str)],
    ) -> std::io::Result<()> {
        self.defer_head(status, content_length, headers);
        self.flush_head().await
    }

    /// Format a response head to go out with the first body bytes ([`Exchange::send_file`],
    /// [`Exchange::send_full`]): one write, one segment for a small response. Whatever is
    /// still pending when the request ends is flushed by the connection.
    pub fn defer_head(&mut self, status: u16, content_length: u64, headers: &[(&str, &str)]) {
        use std::io::Write;
        assert!(!self.wrote_head, "response head written twice");
        let h = &mut self.head;
        h.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(
            h,
            "HTTP/1.1 {status} {}\r\nContent-Length: {content_length}\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
            reason(status)
        );
        if !self.keep_alive {
            h.extend_from_slice(b"Connection: close\r\n");
        } else if self.minor_version == 0 {
            h.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        // Where the answer came from (RFC 9211), a static string: nothing allocated.
        h.extend_from_slice(b"Cache-Status: ");
        h.extend_from_slice(cache_status(self.cache, self.ty.is_some(), self.failed).as_bytes());
        h.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            h.extend_from_slice(name.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(value.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        self.wrote_head = true;
        self.status = status;
    }

    /// Write a deferred head, if one is pending.
    pub async fn flush_head(&mut self) -> std::io::Result<()> {
        if self.head.is_empty() {
            return Ok(());
        }
        let h = std::mem::take(&mut self.head);
        self.write(h).await
    }

    /// A complete response from memory (the body is skipped for HEAD), in one write.
    pub async fn send_full(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> std::io::Result<()> {
        self.defer_head(status, body.len() as u64, headers);
        if !self.head_only && !body.is_empty() {
            self.body_bytes += body.len() as u64;
            self.head.extend_from_slice(&body);
        }
        self.flush_head().await
    }

    pub async fn send_error(&mut self, e: &Error) -> std::io::Result<()> {
        let status = e.kind.status();
        if matches!(
            e.kind,
            Kind::BadRequest | Kind::HeadTooLarge | Kind::UriTooLong
        ) {
            self.keep_alive = false;
        }
        self.failed = Some(e.side);
        let body = e.body().into_bytes();
        self.send_full(
            status,
            &[("Content-Type", "application/json; charset=utf-8")],
            body,
        )
        .await
    }

    /// Write bytes with the send-stall timeout: a client that reads nothing is cut.
    pub async fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        send_within(self.sock, bytes, self.send_stall).await.0
    }

    /// Stream `[start, end]` of an open, complete file to the client: what is in the page
    /// cache by sendfile (no copy through user space), the rest read through io_uring into
    /// the pooled buffer, chunk by chunk.
    pub async fn send_file(
        &mut self,
        file: &monoio::fs::File,
        start: u64,
        end: u64,
    ) -> std::io::Result<()> {
        let mut pos = start;
        // A body too small for sendfile is no stream for the policy either.
        let _stream = (end + 1 - start >= sendfile::MIN_BYTES).then(sendfile::streaming);
        while pos <= end {
            // Over TLS the policy is `Never`: bytes go through the TLS writer.
            let span = sendfile::span(self.sendfile, file, pos, end + 1);
            if let Some(to) = span.filter(|_| self.sock.plain().is_some()) {
                self.flush_head().await?;
                let from = pos;
                let res = match self.sock.plain() {
                    Some(sock) => sendfile::send(sock, file, &mut pos, to, self.send_stall).await,
                    None => Err(std::io::ErrorKind::Unsupported.into()),
                };
                self.body_bytes += pos - from;
                self.sendfile_bytes += pos - from;
                res?;
            } else {
                pos = self.read_and_send(file, pos, end).await?;
            }
        }
        Ok(())
    }

    /// Read one chunk of `[pos, end]` into the pooled buffer and send it (with the deferred
    /// head in front of it, if one is pending): where the next chunk starts.
    async fn read_and_send(
        &mut self,
        file: &monoio::fs::File,
        pos: u64,
        end: u64,
    ) -> std::io::Result<u64> {
        let mut buf = self.take_buf();
        let chunk = self.chunk();
        buf.clear();
        // A deferred head goes out in front of the first chunk.
        buf.extend_from_slice(&self.head);
        self.head.clear();
        let at = buf.len();
        let want = ((end + 1 - pos) as usize).min(chunk.saturating_sub(at).max(1));
        buf.reserve(want);
        let (res, slice) = file.read_at(buf.slice_mut(at..at + want), pos).await;
        buf = slice.into_inner();
        let n = match res {
            Ok(n) if n > 0 => n,
            other => {
                self.put_buf(buf);
                return Err(other
                    .err()
                    .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let (res, slice) = send_within(self.sock, buf.slice(0..at + n), self.send_stall).await;
        // A buffer that went with a cancelled write: take_buf makes a fresh one next time.
        if let Some(slice) = slice {
            self.put_buf(slice.into_inner());
        }
        res?;
        self.body_bytes += n as u64;
        Ok(pos + n as u64)
    }
}

/// The `Cache-Status` (RFC 9211 §2) of a response: `ringcache` and what it did, by what the
/// proxy decided (`cache`), whether the request was for content (a blob or manifest), and, for
/// an error, which side failed. One static string per case, so the hit path allocates nothing.
/// A parent ringcache's own entry is not relayed (a list would be one allocation per miss).
pub fn cache_status(
    cache: crate::metrics::Cache,
    content: bool,
    failed: Option<crate::error::Side>,
) -> &'static str {
    use crate::error::Side;
    use crate::metrics::Cache;
    match (failed, cache) {
        // An error upstream gave (its 404, 401, 5xx) or caused (a body that failed its
        // digest): the request went forward.
        (Some(Side::Upstream), _) => "ringcache; fwd=miss; detail=upstream-error",
        // An error of our own (a bad request, a store fault, a limit) after the request had
        // joined a fill is still one that went forward.
        (Some(_), Cache::Miss | Cache::Coalesced | Cache::Bypass) => {
            "ringcache; fwd=miss; detail=error"
        }
        (Some(_), _) => "ringcache; detail=error",
        (None, Cache::Hit) => "ringcache; hit",
        // This request started the fill, which stores what upstream sends.
        (None, Cache::Miss) => "ringcache; fwd=miss; stored",
        // A follower of a fill already in flight (RFC 9211 §2.8: collapsed).
        (None, Cache::Coalesced) => "ringcache; fwd=miss; collapsed",
        // Forwarded and not stored: the store could not take it (disk full, read-only).
        (None, Cache::Bypass) => "ringcache; fwd=miss; detail=store-bypass",
        // Content we do not have, answered by upstream without a fill: a HEAD (RFC 9211
        // §2.2: uri-miss, nothing cached under this URI).
        (None, Cache::None) if content => "ringcache; fwd=uri-miss",
        // Not content: the API root, tag lists and the catalog are never cached.
        (None, Cache::None) => "ringcache; fwd=bypass",
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::cache_status;
    use crate::error::Side;
    use crate::metrics::Cache;

    #[test]
    fn cache_status_says_where_an_answer_came_from() {
        // (cache, content, failed side, Cache-Status)
        let cases: &[(Cache, bool, Option<Side>, &str)] = &[
            (Cache::Hit, true, None, "ringcache; hit"),
            (Cache::Miss, true, None, "ringcache; fwd=miss; stored"),
            (
                Cache::Coalesced,
                true,
                None,
                "ringcache; fwd=miss; collapsed",
            ),
            (
                Cache::Bypass,
                true,
                None,
                "ringcache; fwd=miss; detail=store-bypass",
            ),
            (Cache::None, true, None, "ringcache; fwd=uri-miss"),
            (Cache::None, false, None, "ringcache; fwd=bypass"),
            (
                Cache::Miss,
                true,
                Some(Side::Upstream),
                "ringcache; fwd=miss; detail=upstream-error",
            ),
            (
                Cache::None,
                true,
                Some(Side::Upstream),
                "ringcache; fwd=miss; detail=upstream-error",
            ),
            (
                Cache::Coalesced,
                true,
                Some(Side::Store),
                "ringcache; fwd=miss; detail=error",
            ),
            (
                Cache::None,
                false,
                Some(Side::Client),
                "ringcache; detail=error",
            ),
            (
                Cache::Hit,
                true,
                Some(Side::Store),
                "ringcache; detail=error",
            ),
        ];
        for (cache, content, failed, want) in cases {
            assert_eq!(
                cache_status(*cache, *content, *failed),
                *want,
                "{cache:?} {failed:?}"
            );
        }
    }
}
