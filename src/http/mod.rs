//! Our own HTTP/1.1: `parse` (pure request heads), `body` (upstream response framing),
//! `response` (the one writer to a client socket), `client` (upstream HTTP/1.1), `sendfile`
//! (page cache → socket without a copy, for large bodies).

pub mod body;
pub mod client;
pub mod parse;
pub mod response;
pub mod sendfile;
