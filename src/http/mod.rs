//! Our own HTTP/1.1: `parse` (pure request heads), `body` (upstream response framing),
//! `response` (the one writer to a client socket), `client` (upstream HTTP/1.1: the
//! exchange), `pool` (upstream connections, idle ones per origin), `connect` (resolving off the loop, TLS
//! roots, never dialling our own listeners), `url` (upstream [`url::Url`]
//! and [`url::Origin`]), `sink` (where upstream body bytes land), `sendfile` (page cache →
//! socket without a copy, for large bodies), `socket` (a client's socket: plain or TLS),
//! `proxyproto` (the PROXY protocol header a load balancer sends before the first request).

pub mod body;
pub mod client;
pub mod connect;
pub mod parse;
pub mod pool;
pub mod proxyproto;
pub mod response;
pub mod sendfile;
pub mod sink;
pub mod socket;
pub mod url;
