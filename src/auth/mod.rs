//! Client authentication (`auth`), the front door between routing (step 3) and the proxy: a
//! request under `/v2/` must carry credentials the configured scheme accepts, else it gets 401
//! with the scheme's challenge and the OCI `UNAUTHORIZED` error, as the reference registry
//! answers. [`htpasswd`]: Basic credentials against bcrypt entries (checked on the job pool,
//! a success remembered per worker); [`token`]: Bearer JWTs from a token server, verified
//! against `rootcertbundle`'s keys, whose `access` must grant what the request asks.
//!
//! Refusals are counted by reason (`ringcache_auth_failures_total`) and logged at most once per
//! [`AUTH_LOG_EVERY`]; credentials and tokens never reach the log.

pub mod htpasswd;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::AuthConfig;
use crate::error::{Error, Kind, Side};
use crate::http::response::Exchange;
use crate::limits::AUTH_LOG_EVERY;
use crate::route::Route;

/// The configured scheme, loaded.
pub enum Auth {
    Htpasswd(htpasswd::Htpasswd),
    Token(token::Token),
}

/// What a request needs access to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// `/v2/`: any authenticated client.
    Base,
    /// Pull from a repository (manifests, blobs, tags, referrers).
    Pull(&'a str),
    /// `/v2/_catalog`: `registry:catalog:*`.
    Catalog,
}

/// Why a request was refused (indexes [`crate::metrics::AUTH_FAILURE_REASONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    Credentials,
    Busy,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Scope,
    /// Too many failed checks from the client's address lately (htpasswd).
    Throttled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        crate::metrics::AUTH_FAILURE_REASONS[self as usize]
    }
}

/// The repository name the credentials are checked against, from a route's name. Today the
/// same; when non-default upstreams get scoped keys (`ghcr.io//team/app`), this is where the
/// name a token server grants access to is taken out of the key.
pub fn auth_name(route_name: &str) -> &str {
    route_name
}

/// What `route` needs; `None`: nothing (`GET /`, the load balancers' liveness check).
pub fn access(route: &Route) -> Option<Access<'_>> {
    match route {
        Route::Root => None,
        Route::Base => Some(Access::Base),
        Route::Catalog { .. } => Some(Access::Catalog),
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Tags { name, .. }
        | Route::Referrers { name, .. } => Some(Access::Pull(auth_name(name))),
    }
}

impl Auth {
    /// Load `config`'s files. Also returns what start should report (e.g. htpasswd entries
    /// that are not bcrypt and so are ignored).
    pub fn load(config: &AuthConfig) -> Result<(Auth, Vec<String>), String> {
        match config {
            AuthConfig::Htpasswd { realm, path } => {
                let (h, notes) = htpasswd::Htpasswd::load(realm, path)?;
                Ok((Auth::Htpasswd(h), notes))
            }
            AuthConfig::Token {
                realm,
                service,
                issuer,
                root_cert_bundle,
            } => Ok((
                Auth::Token(token::Token::load(
                    realm,
                    service,
                    issuer,
                    root_cert_bundle,
                )?),
                Vec::new(),
            )),
        }
    }

    /// SIGHUP: read the files again (the htpasswd file, the root bundle) and take the new
    /// realm, service and issuer. Another scheme needs a restart. On error the running one stays.
    pub fn reload(&self, config: &AuthConfig) -> Result<Vec<String>, String> {
        match (self, config) {
            (Auth::Htpasswd(h), AuthConfig::Htpasswd { realm, path }) => h.reload(realm, path),
            (
                Auth::Token(t),
                AuthConfig::Token {
                    realm,
                    service,
                    issuer,
                    root_cert_bundle,
                },
            ) => t
                .reload(realm, service, issuer, root_cert_bundle)
                .map(|()| Vec::new()),
            _ => Err(format!(
                "auth: changing the scheme to {} needs a restart",
                config.kind()
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Htpasswd(_) => "htpasswd",
            Auth::Token(_) => "token",
        }
    }

    /// Check one request's `Authorization` value for `access`; `Err`: the challenge to send.
    pub async fn check(
        &self,
        access: Access<'_>,
        authorization: Option<&[u8]>,
        within: Duration,
        client: std::net::IpAddr,
    ) -> Result<(), (Reason, String)> {
        match self {
            Auth::Htpasswd(h) => h
                .check(authorization, within, client)
                .await
                .map_err(|r| (r, h.challenge())),
            Auth::Token(t) => t
                .check(access, authorization, now_secs())
                .map_err(|r| (r, t.challenge(access, r))),
        }
    }
}

/// The gate the connection calls before the proxy: `Ok(true)`, go on; `Ok(false)`, refused
/// and answered (401 and the challenge). Without `auth` configured: one atomic load.
pub async fn gate(
    live: &crate::live::Reloadable,
    route: &Route,
    authorization: Option<&[u8]>,
    peer: std::net::SocketAddr,
    x: &mut Exchange<'_>,
) -> Result<bool, Error> {
    let Some(auth) = live.auth.get() else {
        return Ok(true);
    };
    let Some(access) = access(route) else {
        return Ok(true);
    };
    let within = live.limits.read().unwrap().head_timeout;
    let Err((reason, challenge)) = auth.check(access, authorization, within, peer.ip()).await
    else {
        return Ok(true);
    };
    refused(reason, peer, access);
    let (kind, message) = match reason {
        Reason::Busy => (Kind::Unavailable, "too many credential checks in progress"),
        Reason::Throttled => (
            Kind::TooManyRequests,
            "too many failed authentications from this address; try again later",
        ),
        _ => (Kind::Unauthorized, "authentication required"),
    };
    let body = Error::new(kind, Side::Client, message).body().into_bytes();
    let status = kind.status();
    x.send_full(
        status,
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("WWW-Authenticate", &challenge),
        ],
        body,
    )
    .await
    .map_err(|e| Error::client(Kind::Internal, "write").with_cause(e))?;
    Ok(false)
}

/// Count a refusal, and log it unless another was logged within [`AUTH_LOG_EVERY`] (then it
/// is summed into the next line).
fn refused(reason: Reason, peer: std::net::SocketAddr, access: Access<'_>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    crate::metrics::AUTH_FAILURES[reason as usize].fetch_add(1, Ordering::Relaxed);
    // A missing credential is the first step of every client's handshake: counted, not logged.
    if reason == Reason::Missing {
        return;
    }
    let now = START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST_MS.load(Ordering::Relaxed);
    let every = AUTH_LOG_EVERY.as_millis() as u64;
    if (last != 0 && now < last + every)
        || LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        QUIET.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let also = QUIET.swap(0, Ordering::Relaxed);
    let what = match access {
        Access::Base => "/v2/",
        Access::Catalog => "_catalog",
        Access::Pull(name) => name,
    };
    tracing::warn!(
        %peer,
        reason = reason.as_str(),
        access = %what.escape_debug(),
        refused_since_last_line = also,
        "client authentication refused"
    );
}

/// Seconds since the epoch (tokens' `exp` and `nbf` are wall-clock).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_reference_asks() {
        use crate::route::{route, Method};
        let regs = crate::registry::Registries::new("registry.test", ["ghcr.io"]);
        for (path, want) in [
            ("/", None),
            ("/v2/", Some(Access::Base)),
            ("/v2/_catalog", Some(Access::Catalog)),
            ("/v2/team/app/tags/list", Some(Access::Pull("team/app"))),
            ("/v2/a/manifests/v1", Some(Access::Pull("a"))),
            // Another upstream's repository is checked under its key.
            (
                "/v2/ghcr.io/team/app/manifests/v1",
                Some(Access::Pull("ghcr.io//team/app")),
            ),
        ] {
            let r = route(Method::Get, path, &regs).unwrap().unwrap();
            assert_eq!(access(&r), want, "{path}");
        }
        assert_eq!(Reason::Scope.as_str(), "scope");
        assert_eq!(Reason::Missing.as_str(), "missing");
    }
}
