//! The registry client (data path steps 4 and 6): requests to the configured upstream
//! registry with authentication and redirects, on the worker's HTTP client.
//!
//! Credentials go only to the configured upstream's origin and to its token realm; never to a
//! redirect target on another origin (Docker Hub redirects blobs to a CDN with a signed URL),
//! never into logs or responses.

pub mod auth;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::config::UpstreamConfig;
use crate::error::{Error, Kind, Result};
use crate::http::client::{Client, Request, Response, Url};
use crate::limits;
use auth::{Challenge, Tokens};

/// When upstream last answered and last failed to (ms on the monotonic clock; 0 = never),
/// shared by every worker's client, read by the health check.
#[derive(Default)]
pub struct Health {
    pub ok_ms: std::sync::atomic::AtomicU64,
    pub err_ms: std::sync::atomic::AtomicU64,
}

pub struct Upstream {
    health: std::sync::Arc<Health>,
    live: std::sync::Arc<crate::worker::Reloadable>,
    /// The reload generation this client's credentials, limits and tokens belong to.
    generation: std::cell::Cell<u64>,
    base: Url,
    credentials: RefCell<Option<(String, String)>>,
    docker_hub: bool,
    client: Client,
    tokens: RefCell<Tokens>,
}

/// Media types a manifest request accepts when the client sent no Accept header.
pub const MANIFEST_ACCEPT_DEFAULT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        client: Client,
        health: std::sync::Arc<Health>,
        live: std::sync::Arc<crate::worker::Reloadable>,
    ) -> Upstream {
        let host = config.url.origin.host.as_str();
        let credentials = live.credentials.read().unwrap().clone();
        Upstream {
            health,
            generation: std::cell::Cell::new(
                live.generation.load(std::sync::atomic::Ordering::Acquire),
            ),
            credentials: RefCell::new(credentials),
            live,
            base: config.url.clone(),
            docker_hub: matches!(
                host,
                "registry-1.docker.io" | "docker.io" | "index.docker.io"
            ),
            client,
            tokens: RefCell::new(Tokens::default()),
        }
    }

    /// The repository name upstream knows: Docker Hub's official images live under
    /// `library/`.
    pub fn repo_name<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        upstream_name(self.docker_hub, name)
    }

    /// `method` `/v2/<name>/<tail>` upstream, authenticating and following redirects.
    pub async fn send(
        &self,
        method: &str,
        name: &str,
        tail: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let name = self.repo_name(name);
        let scope = format!("repository:{name}:pull");
        let base_path = self.base.path.trim_end_matches('/');
        let mut url = Url {
            origin: self.base.origin.clone(),
            path: format!("{base_path}/v2/{name}/{tail}"),
        };
        self.send_url(method, &mut url, &scope, headers).await
    }

    /// `GET /v2/_catalog`-style requests that are not under a repository.
    pub async fn send_path(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let base_path = self.base.path.trim_end_matches('/');
        let mut url = Url {
            origin: self.base.origin.clone(),
            path: format!("{base_path}{path}"),
        };
        self.send_url(method, &mut url, scope, headers).await
    }

    /// After a reload (SIGHUP): take the new credentials and limits, drop cached tokens.
    fn refresh(&self) {
        let now = self
            .live
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        if now != self.generation.get() {
            self.generation.set(now);
            *self.credentials.borrow_mut() = self.live.credentials.read().unwrap().clone();
            self.client.set_limits(self.live.limits());
            *self.tokens.borrow_mut() = Tokens::default();
        }
    }

    async fn send_url(
        &self,
        method: &str,
        url: &mut Url,
        scope: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        self.refresh();
        let mut challenged = false;
        let mut hops = 0;
        loop {
            let same_origin = url.origin == self.base.origin;
            let authorization = if same_origin {
                self.authorization(scope)
            } else {
                None
            };
            let mut all: Vec<(&str, &str)> = headers.to_vec();
            if let Some(a) = &authorization {
                all.push(("Authorization", a));
            }
            let sent = self
                .client
                .send(&Request {
                    method,
                    url,
                    headers: &all,
                })
                .await;
            let now = crate::store::index::now_ms();
            let ok = matches!(&sent, Ok(r) if r.status < 500);
            let mark = if ok {
                &self.health.ok_ms
            } else {
                &self.health.err_ms
            };
            mark.store(now, std::sync::atomic::Ordering::Relaxed);
            let resp = sent?;
            match resp.status {
                401 if same_origin && !challenged => {
                    challenged = true;
                    let challenge = resp
                        .header("www-authenticate")
                        .and_then(auth::parse_challenge);
                    resp.discard().await;
                    match challenge {
                        Some(c) => self.answer_challenge(c, scope).await?,
                        None => {
                            return Err(Error::upstream(
                                Kind::Unauthorized,
                                "upstream refused without a usable challenge",
                            ))
                        }
                    }
                }
                301 | 302 | 303 | 307 | 308 => {
                    hops += 1;
                    if hops > limits::REDIRECTS_MAX {
                        return Err(Error::upstream(
                            Kind::BadGateway,
                            "too many upstream redirects",
                        ));
                    }
                    let next = resp.header("location").and_then(|l| url.join(l));
                    resp.discard().await;
                    *url = next.ok_or_else(|| {
                        Error::upstream(
                            Kind::BadGateway,
                            "upstream redirect to an unusable location",
                        )
                    })?;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// The Authorization header for a request to the upstream origin, if upstream has asked
    /// for one and we have it.
    fn authorization(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.borrow();
        match tokens.challenge.as_ref()? {
            Challenge::Basic => self
                .credentials
                .borrow()
                .as_ref()
                .map(|(u, p)| auth::basic(u, p)),
            Challenge::Bearer { .. } => tokens
                .get(scope, Instant::now())
                .map(|t| format!("Bearer {t}")),
        }
    }

    async fn answer_challenge(&self, challenge: Challenge, scope: &str) -> Result<()> {
        self.tokens.borrow_mut().challenge = Some(challenge.clone());
        match challenge {
            Challenge::Basic => {
                if self.credentials.borrow().is_none() {
                    return Err(Error::upstream(
                        Kind::Unauthorized,
                        "upstream requires credentials; none configured",
                    ));
                }
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let (token, ttl) = self
                    .fetch_token(
                        &realm,
                        service.as_deref(),
                        asked.as_deref().unwrap_or(scope),
                    )
                    .await?;
                self.tokens
                    .borrow_mut()
                    .put(scope, token, ttl, Instant::now());
                Ok(())
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let realm_url = Url::parse(realm).ok_or_else(|| {
            Error::upstream(Kind::Unauthorized, "token realm is not an http(s) URL")
        })?;
        let mut query = String::new();
        if let Some(s) = service {
            query.push_str(&format!("service={}&", crate::route::percent_encode(s)));
        }
        query.push_str(&format!("scope={}", crate::route::percent_encode(scope)));
        let sep = if realm_url.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = Url {
            origin: realm_url.origin.clone(),
            path: format!("{}{sep}{query}", realm_url.path),
        };
        let basic = self
            .credentials
            .borrow()
            .as_ref()
            .map(|(u, p)| auth::basic(u, p));
        let mut headers = vec![("Accept", "application/json")];
        if let Some(b) = &basic {
            headers.push(("Authorization", b));
        }
        let resp = self
            .client
            .send(&Request {
                method: "GET",
                url: &url,
                headers: &headers,
            })
            .await
            .map_err(|e| Error {
                kind: Kind::Unavailable,
                context: "token endpoint unreachable",
                ..e
            })?;
        let status = resp.status;
        let body = resp.read_capped(limits::SMALL_BODY_BYTES_MAX).await?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(Error::upstream(
                    Kind::Unauthorized,
                    "token endpoint refused the credentials",
                ))
            }
            _ => return Err(Error::upstream(Kind::Unavailable, "token endpoint failed")),
        }
        let t: auth::TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            Error::upstream(Kind::Unavailable, "token endpoint sent invalid JSON").with_cause(e)
        })?;
        let ttl = t.ttl();
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::upstream(Kind::Unavailable, "token endpoint sent no token"))?;
        Ok((token, ttl))
    }
}

/// Docker Hub keeps its official images under `library/`: `alpine` is `library/alpine` there.
pub fn upstream_name(docker_hub: bool, name: &str) -> std::borrow::Cow<'_, str> {
    if docker_hub && !name.contains('/') {
        format!("library/{name}").into()
    } else {
        name.into()
    }
}

impl Upstream {
    /// GET bytes `from..=to` (or `from..` to the end) of `tail` in `name`. Returns the response
    /// and how many of its leading bytes to skip: 0 for a 206 that starts at `from`, `from` for a
    /// 200 (upstream ignored the Range). Any other answer is an error; a 429/503 carrying
    /// `Retry-After` (seconds) is honoured, within `RETRY_AFTER_MAX`, before returning it.
    pub async fn get_range(
        &self,
        name: &str,
        tail: &str,
        accept: Option<&str>,
        from: u64,
        to: Option<u64>,
        unknown: Kind,
    ) -> Result<(Response, u64)> {
        let range = match to {
            Some(to) => format!("bytes={from}-{to}"),
            None => format!("bytes={from}-"),
        };
        let mut headers = vec![("Range", range.as_str())];
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        let resp = self.send("GET", name, tail, &headers).await?;
        match resp.status {
            206 => {
                let first = resp
                    .header("content-range")
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if first != Some(from) {
                    return Err(Error::upstream(
                        Kind::BadGateway,
                        "upstream answered another range",
                    ));
                }
                Ok((resp, 0))
            }
            200 => Ok((resp, from)),
            s => {
                if let Some(secs) = resp
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    let pause = Duration::from_secs(secs).min(limits::RETRY_AFTER_MAX);
                    tracing::info!(status = s, ?pause, "upstream asked to retry after a pause");
                    monoio::time::sleep(pause).await;
                }
                Err(status_error(s, unknown))
            }
        }
    }
}

/// The error a client is told for an upstream status that is not a success.
pub fn status_error(status: u16, unknown: Kind) -> Error {
    let kind = match status {
        404 => unknown,
        401 => Kind::Unauthorized,
        403 => Kind::Denied,
        429 => Kind::TooManyRequests,
        500..=599 => Kind::Unavailable,
        _ => Kind::BadGateway,
    };
    Error::upstream(kind, "upstream answered with an error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names() {
        for (hub, name, want) in [
            (true, "alpine", "library/alpine"),
            (true, "library/alpine", "library/alpine"),
            (true, "bitnami/redis", "bitnami/redis"),
            (false, "alpine", "alpine"),
        ] {
            assert_eq!(upstream_name(hub, name), want, "{hub} {name}");
        }
    }

    #[test]
    fn statuses_map_to_oci_errors() {
        for (status, kind) in [
            (404, Kind::BlobUnknown),
            (401, Kind::Unauthorized),
            (403, Kind::Denied),
            (429, Kind::TooManyRequests),
            (503, Kind::Unavailable),
            (418, Kind::BadGateway),
        ] {
            assert_eq!(
                status_error(status, Kind::BlobUnknown).kind,
                kind,
                "{status}"
            );
        }
    }
}
