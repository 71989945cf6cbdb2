//! Our own HTTP/1.1: `parse` (pure request heads), `body` (upstream response framing),
//! `conn` (the server connection state machine), `client` (upstream HTTP/1.1), `sendfile`
//! (page cache → socket without a copy, for large bodies).

pub mod body;
pub mod client;
pub mod conn;
pub mod parse;
pub mod sendfile;
