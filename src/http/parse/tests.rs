//! Request-head parsing: the framing table, the limits, and property targets over mutated
//! heads (never panics; an accepted head's framing is unambiguous).
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
