//! Data path step 2: pure request-head parsing. `&[u8]` in; `Partial` (read more) or a
//! [`Head`] whose fields are offsets into the caller's buffer out. No IO, no allocation.
//!
//! httparse only tokenizes; the framing rules of RFC 9112 are enforced here, strictly:
//! - line ends are CRLF; a bare LF is refused (RFC 9112 §2.2 allows a recipient to accept it;
//!   we do not, because lenient line parsing is how request smuggling starts);
//! - Content-Length and Transfer-Encoding together are refused (§6.3 ¶3);
//! - a duplicate or malformed Content-Length is refused (§6.3 ¶5);
//! - HTTP/1.1 requires exactly one Host (RFC 9112 §3.2);
//! - GET and HEAD carry no body here (a read-only registry never needs one).
//!
//! Every rule breach is an error after which the connection is closed.

use crate::error::{Error, Kind};
use crate::limits::Limits;

/// A byte range `[start, end)` of the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// The span as text; request heads are ASCII after httparse's token checks.
    pub fn str<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.of(buf)).unwrap_or("")
    }

    fn within(buf: &[u8], s: &[u8]) -> Span {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + s.len()) as u32,
        }
    }
}

/// Up to this many Accept headers are kept (clients send one or a few).
pub const ACCEPT_MAX: usize = 8;
/// Up to this many Via headers are kept: the first ones and the last (proxies append to one
/// line; the loop check looks for ringcache's own entry).
pub const VIA_MAX: usize = 4;

/// What the `Connection` header asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOpt {
    Default,
    Close,
    KeepAlive,
}

/// A parsed request head. Spans point into the buffer that was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes the head occupies; the next request (pipelining) starts here.
    pub len: usize,
    pub method: Span,
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub connection: ConnectionOpt,
    pub accept: [Span; ACCEPT_MAX],
    pub accept_count: usize,
    pub range: Option<Span>,
    /// `Via` header values (RFC 9110 §7.6.3), in order; past [`VIA_MAX`] the last one
    /// replaces the last kept.
    pub via: [Span; VIA_MAX],
    pub via_count: usize,
    /// The request declares a body (Content-Length > 0 or Transfer-Encoding).
    pub has_body: bool,
}

impl Head {
    /// Whether the connection stays open after this request (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        match (self.minor_version, self.connection) {
            (_, ConnectionOpt::Close) => false,
            (0, ConnectionOpt::KeepAlive) => true,
            (0, _) => false,
            _ => true,
        }
    }

    pub fn accepts<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = &'a str> + 'a {
        self.accept[..self.accept_count]
            .iter()
            .map(move |s| s.str(buf))
    }

    pub fn vias<'a>(&'a self, buf: &'a [u8]) -> impl Iterator<Item = &'a str> + 'a {
        self.via[..self.via_count].iter().map(move |s| s.str(buf))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet: read more (unless the buffer is at its limit).
    Partial,
    Complete(Head),
}

/// Parse a request head from `buf`. `slots` bounds the header count (its length is the limit).
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &Limits,
    slots: &mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Parsed, Error> {
    let bad = |context| Error::client(Kind::BadRequest, context);
    let too_large = |context| Error::client(Kind::HeadTooLarge, context);
    // One pass over the line structure: bare LF, line lengths, head length.
    let mut line_start = 0;
    let mut head_end = None;
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(bad("bare LF in request head"));
        }
        let line_len = i + 1 - line_start;
        let cap = if line_start == 0 {
            limits.request_line_bytes_max
        } else {
            limits.header_line_bytes_max
        };
        if line_len > cap + 2 {
            return Err(too_large(if line_start == 0 {
                "request line too long"
            } else {
                "header line too long"
            }));
        }
        if line_len == 2 && line_start > 0 {
            head_end = Some(i + 1);
            break;
        }
        line_start = i + 1;
    }
    match head_end {
        Some(end) if end > limits.head_bytes_max => {
            return Err(too_large("request head too large"))
        }
        None => {
            let pending = buf.len() - line_start;
            let cap = if line_start == 0 {
                limits.request_line_bytes_max
            } else {
                limits.header_line_bytes_max
            };
            if pending > cap + 1 {
                return Err(too_large(if line_start == 0 {
                    "request line too long"
                } else {
                    "header line too long"
                }));
            }
            if buf.len() >= limits.head_bytes_max {
                return Err(too_large("request head too large"));
            }
            return Ok(Parsed::Partial);
        }
        Some(_) => {}
    }
    // Uninitialised slots: initialising a large slot array on every request showed up in the
    // profile; httparse writes only the slots it uses.
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large("too many headers")),
        Err(_) => return Err(bad("malformed request head")),
    };
    let method = req.method.ok_or_else(|| bad("no method"))?;
    let target = req.path.ok_or_else(|| bad("no request target"))?;
    let minor_version = req.version.ok_or_else(|| bad("no version"))?;
    if !target.starts_with('/') {
        return Err(bad("request target must be origin-form"));
    }
    let mut head = Head {
        len,
        method: Span::within(buf, method.as_bytes()),
        target: Span::within(buf, target.as_bytes()),
        minor_version,
        connection: ConnectionOpt::Default,
        accept: [Span::default(); ACCEPT_MAX],
        accept_count: 0,
        range: None,
        via: [Span::default(); VIA_MAX],
        via_count: 0,
        has_body: false,
    };
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(bad("duplicate Content-Length"));
            }
            content_length =
                Some(parse_content_length(h.value).ok_or_else(|| bad("invalid Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.connection = ConnectionOpt::Close;
                } else if token.eq_ignore_ascii_case(b"keep-alive")
                    && head.connection != ConnectionOpt::Close
                {
                    head.connection = ConnectionOpt::KeepAlive;
                }
            }
        } else if name.eq_ignore_ascii_case("accept") {
            if head.accept_count < ACCEPT_MAX {
                head.accept[head.accept_count] = Span::within(buf, h.value);
                head.accept_count += 1;
            }
        } else if name.eq_ignore_ascii_case("range") {
            if head.range.is_some() {
                return Err(bad("duplicate Range"));
            }
            head.range = Some(Span::within(buf, h.value));
        } else if name.eq_ignore_ascii_case("via") {
            let i = head.via_count.min(VIA_MAX - 1);
            head.via[i] = Span::within(buf, h.value);
            head.via_count = i + 1;
        }
    }
    if content_length.is_some() && transfer_encoding {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if minor_version == 1 && hosts != 1 {
        return Err(bad(if hosts == 0 {
            "missing Host"
        } else {
            "duplicate Host"
        }));
    }
    if hosts > 1 {
        return Err(bad("duplicate Host"));
    }
    head.has_body = transfer_encoding || content_length.unwrap_or(0) > 0;
    if head.has_body && (method == "GET" || method == "HEAD") {
        return Err(bad("body on GET or HEAD"));
    }
    Ok(Parsed::Complete(head))
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. No sign, no spaces inside, no list.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A byte range requested with `Range: bytes=...` (a single range; RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=first-` or `bytes=first-last`
    From { first: u64, last: Option<u64> },
    /// `bytes=-suffix`
    Suffix(u64),
}

/// The outcome of applying a Range header to a body of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeResult {
    /// No usable Range: send the whole body with 200 (also for multi-range and other units,
    /// which RFC 9110 lets a server ignore).
    Full,
    /// Send `[start, end]` (inclusive) with 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

pub fn parse_range(v: &[u8]) -> Option<RangeSpec> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        return Some(RangeSpec::Suffix(num(b)?));
    }
    let first = num(a)?;
    let last = if b.is_empty() { None } else { Some(num(b)?) };
    if let Some(last) = last {
        if last < first {
            return None;
        }
    }
    Some(RangeSpec::From { first, last })
}

/// Resolve a parsed Range against a body of `size` bytes.
pub fn resolve_range(spec: Option<RangeSpec>, size: u64) -> RangeResult {
    let Some(spec) = spec else {
        return RangeResult::Full;
    };
    match spec {
        RangeSpec::From { first, .. } if first >= size => RangeResult::Unsatisfiable,
        RangeSpec::From { first, last } => {
            let end = last.map_or(size - 1, |l| l.min(size - 1));
            RangeResult::Partial { start: first, end }
        }
        RangeSpec::Suffix(0) => RangeResult::Unsatisfiable,
        RangeSpec::Suffix(_) if size == 0 => RangeResult::Unsatisfiable,
        RangeSpec::Suffix(n) => RangeResult::Partial {
            start: size.saturating_sub(n),
            end: size - 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Parsed, Kind> {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; 100];
        parse_request(input.as_bytes(), &Limits::default(), &mut slots).map_err(|e| e.kind)
    }

    fn complete(input: &str) -> Head {
        match parse(input) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_table() {
        use Kind::*;
        let big_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let big_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        let many = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X: y\r\n".repeat(100)
        );
        let huge_head = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            format!("X: {}\r\n", "a".repeat(8000)).repeat(5)
        );
        let cases: Vec<(&str, Result<(), Kind>)> = vec![
            ("GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
            ("GET /v2/ HTTP/1.0\r\n\r\n", Ok(())),
            ("GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Ok(())),
            ("GET /v2/ HTTP/1.1\nHost: a\r\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/1.1\r\nHost: a\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/1.1\r\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Err(BadRequest)),
            ("HEAD /v2/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Err(BadRequest)),
            ("PUT /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Err(BadRequest)),
            ("PUT /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", Err(BadRequest)),
            ("PUT /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", Err(BadRequest)),
            ("PUT /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", Err(BadRequest)),
            ("PUT /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n", Ok(())),
            ("GET http://x/v2/ HTTP/1.1\r\nHost: a\r\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/2.0\r\nHost: a\r\n\r\n", Err(BadRequest)),
            ("GET  /v2/ HTTP/1.1\r\nHost: a\r\n\r\n", Err(BadRequest)),
            ("GET /v2/ HTTP/1.1\r\nHost : a\r\n\r\n", Err(BadRequest)),
            (&big_header, Err(HeadTooLarge)),
            (&big_line, Err(HeadTooLarge)),
            (&many, Err(HeadTooLarge)),
            (&huge_head, Err(HeadTooLarge)),
        ];
        for (input, want) in cases {
            let got =
                parse(input).map(|p| assert!(matches!(p, Parsed::Complete(_)), "{input:?}: {p:?}"));
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn partial_heads() {
        for input in [
            "",
            "GET",
            "GET / HTTP/1.1\r",
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r",
        ] {
            assert_eq!(parse(input), Ok(Parsed::Partial), "{input:?}");
        }
        // A partial head already over a limit is refused without waiting for more.
        let long = format!("GET /{}", "a".repeat(9000));
        assert_eq!(parse(&long), Err(Kind::HeadTooLarge));
    }

    #[test]
    fn fields_and_pipelining() {
        let two = "GET /a HTTP/1.1\r\nHost: x\r\nAccept: a/b\r\naccept: c/d\r\nRange: bytes=0-1\r\n\r\nGET /b HTTP/1.1\r\n";
        let h = complete(two);
        let buf = two.as_bytes();
        assert_eq!(h.method.str(buf), "GET");
        assert_eq!(h.target.str(buf), "/a");
        assert_eq!(h.accepts(buf).collect::<Vec<_>>(), ["a/b", "c/d"]);
        assert_eq!(h.range.unwrap().str(buf), "bytes=0-1");
        assert!(two[h.len..].starts_with("GET /b"));
    }

    #[test]
    fn via_headers_kept_first_and_last() {
        let one = "GET / HTTP/1.1\r\nHost: x\r\nVia: 1.1 a, 1.1 b\r\n\r\n";
        let h = complete(one);
        assert_eq!(h.vias(one.as_bytes()).collect::<Vec<_>>(), ["1.1 a, 1.1 b"]);
        let many = "GET / HTTP/1.1\r\nHost: x\r\nvia: 1\r\nVia: 2\r\nVia: 3\r\nVia: 4\r\nVia: 5\r\nVia: 6\r\n\r\n";
        let h = complete(many);
        assert_eq!(
            h.vias(many.as_bytes()).collect::<Vec<_>>(),
            ["1", "2", "3", "6"]
        );
        assert_eq!(complete("GET / HTTP/1.1\r\nHost: x\r\n\r\n").via_count, 0);
    }

    #[test]
    fn keep_alive_rules() {
        let cases = [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ];
        for (input, want) in cases {
            assert_eq!(complete(input).keep_alive(), want, "{input:?}");
        }
    }

    #[test]
    fn ranges() {
        use RangeResult::*;
        let cases: &[(&str, u64, RangeResult)] = &[
            ("bytes=0-9", 100, Partial { start: 0, end: 9 }),
            ("bytes=90-", 100, Partial { start: 90, end: 99 }),
            ("bytes=90-200", 100, Partial { start: 90, end: 99 }),
            ("bytes=-10", 100, Partial { start: 90, end: 99 }),
            ("bytes=-200", 100, Partial { start: 0, end: 99 }),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=5-1", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=a-b", 100, Full),
        ];
        for (v, size, want) in cases {
            assert_eq!(
                resolve_range(parse_range(v.as_bytes()), *size),
                *want,
                "{v}"
            );
        }
        assert_eq!(resolve_range(None, 10), Full);
    }
}
