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
    /// `Authorization` (client authentication, [`crate::auth`]); at most one.
    pub authorization: Option<Span>,
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
        authorization: None,
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
        } else if name.eq_ignore_ascii_case("authorization") {
            if head.authorization.is_some() {
                return Err(bad("duplicate Authorization"));
            }
            head.authorization = Some(Span::within(buf, h.value));
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
mod tests;
