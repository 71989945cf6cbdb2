//! Data path step 2: pure request-head parsing. `&[u8]` in; `Partial` (read more) or a
//! [`Head`] whose fields are offsets into the caller's buffer out. No IO, no allocation.
//!
//! httparse only tokenizes; the framing rules of RFC 9112 are enforced here, strictly:
//! - line ends are CRLF; a bare LF is refused (RFC 9112 §2.2 allows a recipient to accept it;
//!   we do not, because lenient line parsing is how request smuggling starts);
//! - Content-Length and Transfer-Encoding together are refused (§6.3 ¶3);
//! - a duplicate or malformed Content-Length is refused (§6.3 ¶5);
//! - HTTP/1.1 requires exactly one Host (RFC 9112 §3.2);
//! - GET and HEAD carry no body here (a read-only registry never needs one);
//! - a request line past its limit is 414 URI Too Long; a header line, the header count or the
//!   whole head past its limit is 431 (RFC 6585 §5).
//!
//! Every rule breach is an error after which the connection is closed.

use crate::error::{Error, Kind};
use crate::limits::Limits;

pub use crate::limits::ACCEPT_MAX;
pub use crate::limits::VIA_MAX;

/// A byte range `[start, end)` of the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes of the span; empty if `buf` is not (or no longer) the buffer it came from.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The span as text, or `""` if it is not UTF-8 (httparse lets bytes past ASCII through
    /// in the target and in header values).
    pub fn str<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.of(buf)).unwrap_or("")
    }

    /// `s` is a subslice of `buf` (httparse returns slices of its input), and `buf` is at most
    /// `u32::MAX` bytes ([`parse_request`] refuses longer): the offsets fit.
    fn within(buf: &[u8], s: &[u8]) -> Span {
        let start = (s.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Span {
            start: start as u32,
            end: start.saturating_add(s.len()) as u32,
        }
    }
}

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
        // `accept_count` never passes ACCEPT_MAX (the parser stops counting there).
        self.accept[..self.accept_count.min(ACCEPT_MAX)]
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
    // The cap on the line starting at `line_start`, and the error past it: the request line
    // can only grow by its target, so a long one is 414 URI Too Long (RFC 9110 §15.5.15); a
    // long header line is 431 (RFC 6585 §5).
    let line_cap = |is_request_line: bool| {
        if is_request_line {
            (
                limits.request_line_bytes_max,
                Error::client(Kind::UriTooLong, "request line too long"),
            )
        } else {
            (
                limits.header_line_bytes_max,
                too_large("header line too long"),
            )
        }
    };
    // Spans are u32 offsets: a head past 4 GiB is too large whatever the configured limit.
    if buf.len() > u32::MAX as usize {
        return Err(too_large("request head too large"));
    }
    // One pass over the line structure: bare LF, line lengths, head length. Empty lines before
    // the request line are skipped, as httparse skips them (RFC 9112 §2.2): the head ends at
    // the first empty line after it, and the request line is the first line that is not empty.
    let mut line_start = 0;
    let mut request_line = None;
    let mut head_end = None;
    let line_cap = |line_start: usize, request_line: Option<usize>| {
        line_cap(request_line.is_none_or(|r| r == line_start))
    };
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        // `i - 1` is in bounds: `i > 0` is checked first.
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(bad("bare LF in request head"));
        }
        // `line_start` is at most `i`: it is one past an earlier LF.
        let line_len = i + 1 - line_start;
        if line_len == 2 {
            if request_line.is_some() {
                head_end = Some(i + 1);
                break;
            }
        } else {
            request_line.get_or_insert(line_start);
            let (cap, past) = line_cap(line_start, request_line);
            if line_len > cap.saturating_add(2) {
                return Err(past);
            }
        }
        line_start = i + 1;
    }
    let head_end = match head_end {
        Some(end) if end > limits.head_bytes_max => {
            return Err(too_large("request head too large"))
        }
        None => {
            // `line_start` is at most `buf.len()`: it is one past a byte of `buf`.
            let pending = buf.len() - line_start;
            let (cap, past) = line_cap(line_start, request_line);
            if pending > cap.saturating_add(1) {
                return Err(past);
            }
            if buf.len() >= limits.head_bytes_max {
                return Err(too_large("request head too large"));
            }
            return Ok(Parsed::Partial);
        }
        Some(end) => end,
    };
    // Uninitialised slots: initialising a large slot array on every request showed up in the
    // profile; httparse writes only the slots it uses.
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large("too many headers")),
        Err(_) => return Err(bad("malformed request head")),
    };
    // Pair assertion: httparse and the line scan above agree on where the head ends, so every
    // byte of it was checked for bare LFs and line lengths.
    if len != head_end {
        return Err(bad("ambiguous request head"));
    }
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
    // No range of an empty body is satisfiable (RFC 9110 §14.1.1).
    let Some(last_byte) = size.checked_sub(1) else {
        return RangeResult::Unsatisfiable;
    };
    match spec {
        RangeSpec::From { first, .. } if first > last_byte => RangeResult::Unsatisfiable,
        RangeSpec::From { first, last } => RangeResult::Partial {
            start: first,
            end: last.map_or(last_byte, |l| l.min(last_byte)),
        },
        RangeSpec::Suffix(0) => RangeResult::Unsatisfiable,
        RangeSpec::Suffix(n) => RangeResult::Partial {
            start: size.saturating_sub(n),
            end: last_byte,
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
            // Leading empty lines are skipped; the head still ends at the first empty line
            // after the request line, and a bare LF past them is still refused.
            ("\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n", Ok(())),
            ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\n", Err(BadRequest)),
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
            (&big_line, Err(UriTooLong)),
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
        assert_eq!(parse(&long), Err(Kind::UriTooLong));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
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

    use proptest::prelude::*;

    /// Heads to start from: valid, with and without bodies, pipelined.
    const HEADS: &[&str] = &[
        "GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "HEAD /v2/a/manifests/latest HTTP/1.1\r\nHost: a\r\nAccept: x/y\r\nRange: bytes=0-1\r\n\r\n",
        "GET /v2/ HTTP/1.0\r\n\r\n",
        "PUT /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
        "POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /v2/ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ];

    /// Header lines that bear on framing, in spellings smugglers use.
    const LINES: &[&str] = &[
        "Content-Length: 0",
        "Content-Length: 5",
        "content-length: 5",
        "Content-Length:  5 ",
        "Content-Length: 05",
        "Content-Length: 5, 5",
        "Content-Length: +5",
        "Content-Length: 18446744073709551616",
        "Content-Length : 5",
        "Content-Length\t: 5",
        " Content-Length: 5",
        "\tContent-Length: 5",
        "Transfer-Encoding: chunked",
        "transfer-encoding: identity",
        "Transfer-Encoding:",
        "Transfer-Encoding : chunked",
        " Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked\rX: y",
        "Host: b",
        "host:b",
        " Host: b",
        "Connection: close",
        "Range: bytes=0-",
        "Range: bytes=1-2",
        "Accept: */*",
        "X: \u{e9}",
        "X:",
        ":",
        "",
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Line(usize, prop::sample::Index),
        Byte(u8, prop::sample::Index),
        Delete(prop::sample::Index),
        Replace(u8, prop::sample::Index),
        Repeat(prop::sample::Index, prop::sample::Index),
        Cut(prop::sample::Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        use prop::sample::Index;
        let byte = prop_oneof![
            prop::sample::select(b"\r\n :\t,\x00\x7f\x80\xff0A".to_vec()),
            any::<u8>()
        ];
        prop_oneof![
            6 => (0..LINES.len(), any::<Index>()).prop_map(|(l, at)| Edit::Line(l, at)),
            2 => (byte.clone(), any::<Index>()).prop_map(|(b, at)| Edit::Byte(b, at)),
            1 => any::<Index>().prop_map(Edit::Delete),
            2 => (byte, any::<Index>()).prop_map(|(b, at)| Edit::Replace(b, at)),
            1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Repeat(a, b)),
            1 => any::<Index>().prop_map(Edit::Cut),
        ]
    }

    /// Line starts of `buf`: 0, then just past each LF.
    fn line_starts(buf: &[u8]) -> Vec<usize> {
        let after_lf = buf.iter().enumerate().filter(|(_, b)| **b == b'\n');
        std::iter::once(0)
            .chain(after_lf.map(|(i, _)| i + 1))
            .collect()
    }

    fn apply(mut buf: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            match e {
                Edit::Line(l, at) => {
                    // A whole header line, inserted at a line start after the request line
                    // and before the last (the end of a whole head).
                    let starts = line_starts(&buf);
                    let at = match starts.len() {
                        0 | 1 => buf.len(),
                        2 => starts[1],
                        n => starts[1 + at.index(n - 2)],
                    };
                    let line = format!("{}\r\n", LINES[*l]);
                    buf.splice(at..at, line.bytes());
                }
                Edit::Byte(b, at) => {
                    let at = at.index(buf.len() + 1);
                    buf.insert(at, *b);
                }
                Edit::Delete(at) if !buf.is_empty() => {
                    let at = at.index(buf.len());
                    buf.remove(at);
                }
                Edit::Replace(b, at) if !buf.is_empty() => {
                    let at = at.index(buf.len());
                    buf[at] = *b;
                }
                Edit::Repeat(a, b) if !buf.is_empty() => {
                    let (a, b) = (a.index(buf.len()), b.index(buf.len()));
                    let piece = buf[a.min(b)..a.max(b)].to_vec();
                    buf.splice(a.max(b)..a.max(b), piece);
                }
                Edit::Cut(at) => buf.truncate(at.index(buf.len() + 1)),
                _ => {}
            }
        }
        buf
    }

    fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..128),
            4 => (
                prop::sample::select(HEADS),
                prop::collection::vec(edit(), 0..5)
            )
                .prop_map(|(h, edits)| apply(h.as_bytes().to_vec(), &edits)),
        ]
    }

    fn limits() -> impl Strategy<Value = Limits> {
        prop_oneof![
            Just(Limits::default()),
            Just(Limits {
                request_line_bytes_max: 40,
                header_line_bytes_max: 30,
                head_bytes_max: 160,
                headers_max: 4,
                ..Limits::default()
            }),
        ]
    }

    /// Framing as an independent, liberal reader sees it in an accepted head: header names
    /// trimmed, so a name httparse reads differently still counts.
    struct Seen {
        content_lengths: Vec<Option<u64>>,
        transfer_encodings: usize,
        hosts: usize,
        longest_header_line: usize,
        request_line: usize,
    }

    fn seen(head: &[u8]) -> Seen {
        let mut s = Seen {
            content_lengths: Vec::new(),
            transfer_encodings: 0,
            hosts: 0,
            longest_header_line: 0,
            request_line: 0,
        };
        let mut lines = head.split(|b| *b == b'\n').skip_while(|l| *l == b"\r");
        s.request_line = lines.next().map_or(0, |l| l.len() + 1);
        for line in lines {
            s.longest_header_line = s.longest_header_line.max(line.len() + 1);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                s.content_lengths.push(parse_content_length(value));
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                s.transfer_encodings += 1;
            } else if name.eq_ignore_ascii_case(b"host") {
                s.hosts += 1;
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Never panics; an accepted head stays within the limits, and its body length is
        /// the one any reader would see: at most one Content-Length, never with
        /// Transfer-Encoding, none on GET or HEAD.
        #[test]
        fn prop_head_framing_is_unambiguous(buf in head_bytes(), limits in limits()) {
            let mut slots = vec![std::mem::MaybeUninit::uninit(); limits.headers_max];
            let got = parse_request(&buf, &limits, &mut slots);
            match got {
                Ok(Parsed::Complete(h)) => {
                    prop_assert!(h.len <= buf.len() && h.len <= limits.head_bytes_max);
                    let head = &buf[..h.len];
                    prop_assert!(head.ends_with(b"\r\n\r\n"));
                    prop_assert!(head
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b != b'\n' || (i > 0 && head[i - 1] == b'\r')));
                    for span in [h.method, h.target].iter().chain(&h.accept[..h.accept_count])
                        .chain(h.range.iter())
                    {
                        prop_assert!(span.start <= span.end && span.end as usize <= h.len);
                    }
                    prop_assert!(h.target.str(&buf).starts_with('/'));
                    let s = seen(head);
                    prop_assert!(s.request_line <= limits.request_line_bytes_max + 2);
                    prop_assert!(s.longest_header_line <= limits.header_line_bytes_max + 2);
                    prop_assert!(s.content_lengths.len() <= 1, "{:?}", s.content_lengths);
                    prop_assert!(s.content_lengths.is_empty() || s.transfer_encodings == 0);
                    prop_assert!(s.content_lengths.iter().all(Option::is_some));
                    let declared = s.transfer_encodings > 0
                        || s.content_lengths.iter().any(|l| *l > Some(0));
                    prop_assert_eq!(h.has_body, declared);
                    let method = h.method.str(&buf);
                    prop_assert!(!(h.has_body && (method == "GET" || method == "HEAD")));
                    prop_assert!(s.hosts <= 1);
                    prop_assert!(h.minor_version == 0 || s.hosts == 1);
                }
                Ok(Parsed::Partial) => prop_assert!(buf.len() < limits.head_bytes_max),
                Err(e) if e.kind == Kind::UriTooLong => {
                    // The request line: the first line that is not empty (leading CRLFs are
                    // skipped).
                    let first = buf
                        .split(|b| *b == b'\n')
                        .find(|l| *l != b"\r")
                        .map_or(0, <[u8]>::len);
                    prop_assert!(first > limits.request_line_bytes_max);
                }
                Err(e) => prop_assert!(matches!(e.kind, Kind::BadRequest | Kind::HeadTooLarge)),
            }
        }

        /// Never panics; a partial answer lies within the body; the first byte asked for is
        /// where it starts, and a suffix is as long as asked (or the whole body).
        #[test]
        fn prop_range_within_size(
            value in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..32),
                (
                    prop::sample::select(vec!["bytes=", "Bytes=", " bytes= ", "bytes =", ""]),
                    prop::option::of(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{1,3}", "[0-9 +-]{1,22}"]),
                    prop::sample::select(vec!["-", "--", ",", "-0,", ""]),
                    prop::option::of(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{1,3}", "[0-9 +-]{1,22}"]),
                )
                    .prop_map(|(unit, a, dash, b)| {
                        format!("{unit}{}{dash}{}", a.unwrap_or_default(), b.unwrap_or_default())
                            .into_bytes()
                    }),
            ],
            size in prop_oneof![Just(0u64), 1u64..2000, any::<u64>(), Just(u64::MAX)],
        ) {
            let spec = parse_range(&value);
            match (spec, resolve_range(spec, size)) {
                (_, RangeResult::Partial { start, end }) => {
                    prop_assert!(start <= end && end < size, "{start} {end} {size}");
                    match spec {
                        Some(RangeSpec::From { first, last }) => {
                            prop_assert_eq!(start, first);
                            prop_assert_eq!(end, last.unwrap_or(u64::MAX).min(size - 1));
                        }
                        Some(RangeSpec::Suffix(n)) => prop_assert_eq!(end - start + 1, n.min(size)),
                        None => prop_assert!(false, "a partial answer from no range"),
                    }
                }
                (None, r) => prop_assert_eq!(r, RangeResult::Full),
                (Some(_), RangeResult::Full) => prop_assert!(false, "a parsed range ignored"),
                (Some(_), RangeResult::Unsatisfiable) => {}
            }
        }
    }
}
