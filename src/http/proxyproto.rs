//! The PROXY protocol (HAProxy's, versions 1 and 2), read once per connection right after
//! accept and before the first request head (data path step 1 → 2), when
//! `ringcache.proxy_protocol` is on and the peer is one of `ringcache.proxy_protocol_from`: a
//! load balancer in front tells us the client's address, which the access log then shows.
//!
//! Spec: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>. Version 1 is one text
//! line of at most 107 bytes (§2.1); version 2 a 16-byte binary head and `len` bytes of
//! addresses and TLVs (§2.2), bounded here by [`PROXY_V2_BYTES_MAX`].
//!
//! [`parse`] is pure: bytes in, `Partial` (with how many bytes are needed at least) or the
//! header's length and source address out. [`read`] reads exactly the header off a socket
//! (never a byte of the request after it), within the head deadline. [`Allow`] is the list of
//! peers whose headers are believed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

pub use crate::limits::PROXY_V1_BYTES_MAX;
pub use crate::limits::PROXY_V2_BYTES_MAX;

/// Version 2's signature (§2.2): no HTTP request line starts with it.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 2's fixed head: signature, version and command, family, length.
const V2_HEAD: usize = 16;

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes (what follows is the client's first request).
    pub len: usize,
    /// The client's address; `None` for a v2 `LOCAL` (the balancer's own health check),
    /// v1 `UNKNOWN`, or an address family other than IP: the connection's peer stands.
    pub source: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not complete: the header takes at least this many bytes in all.
    Partial {
        at_least: usize,
    },
    Complete(Header),
}

/// A malformed header, or one past the limits: the connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid PROXY protocol header: {}", self.0)
    }
}

/// Parse a PROXY header (v1 or v2) at the start of `buf`. Anything that is not the start of
/// one is [`Invalid`] as soon as its first bytes say so.
pub fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    match buf.first() {
        None => Ok(Parsed::Partial { at_least: 1 }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(Invalid("not a PROXY header")),
    }
}

fn prefix_of(buf: &[u8], whole: &[u8]) -> bool {
    let n = buf.len().min(whole.len());
    buf[..n] == whole[..n]
}

/// Version 1 (§2.1): `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, or
/// `PROXY UNKNOWN ...\r\n`; 107 bytes at most, CRLF included.
fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    if !prefix_of(buf, V1_PREFIX) {
        return Err(Invalid("not a PROXY header"));
    }
    let window = &buf[..buf.len().min(PROXY_V1_BYTES_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= PROXY_V1_BYTES_MAX {
            return Err(Invalid("v1 line longer than 107 bytes"));
        }
        return Ok(Parsed::Partial {
            at_least: buf.len() + 1,
        });
    };
    let len = lf + 1;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(Invalid("v1 line not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| Invalid("v1 line not ASCII"))?;
    let mut words = line.split(' ');
    let _proxy = words.next();
    let source = match words.next() {
        // The rest of an UNKNOWN line is ignored (§2.1).
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut field = || words.next().ok_or(Invalid("v1 line with too few fields"));
            let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
            if words.next().is_some() {
                return Err(Invalid("v1 line with too many fields"));
            }
            let ip = |s: &str| -> Result<IpAddr, Invalid> {
                let ip = if family == "TCP4" {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| Invalid("v1 address not of its family"))
            };
            let port = |s: &str| -> Result<u16, Invalid> {
                // Decimal, 1 to 5 digits, no sign (§2.1).
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Invalid("v1 port not a number"));
                }
                s.parse().map_err(|_| Invalid("v1 port out of range"))
            };
            let (src, _dst, sport, _dport) = (ip(src)?, ip(dst)?, port(sport)?, port(dport)?);
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(Invalid("v1 protocol not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete(Header { len, source }))
}

/// Version 2 (§2.2): signature, `0x2` version + command (`LOCAL` 0, `PROXY` 1), family +
/// transport, a big-endian length, then addresses (and TLVs, ignored).
fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    if !prefix_of(buf, &V2_SIGNATURE) {
        return Err(Invalid("not a PROXY header"));
    }
    if buf.len() < V2_HEAD {
        return Ok(Parsed::Partial { at_least: V2_HEAD });
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = V2_HEAD + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(Invalid("v2 version not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Invalid("v2 command not LOCAL or PROXY")),
    };
    if len > PROXY_V2_BYTES_MAX {
        return Err(Invalid("v2 header longer than the limit"));
    }
    if buf.len() < len {
        return Ok(Parsed::Partial { at_least: len });
    }
    let body = &buf[V2_HEAD..len];
    // Transport: 0 UNSPEC, 1 STREAM; a datagram's addresses do not describe a TCP client.
    let transport = fam & 0x0f;
    if transport > 1 || (!local && transport == 0 && fam >> 4 != 0) {
        return Err(Invalid("v2 transport not a stream"));
    }
    let source = match fam >> 4 {
        _ if local => None,
        0 => None,
        1 => {
            let a = body
                .get(..12)
                .ok_or(Invalid("v2 IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        2 => {
            let a = body
                .get(..36)
                .ok_or(Invalid("v2 IPv6 addresses cut short"))?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        // AF_UNIX: no address to log; the peer stands.
        3 => {
            body.get(..216)
                .ok_or(Invalid("v2 unix addresses cut short"))?;
            None
        }
        _ => return Err(Invalid("v2 address family unknown")),
    };
    Ok(Parsed::Complete(Header { len, source }))
}

/// The peers whose PROXY headers are believed (`ringcache.proxy_protocol_from`): networks in
/// CIDR notation, or single addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow(Vec<(IpAddr, u8)>);

impl Allow {
    /// Parse `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`, `::1`.
    pub fn parse(list: &[&str]) -> Result<Allow, String> {
        let mut out = Vec::new();
        for s in list {
            let s = s.trim();
            let (ip, bits) = match s.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (s, None),
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
            };
            out.push((ip, bits));
        }
        Ok(Allow(out))
    }

    /// Whether `peer` is in one of the networks (an IPv4-mapped IPv6 peer as its IPv4).
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|(net, bits)| match (net, peer) {
            (IpAddr::V4(n), IpAddr::V4(p)) => same_prefix(&n.octets(), &p.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(p)) => same_prefix(&n.octets(), &p.octets(), *bits),
            _ => false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The list as written back (for `check-config`).
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(ip, bits)| format!("{ip}/{bits}"))
            .collect()
    }
}

fn same_prefix(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Read a PROXY header off `sock`, exactly (the request after it stays unread), by
/// `deadline`. `Ok(None)`: the peer closed or was too slow; `Err`: not a valid header.
pub async fn read(
    sock: &mut monoio::net::TcpStream,
    deadline: Instant,
) -> Result<Option<Header>, Invalid> {
    use monoio::buf::IoBufMut;
    use monoio::io::AsyncReadRentExt;
    let mut buf: Vec<u8> = Vec::with_capacity(PROXY_V1_BYTES_MAX.max(V2_HEAD));
    // Each turn reads at least one byte or ends: bounded by the larger header's size.
    for _ in 0..=PROXY_V2_BYTES_MAX {
        let at_least = match parse(&buf)? {
            Parsed::Complete(h) => return Ok(Some(h)),
            Parsed::Partial { at_least } => at_least,
        };
        let mut want = at_least - buf.len();
        if buf.first() == Some(&b'P') {
            // A v1 line ends at an LF we cannot know the place of without reading past it:
            // look at what has arrived, and take up to its end of line only.
            let (n, lf) = peek_line(sock, PROXY_V1_BYTES_MAX - buf.len());
            want = lf.map_or(n.max(want), |at| at + 1);
        }
        let len = buf.len();
        buf.reserve(want);
        let t = deadline.saturating_duration_since(Instant::now());
        let read = monoio::time::timeout(t, sock.read_exact(buf.slice_mut(len..len + want)));
        match read.await {
            Ok((Ok(_), slice)) => buf = slice.into_inner(),
            Ok((Err(_), _)) | Err(_) => return Ok(None),
        }
    }
    Err(Invalid("header not complete"))
}

/// What has arrived on the socket, up to `max` bytes, without taking it: how many bytes, and
/// where the first LF is among them.
fn peek_line(sock: &monoio::net::TcpStream, max: usize) -> (usize, Option<usize>) {
    use std::os::fd::AsRawFd;
    let mut tmp = [0u8; PROXY_V1_BYTES_MAX];
    let max = max.min(tmp.len());
    // SAFETY: a buffer we own, `max` ≤ its length; MSG_PEEK leaves the bytes in the socket
    // and MSG_DONTWAIT never blocks the event loop.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            tmp.as_mut_ptr().cast(),
            max,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let n = usize::try_from(n).unwrap_or(0);
    (n, tmp[..n].iter().position(|&b| b == b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        v2(
            1,
            0x11,
            &[192, 0, 2, 7, 10, 0, 0, 1, 0xd4, 0x31, 0x13, 0x88],
        )
    }

    #[test]
    fn v1_lines() {
        let sa = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        // (input, Ok(source) or Err)
        let cases: &[(&str, Result<Option<SocketAddr>, ()>)] = &[
            (
                "PROXY TCP4 192.0.2.7 10.0.0.1 54321 5000\r\n",
                Ok(sa("192.0.2.7:54321")),
            ),
            (
                "PROXY TCP6 2001:db8::7 ::1 65535 5000\r\n",
                Ok(sa("[2001:db8::7]:65535")),
            ),
            ("PROXY UNKNOWN\r\n", Ok(None)),
            ("PROXY UNKNOWN ff::1 ::1 1 2\r\n", Ok(None)),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 54321 5000\n", Err(())),
            ("PROXY TCP4 ::1 10.0.0.1 1 2\r\n", Err(())),
            ("PROXY TCP6 192.0.2.7 ::1 1 2\r\n", Err(())),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 65536 5000\r\n", Err(())),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 +1 5000\r\n", Err(())),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n", Err(())),
            ("PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n", Err(())),
            ("PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n", Err(())),
            ("PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", Err(())),
            ("PROXYTCP4\r\n", Err(())),
            ("GET / HTTP/1.1\r\n\r\n", Err(())),
        ];
        for (input, want) in cases {
            let got = parse(input.as_bytes());
            match want {
                Ok(src) => assert_eq!(
                    got,
                    Ok(Parsed::Complete(Header {
                        len: input.len(),
                        source: *src
                    })),
                    "{input:?}"
                ),
                Err(()) => assert!(got.is_err(), "{input:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn v1_partial_and_too_long() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 54321 5000\r\nGET / HTTP/1.1\r\n";
        for cut in 0..42 {
            assert!(
                matches!(parse(&line[..cut]), Ok(Parsed::Partial { at_least }) if at_least > cut),
                "cut at {cut}"
            );
        }
        // What follows the header is not part of it.
        assert!(matches!(
            parse(line),
            Ok(Parsed::Complete(Header { len: 42, .. }))
        ));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(PROXY_V1_BYTES_MAX, b'x');
        assert!(parse(&long).is_err(), "107 bytes without an LF");
        long.truncate(PROXY_V1_BYTES_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert!(
            matches!(parse(&long), Ok(Parsed::Complete(_))),
            "107 with CRLF"
        );
    }

    #[test]
    fn v2_headers() {
        let tcp4 = v2_tcp4();
        let got = parse(&tcp4).unwrap();
        assert_eq!(
            got,
            Parsed::Complete(Header {
                len: 28,
                source: Some("192.0.2.7:54321".parse().unwrap())
            })
        );
        let mut six = [0u8; 36];
        six[15] = 1; // ::1
        six[32..34].copy_from_slice(&443u16.to_be_bytes());
        let h = parse(&v2(1, 0x21, &six)).unwrap();
        assert!(
            matches!(h, Parsed::Complete(Header { len: 52, source: Some(s) }) if s == "[::1]:443".parse().unwrap())
        );
        // LOCAL (a health check), UNSPEC and UNIX: no address; TLVs after the addresses.
        assert!(matches!(
            parse(&v2(0, 0x00, &[])),
            Ok(Parsed::Complete(Header {
                len: 16,
                source: None
            }))
        ));
        assert!(matches!(
            parse(&v2(1, 0x31, &[0u8; 216])),
            Ok(Parsed::Complete(Header { source: None, .. }))
        ));
        let mut tlv = tcp4[16..].to_vec();
        tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // PP2_TYPE_NOOP
        assert!(matches!(
            parse(&v2(1, 0x11, &tlv)),
            Ok(Parsed::Complete(Header {
                len: 32,
                source: Some(_)
            }))
        ));
        // Refused: version 1 byte, command 2, datagram, cut-short addresses, past the limit.
        let mut bad_version = tcp4.clone();
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
        assert!(parse(&v2(2, 0x11, &tcp4[16..])).is_err());
        assert!(parse(&v2(1, 0x12, &tcp4[16..])).is_err());
        assert!(parse(&v2(1, 0x11, &tcp4[16..24])).is_err());
        assert!(parse(&v2(1, 0x21, &tcp4[16..])).is_err());
        assert!(parse(&v2(1, 0x51, &tcp4[16..])).is_err());
        let huge = v2(1, 0x11, &vec![0u8; PROXY_V2_BYTES_MAX]);
        assert!(parse(&huge[..16]).is_err(), "refused from its length alone");
        // Every cut of a good header is partial, and asks for more than it has.
        for cut in 0..tcp4.len() {
            assert!(
                matches!(parse(&tcp4[..cut]), Ok(Parsed::Partial { at_least }) if at_least > cut),
                "cut at {cut}"
            );
        }
        assert!(parse(b"\r\n\r\nX").is_err(), "not the signature");
    }

    #[test]
    fn allow_lists() {
        let a =
            Allow::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "172.16.0.0/12"]).unwrap();
        // (peer, allowed)
        let cases: &[(&str, bool)] = &[
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("172.31.255.255", true),
            ("172.32.0.0", false),
            ("::ffff:10.9.9.9", true),
            ("2001:db8:1::5", true),
            ("2001:db9::5", false),
            ("::1", false),
        ];
        for (peer, want) in cases {
            assert_eq!(a.contains(peer.parse().unwrap()), *want, "{peer}");
        }
        assert!(Allow::parse(&["0.0.0.0/0"])
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(Allow::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_keys() {
        use crate::config::Config;
        let base = "version: 0.1\nproxy: {remoteurl: http://127.0.0.1:9}\n";
        let c = Config::from_yaml(&format!(
            "{base}ringcache: {{proxy_protocol: true, proxy_protocol_from: [10.0.0.0/8, 127.0.0.1]}}\n"
        ))
        .unwrap();
        assert!(c.proxy_protocol && c.proxy_protocol_from.contains("127.0.0.1".parse().unwrap()));
        // (ringcache section, error wanted)
        let bad: &[(&str, &str)] = &[
            (
                "{proxy_protocol: true}",
                "required with proxy_protocol: true",
            ),
            ("{proxy_protocol_from: [10.0.0.1]}", "has no effect without"),
            (
                "{proxy_protocol: true, proxy_protocol_from: [10.0.0.0/40]}",
                "prefix length",
            ),
            (
                "{proxy_protocol: true, proxy_protocol_from: 10.0.0.1}",
                "must be a list",
            ),
            ("{proxy_protocol: yes please}", "true or false"),
            ("{proxy_protocl: true}", "did you mean `proxy_protocol`"),
        ];
        for (section, want) in bad {
            let e = Config::from_yaml(&format!("{base}ringcache: {section}\n")).unwrap_err();
            assert!(e.to_string().contains(want), "{section}: {e}");
        }
        let env = [
            ("RINGCACHE_PROXY_PROTOCOL".to_string(), "true".to_string()),
            (
                "RINGCACHE_PROXY_PROTOCOL_FROM".to_string(),
                "10.0.0.0/8,::1".to_string(),
            ),
        ];
        let c = Config::from_yaml_env(base, env).unwrap();
        assert!(c.proxy_protocol && c.proxy_protocol_from.contains("::1".parse().unwrap()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]
        /// Random input never panics, and a complete header never claims more bytes than
        /// it was given or than the limits allow.
        #[test]
        fn random_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            start in 0usize..3,
        ) {
            let mut input = match start {
                0 => Vec::new(),
                1 => V2_SIGNATURE.to_vec(),
                _ => b"PROXY ".to_vec(),
            };
            input.extend_from_slice(&bytes);
            if let Ok(Parsed::Complete(h)) = parse(&input) {
                proptest::prop_assert!(h.len <= input.len());
                proptest::prop_assert!(h.len <= PROXY_V1_BYTES_MAX.max(PROXY_V2_BYTES_MAX));
            }
            if let Ok(Parsed::Partial { at_least }) = parse(&input) {
                proptest::prop_assert!(at_least > input.len());
            }
        }
    }
}
