//! A client connection's socket: plain TCP, or TLS ([`crate::tls::TlsStream`]). An enum, not a
//! trait object: a plain connection pays one predictable branch per read or write and no
//! allocation, and only plain sockets offer a descriptor to `sendfile` ([`Socket::plain`]).

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::tls::TlsStream;

pub enum Socket {
    Plain(TcpStream),
    /// Boxed: a TLS connection's state is a few KiB and would otherwise size every plain one.
    Tls(Box<TlsStream>),
}

impl Socket {
    /// The TCP socket: readiness, the descriptor, addresses. Bytes go through the `Socket`.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(s) => s,
            Socket::Tls(t) => t.tcp(),
        }
    }

    /// The plain socket, for sendfile; `None` over TLS (bytes must be encrypted).
    pub fn plain(&self) -> Option<&TcpStream> {
        match self {
            Socket::Plain(s) => Some(s),
            Socket::Tls(_) => None,
        }
    }

    /// Whether the next request may already be read without the socket turning readable
    /// (TLS: bytes already taken off the socket and not yet read).
    pub fn has_pending(&mut self) -> bool {
        match self {
            Socket::Plain(_) => false,
            Socket::Tls(t) => t.has_pending(),
        }
    }
}

impl AsyncReadRent for Socket {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Socket::Plain(s) => s.read(buf).await,
            Socket::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Socket::Plain(s) => s.readv(buf).await,
            Socket::Tls(t) => t.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Socket {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Socket::Plain(s) => s.write(buf).await,
            Socket::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Socket::Plain(s) => s.writev(buf).await,
            Socket::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Plain(s) => s.flush().await,
            Socket::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Plain(s) => s.shutdown().await,
            Socket::Tls(t) => t.shutdown().await,
        }
    }
}
