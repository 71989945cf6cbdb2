//! One TLS connection from a client, on the worker's own event loop: a [`rustls::ServerConnection`]
//! driven over the monoio [`TcpStream`] (kept reachable, unlike monoio-rustls's stream: the
//! connection's idle wait needs its readiness and descriptor).
//!
//! Buffers are bounded: ciphertext is read [`TLS_READ_BYTES`] at a time into one buffer, and
//! plaintext written is taken [`TLS_SEND_BYTES`] at a time (rustls's buffer limit), encrypted
//! and sent before more is taken.

use std::io::{BufRead, Read};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::ServerConnection;

pub use crate::limits::TLS_READ_BYTES;
pub use crate::limits::TLS_SEND_BYTES;

/// A client connection after its handshake.
pub struct TlsStream {
    sock: TcpStream,
    conn: ServerConnection,
    /// Ciphertext read from the socket; `rbuf[rpos..]` not yet handed to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Records to send (reused between writes; emptied by each flush).
    wbuf: Vec<u8>,
}

/// Why a handshake did not complete (for the log and counters).
#[derive(Debug)]
pub enum HandshakeError {
    /// Not finished within the deadline (a slow or stalled client).
    Timeout,
    /// The client closed, or the socket failed.
    Io(std::io::Error),
    /// Not TLS, or TLS we refuse (no shared version or suite, no client certificate...).
    Tls(rustls::Error),
}

impl HandshakeError {
    /// Index into [`crate::metrics::TLS_HANDSHAKE_FAILURE_REASONS`].
    pub fn reason(&self) -> usize {
        match self {
            HandshakeError::Timeout => 0,
            HandshakeError::Io(_) => 1,
            HandshakeError::Tls(_) => 2,
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => write!(f, "handshake not finished in time"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl TlsStream {
    /// Run the server side of a handshake on `sock` within `deadline`. Whatever fails, the
    /// alert rustls has for it (e.g. to a client speaking plain HTTP) is sent before the error
    /// returns; the caller closes the socket.
    pub async fn accept(
        sock: TcpStream,
        config: Arc<rustls::ServerConfig>,
        deadline: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        let mut conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        conn.set_buffer_limit(Some(TLS_SEND_BYTES));
        let mut s = TlsStream {
            sock,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
        };
        match monoio::time::timeout(deadline, s.handshake()).await {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HandshakeError::Timeout),
        }
    }

    async fn handshake(&mut self) -> Result<(), HandshakeError> {
        loop {
            if self.conn.wants_write() {
                self.flush_tls().await.map_err(HandshakeError::Io)?;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            match self.read_tls().await {
                Ok(0) => return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(Failed::Io(e)) => return Err(HandshakeError::Io(e)),
                Err(Failed::Tls(e)) => return Err(HandshakeError::Tls(e)),
            }
        }
    }

    /// The TCP socket under the TLS (readiness, descriptor); never for bytes.
    pub fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    /// Whether a request's bytes may already be here without the socket being readable:
    /// plaintext rustls decrypted and nobody read yet, or ciphertext read and not processed.
    /// Called as the connection turns idle: a read buffer with nothing left in it is freed
    /// then (an idle connection holds no read buffer of ours; the next read takes a new one).
    pub fn has_pending(&mut self) -> bool {
        if self.rpos < self.rbuf.len() {
            return true;
        }
        self.rbuf = Vec::new();
        self.rpos = 0;
        matches!(self.conn.reader().fill_buf(), Ok(b) if !b.is_empty())
    }

    /// Feed rustls: what is buffered, else one socket read. `Ok(0)`: the client closed.
    async fn read_tls(&mut self) -> Result<usize, Failed> {
        if self.rpos >= self.rbuf.len() {
            self.rpos = 0;
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            if buf.capacity() < TLS_READ_BYTES {
                buf = Vec::with_capacity(TLS_READ_BYTES);
            }
            let (res, slice) = self.sock.read(buf.slice_mut(0..TLS_READ_BYTES)).await;
            self.rbuf = slice.into_inner();
            match res {
                Ok(0) => {
                    // Tell rustls the stream ended (a close without close_notify is an
                    // error when the next plaintext read finds nothing).
                    let _ = self.conn.read_tls(&mut &[][..]);
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => return Err(Failed::Io(e)),
            }
        }
        let mut fed = 0;
        while self.rpos < self.rbuf.len() {
            let mut rest = &self.rbuf[self.rpos..];
            match self.conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => {
                    self.rpos += n;
                    fed += n;
                }
                // rustls's own buffer is full: process, then feed the rest next time.
                Err(_) => break,
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert for it goes out, best effort, before the connection closes.
                let _ = self.flush_tls().await;
                return Err(Failed::Tls(e));
            }
        }
        if fed == 0 {
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush_tls().await;
                return Err(Failed::Tls(e));
            }
        }
        Ok(fed.max(1))
    }

    /// Send every record rustls has ready.
    async fn flush_tls(&mut self) -> std::io::Result<()> {
        while self.conn.wants_write() {
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            self.conn.write_tls(&mut buf)?;
            let (res, back) = self.sock.write_all(buf).await;
            self.wbuf = back;
            res?;
        }
        // A big flush does not stay allocated per connection.
        if self.wbuf.capacity() > 2 * TLS_SEND_BYTES {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// Send close_notify (best effort) and shut the socket for writing.
    pub async fn close_notify(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush_tls().await;
    }
}

enum Failed {
    Io(std::io::Error),
    Tls(rustls::Error),
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        loop {
            // SAFETY: `write_ptr` is valid for `bytes_total` bytes of the caller's buffer,
            // which we hold for the duration of this call; nothing else aliases it.
            let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
            match self.conn.reader().read(dst) {
                Ok(n) => {
                    // SAFETY: rustls wrote `n` bytes at the start of `dst`.
                    unsafe { buf.set_init(n) };
                    return (Ok(n), buf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
            match self.read_tls().await {
                Ok(0) => {
                    // Ended: rustls says whether cleanly (Ok(0)) or not (UnexpectedEof).
                    let mut empty = [0u8; 0];
                    let res = match self.conn.reader().read(&mut empty) {
                        Ok(_) => Ok(0),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
                        Err(e) => Err(e),
                    };
                    return (res, buf);
                }
                Ok(_) => {
                    // Post-handshake messages (a key update's answer, an alert) go out now.
                    if self.conn.wants_write() {
                        if let Err(e) = self.flush_tls().await {
                            return (Err(e), buf);
                        }
                    }
                }
                Err(Failed::Io(e)) => return (Err(e), buf),
                Err(Failed::Tls(e)) => {
                    return (
                        Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                        buf,
                    )
                }
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        // Not used by ringcache: the connection reads into one buffer.
        (
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "readv over TLS",
            )),
            buf,
        )
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if let Err(e) = self.flush_tls().await {
            return (Err(e), buf);
        }
        // SAFETY: `read_ptr` is valid for `bytes_init` bytes of the caller's buffer, held for
        // this call.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = match std::io::Write::write(&mut self.conn.writer(), src) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_tls().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "writev over TLS",
            )),
            buf,
        )
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.close_notify().await;
        self.sock.shutdown().await
    }
}
