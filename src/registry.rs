//! Which upstream a request is for (data path step 3, with [`crate::route`]): ringcache mirrors
//! several registries at once, each an upstream under the registry name clients write
//! (`ghcr.io`, `harbor.corp:5000`). Pure: no IO, no clock.
//!
//! - `?ns=<registry>` (containerd's mirror protocol) selects that registry's upstream; the path
//!   is the plain repository name. An `ns` that is not a registry name is a 400, one that names
//!   no configured upstream a 404 `NAME_UNKNOWN` (containerd then tries its next host) — never
//!   the default upstream.
//! - Otherwise a path whose first component is a configured registry name
//!   (`/v2/ghcr.io/team/app/...`, what `registries.conf` mirrors and crane-style tools send)
//!   selects it, and the rest is the repository name.
//! - Otherwise the default upstream (`proxy:`), as with one upstream.
//!
//! A repository is known inside ringcache by its **key**: the plain name for the default
//! upstream (so a store written by one-upstream ringcache keeps its meaning), and
//! `<registry>//<name>` for the others. A name never holds `//` (an empty component) and a
//! registry name never holds `/`, so a key is never ambiguous: links, tag resolutions and
//! in-flight fills are per (upstream, repository) by construction, and a digest confirmed by
//! one upstream is never served under another upstream's name unconfirmed.

use crate::error::{Error, Kind};

/// Between the registry and the repository in a key of a non-default upstream.
pub const KEY_SEP: &str = "//";

/// The registry names clients use, by upstream (index 0: the default upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registries {
    /// `names[u]`: every name upstream `u` answers under; the first is its own.
    names: Vec<Vec<String>>,
}

/// Docker Hub's names: clients write any of them for its images.
pub const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

impl Registries {
    /// `default`: the default upstream's registry name (its remote URL's authority); Docker
    /// Hub's when it is one of Docker Hub's names. `table`: the other upstreams' names, in
    /// upstream order (upstream `i + 1`).
    pub fn new<'a>(default: &str, table: impl IntoIterator<Item = &'a str>) -> Registries {
        let default = default.to_ascii_lowercase();
        let first = if DOCKER_HUB.contains(&default.as_str()) {
            DOCKER_HUB.iter().map(|s| s.to_string()).collect()
        } else {
            vec![default]
        };
        let mut names = vec![first];
        names.extend(table.into_iter().map(|n| vec![n.to_ascii_lowercase()]));
        Registries { names }
    }

    /// One upstream, named by its authority (tests, tools).
    pub fn single(default: &str) -> Registries {
        Registries::new(default, [])
    }

    /// How many upstreams there are (the default included).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Upstream `u`'s own registry name (Docker Hub's is `docker.io`).
    pub fn name(&self, u: usize) -> &str {
        self.names.get(u).and_then(|n| n.first()).map_or("", |s| s)
    }

    /// The upstream a registry name belongs to (case-insensitive, as host names are).
    pub fn find(&self, registry: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|names| names.iter().any(|n| n.eq_ignore_ascii_case(registry)))
    }

    /// The upstream `?ns=` selects: 400 for a value that is not a registry name, 404
    /// `NAME_UNKNOWN` for a registry no upstream is configured for.
    pub fn by_ns(&self, ns: &str) -> Result<usize, Error> {
        if !is_registry_name(ns) {
            return Err(Error::client(
                Kind::BadRequest,
                "ns is not a registry name (host or host:port)",
            ));
        }
        self.find(ns).ok_or_else(|| {
            Error::client(
                Kind::NameUnknown,
                "this mirror has no upstream for the registry in ns",
            )
        })
    }

    /// The upstream a path's first component names, and the repository after it:
    /// `ghcr.io/team/app` → (ghcr.io's upstream, `team/app`). `None` when the first component
    /// names no configured registry (the whole is a repository of the default upstream).
    pub fn by_prefix<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        let (first, rest) = name.split_once('/')?;
        // `ghcr.io` is also a valid first component of a repository name: where the config
        // lists it, the operator means the registry.
        let u = self.find(first)?;
        (!rest.is_empty()).then_some((u, rest))
    }

    /// The key of repository `name` of upstream `u` (see the module's text).
    pub fn key(&self, u: usize, name: &str) -> String {
        if u == 0 {
            name.to_string()
        } else {
            let reg = self.name(u);
            let mut k = String::with_capacity(reg.len() + KEY_SEP.len() + name.len());
            k.push_str(reg);
            k.push_str(KEY_SEP);
            k.push_str(name);
            k
        }
    }

    /// A key's upstream and repository name. A key of no configured upstream (a registry
    /// removed from the config since it was recorded) is `None`.
    pub fn split<'a>(&self, key: &'a str) -> Option<(usize, &'a str)> {
        match key.split_once(KEY_SEP) {
            None => Some((0, key)),
            Some((reg, name)) => {
                let u = self.names[1..]
                    .iter()
                    .position(|n| n[0] == reg)
                    .map(|i| i + 1)?;
                Some((u, name))
            }
        }
    }

    /// Which upstream a key belongs to (0 for one no longer configured: such keys are only
    /// met in a store written under another config, and name nothing the default can serve,
    /// since every lookup is by a key built for the request).
    pub fn upstream_of(&self, key: &str) -> usize {
        self.split(key).map_or(0, |(u, _)| u)
    }
}

/// A registry name as clients write it: `host` or `host:port`, host a DNS name (letters,
/// digits, `-`, `.`), an IPv4 address or a bracketed IPv6 address. No userinfo, path, query or
/// whitespace.
pub fn is_registry_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(p) => ("v6", Some(p)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if !matches!(p.parse::<u32>(), Ok(1..=65535)) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Registries {
        Registries::new("registry-1.docker.io", ["ghcr.io", "harbor.corp:5000"])
    }

    #[test]
    fn registry_names() {
        for ok in [
            "ghcr.io",
            "GHCR.io",
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]",
            "[::1]:5000",
            "harbor.corp:5000",
            "a-b.c",
        ] {
            assert!(is_registry_name(ok), "{ok}");
        }
        for bad in [
            "",
            "user@ghcr.io",
            "ghcr.io/team",
            "ghcr.io ",
            " ghcr.io",
            "ghcr.io:",
            "ghcr.io:0",
            "ghcr.io:65536",
            "ghcr.io:5000:1",
            "-a.io",
            "a-.io",
            "a..io",
            ".io",
            "[::1",
            "[zz]",
            "[::1]x",
            "gh cr.io",
            "ghcr.io?x",
            "ghcr.io%2F",
            "ghcr.io\n",
        ] {
            assert!(!is_registry_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn ns_selects_or_refuses() {
        let r = regs();
        assert_eq!(r.by_ns("docker.io").unwrap(), 0);
        assert_eq!(r.by_ns("index.docker.io").unwrap(), 0);
        assert_eq!(r.by_ns("registry-1.docker.io").unwrap(), 0);
        assert_eq!(r.by_ns("ghcr.io").unwrap(), 1);
        assert_eq!(r.by_ns("GHCR.IO").unwrap(), 1);
        assert_eq!(r.by_ns("harbor.corp:5000").unwrap(), 2);
        assert_eq!(r.by_ns("quay.io").unwrap_err().kind, Kind::NameUnknown);
        // The port is part of the name: harbor.corp alone is another registry.
        assert_eq!(r.by_ns("harbor.corp").unwrap_err().kind, Kind::NameUnknown);
        assert_eq!(r.by_ns("a b").unwrap_err().kind, Kind::BadRequest);
        assert_eq!(r.by_ns("u@ghcr.io").unwrap_err().kind, Kind::BadRequest);
    }

    #[test]
    fn a_non_hub_default_answers_only_its_own_name() {
        let r = Registries::new("127.0.0.1:5001", ["ghcr.io"]);
        assert_eq!(r.by_ns("127.0.0.1:5001").unwrap(), 0);
        assert_eq!(r.by_ns("docker.io").unwrap_err().kind, Kind::NameUnknown);
        assert_eq!(r.name(0), "127.0.0.1:5001");
    }

    #[test]
    fn prefixes_select_configured_registries_only() {
        let r = regs();
        assert_eq!(r.by_prefix("ghcr.io/team/app"), Some((1, "team/app")));
        assert_eq!(
            r.by_prefix("docker.io/library/alpine"),
            Some((0, "library/alpine"))
        );
        assert_eq!(r.by_prefix("harbor.corp:5000/x"), Some((2, "x")));
        assert_eq!(r.by_prefix("quay.io/team/app"), None);
        assert_eq!(r.by_prefix("team/app"), None);
        assert_eq!(r.by_prefix("ghcr.io"), None);
        assert_eq!(r.by_prefix("ghcr.io/"), None);
    }

    #[test]
    fn keys_round_trip_and_never_collide() {
        let r = regs();
        assert_eq!(r.key(0, "team/app"), "team/app");
        assert_eq!(r.key(1, "team/app"), "ghcr.io//team/app");
        assert_eq!(r.split("team/app"), Some((0, "team/app")));
        assert_eq!(r.split("ghcr.io//team/app"), Some((1, "team/app")));
        assert_eq!(r.split("harbor.corp:5000//x"), Some((2, "x")));
        assert_eq!(r.split("quay.io//x"), None);
        // The default upstream's repository named `ghcr.io/team/app` is another key than
        // ghcr.io's `team/app`.
        assert_ne!(r.key(0, "ghcr.io/team/app"), r.key(1, "team/app"));
        assert_eq!(
            r.split(&r.key(0, "ghcr.io/team/app")),
            Some((0, "ghcr.io/team/app"))
        );
    }
}
