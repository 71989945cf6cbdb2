//! The upstream HTTP/1.1 client (used by `upstream`, and through it by fills, step 6):
//! hand-written on httparse, one per worker, with a pool of idle connections per origin,
//! plain TCP or TLS (rustls, ring provider), and a timeout on every phase: connect, response
//! head, and each body read (stall). Every body read has a cap chosen by the caller.
//!
//! A connection goes back to the pool only when its response ended exactly where its framing
//! said: nothing buffered past it, and never after an answer without a body (HEAD, 204, 304),
//! where a misbehaving peer's stray body may come late. A pooled connection that has become readable while idle
//! (the peer closed it, or sent bytes nobody asked for) is closed, not reused. Interim `1xx`
//! answers before the final one are skipped (a bounded number). The client never connects to
//! an address it is told is ringcache's own listener (a request loop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;

use super::body::{response_framing, Chunked, Framing, Step};
use super::connect::{is_listener, resolve_off_loop};
use super::pool::{Conn, Pool, Stream};
use super::sink::Sink;
use super::url::{Origin, Url};
use crate::error::{Error, Kind, OrErr, Result, Side};
use crate::limits::{self, Limits};

/// An upstream request. Headers are name/value pairs added after Host and User-Agent.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a Url,
    pub headers: &'a [(&'a str, &'a str)],
}

/// A response whose head has been read; its body is read with [`Response::chunk`] or
/// [`Response::read_capped`]. Dropping it before the body ends closes the connection.
pub struct Response {
    pub status: u16,
    /// Header names lowercased; values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    framing: Framing,
    body: BodyState,
    conn: Option<Conn>,
    /// Bytes read from the connection: `buf[pos..]` are not yet handed out (consumed by
    /// offset, so a run of tiny chunks never moves the rest of the buffer).
    buf: Vec<u8>,
    pos: usize,
    origin: Origin,
    reusable: bool,
    stall: Duration,
    pool: Option<std::rc::Rc<Pool>>,
}

enum BodyState {
    Length { left: u64 },
    Chunked(Chunked),
    Close,
    Done,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body length when the framing states it.
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Empty => Some(0),
            _ => None,
        }
    }

    /// Read the next piece of body into `out` (cleared first; at most its capacity). `None`
    /// when the body has ended, after which the connection goes back to the pool.
    pub async fn chunk(&mut self, mut out: Vec<u8>) -> Result<Option<Vec<u8>>> {
        out.clear();
        if out.capacity() == 0 {
            out.reserve(limits::CHUNK_BYTES);
        }
        self.chunk_into(out).await
    }

    /// Append body bytes to `out` (at most its `room()`, which must not be 0): what one read
    /// from upstream brought, or what was already buffered. A chunked body is decoded across
    /// as many chunks as that holds; the call returns when `out` is full, the body ends, or
    /// the buffered bytes are used up (before it would wait on upstream again). `None` when
    /// the body has ended and nothing was appended, after which the connection goes back to
    /// the pool (if nothing is left over on it).
    pub async fn chunk_into<B: Sink>(&mut self, mut out: B) -> Result<Option<B>> {
        let before = out.filled();
        loop {
            let room = out.room();
            let buffered = self.buf.len() - self.pos;
            match &mut self.body {
                BodyState::Done => {
                    if out.filled() > before {
                        return Ok(Some(out));
                    }
                    self.finish();
                    return Ok(None);
                }
                _ if room == 0 => return Ok(Some(out)),
                BodyState::Length { left } if *left == 0 => {
                    self.body = BodyState::Done;
                }
                BodyState::Length { left } => {
                    if buffered > 0 {
                        let n = (buffered as u64).min(*left).min(room as u64) as usize;
                        out.push_slice(&self.buf[self.pos..self.pos + n]);
                        self.pos += n;
                        *left -= n as u64;
                        return Ok(Some(out));
                    }
                    // Straight into `out`, never past the body: the next response's bytes
                    // stay in the socket.
                    let want = (*left).min(room as u64) as usize;
                    let left_before = *left;
                    let (n, back) = self.read_raw(out, want).await?;
                    out = back;
                    if n == 0 {
                        self.reusable = false;
                        return Err(Error::upstream(
                            Kind::BadGateway,
                            "upstream body ended short",
                        ));
                    }
                    self.body = BodyState::Length {
                        left: left_before - n as u64,
                    };
                    return Ok(Some(out));
                }
                BodyState::Chunked(_) if buffered == 0 => {
                    if out.filled() > before {
                        // Hand out what is decoded before waiting on upstream again.
                        return Ok(Some(out));
                    }
                    let mut raw = std::mem::take(&mut self.buf);
                    raw.clear();
                    self.pos = 0;
                    let (n, back) = self.read_raw(raw, limits::CHUNK_BYTES).await?;
                    self.buf = back;
                    if n == 0 {
                        self.reusable = false;
                        return Err(Error::upstream(
                            Kind::BadGateway,
                            "upstream chunked body ended short",
                        ));
                    }
                }
                BodyState::Chunked(dec) => {
                    let input = &self.buf[self.pos..];
                    // A data run longer than `out` has room for is taken again, cut to fit
                    // (the decoder's state before the step is a small copy).
                    let saved = dec.clone();
                    let mut step = dec.step(input);
                    if let Ok(Step::Data { start, end, .. }) = step {
                        if end - start > room {
                            *dec = saved;
                            step = dec.step(&input[..start + room]);
                        }
                    }
                    let step = match step {
                        Ok(s) => s,
                        Err(e) => {
                            self.reusable = false;
                            return Err(Error::upstream(
                                Kind::BadGateway,
                                "bad chunked framing from upstream",
                            )
                            .with_cause(e));
                        }
                    };
                    match step {
                        Step::Data {
                            start,
                            end,
                            consumed,
                        } => {
                            out.push_slice(&input[start..end]);
                            self.pos += consumed;
                        }
                        Step::Consumed(n) => self.pos += n,
                        Step::Done(n) => {
                            self.pos += n;
                            self.body = BodyState::Done;
                        }
                    }
                }
                BodyState::Close => {
                    if buffered > 0 {
                        let n = buffered.min(room);
                        out.push_slice(&self.buf[self.pos..self.pos + n]);
                        self.pos += n;
                        return Ok(Some(out));
                    }
                    let (n, back) = self.read_raw(out, room).await?;
                    out = back;
                    if n == 0 {
                        self.body = BodyState::Done;
                        continue;
                    }
                    return Ok(Some(out));
                }
            }
        }
    }

    /// Read the whole body into memory, refusing more than `cap` bytes.
    pub async fn read_capped(mut self, cap: u64) -> Result<Vec<u8>> {
        if let Some(n) = self.content_length() {
            if n > cap {
                return Err(Error::upstream(
                    Kind::BadGateway,
                    "upstream body over its cap",
                ));
            }
        }
        let mut body = Vec::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(piece) = self.chunk(buf).await? {
            if body.len() as u64 + piece.len() as u64 > cap {
                return Err(Error::upstream(
                    Kind::BadGateway,
                    "upstream body over its cap",
                ));
            }
            body.extend_from_slice(&piece);
            buf = piece;
        }
        Ok(body)
    }

    /// Read and drop the body (up to a small cap) so the connection can be reused.
    pub async fn discard(mut self) {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut total = 0u64;
        while let Ok(Some(piece)) = self.chunk(buf).await {
            total += piece.len() as u64;
            if total > limits::SMALL_BODY_BYTES_MAX {
                return;
            }
            buf = piece;
        }
    }

    /// Raw read from the connection, appending at most `want` bytes to `out`: a
    /// length-delimited body never pulls the next response's bytes into a buffer we hand out.
    async fn read_raw<B: Sink>(&mut self, out: B, want: usize) -> Result<(usize, B)> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::upstream(
                Kind::BadGateway,
                "upstream connection gone",
            ));
        };
        match monoio::time::timeout(self.stall, conn.stream.read_append(out, want)).await {
            Ok((Ok(n), buf)) => Ok((n, buf)),
            Ok((Err(e), _)) => {
                self.reusable = false;
                Err(Error::upstream(Kind::BadGateway, "upstream read failed").with_cause(e))
            }
            Err(_) => {
                self.reusable = false;
                Err(Error::upstream(Kind::BadGateway, "upstream body stalled"))
            }
        }
    }

    /// The body has ended: the connection goes back to the pool if it may carry another
    /// request — nothing left over past the body (bytes there would be read as the next
    /// request's answer), and neither side asked to close. Otherwise it is closed.
    fn finish(&mut self) {
        debug_assert!(matches!(self.body, BodyState::Done));
        if let (true, Some(mut conn), Some(pool)) =
            (self.reusable, self.conn.take(), self.pool.take())
        {
            if self.pos == self.buf.len() {
                conn.idle_since = Instant::now();
                pool.put(self.origin.clone(), conn);
            }
        }
    }
}

impl Drop for Response {
    /// A response whose body has ended (an empty one: `Content-Length: 0`) returns its
    /// connection to the pool even if nobody asked for the end of it.
    fn drop(&mut self) {
        if matches!(self.body, BodyState::Done) {
            self.finish();
        }
    }
}

/// Addresses a host resolved to, and when.
type Resolved = (Vec<SocketAddr>, Instant);

/// The per-worker upstream HTTP client.
pub struct Client {
    pool: std::rc::Rc<Pool>,
    tls: RefCell<TlsConnector>,
    dns: RefCell<HashMap<(String, u16), Resolved>>,
    limits: RefCell<Limits>,
    /// Addresses never to connect to: ringcache's own listeners (a request sent there would
    /// come back to us, and again: a loop).
    refused: RefCell<Vec<SocketAddr>>,
}

impl Client {
    pub fn new(tls: Arc<rustls::ClientConfig>, limits: Limits) -> Client {
        Client {
            pool: Default::default(),
            tls: RefCell::new(TlsConnector::from(tls)),
            dns: RefCell::new(HashMap::new()),
            limits: RefCell::new(limits),
            refused: RefCell::new(Vec::new()),
        }
    }

    /// Never connect to these listen addresses (an unspecified IP, `0.0.0.0` or `::`, stands
    /// for every local address on its port).
    pub fn refuse(&self, listeners: Vec<SocketAddr>) {
        *self.refused.borrow_mut() = listeners;
    }

    /// Trust new roots (a CA file reloaded) from the next connection on; pooled connections,
    /// verified under the old roots, stay until they close.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.tls.borrow_mut() = TlsConnector::from(tls);
    }

    /// Use new limits (after a reload) from the next request on.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.borrow_mut() = limits;
    }

    /// Send one request and read the response head. A pooled connection that turns out to be
    /// dead before any response byte is replaced by a fresh one, once (GET and HEAD are
    /// idempotent).
    pub async fn send(&self, req: &Request<'_>) -> Result<Response> {
        let origin = &req.url.origin;
        if let Some(conn) = self.pool.take(origin) {
            match self.exchange(conn, req).await {
                Ok(resp) => return Ok(resp),
                Err((false, _)) => {} // nothing came back: the pooled connection was stale
                Err((true, e)) => return Err(e),
            }
        }
        let conn = self.connect(origin).await?;
        self.exchange(conn, req).await.map_err(|(_, e)| e)
    }

    /// Write the request and read the response head. The error says whether any response
    /// byte had arrived (if not, a retry on a fresh connection is safe).
    async fn exchange(
        &self,
        mut conn: Conn,
        req: &Request<'_>,
    ) -> std::result::Result<Response, (bool, Error)> {
        // Copied out: no RefCell borrow may live across an await (a reload could come).
        let header_timeout = self.limits.borrow().upstream_header_timeout;
        let body_stall = self.limits.borrow().upstream_body_stall;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringcache/{}\r\n",
            req.method,
            req.url.path,
            req.url.origin.authority(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in req.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        if let Err(e) = conn.stream.write_all(head.into_bytes()).await {
            return Err((
                false,
                Error::upstream(Kind::Unavailable, "upstream write failed").with_cause(e),
            ));
        }
        let is_head = req.method == "HEAD";
        let read_head = async {
            let mut buf = Vec::with_capacity(16 * 1024);
            // Interim (1xx) answers skipped so far, and where the unparsed bytes start.
            let mut interim = 0;
            let mut at = 0;
            loop {
                // Parse what is buffered first: an interim answer and the final one often
                // come in one read.
                if buf.len() > at {
                    let mut slots = [httparse::EMPTY_HEADER; limits::UPSTREAM_HEADERS_MAX];
                    let mut resp = httparse::Response::new(&mut slots);
                    match resp.parse(&buf[at..]) {
                        Ok(httparse::Status::Partial) => {}
                        Ok(httparse::Status::Complete(len)) => {
                            let status = resp.code.unwrap_or(0);
                            if status == 101 {
                                return Err((
                                    true,
                                    Error::upstream(
                                        Kind::BadGateway,
                                        "upstream switched protocols unasked",
                                    ),
                                ));
                            }
                            if (100..200).contains(&status) {
                                // An interim answer (100 Continue, 103 Early Hints): the
                                // final one follows (RFC 9110 §15.2).
                                interim += 1;
                                if interim > limits::UPSTREAM_INTERIM_MAX {
                                    return Err((
                                        true,
                                        Error::upstream(
                                            Kind::BadGateway,
                                            "too many interim responses from upstream",
                                        ),
                                    ));
                                }
                                at += len;
                                continue;
                            }
                            let framing =
                                response_framing(status, is_head, resp.headers).map_err(|e| {
                                    (
                                        true,
                                        Error::upstream(
                                            Kind::BadGateway,
                                            "bad framing from upstream",
                                        )
                                        .with_cause(format!("{e:?}")),
                                    )
                                })?;
                            let mut close = resp.version == Some(0);
                            let mut headers = Vec::with_capacity(resp.headers.len());
                            for h in resp.headers.iter() {
                                let name = h.name.to_ascii_lowercase();
                                let value =
                                    String::from_utf8_lossy(h.value.trim_ascii()).into_owned();
                                if name == "connection"
                                    && value.to_ascii_lowercase().contains("close")
                                {
                                    close = true;
                                }
                                headers.push((name, value));
                            }
                            return Ok((status, headers, framing, close, buf, at + len));
                        }
                        Err(httparse::Error::TooManyHeaders) => {
                            return Err((
                                true,
                                Error::upstream(Kind::BadGateway, "too many headers from upstream"),
                            ));
                        }
                        Err(e) => {
                            return Err((
                                true,
                                Error::upstream(
                                    Kind::BadGateway,
                                    "malformed response head from upstream",
                                )
                                .with_cause(e),
                            ));
                        }
                    }
                }
                if at > 0 {
                    // Drop the interim answers before reading on (once per read, not per
                    // answer).
                    buf.drain(..at);
                    at = 0;
                }
                if buf.len() >= limits::UPSTREAM_HEAD_BYTES_MAX {
                    return Err((
                        true,
                        Error::upstream(Kind::BadGateway, "upstream response head too large"),
                    ));
                }
                let want = (16 * 1024).min(limits::UPSTREAM_HEAD_BYTES_MAX - buf.len());
                let (res, back) = conn.stream.read_append(buf, want).await;
                buf = back;
                let answered = !buf.is_empty() || interim > 0;
                match res {
                    Ok(0) => {
                        return Err((
                            answered,
                            Error::upstream(Kind::Unavailable, "upstream closed the connection"),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err((
                            answered,
                            Error::upstream(Kind::Unavailable, "upstream read failed")
                                .with_cause(e),
                        ));
                    }
                }
            }
        };
        let (status, headers, framing, close, buf, pos) =
            match monoio::time::timeout(header_timeout, read_head).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err((
                        true,
                        Error::upstream(Kind::Unavailable, "upstream response head timed out"),
                    ))
                }
            };
        let body = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length { left: n },
            Framing::Chunked => BodyState::Chunked(Chunked::new()),
            Framing::Close => BodyState::Close,
        };
        Ok(Response {
            status,
            headers,
            framing,
            body,
            conn: Some(conn),
            buf,
            pos,
            origin: req.url.origin.clone(),
            // After an answer that has no body (HEAD, 204, 304) the connection is closed: a
            // peer that sends a body there anyway (a framing confusion) may send it late, past
            // any check before reuse, where it would be read as the next request's answer.
            reusable: !close && !matches!(framing, Framing::Close | Framing::Empty),
            stall: body_stall,
            pool: Some(self.pool.clone()),
        })
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn> {
        let connect_timeout = self.limits.borrow().upstream_connect_timeout;
        let addrs = self.resolve(origin).await?;
        if addrs
            .iter()
            .any(|a| is_listener(*a, &self.refused.borrow()))
        {
            return Err(Error::upstream(
                Kind::BadGateway,
                "upstream address is one of ringcache's own listeners (a request loop)",
            ));
        }
        let mut last_err = None;
        for addr in addrs {
            match monoio::time::timeout(connect_timeout, TcpStream::connect_addr(addr)).await {
                Ok(Ok(tcp)) => {
                    // Without NODELAY a TLS handshake waits on delayed ACKs (~40 ms each).
                    let _ = tcp.set_nodelay(true);
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
                    let stream = if origin.tls {
                        let name = rustls_pki_types::ServerName::try_from(origin.host.clone())
                            .or_err(Kind::Unavailable, Side::Upstream, "bad upstream host name")?;
                        let tls = monoio::time::timeout(connect_timeout, {
                            let tls = self.tls.borrow().clone();
                            async move { tls.connect(name, tcp).await }
                        })
                        .await
                        .map_err(|_| {
                            Error::upstream(Kind::Unavailable, "upstream TLS handshake timed out")
                        })?
                        .map_err(std::io::Error::from)
                        .or_err(
                            Kind::Unavailable,
                            Side::Upstream,
                            "upstream TLS handshake failed",
                        )?;
                        Stream::Tls(Box::new(tls))
                    } else {
                        Stream::Plain(tcp)
                    };
                    return Ok(Conn {
                        stream,
                        idle_since: Instant::now(),
                        fd,
                    });
                }
                Ok(Err(e)) => {
                    last_err = Some(
                        Error::upstream(Kind::Unavailable, "upstream connect failed").with_cause(e),
                    )
                }
                Err(_) => {
                    last_err = Some(Error::upstream(
                        Kind::Unavailable,
                        "upstream connect timed out",
                    ))
                }
            }
        }
        Err(last_err
            .unwrap_or_else(|| Error::upstream(Kind::Unavailable, "upstream host has no address")))
    }

    /// Resolve a host, off the event loop (getaddrinfo blocks), cached for `DNS_TTL`.
    async fn resolve(&self, origin: &Origin) -> Result<Vec<SocketAddr>> {
        if let Ok(ip) = origin.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, origin.port)]);
        }
        let key = (origin.host.clone(), origin.port);
        if let Some((addrs, at)) = self.dns.borrow().get(&key) {
            if at.elapsed() < limits::DNS_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = resolve_off_loop(key.0.clone(), key.1).await?;
        self.dns
            .borrow_mut()
            .insert(key, (addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canned upstream on loopback: answers each request read with the next of `answers`.
    fn canned(answers: Vec<&'static [u8]>) -> SocketAddr {
        use std::io::{BufRead, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = std::io::BufReader::new(s);
            for answer in answers {
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                w.write_all(answer).unwrap();
            }
        });
        addr
    }

    fn client() -> Client {
        let roots = rustls::RootCertStore::empty();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client::new(Arc::new(tls), Limits::default())
    }

    /// Interim answers and the final one in one read; a chunked body handed out across chunk
    /// boundaries, a data run cut to the room there is; the connection reused after it.
    #[test]
    fn interim_answers_and_chunks_across_reads_and_room() {
        let addr = canned(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n5\r\ndefgh\r\n1\r\ni\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]);
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = client();
            let url = Url::parse(&format!("http://{addr}/x")).unwrap();
            let req = Request {
                method: "GET",
                url: &url,
                headers: &[],
            };
            let mut resp = c.send(&req).await.unwrap();
            assert_eq!(resp.status, 200);
            let mut pieces = Vec::new();
            loop {
                // Room for 4 bytes: a data run longer than that is cut, a full sink handed back.
                let out = Vec::with_capacity(4);
                let room = out.capacity();
                match resp.chunk_into(out).await.unwrap() {
                    Some(p) => {
                        assert!(!p.is_empty() && p.len() <= room, "{p:?}");
                        pieces.push(p);
                    }
                    None => break,
                }
            }
            assert_eq!(pieces.concat(), b"abcdefghi");
            if pieces[0].capacity() == 4 {
                // Filled across chunks: "abcd", "efgh", "i".
                assert_eq!(pieces.len(), 3, "{pieces:?}");
            }
            drop(resp);
            // The same connection carries the next request.
            let resp = c.send(&req).await.unwrap();
            assert_eq!(resp.read_capped(10).await.unwrap(), b"ok");
        });
    }

    /// Bytes past a body: the connection is not reused (a fresh one answers the next
    /// request).
    #[test]
    fn bytes_past_a_body_retire_the_connection() {
        let addr = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        ]);
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = client();
            let url = Url::parse(&format!("http://{addr}/x")).unwrap();
            let req = Request {
                method: "GET",
                url: &url,
                headers: &[],
            };
            let resp = c.send(&req).await.unwrap();
            assert_eq!(resp.read_capped(10).await.unwrap(), b"ok");
            assert!(
                c.pool.take(&url.origin).is_none(),
                "not pooled with JUNK after it"
            );
        });
    }
}
