//! Body framing for upstream responses (RFC 9112 §6): which framing a response uses, and a
//! pure, incremental chunked decoder. Used by the upstream client (`http::client`) when the
//! fill (step 6) or a small-body read pulls bytes from upstream.

use super::parse::parse_content_length;

use crate::limits::CHUNK_LINE_MAX;
use crate::limits::TRAILERS_MAX;

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the connection closes; the connection is not reusable.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    BothLengthAndChunked,
    ConflictingLength,
    InvalidLength,
    /// A transfer-coding other than a final `chunked` (RFC 9112 §6.3 ¶4: a response whose
    /// final coding is not chunked is close-delimited; anything else we cannot decode).
    UnsupportedCoding,
}

/// Decide the framing of a response to a request with method HEAD (`head_request`) or not.
pub fn response_framing(
    status: u16,
    head_request: bool,
    headers: &[httparse::Header<'_>],
) -> Result<Framing, FramingError> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is tolerated by RFC 9110 §8.6, but a registry never
            // sends one; refuse any duplicate that disagrees, and any malformed value.
            let v =
                parse_content_length(h.value.trim_ascii()).ok_or(FramingError::InvalidLength)?;
            if length.is_some_and(|l| l != v) {
                return Err(FramingError::ConflictingLength);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if chunked {
                    // chunked must be the last coding, applied once.
                    return Err(FramingError::UnsupportedCoding);
                }
                coded = true;
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if !coding.eq_ignore_ascii_case(b"identity") {
                    return Err(FramingError::UnsupportedCoding);
                }
            }
        }
    }
    match (length, coded) {
        (Some(_), true) => Err(FramingError::BothLengthAndChunked),
        (_, true) if chunked => Ok(Framing::Chunked),
        (_, true) => Ok(Framing::Close),
        (Some(l), false) => Ok(Framing::Length(l)),
        (None, false) => Ok(Framing::Close),
    }
}

/// Incremental chunked decoder state (RFC 9112 §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; `line` bytes of it seen so far.
    Size {
        size: u64,
        digits: usize,
        in_ext: bool,
        line: usize,
        cr: bool,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CR then LF.
    DataCr,
    DataLf,
    /// In the trailer section after the last chunk; `line` is the current line's length.
    Trailer {
        line: usize,
        total: usize,
        cr: bool,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    BadDelimiter,
    LineTooLong,
}

impl std::fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chunked framing: {self:?}")
    }
}

impl std::error::Error for ChunkedError {}

/// One step of decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `input[start..end]` is body data; `consumed` bytes of input were used.
    Data {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// Framing bytes consumed, no data yet: call again with the rest (or more input).
    Consumed(usize),
    /// The body is complete; `consumed` bytes were used (the rest is the next response).
    Done(usize),
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size {
                size: 0,
                digits: 0,
                in_ext: false,
                line: 0,
                cr: false,
            },
        }
    }

    /// Decode from `input`. Returns at the first data run or after consuming all input.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let mut i = 0;
        // Every `input[i]` below is under this guard (each arm reads at most one byte before
        // it loops back here, or returns).
        while i < input.len() {
            match &mut self.state {
                State::Size {
                    size,
                    digits,
                    in_ext,
                    line,
                    cr,
                } => {
                    let b = input[i];
                    i += 1;
                    *line += 1;
                    if *line > CHUNK_LINE_MAX {
                        return Err(ChunkedError::LineTooLong);
                    }
                    if *cr {
                        if b != b'\n' {
                            return Err(ChunkedError::BadDelimiter);
                        }
                        if *digits == 0 {
                            return Err(ChunkedError::BadSize);
                        }
                        self.state = if *size == 0 {
                            State::Trailer {
                                line: 0,
                                total: 0,
                                cr: false,
                            }
                        } else {
                            State::Data(*size)
                        };
                        continue;
                    }
                    if b == b'\r' {
                        *cr = true;
                    } else if b == b'\n' {
                        return Err(ChunkedError::BadDelimiter);
                    } else if *in_ext {
                        // chunk extensions are ignored (RFC 9112 §7.1.1)
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *in_ext = true;
                    } else {
                        let d = (b as char).to_digit(16).ok_or(ChunkedError::BadSize)? as u64;
                        *digits += 1;
                        // At most 15 digits: the size stays under 2^60, and cannot overflow.
                        if *digits > 15 {
                            return Err(ChunkedError::BadSize);
                        }
                        *size = *size * 16 + d;
                    }
                }
                State::Data(left) => {
                    // `n` is at most what is left of both the chunk and the input.
                    let n = (*left).min((input.len() - i) as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step::Data {
                        start: i,
                        end: i + n,
                        consumed: i + n,
                    });
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err(ChunkedError::BadDelimiter);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(ChunkedError::BadDelimiter);
                    }
                    i += 1;
                    self.state = State::Size {
                        size: 0,
                        digits: 0,
                        in_ext: false,
                        line: 0,
                        cr: false,
                    };
                }
                State::Trailer { line, total, cr } => {
                    let b = input[i];
                    i += 1;
                    *total += 1;
                    if *total > TRAILERS_MAX {
                        return Err(ChunkedError::LineTooLong);
                    }
                    if *cr {
                        if b != b'\n' {
                            return Err(ChunkedError::BadDelimiter);
                        }
                        if *line == 0 {
                            self.state = State::Done;
                            return Ok(Step::Done(i));
                        }
                        *line = 0;
                        *cr = false;
                    } else if b == b'\r' {
                        *cr = true;
                    } else {
                        *line += 1;
                    }
                }
                State::Done => return Ok(Step::Done(i)),
            }
        }
        if self.state == State::Done {
            return Ok(Step::Done(i));
        }
        Ok(Step::Consumed(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = Chunked::new();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match d.step(&input[pos..])? {
                Step::Data {
                    start,
                    end,
                    consumed,
                } => {
                    out.extend_from_slice(&input[pos + start..pos + end]);
                    pos += consumed;
                }
                Step::Consumed(n) => {
                    pos += n;
                    if pos == input.len() {
                        return Err(ChunkedError::BadDelimiter); // incomplete
                    }
                }
                Step::Done(n) => return Ok((out, pos + n)),
            }
        }
    }

    #[test]
    fn chunked_table() {
        let cases: &[(&[u8], Result<&[u8], ChunkedError>)] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", Ok(b"hello")),
            (
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                Ok(b"hello world"),
            ),
            (b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", Ok(b"0123456789")),
            (b"0\r\n\r\n", Ok(b"")),
            (b"5\nhello\r\n0\r\n\r\n", Err(ChunkedError::BadDelimiter)),
            (b"5\r\nhelloX\r\n0\r\n\r\n", Err(ChunkedError::BadDelimiter)),
            (b"g\r\n", Err(ChunkedError::BadSize)),
            (b"\r\n", Err(ChunkedError::BadSize)),
            (b"1000000000000000\r\n", Err(ChunkedError::BadSize)),
        ];
        for (input, want) in cases {
            let got = decode_all(input).map(|(out, _)| out);
            let want = want.map(|w| w.to_vec());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn chunked_byte_by_byte_and_leftover() {
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT";
        let mut d = Chunked::new();
        let mut out = Vec::new();
        let mut done_at = None;
        for (idx, b) in input.iter().enumerate() {
            let one = [*b];
            match d.step(&one).unwrap() {
                Step::Data { start, end, .. } => out.extend_from_slice(&one[start..end]),
                Step::Consumed(_) => {}
                Step::Done(_) => {
                    done_at = Some(idx + 1);
                    break;
                }
            }
        }
        assert_eq!(out, b"abcde");
        assert_eq!(&input[done_at.unwrap()..], b"NEXT");
    }

    #[test]
    fn framing_table() {
        let h = |n: &'static str, v: &'static str| httparse::Header {
            name: n,
            value: v.as_bytes(),
        };
        use Framing::*;
        use FramingError::*;
        let cases: Vec<(
            u16,
            bool,
            Vec<httparse::Header>,
            Result<Framing, FramingError>,
        )> = vec![
            (200, false, vec![h("Content-Length", "10")], Ok(Length(10))),
            (200, true, vec![h("Content-Length", "10")], Ok(Empty)),
            (204, false, vec![], Ok(Empty)),
            (304, false, vec![h("Content-Length", "10")], Ok(Empty)),
            (
                200,
                false,
                vec![h("Transfer-Encoding", "chunked")],
                Ok(Chunked),
            ),
            (200, false, vec![], Ok(Close)),
            (
                200,
                false,
                vec![h("Content-Length", "10"), h("Content-Length", "10")],
                Ok(Length(10)),
            ),
            (
                200,
                false,
                vec![h("Content-Length", "10"), h("Content-Length", "11")],
                Err(ConflictingLength),
            ),
            (
                200,
                false,
                vec![h("Content-Length", "-1")],
                Err(InvalidLength),
            ),
            (
                200,
                false,
                vec![h("Content-Length", "1"), h("Transfer-Encoding", "chunked")],
                Err(BothLengthAndChunked),
            ),
            (
                200,
                false,
                vec![h("Transfer-Encoding", "chunked, gzip")],
                Err(UnsupportedCoding),
            ),
            (
                200,
                false,
                vec![h("Transfer-Encoding", "gzip")],
                Err(UnsupportedCoding),
            ),
        ];
        for (status, head, headers, want) in cases {
            assert_eq!(
                response_framing(status, head, &headers),
                want,
                "{status} {headers:?}"
            );
        }
    }

    use proptest::prelude::*;

    /// Feed `input` in pieces of the given sizes (cycled), as reads would deliver it. Checks
    /// every step's offsets and progress; returns the body, whether it ended, and the input
    /// it used.
    fn feed(input: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, bool, usize), ChunkedError> {
        let mut d = Chunked::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut sizes = pieces.iter().copied().cycle();
        let mut end = 0;
        // Each round consumes a byte or ends, so this is bounded by the input length.
        for _ in 0..=2 * input.len() + 2 {
            if pos == end {
                if end == input.len() {
                    return Ok((out, false, pos));
                }
                end = (end + sizes.next().unwrap_or(1).max(1)).min(input.len());
            }
            let piece = &input[pos..end];
            match d.step(piece)? {
                Step::Data {
                    start,
                    end: e,
                    consumed,
                } => {
                    assert!(start < e && e <= consumed && consumed <= piece.len());
                    out.extend_from_slice(&piece[start..e]);
                    pos += consumed;
                }
                Step::Consumed(n) => {
                    assert!(n <= piece.len());
                    assert!(n > 0 || piece.is_empty(), "no progress");
                    pos += n;
                }
                Step::Done(n) => {
                    assert!(n <= piece.len());
                    return Ok((out, true, pos + n));
                }
            }
        }
        panic!("no progress");
    }

    /// A valid chunked encoding of `data` cut at `cuts`, in the spellings the grammar
    /// allows: hex of either case with leading zeros, extensions, trailers.
    fn encode(
        data: &[u8],
        cuts: &[usize],
        style: &[(bool, usize, u8)],
        trailers: &[String],
    ) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut styles = style.iter().copied().cycle();
        let mut size_line = |out: &mut Vec<u8>, n: usize| {
            let (upper, zeros, ext) = styles.next().unwrap_or((false, 0, 0));
            let hex = if upper {
                format!("{n:X}")
            } else {
                format!("{n:x}")
            };
            out.extend(std::iter::repeat_n(b'0', zeros.min(15 - hex.len())));
            out.extend_from_slice(hex.as_bytes());
            out.extend_from_slice(match ext % 4 {
                0 => &b""[..],
                1 => b";a=b",
                2 => b" ;name=\"q;\\\"\"",
                _ => b"\t;x",
            });
            out.extend_from_slice(b"\r\n");
        };
        for w in cuts.windows(2) {
            size_line(&mut out, w[1] - w[0]);
            out.extend_from_slice(&data[w[0]..w[1]]);
            out.extend_from_slice(b"\r\n");
        }
        size_line(&mut out, 0);
        for t in trailers {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        (
            prop::sample::select(vec![
                "Content-Length",
                "content-length",
                "Transfer-Encoding",
                "transfer-encoding",
                "X-Other",
            ]),
            prop_oneof![
                "[0-9]{1,3}",
                Just("18446744073709551616".to_string()),
                "(chunked|identity|gzip|CHUNKED|,| ){0,4}",
                ".{0,8}",
            ],
        )
            .prop_map(|(n, v)| (n.to_string(), v))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any valid encoding, in any read sizes, decodes to exactly its data and stops at
        /// its end (what follows is the next response's).
        #[test]
        fn prop_chunked_roundtrip(
            data in prop::collection::vec(any::<u8>(), 0..1024),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            style in prop::collection::vec((any::<bool>(), 0usize..16, any::<u8>()), 1..4),
            trailers in prop::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,8}", 0..3),
            pieces in prop::collection::vec(1usize..64, 1..8),
        ) {
            let encoded = encode(&data, &cuts, &style, &trailers);
            let mut input = encoded.clone();
            input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (out, done, used) = feed(&input, &pieces).expect("valid encoding");
            prop_assert!(done);
            prop_assert_eq!(used, encoded.len());
            prop_assert_eq!(out, data);
        }

        /// Any bytes, or a valid encoding with a byte changed, inserted or cut: no panic,
        /// every step's offsets within its input, and never more body than input.
        #[test]
        fn prop_chunked_never_panics(
            input in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                (
                    prop::collection::vec(any::<u8>(), 0..64),
                    prop::collection::vec(any::<usize>(), 0..4),
                    any::<prop::sample::Index>(),
                    prop::sample::select(b"0123456789abcdefABCDEFgG;\r\n \t\x00\xff".to_vec()),
                    0u8..3,
                )
                    .prop_map(|(data, cuts, at, b, how)| {
                        let mut e = encode(&data, &cuts, &[(false, 0, 0)], &[]);
                        let at = at.index(e.len());
                        match how {
                            0 => e[at] = b,
                            1 => e.insert(at, b),
                            _ => e.truncate(at),
                        }
                        e
                    }),
            ],
            pieces in prop::collection::vec(1usize..64, 1..8),
        ) {
            if let Ok((out, _, used)) = feed(&input, &pieces) {
                prop_assert!(out.len() <= used && used <= input.len());
            }
        }

        /// Framing never panics; whatever framing is chosen, no header disagrees with it.
        #[test]
        fn prop_framing_unambiguous(
            status in prop_oneof![Just(200u16), Just(204), Just(304), 100u16..600],
            head_request in any::<bool>(),
            headers in prop::collection::vec(header(), 0..5),
        ) {
            let hs: Vec<httparse::Header> = headers
                .iter()
                .map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() })
                .collect();
            let lengths: Vec<Option<u64>> = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| parse_content_length(v.trim().as_bytes()))
                .collect();
            let codings: Vec<String> = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
                .flat_map(|(_, v)| v.split(',').map(|c| c.trim().to_ascii_lowercase()))
                .filter(|c| !c.is_empty())
                .collect();
            match response_framing(status, head_request, &hs) {
                Ok(Framing::Empty) => prop_assert!(
                    head_request || (100..200).contains(&status) || status == 204 || status == 304
                ),
                Ok(Framing::Length(l)) => {
                    prop_assert!(codings.is_empty());
                    prop_assert!(!lengths.is_empty() && lengths.iter().all(|x| *x == Some(l)));
                }
                Ok(Framing::Chunked) => {
                    prop_assert!(lengths.is_empty());
                    prop_assert_eq!(codings.last().map(String::as_str), Some("chunked"));
                    prop_assert!(codings.iter().all(|c| c == "chunked" || c == "identity"));
                    prop_assert_eq!(codings.iter().filter(|c| *c == "chunked").count(), 1);
                }
                Ok(Framing::Close) => {
                    prop_assert!(lengths.is_empty());
                    prop_assert!(codings.iter().all(|c| c == "identity"));
                }
                Err(_) => {}
            }
        }
    }
}
