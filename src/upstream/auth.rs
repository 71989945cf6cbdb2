//! Upstream authentication: anonymous, Basic, and the Bearer token flow of the distribution
//! spec ("Token Authentication Specification"): a 401 carries
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; we GET a token from the realm
//! (with Basic credentials, if configured) and retry. Tokens are cached per scope until they
//! expire and shared by every request of the worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::limits::{TOKENS_MAX, TOKEN_DEFAULT_TTL, TOKEN_EXPIRY_MARGIN, TOKEN_TTL_MAX};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse the first challenge we can use from a `WWW-Authenticate` value (RFC 9110 §11.6.1:
/// `scheme 1*SP auth-param *("," auth-param)`, values a token or a quoted-string).
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let params = parse_params(rest)?;
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    // Every `b[i]` is under a `i < b.len()` guard; a lookahead uses `get`.
    let b = s.as_bytes();
    let blank = |c: u8| c == b' ' || c == b'\t';
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (blank(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Some(out);
        }
        let k0 = i;
        while i < b.len() && !(blank(b[i]) || b[i] == b'=' || b[i] == b',') {
            i += 1;
        }
        // Both ends sit next to an ASCII byte or at an end of `s`: char boundaries, so `get`
        // never fails (and would refuse the header rather than panic if it did).
        let key = s.get(k0..i)?.to_string();
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        // Bytes, not chars: a value may hold any UTF-8 (`s` is valid UTF-8 and only ASCII
        // quotes and backslashes are removed, so the bytes stay valid UTF-8).
        let mut val = Vec::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                // `None` at the end: an unterminated quoted-string (or a trailing backslash).
                match *b.get(i)? {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        val.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        val.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !(blank(b[i]) || b[i] == b',') {
                val.push(b[i]);
                i += 1;
            }
        }
        out.push((key, String::from_utf8(val).ok()?));
    }
}

/// `Authorization: Basic …` for a username and password.
pub fn basic(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

/// A token endpoint's answer (distribution spec: `token`, or OAuth2's `access_token`).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; kept as sent, since token servers differ (an integer, a fraction such as
    /// `300.5`, a numeric string) and an odd value must not fail the whole answer: see
    /// [`TokenResponse::ttl`].
    #[serde(default)]
    pub expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    /// How long the token may be cached: `expires_in` (a number or a numeric string) if it
    /// is positive and finite, at most [`TOKEN_TTL_MAX`]; the spec's default otherwise.
    pub fn ttl(&self) -> Duration {
        let secs = match &self.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        secs.filter(|s| s.is_finite() && *s > 0.0)
            // Clamped before the conversion, which therefore cannot fail.
            .and_then(|s| Duration::try_from_secs_f64(s.min(TOKEN_TTL_MAX.as_secs_f64())).ok())
            // A positive value under a nanosecond is zero too.
            .filter(|d| !d.is_zero())
            .unwrap_or(TOKEN_DEFAULT_TTL)
    }
}

/// Tokens per scope, and the upstream's last challenge, for one worker.
#[derive(Default)]
pub struct Tokens {
    /// The scheme upstream asked for last; `None` until upstream has challenged us.
    pub challenge: Option<Challenge>,
    by_scope: HashMap<String, (String, Instant)>,
}

impl Tokens {
    pub fn get(&self, scope: &str, now: Instant) -> Option<&str> {
        self.by_scope
            .get(scope)
            .filter(|(_, exp)| *exp > now)
            .map(|(t, _)| t.as_str())
    }

    /// Cache `token` for `ttl` (clamped to [`TOKEN_TTL_MAX`], less the expiry margin, at
    /// least a second so the request that fetched it can use it).
    pub fn put(&mut self, scope: &str, token: String, ttl: Duration, now: Instant) {
        let ttl = ttl
            .min(TOKEN_TTL_MAX)
            .saturating_sub(TOKEN_EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        if self.by_scope.len() >= TOKENS_MAX {
            self.by_scope.retain(|_, (_, exp)| *exp > now);
            if self.by_scope.len() >= TOKENS_MAX {
                self.by_scope.clear();
            }
        }
        // A day past a real `Instant` cannot overflow; were it to, the entry would be born
        // expired (never served), not a panic.
        let expires = now.checked_add(ttl).unwrap_or(now);
        self.by_scope.insert(scope.to_string(), (token, expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let bearer = |realm: &str, service: Option<&str>, scope: Option<&str>| {
            Some(Challenge::Bearer {
                realm: realm.into(),
                service: service.map(Into::into),
                scope: scope.map(Into::into),
            })
        };
        let cases: &[(&str, Option<Challenge>)] = &[
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/alpine:pull"),
                ),
            ),
            (
                r#"Bearer realm="http://127.0.0.1:1/t""#,
                bearer("http://127.0.0.1:1/t", None, None),
            ),
            (
                r#"bearer realm=http://x/t, service=svc"#,
                bearer("http://x/t", Some("svc"), None),
            ),
            (r#"Bearer realm="a\"b""#, bearer("a\"b", None, None)),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            (r#"Bearer service="x""#, None),
            (r#"Bearer realm="unterminated"#, None),
            (r#"Negotiate abc"#, None),
            // Values are bytes: any UTF-8 survives, escaped or not.
            (
                r#"Bearer realm="https://é.example/t""#,
                bearer("https://é.example/t", None, None),
            ),
            (r#"Bearer realm="a\éb""#, bearer("aéb", None, None)),
            (r#"Bearer realm=é"#, bearer("é", None, None)),
            (r#"Bearer realm="a\"#, None),
            (r#"Bearer realm"#, None),
            (r#"Bearer realm="#, bearer("", None, None)),
            ("Bearer\trealm=x", None),
            ("Bearer realm=x,\tservice=y", bearer("x", Some("y"), None)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_challenge(input), *want, "{input}");
        }
    }

    #[test]
    fn basic_header() {
        assert_eq!(basic("u", "p"), "Basic dTpw");
    }

    #[test]
    fn token_put_never_overflows() {
        let now = Instant::now();
        let mut t = Tokens::default();
        for ttl in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::ZERO] {
            t.put("s", "tok".into(), ttl, now);
            assert_eq!(t.get("s", now), Some("tok"), "{ttl:?}");
        }
    }

    #[test]
    fn token_lifetimes() {
        let day = TOKEN_TTL_MAX;
        let default = TOKEN_DEFAULT_TTL;
        let cases: &[(&str, Duration)] = &[
            (
                r#"{"token":"t","expires_in":300}"#,
                Duration::from_secs(300),
            ),
            (
                r#"{"token":"t","expires_in":300.5}"#,
                Duration::from_millis(300_500),
            ),
            (
                r#"{"token":"t","expires_in":"120"}"#,
                Duration::from_secs(120),
            ),
            (r#"{"token":"t","expires_in":18446744073709551615}"#, day),
            (r#"{"token":"t","expires_in":9223372036854775808}"#, day),
            (r#"{"token":"t","expires_in":1e300}"#, day),
            (r#"{"token":"t","expires_in":0}"#, default),
            (r#"{"token":"t","expires_in":-5}"#, default),
            (r#"{"token":"t","expires_in":-0.5}"#, default),
            (r#"{"token":"t","expires_in":1e-30}"#, default),
            (r#"{"token":"t","expires_in":"inf"}"#, default),
            (r#"{"token":"t","expires_in":"NaN"}"#, default),
            (r#"{"token":"t","expires_in":null}"#, default),
            (r#"{"token":"t","expires_in":[1]}"#, default),
            (r#"{"token":"t"}"#, default),
        ];
        for (json, want) in cases {
            let r: TokenResponse = serde_json::from_str(json).expect(json);
            assert_eq!(r.token.as_deref(), Some("t"), "{json}");
            assert_eq!(r.ttl(), *want, "{json}");
        }
    }

    #[test]
    fn token_cache_expires() {
        let mut t = Tokens::default();
        let now = Instant::now();
        t.put("s", "tok".into(), Duration::from_secs(60), now);
        assert_eq!(t.get("s", now), Some("tok"));
        assert_eq!(t.get("s", now + Duration::from_secs(51)), None);
        assert_eq!(t.get("other", now), None);
    }

    use proptest::prelude::*;

    /// A quoted-string carrying `v` (RFC 9110 §5.6.4).
    fn quoted(v: &str) -> String {
        let mut q = String::from("\"");
        for c in v.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    }

    /// Valid challenges, then mutated: cut, spliced with odd bytes, quotes dropped.
    fn challenge_text() -> impl Strategy<Value = String> {
        let value = "[^\\x00-\\x1f]{0,24}";
        let valid = (value, value, value).prop_map(|(r, s, c)| {
            format!(
                "Bearer realm={},service={},scope={}",
                quoted(&r),
                quoted(&s),
                quoted(&c)
            )
        });
        prop_oneof![
            ".{0,64}",
            valid.clone(),
            (valid.clone(), any::<prop::sample::Index>())
                .prop_map(|(v, at)| v.chars().take(at.index(v.len() + 1)).collect()),
            (valid, any::<prop::sample::Index>(), "[\"\\\\=, \t]|.").prop_map(
                |(v, at, ins): (String, _, String)| {
                    let mut chars: Vec<char> = v.chars().collect();
                    chars.insert(at.index(chars.len() + 1), ins.chars().next().unwrap_or(' '));
                    chars.into_iter().collect()
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Never panics on any header value.
        #[test]
        fn prop_challenge_never_panics(v in challenge_text()) {
            let _ = parse_challenge(&v);
        }

        /// Any realm, service and scope (UTF-8, quotes, backslashes) come back as sent.
        #[test]
        fn prop_challenge_roundtrip(
            realm in "[^\\x00-\\x1f]{0,32}",
            service in "[^\\x00-\\x1f]{0,16}",
            scope in "[^\\x00-\\x1f]{0,32}",
        ) {
            let v = format!(
                "Bearer realm={}, service={},scope={}",
                quoted(&realm),
                quoted(&service),
                quoted(&scope)
            );
            prop_assert_eq!(
                parse_challenge(&v),
                Some(Challenge::Bearer {
                    realm,
                    service: Some(service),
                    scope: Some(scope)
                })
            );
        }

        /// Any token answer parses or fails cleanly; its lifetime is within bounds and caching
        /// it never overflows the clock.
        #[test]
        fn prop_token_response(
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                prop_oneof![
                    any::<f64>().prop_map(|f| f.to_string()),
                    any::<u64>().prop_map(|n| n.to_string()),
                    any::<i64>().prop_map(|n| n.to_string()),
                    "[0-9]{1,30}(\\.[0-9]{0,5})?(e[+-]?[0-9]{1,3})?",
                    "\"[-+0-9.a-zA-Z]{0,12}\"",
                    Just("null".to_string()),
                ]
                .prop_map(|n| format!(r#"{{"token":"t","expires_in":{n}}}"#).into_bytes()),
            ],
        ) {
            if let Ok(r) = serde_json::from_slice::<TokenResponse>(&body) {
                let ttl = r.ttl();
                prop_assert!(ttl > Duration::ZERO && ttl <= TOKEN_TTL_MAX, "{ttl:?}");
                let now = Instant::now();
                let mut t = Tokens::default();
                t.put("s", "t".into(), ttl, now);
                prop_assert_eq!(t.get("s", now), Some("t"));
            }
        }
    }
}
