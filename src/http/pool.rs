//! Upstream connections (step 6): the transport [`Stream`] (TCP or TLS), an idle
//! connection, and one worker's pool of them per origin, each checked for quiet before reuse.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;

use super::sink::Sink;
use super::url::Origin;
use crate::limits;

/// One transport connection to an origin.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl Stream {
    /// Append at most `want` bytes to `buf` (growing it as needed). Ok(0) is end of stream.
    pub(super) async fn read_append<B: Sink>(
        &mut self,
        mut buf: B,
        want: usize,
    ) -> (std::io::Result<usize>, B) {
        let len = buf.filled();
        buf.make_room(want);
        let slice = buf.slice_mut(len..len + want);
        let (res, slice) = match self {
            Stream::Plain(s) => s.read(slice).await,
            Stream::Tls(s) => s.read(slice).await,
        };
        (res, slice.into_inner())
    }

    pub(super) async fn write_all(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let (res, _) = match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.write_all(buf).await,
        };
        res.map(|_| ())
    }
}

/// One upstream connection, and since when it has been idle in the pool.
pub(super) struct Conn {
    pub(super) stream: Stream,
    pub(super) idle_since: Instant,
    /// The TCP socket under `stream` (owned by it): checked for readability before reuse.
    pub(super) fd: std::os::fd::RawFd,
}

impl Conn {
    /// Whether an idle connection may carry another request: the peer has neither closed it
    /// nor sent anything (an idle HTTP/1.1 connection has nothing to say; bytes there belong
    /// to no request of ours). One non-blocking `recv(MSG_PEEK)`. Under TLS, records rustls
    /// has already taken in are not seen; an unasked record on the socket (even a session
    /// ticket) retires the connection, which costs only a reconnect.
    fn quiet(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own; `fd` is the socket `stream` owns and keeps open;
        // MSG_PEEK leaves the byte in the socket, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// Idle connections per origin, owned by one worker.
#[derive(Default)]
pub(super) struct Pool {
    idle: RefCell<HashMap<Origin, Vec<Conn>>>,
}

impl Pool {
    /// The most recently idled connection to `origin` that is still fresh and quiet; the
    /// others met on the way are closed.
    pub(super) fn take(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(origin)?;
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < limits::UPSTREAM_IDLE_TTL && conn.quiet() {
                return Some(conn);
            }
        }
        None
    }

    pub(super) fn put(&self, origin: Origin, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(origin).or_default();
        if list.len() < limits::UPSTREAM_IDLE_PER_ORIGIN_MAX {
            list.push(conn);
        }
    }
}
