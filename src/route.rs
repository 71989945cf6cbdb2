//! Data path step 3: method + path become a [`Route`]. Names, tags and digests are validated
//! here against the OCI distribution-spec grammar, so nothing invalid reaches the store or
//! upstream; the registry a request is for (`?ns=`, a path prefix, else the default upstream)
//! is decided here too ([`crate::registry`]), and every name in a [`Route`] is the
//! repository's key. Pure: no IO, no clock.

use crate::digest::{Digest, DigestError};
use crate::error::{Error, Kind};
use crate::registry::Registries;

pub use crate::limits::NAME_BYTES_MAX;
pub use crate::limits::TAG_BYTES_MAX;

/// What a request asks for. Every `name` is a repository key ([`Registries::key`]): the plain
/// name for the default upstream, `<registry>//<name>` for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /` on the main listener: liveness for load balancers.
    Root,
    /// `GET /v2/`: API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    Tags {
        name: String,
        page: Page,
    },
    /// The repositories cached from one upstream.
    Catalog {
        upstream: usize,
        page: Page,
    },
    /// `GET /v2/<name>/referrers/<digest>[?artifactType=<media type>]` (distribution-spec
    /// v1.1 "Listing Referrers"), served by [`crate::proxy`]'s `referrers`.
    Referrers {
        name: String,
        digest: Digest,
        /// The `artifactType` filter, decoded and checked against the media type grammar.
        artifact_type: Option<String>,
    },
}

impl Route {
    /// The upstream the request is for (0, the default, for `/` and `/v2/`).
    pub fn upstream(&self, regs: &Registries) -> usize {
        match self {
            Route::Root | Route::Base => 0,
            Route::Catalog { upstream, .. } => *upstream,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name, .. }
            | Route::Referrers { name, .. } => regs.upstream_of(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Pagination parameters (`n`, `last`) of `tags/list` and `_catalog`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub n: Option<u32>,
    pub last: Option<String>,
}

/// The request method, reduced to what routing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Anything else: PUT, POST, PATCH, DELETE, OPTIONS... This is a read-only cache.
    Other,
}

impl Method {
    pub fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

/// Route a request. `target` is the request-target as sent (path plus optional query).
/// `Ok(None)` means no such route (plain 404 like the reference registry).
pub fn route(method: Method, target: &str, regs: &Registries) -> Result<Option<Route>, Error> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    if path == "/" {
        return if method == Method::Other {
            Err(unsupported())
        } else {
            Ok(Some(Route::Root))
        };
    }
    // `/v2` must end the path or be followed by `/`: `/v2x/...` is no route (and the byte
    // after `/v2` may begin a multi-byte character, so it is never skipped blindly).
    let rest = match path.strip_prefix("/v2") {
        Some("") => "",
        Some(r) => match r.strip_prefix('/') {
            Some(r) => r,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    // Writes are refused before anything else is looked at: the body is never read.
    if method == Method::Other {
        return Err(unsupported());
    }
    if path.contains('%') {
        return Err(Error::client(Kind::NameInvalid, "percent-encoded path"));
    }
    // `?ns=`: containerd names the registry; the path holds the plain repository name.
    let ns = match ns_of(query)? {
        Some(ns) => Some(regs.by_ns(&ns)?),
        None => None,
    };
    if rest.is_empty() {
        return Ok(Some(Route::Base));
    }
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog {
            upstream: ns.unwrap_or(0),
            page: page(query)?,
        }));
    }
    if let Some(reg) = rest.strip_suffix("/_catalog") {
        if ns.is_none() {
            if let Some(u) = regs.find(reg) {
                return Ok(Some(Route::Catalog {
                    upstream: u,
                    page: page(query)?,
                }));
            }
        }
    }
    // The repository's key: by `ns`, else by a configured registry prefix, else the default.
    let key = |name: &str| -> Result<String, Error> {
        let (u, name) = match ns {
            Some(u) => (u, name),
            None => regs.by_prefix(name).unwrap_or((0, name)),
        };
        if is_name(name) {
            Ok(regs.key(u, name))
        } else {
            Err(Error::client(Kind::NameInvalid, "invalid repository name"))
        }
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Route::Tags {
            name: key(name)?,
            page: page(query)?,
        }));
    }
    let Some((prefix, last)) = rest.rsplit_once('/') else {
        return Ok(None);
    };
    let Some((name, kind)) = prefix.rsplit_once('/') else {
        return Ok(None);
    };
    match kind {
        "manifests" => {
            let name = key(name)?;
            let reference = if last.contains(':') {
                Reference::Digest(digest_checked(last)?)
            } else if is_tag(last) {
                Reference::Tag(last.to_string())
            } else {
                return Err(Error::client(Kind::TagInvalid, "invalid tag"));
            };
            Ok(Some(Route::Manifest { name, reference }))
        }
        "blobs" => {
            let name = key(name)?;
            Ok(Some(Route::Blob {
                name,
                digest: digest_checked(last)?,
            }))
        }
        "referrers" => {
            let name = key(name)?;
            Ok(Some(Route::Referrers {
                name,
                digest: digest_checked(last)?,
                artifact_type: artifact_type(query)?,
            }))
        }
        _ => Ok(None),
    }
}

fn unsupported() -> Error {
    Error::client(
        Kind::Unsupported,
        "ringcache is a read-only pull-through cache",
    )
}

fn digest_checked(s: &str) -> Result<Digest, Error> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Invalid => Error::client(Kind::DigestInvalid, "invalid digest"),
        DigestError::UnsupportedAlgorithm => {
            Error::client(Kind::DigestInvalid, "unsupported digest algorithm")
        }
    })
}

/// The `artifactType` query parameter of a referrers request, decoded: a media type
/// (RFC 6838 §4.2, no parameters); more than one is refused (the spec defines one).
fn artifact_type(query: &str) -> Result<Option<String>, Error> {
    let mut found = None;
    for pair in query.split('&') {
        let Some(v) = pair.strip_prefix("artifactType=") else {
            continue;
        };
        let bad = || Error::client(Kind::BadRequest, "artifactType is not a media type");
        // A media type holds no space: a raw `+` is the `+` of `+json`, not a space (clients
        // that do not escape it are common).
        let v = percent_decode(&v.replace('+', "%2B")).ok_or_else(bad)?;
        if found.is_some() {
            return Err(Error::client(
                Kind::BadRequest,
                "more than one artifactType",
            ));
        }
        if !is_media_type(&v) {
            return Err(bad());
        }
        found = Some(v);
    }
    Ok(found)
}

/// A media type without parameters (RFC 6838 §4.2): `type/subtype`, each a restricted name of
/// 1 to 127 characters starting with a letter or digit.
pub fn is_media_type(s: &str) -> bool {
    let name = |n: &str| {
        let b = n.as_bytes();
        !b.is_empty()
            && b.len() <= 127
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(c))
    };
    match s.split_once('/') {
        Some((t, sub)) => name(t) && name(sub),
        None => false,
    }
}

/// The `ns` query parameter, decoded (`None` when absent; a second `ns` is refused). Borrowed
/// unless it holds an escape: containerd sends registry names as they are.
fn ns_of(query: &str) -> Result<Option<std::borrow::Cow<'_, str>>, Error> {
    let mut found = None;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("ns=") {
            if found.is_some() {
                return Err(Error::client(Kind::BadRequest, "more than one ns"));
            }
            found = Some(if v.contains(['%', '+']) {
                percent_decode(v)
                    .ok_or_else(|| Error::client(Kind::BadRequest, "bad query"))?
                    .into()
            } else {
                v.into()
            });
        } else if pair == "ns" {
            return Err(Error::client(Kind::BadRequest, "ns without a value"));
        }
    }
    Ok(found)
}

/// OCI name grammar: components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_BYTES_MAX && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) if alnum(first) && alnum(last) => {}
        _ => return false,
    }
    // Every `b[i]` below is under a `i < b.len()` guard.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics: ".", "_", "__" or "-"+.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// OCI tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    match tag.as_bytes().split_first() {
        Some((&first, rest)) => {
            tag.len() <= TAG_BYTES_MAX
                && word(first)
                && rest.iter().all(|&x| word(x) || x == b'.' || x == b'-')
        }
        None => false,
    }
}

fn page(query: &str) -> Result<Page, Error> {
    let mut page = Page::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| Error::client(Kind::BadRequest, "bad query"))?;
        match k {
            "n" => {
                let n = v
                    .parse::<u32>()
                    .map_err(|_| Error::client(Kind::BadRequest, "invalid pagination n"))?;
                page.n = Some(n);
            }
            "last" => page.last = Some(v),
            _ => {}
        }
    }
    Ok(page)
}

/// Decode `%XX` escapes and `+` in a query value; `None` for a malformed escape or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // `b[i]` is under the loop's guard; the escape's two bytes are taken with `get`.
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Exactly two hex digits (`from_str_radix` alone would take `+1`). `get` is
                // `None` for an escape cut short at the end.
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encode a query value (tags and names need no escapes but `/`; anything odd is escaped).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn hub() -> Registries {
        Registries::new("registry-1.docker.io", ["ghcr.io", "harbor.corp:5000"])
    }

    fn r(method: &str, target: &str) -> Result<Option<Route>, Kind> {
        route(Method::parse(method), target, &hub()).map_err(|e| e.kind)
    }

    #[test]
    fn the_registry_comes_from_ns_or_a_configured_prefix() {
        let tag = |n: &str| {
            Ok(Some(Route::Manifest {
                name: n.into(),
                reference: Reference::Tag("1".into()),
            }))
        };
        let cases: &[(&str, Result<Option<Route>, Kind>)] = &[
            ("/v2/team/app/manifests/1", tag("team/app")),
            ("/v2/team/app/manifests/1?ns=docker.io", tag("team/app")),
            (
                "/v2/team/app/manifests/1?ns=ghcr.io",
                tag("ghcr.io//team/app"),
            ),
            (
                "/v2/team/app/manifests/1?ns=GHCR.IO",
                tag("ghcr.io//team/app"),
            ),
            ("/v2/ghcr.io/team/app/manifests/1", tag("ghcr.io//team/app")),
            ("/v2/docker.io/library/a/manifests/1", tag("library/a")),
            (
                "/v2/harbor.corp:5000/x/manifests/1",
                tag("harbor.corp:5000//x"),
            ),
            ("/v2/harbor.corp:5001/x/manifests/1", Err(Kind::NameInvalid)),
            // With ns, the path is the plain name, whatever its first component.
            (
                "/v2/ghcr.io/team/app/manifests/1?ns=docker.io",
                tag("ghcr.io/team/app"),
            ),
            ("/v2/quay.io/team/app/manifests/1", tag("quay.io/team/app")),
            (
                "/v2/team/app/manifests/1?ns=quay.io",
                Err(Kind::NameUnknown),
            ),
            ("/v2/team/app/manifests/1?ns=a%20b", Err(Kind::BadRequest)),
            ("/v2/team/app/manifests/1?ns=a/b", Err(Kind::BadRequest)),
            (
                "/v2/team/app/manifests/1?ns=u%40ghcr.io",
                Err(Kind::BadRequest),
            ),
            ("/v2/team/app/manifests/1?ns=", Err(Kind::BadRequest)),
            ("/v2/team/app/manifests/1?ns", Err(Kind::BadRequest)),
            (
                "/v2/team/app/manifests/1?ns=ghcr.io&ns=docker.io",
                Err(Kind::BadRequest),
            ),
            ("/v2/?ns=quay.io", Err(Kind::NameUnknown)),
            ("/v2/?ns=ghcr.io", Ok(Some(Route::Base))),
            (
                "/v2/_catalog?ns=ghcr.io",
                Ok(Some(Route::Catalog {
                    upstream: 1,
                    page: Page::default(),
                })),
            ),
            (
                "/v2/ghcr.io/_catalog",
                Ok(Some(Route::Catalog {
                    upstream: 1,
                    page: Page::default(),
                })),
            ),
            (
                "/v2/ghcr.io/team/app/tags/list",
                Ok(Some(Route::Tags {
                    name: "ghcr.io//team/app".into(),
                    page: Page::default(),
                })),
            ),
        ];
        for (target, want) in cases {
            assert_eq!(&r("GET", target), want, "{target}");
        }
    }

    #[test]
    fn routes_table() {
        let d = Digest::parse(D).unwrap();
        let tag = |n: &str, t: &str| {
            Ok(Some(Route::Manifest {
                name: n.into(),
                reference: Reference::Tag(t.into()),
            }))
        };
        let cases: Vec<(&str, String, Result<Option<Route>, Kind>)> = vec![
            ("GET", "/v2/".into(), Ok(Some(Route::Base))),
            ("GET", "/v2".into(), Ok(Some(Route::Base))),
            ("HEAD", "/v2/".into(), Ok(Some(Route::Base))),
            ("GET", "/".into(), Ok(Some(Route::Root))),
            (
                "GET",
                "/v2/library/alpine/manifests/3.20".into(),
                tag("library/alpine", "3.20"),
            ),
            (
                "HEAD",
                "/v2/a/b/c/manifests/latest".into(),
                tag("a/b/c", "latest"),
            ),
            (
                "GET",
                format!("/v2/alpine/manifests/{D}"),
                Ok(Some(Route::Manifest {
                    name: "alpine".into(),
                    reference: Reference::Digest(d),
                })),
            ),
            (
                "GET",
                format!("/v2/x/blobs/{D}"),
                Ok(Some(Route::Blob {
                    name: "x".into(),
                    digest: d,
                })),
            ),
            (
                "GET",
                "/v2/x/tags/list?n=10&last=v1".into(),
                Ok(Some(Route::Tags {
                    name: "x".into(),
                    page: Page {
                        n: Some(10),
                        last: Some("v1".into()),
                    },
                })),
            ),
            (
                "GET",
                "/v2/_catalog".into(),
                Ok(Some(Route::Catalog {
                    upstream: 0,
                    page: Page::default(),
                })),
            ),
            ("GET", "/v2/x/tags/list?n=abc".into(), Err(Kind::BadRequest)),
            (
                "GET",
                "/v2/UPPER/manifests/latest".into(),
                Err(Kind::NameInvalid),
            ),
            (
                "GET",
                "/v2/a/../b/manifests/latest".into(),
                Err(Kind::NameInvalid),
            ),
            (
                "GET",
                "/v2/a%2fb/manifests/latest".into(),
                Err(Kind::NameInvalid),
            ),
            (
                "GET",
                "/v2/a//b/manifests/latest".into(),
                Err(Kind::NameInvalid),
            ),
            ("GET", "/v2/a/manifests/-bad".into(), Err(Kind::TagInvalid)),
            (
                "GET",
                "/v2/a/manifests/sha256:abc".into(),
                Err(Kind::DigestInvalid),
            ),
            ("GET", "/v2/a/blobs/latest".into(), Err(Kind::DigestInvalid)),
            (
                "GET",
                "/v2/a/blobs/sha512:abcd".into(),
                Err(Kind::DigestInvalid),
            ),
            ("GET", "/v2/a/unknown/latest".into(), Ok(None)),
            ("GET", "/v2/a".into(), Ok(None)),
            ("GET", "/metrics".into(), Ok(None)),
            (
                "PUT",
                "/v2/a/manifests/latest".into(),
                Err(Kind::Unsupported),
            ),
            (
                "POST",
                "/v2/a/blobs/uploads/".into(),
                Err(Kind::Unsupported),
            ),
            (
                "PATCH",
                "/v2/a/blobs/uploads/123".into(),
                Err(Kind::Unsupported),
            ),
            ("DELETE", format!("/v2/a/blobs/{D}"), Err(Kind::Unsupported)),
            // `/v2` is a whole path segment: anything but `/` after it is no route.
            ("GET", "/v2é".into(), Ok(None)),
            ("GET", "/v2é/x/manifests/latest".into(), Ok(None)),
            ("GET", "/v2\u{80}".into(), Ok(None)),
            ("GET", "/v2_ok/x/manifests/latest".into(), Ok(None)),
            ("GET", "/v2x".into(), Ok(None)),
            ("PUT", "/v2x/a/manifests/latest".into(), Ok(None)),
            ("GET", "/v2?x=1".into(), Ok(Some(Route::Base))),
            ("GET", "/v2//".into(), Ok(None)),
            (
                "GET",
                "/v2/é/manifests/latest".into(),
                Err(Kind::NameInvalid),
            ),
            ("GET", "/v2/a/manifests/é".into(), Err(Kind::TagInvalid)),
            ("GET", "/v2/a/tags/listé".into(), Ok(None)),
            (
                "GET",
                format!("/v2/a/b/referrers/{D}?artifactType=x%2Fy"),
                Ok(Some(Route::Referrers {
                    name: "a/b".into(),
                    digest: d,
                    artifact_type: Some("x/y".into()),
                })),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?n=1&artifactType=application/spdx+json"),
                Ok(Some(Route::Referrers {
                    name: "a".into(),
                    digest: d,
                    artifact_type: Some("application/spdx+json".into()),
                })),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?artifactType=application/spdx%2Bjson&ns=ghcr.io"),
                Ok(Some(Route::Referrers {
                    name: "ghcr.io//a".into(),
                    digest: d,
                    artifact_type: Some("application/spdx+json".into()),
                })),
            ),
            (
                "HEAD",
                format!("/v2/a/referrers/{D}"),
                Ok(Some(Route::Referrers {
                    name: "a".into(),
                    digest: d,
                    artifact_type: None,
                })),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?artifactType=x"),
                Err(Kind::BadRequest),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?artifactType=x/y;p=1"),
                Err(Kind::BadRequest),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?artifactType=x/y&artifactType=x/z"),
                Err(Kind::BadRequest),
            ),
            (
                "GET",
                format!("/v2/a/referrers/{D}?artifactType=%zz"),
                Err(Kind::BadRequest),
            ),
            (
                "GET",
                "/v2/a/referrers/latest".into(),
                Err(Kind::DigestInvalid),
            ),
            (
                "GET",
                format!("/v2/A/referrers/{D}"),
                Err(Kind::NameInvalid),
            ),
            ("GET", "/v2/referrers/x".into(), Ok(None)),
            (
                "GET",
                "/v2/a/referrers/manifests/v1".into(),
                tag("a/referrers", "v1"),
            ),
        ];
        for (m, t, want) in cases {
            assert_eq!(r(m, &t), want, "{m} {t}");
        }
    }

    #[test]
    fn name_grammar() {
        for ok in [
            "a",
            "a/b",
            "a-b",
            "a--b",
            "a__b",
            "a_b",
            "a.b",
            "0",
            "library/alpine",
        ] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a..b", "a___b", "-a", "a-", "a.", "a_.b", "a b", "..",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(!is_name(&"a".repeat(256)));
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!is_tag(bad), "{bad}");
        }
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        for bad in ["%zz", "%+1", "%-1", "%1", "%", "%é", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        assert_eq!(percent_encode("library/alpine:1"), "library%2Falpine%3A1");
    }

    use proptest::prelude::*;

    /// Path pieces that make near-valid targets: grammar edges, separators, the route
    /// keywords, and bytes that are not ASCII.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_string()),
            Just("v2".to_string()),
            Just("manifests".to_string()),
            Just("blobs".to_string()),
            Just("tags/list".to_string()),
            Just("referrers".to_string()),
            Just("_catalog".to_string()),
            Just(D.to_string()),
            Just("latest".to_string()),
            Just("?n=1&last=a%2F".to_string()),
            "[a-z0-9._-]{1,8}",
            "[a-zA-Z0-9._:%/?&=+-]{1,8}",
            any::<char>().prop_map(String::from),
            ".{0,6}",
        ]
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            // Anything at all.
            ".{0,64}",
            // `/v2` then pieces, with or without a separating slash.
            (
                prop::bool::ANY,
                prop::collection::vec((prop::bool::ANY, piece()), 0..8)
            )
                .prop_map(|(slash, pieces)| {
                    let mut t = String::from(if slash { "/v2/" } else { "/v2" });
                    for (sep, p) in pieces {
                        if sep {
                            t.push('/');
                        }
                        t.push_str(&p);
                    }
                    t
                }),
        ]
    }

    /// A key: a valid name, of a configured upstream.
    fn key_ok(key: &str) -> bool {
        hub().split(key).is_some_and(|(_, name)| is_name(name))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Never panics; whatever routes carries only names and tags that pass the grammar.
        #[test]
        fn prop_route_names_are_valid(
            method in prop_oneof![Just("GET"), Just("HEAD"), Just("PUT")],
            target in target(),
        ) {
            if let Ok(Some(route)) = route(Method::parse(method), &target, &hub()) {
                match route {
                    Route::Manifest { name, reference } => {
                        prop_assert!(key_ok(&name), "{name:?}");
                        if let Reference::Tag(t) = reference {
                            prop_assert!(is_tag(&t), "{t:?}");
                        }
                    }
                    Route::Blob { name, .. }
                    | Route::Tags { name, .. }
                    | Route::Referrers { name, .. } => prop_assert!(key_ok(&name), "{name:?}"),
                    Route::Root | Route::Base | Route::Catalog { .. } => {}
                }
                prop_assert!(target.starts_with("/v2/") || target.starts_with("/v2?")
                    || target == "/v2" || target == "/" || target.starts_with("/?"));
            }
        }

        /// Decoding never panics, and undoes encoding.
        #[test]
        fn prop_percent_roundtrip(s in ".{0,32}", raw in ".{0,32}") {
            prop_assert_eq!(percent_decode(&percent_encode(&s)), Some(s));
            let _ = percent_decode(&raw);
        }
    }
}
