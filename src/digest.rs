//! `Digest`: a sha256 content address. Parsed strictly (OCI digest grammar, sha256 only, 64
//! lowercase hex), formatted as `sha256:<hex>`, and used as the key of the store, the index and
//! the in-flight map. Route step 3 parses it; commit step 7 verifies content against it.

use std::fmt;

/// A sha256 digest, kept as its 32 raw bytes (cheap to hash, compare and copy).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a digest string was refused: an algorithm other than sha256 is "unsupported", anything
/// else is "invalid".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestError {
    Invalid,
    UnsupportedAlgorithm,
}

impl Digest {
    /// Parse `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (algo, hex) = s.split_once(':').ok_or(DigestError::Invalid)?;
        // OCI grammar: algorithm ::= [a-z0-9]+ ([+._-] [a-z0-9]+)*; encoded ::= [a-zA-Z0-9=_-]+
        let algo_ok = !algo.is_empty()
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !algo_ok {
            return Err(DigestError::Invalid);
        }
        if algo != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm);
        }
        Digest::from_hex(hex).ok_or(DigestError::Invalid)
    }

    /// Parse 64 lowercase hex characters (the file name in the store).
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        // 64 bytes make exactly 32 pairs: `i < 32`, and each pair has two bytes.
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(out))
    }

    /// The sha256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        Digest::from_ring(&d)
    }

    pub fn from_ring(d: &ring::digest::Digest) -> Digest {
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// The 64 lowercase hex characters, without the algorithm.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// `sha256:<hex>` on the stack (response headers on the hit path allocate nothing).
    pub fn text(&self) -> DigestText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // 7 + 2 × 32 = 71 bytes: every index below is in bounds.
        let mut out = [0u8; 71];
        out[..7].copy_from_slice(b"sha256:");
        for (i, b) in self.0.iter().enumerate() {
            out[7 + 2 * i] = HEX[(b >> 4) as usize];
            out[8 + 2 * i] = HEX[(b & 15) as usize];
        }
        DigestText(out)
    }

    /// Which of the 64 shards this digest belongs to (its bytes are already uniform).
    pub fn shard(&self, shards: usize) -> usize {
        // `shards` is the constant SHARDS (a power of two, never 0), not input.
        self.0[0] as usize & (shards - 1)
    }
}

/// A digest's text form, held inline.
pub struct DigestText([u8; 71]);

impl DigestText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Lowercase hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        v.push(HEX[(b >> 4) as usize]);
        v.push(HEX[(b & 15) as usize]);
    }
    String::from_utf8(v).expect("hex digits are ASCII")
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        use DigestError::*;
        let long = format!("{EMPTY}0");
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let cases: &[(&str, Result<(), DigestError>)] = &[
            (EMPTY, Ok(())),
            (&upper, Err(Invalid)),
            (&long, Err(Invalid)),
            (&EMPTY[..70], Err(Invalid)),
            ("sha256:", Err(Invalid)),
            ("sha512:abcd", Err(UnsupportedAlgorithm)),
            ("SHA256:abcd", Err(Invalid)),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                Err(Invalid),
            ),
            (":abc", Err(Invalid)),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
                Err(Invalid),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Digest::parse(input).map(|_| ()), *want, "{input}");
        }
    }

    #[test]
    fn roundtrip_and_hash() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.text().as_str(), EMPTY);
        assert_eq!(Digest::of(b""), d);
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Never panics; what parses prints back exactly as given (one spelling per digest).
        #[test]
        fn prop_digest_parse(
            s in prop_oneof![
                ".{0,80}",
                ("(sha256|sha512|SHA256|sha-256|)", ":?", "[0-9a-fA-Fg]{60,68}")
                    .prop_map(|(a, c, h)| format!("{a}{c}{h}")),
                ("[0-9a-f]{64}", any::<prop::sample::Index>(), any::<char>()).prop_map(
                    |(h, at, c)| {
                        let mut h: Vec<char> = format!("sha256:{h}").chars().collect();
                        let at = at.index(h.len());
                        h[at] = c;
                        h.into_iter().collect()
                    }
                ),
            ],
        ) {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert_eq!(d.to_string(), s.clone());
                let text = d.text();
                prop_assert_eq!(text.as_str(), s);
            }
        }
    }
}
