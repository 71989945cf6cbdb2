//! Which token realms may receive the upstream's credentials (the Bearer flow, data path steps
//! 4 and 6). A `WWW-Authenticate` challenge names its realm, and the realm is whatever the
//! upstream says: credentials sent to any realm named would hand them to any host an upstream
//! (or whoever answers for it) points at — the reference registry's CVE-2026-33540.
//!
//! The rule, pure and table-tested: the configured credentials go to a realm only when it is
//!
//! - on the upstream's own authority (scheme, host and port), or
//! - on a DNS name that shares the upstream's registrable domain (public suffix list), over the
//!   same scheme — `auth.docker.io` for `registry-1.docker.io` — never for an IP literal or
//!   `localhost`, which have no registrable domain: those must match the authority exactly, or
//! - one the operator allowed (`ringcache.upstream.token_realms`: scheme, host and port equal,
//!   and the path under the allowed one's).
//!
//! Any other realm is asked for an anonymous token.

use crate::http::url::{Origin, Url};

/// Whether the credentials configured for `upstream` may go to the token realm `realm`,
/// given the realms the operator allowed.
pub fn may_receive_credentials(upstream: &Origin, realm: &Url, allowed: &[Url]) -> bool {
    if realm.origin == *upstream {
        return true;
    }
    if allowed
        .iter()
        .any(|a| a.origin == realm.origin && path_within(&realm.path, &a.path))
    {
        return true;
    }
    if realm.origin.tls != upstream.tls {
        return false;
    }
    match (registrable(&upstream.host), registrable(&realm.origin.host)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The registrable domain of a DNS name (`docker.io` for `auth.docker.io`); `None` for an IP
/// literal, `localhost` (and names under it), or a name that is itself a public suffix.
fn registrable(host: &str) -> Option<&str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
    {
        return None;
    }
    psl::domain_str(host)
}

/// Whether the path of `target` (query dropped) is `prefix`'s path or under it, segment-wise
/// (`/token` is within `/token` and `/`; `/tokens` is not within `/token`).
fn path_within(target: &str, prefix: &str) -> bool {
    let path = |s: &str| s.split('?').next().unwrap_or("").to_string();
    let (target, prefix) = (path(target), path(prefix));
    let prefix = prefix.trim_end_matches('/');
    match target.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_decisions() {
        let url = |s: &str| Url::parse(s).unwrap();
        let allowed = [
            url("https://auth.partner.example:8443/oauth/"),
            url("http://10.0.0.9:5001/"),
        ];
        // (upstream, realm, credentials go there)
        let cases: &[(&str, &str, bool)] = &[
            // The upstream's own authority.
            (
                "https://registry.example",
                "https://registry.example/token",
                true,
            ),
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.1:5000/token?x=1",
                true,
            ),
            ("http://[::1]:5000", "http://[::1]:5000/token", true),
            // Docker Hub: another host of the same registrable domain.
            (
                "https://registry-1.docker.io",
                "https://auth.docker.io/token",
                true,
            ),
            ("https://ghcr.io", "https://ghcr.io/token", true),
            (
                "https://registry.example.com",
                "https://auth.example.com:8443/t",
                true,
            ),
            (
                "https://registry.example.com.",
                "https://auth.example.com/t",
                true,
            ),
            // ... but not over another scheme, nor another registrable domain.
            (
                "https://registry-1.docker.io",
                "http://auth.docker.io/token",
                false,
            ),
            (
                "https://registry-1.docker.io",
                "https://auth.docker.io.evil.example/t",
                false,
            ),
            (
                "https://registry.example.com",
                "https://example.net/token",
                false,
            ),
            (
                "https://registry.example",
                "https://auth.example/token",
                false,
            ),
            // A shared public suffix is not a registrable domain.
            ("https://a.github.io", "https://b.github.io/token", false),
            ("https://a.co.uk", "https://b.co.uk/token", false),
            // IP literals and localhost: the exact authority only.
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.1:5001/token",
                false,
            ),
            (
                "http://127.0.0.1:5000",
                "http://127.0.0.2:5000/token",
                false,
            ),
            ("https://registry.example", "https://10.1.2.3/token", false),
            ("https://registry.example", "https://[::1]/token", false),
            ("https://registry.example", "https://localhost/token", false),
            (
                "http://localhost:5000",
                "http://localhost:5001/token",
                false,
            ),
            (
                "http://a.localhost:5000",
                "http://b.localhost:5000/token",
                false,
            ),
            ("https://10.1.2.3", "https://10.1.2.3:8443/token", false),
            // Allowed by the operator: authority equal, path within.
            (
                "https://registry.example",
                "https://auth.partner.example:8443/oauth/token",
                true,
            ),
            (
                "https://registry.example",
                "https://auth.partner.example:8443/oauth",
                true,
            ),
            (
                "https://registry.example",
                "https://auth.partner.example:8443/oauthx",
                false,
            ),
            (
                "https://registry.example",
                "https://auth.partner.example/oauth/token",
                false,
            ),
            (
                "https://registry.example",
                "http://auth.partner.example:8443/oauth/t",
                false,
            ),
            (
                "https://registry.example",
                "http://10.0.0.9:5001/anything",
                true,
            ),
            (
                "https://registry.example",
                "http://10.0.0.9:5002/anything",
                false,
            ),
        ];
        for (upstream, realm, want) in cases {
            assert_eq!(
                may_receive_credentials(&url(upstream).origin, &url(realm), &allowed),
                *want,
                "{upstream} -> {realm}"
            );
        }
    }
}
