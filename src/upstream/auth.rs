//! Upstream authentication: anonymous, Basic, and the Bearer token flow of the distribution
//! spec ("Token Authentication Specification"): a 401 carries
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; we GET a token from the realm
//! (with Basic credentials, if configured) and retry. Tokens are cached per scope until they
//! expire and shared by every request of the worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;

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
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            return Some(out);
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' && b[i] != b' ' {
            i += 1;
        }
        let key = s[k0..i].to_string();
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return None;
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                if i >= b.len() {
                    return None; // unterminated quoted-string
                }
                match b[i] {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        val.push(b[i + 1] as char);
                        i += 2;
                    }
                    c => {
                        val.push(c as char);
                        i += 1;
                    }
                }
            }
        } else {
            let v0 = i;
            while i < b.len() && b[i] != b',' && b[i] != b' ' {
                i += 1;
            }
            val.push_str(&s[v0..i]);
        }
        out.push((key, val));
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
    #[serde(default)]
    pub expires_in: Option<u64>,
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

    pub fn put(&mut self, scope: &str, token: String, ttl: Duration, now: Instant) {
        let ttl = ttl
            .saturating_sub(crate::limits::TOKEN_EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        if self.by_scope.len() >= 4096 {
            self.by_scope.retain(|_, (_, exp)| *exp > now);
        }
        self.by_scope.insert(scope.to_string(), (token, now + ttl));
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
    fn token_cache_expires() {
        let mut t = Tokens::default();
        let now = Instant::now();
        t.put("s", "tok".into(), Duration::from_secs(60), now);
        assert_eq!(t.get("s", now), Some("tok"));
        assert_eq!(t.get("s", now + Duration::from_secs(51)), None);
        assert_eq!(t.get("other", now), None);
    }
}
