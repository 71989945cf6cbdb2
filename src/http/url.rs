//! Upstream URLs (step 4 onwards, wherever upstream is asked): [`Url`] (`http`/`https` only,
//! no userinfo) and its [`Origin`], the unit of connection pooling and of credential scoping.
//! Pure: no IO.

/// Scheme, host and port: the unit of connection pooling and of credential scoping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The `Host` header value: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }
}

/// An absolute http(s) URL split into origin and path-and-query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub origin: Origin,
    /// Always starts with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Option<Url> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return None;
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || authority.bytes().any(|b| b <= b' ') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Some(Url {
            origin: Origin {
                tls,
                host: host.to_ascii_lowercase(),
                port,
            },
            path,
        })
    }

    /// Resolve a `Location` header against this URL (absolute, or absolute-path reference).
    pub fn join(&self, location: &str) -> Option<Url> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!(
                "{}://{rest}",
                if self.origin.tls { "https" } else { "http" }
            ))
        } else if location.starts_with('/') {
            Some(Url {
                origin: self.origin.clone(),
                path: location.to_string(),
            })
        } else {
            None
        }
    }
}

/// The `rel="next"` target of a `Link` header (RFC 8288), as upstream wrote it: its URL's
/// path, and its query's parameters without `ns` (the next hop adds its own). `None` when
/// there is no next link, or a parameter holds what must not reach a response header.
pub fn next_link(link: &str) -> Option<(&str, Vec<&str>)> {
    let next = link.split(',').find(|l| {
        l.split(';')
            .skip(1)
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\"") || p.trim() == "rel=next")
    })?;
    let url = next.split(';').next()?.trim();
    let url = url.strip_prefix('<')?.strip_suffix('>')?;
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let query: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("ns="))
        .collect();
    let unsafe_char =
        |c: char| c.is_ascii_control() || matches!(c, ' ' | '#' | '<' | '>' | '"' | ',');
    if query.iter().any(|p| p.contains(unsafe_char)) {
        return None;
    }
    Some((path, query))
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.origin, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_table() {
        let o = |tls, host: &str, port| Origin {
            tls,
            host: host.into(),
            port,
        };
        let cases: &[(&str, Option<(Origin, &str)>)] = &[
            (
                "https://registry-1.docker.io",
                Some((o(true, "registry-1.docker.io", 443), "/")),
            ),
            (
                "http://127.0.0.1:5000/v2/",
                Some((o(false, "127.0.0.1", 5000), "/v2/")),
            ),
            (
                "http://[::1]:8080/x?y=1",
                Some((o(false, "::1", 8080), "/x?y=1")),
            ),
            (
                "https://Auth.Example.com/token?a=b",
                Some((o(true, "auth.example.com", 443), "/token?a=b")),
            ),
            ("ftp://x", None),
            ("http://user:pw@x/", None),
            ("http://x:notaport/", None),
            ("http:///x", None),
        ];
        for (input, want) in cases {
            let got = Url::parse(input).map(|u| (u.origin, u.path));
            assert_eq!(
                got.as_ref().map(|(o, p)| (o, p.as_str())),
                want.as_ref().map(|(o, p)| (o, *p)),
                "{input}"
            );
        }
        assert_eq!(o(true, "a", 443).authority(), "a");
        assert_eq!(o(false, "a", 5000).authority(), "a:5000");
        assert_eq!(o(false, "::1", 80).authority(), "[::1]");
    }

    #[test]
    fn join_locations() {
        let base = Url::parse("https://reg.example/v2/x/blobs/sha256:aa").unwrap();
        assert_eq!(
            base.join("https://cdn.example/a?b").unwrap().to_string(),
            "https://cdn.example/a?b"
        );
        assert_eq!(
            base.join("/other").unwrap().to_string(),
            "https://reg.example/other"
        );
        assert_eq!(base.join("//cdn2/x").unwrap().to_string(), "https://cdn2/x");
        assert!(base.join("relative/path").is_none());
        assert!(base.join("file:///etc/passwd").is_none());
    }
}
