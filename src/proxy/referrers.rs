//! Referrers (data path step 4, beside tags): `GET /v2/<name>/referrers/<digest>
//! [?artifactType=...]` answered with an OCI image index of the artifacts (signatures,
//! SBOMs, attestations) whose `subject` is `<digest>`. Never a 404: a registry without the API
//! makes clients fall back to the tag schema themselves, and ringcache does that for them.
//!
//! 1. An answer cached for (repository key, subject, `artifactType`) inside the upstream's tag
//!    freshness window (`tags.fresh_for`, stretched while its pull budget is low) is served
//!    with no upstream request ([`crate::referrers::Cache`]).
//! 2. Otherwise upstream's referrers API is asked (its `Link` pages followed, within
//!    [`limits::REFERRERS_PAGES_MAX`] and [`limits::REFERRERS_BODY_BYTES_MAX`]).
//! 3. If upstream has no API (404, or a 200 that is not an image index), the referrers tag
//!    schema's fallback tag `sha256-<hex>` is resolved upstream with HEAD (free on Docker
//!    Hub); its index, read from the store if a client pulled it there and otherwise fetched
//!    by digest and checked against it, lists the referrers. No such tag: an empty index.
//! 4. When upstream fails (unreachable, 5xx, 429), the last answer is served whatever its age
//!    (stale-if-error); with none, a fallback tag a client pulled through the tag path (in the
//!    tag cache, its index in the store) answers; else the error.
//!
//! `artifactType` is applied here to every answer (filtering twice changes nothing), so
//! `OCI-Filters-Applied: artifactType` is always true when the client asked for it. Concurrent
//! revalidations of one answer are not coalesced (they are rare, and cheap: small bodies).

use std::rc::Rc;
use std::time::Instant;

use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::http::response::Exchange;
use crate::limits;
use crate::media::OCI_INDEX;
use crate::metrics::Cache;
use crate::referrers::{self as pure, Answer, Source};
use crate::upstream::{status_error, MANIFEST_ACCEPT_DEFAULT};
use crate::worker::Worker;

use super::manifest::read_small;
use super::miss::upstream_headers;
use super::{io, Request};

/// What a referrers request asks for.
pub(super) struct Ask<'a> {
    pub(super) name: &'a str,
    pub(super) subject: Digest,
    pub(super) artifact_type: Option<&'a str>,
}

pub(super) async fn referrers(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    ask: Ask<'_>,
) -> Result<()> {
    let shared = &w.shared;
    let cache = &shared.referrers;
    let cached = cache.get(ask.name, &ask.subject, ask.artifact_type);
    if let Some(a) = &cached {
        if a.at.elapsed() < shared.live.fresh_for(x.upstream) {
            x.cache = Cache::Hit;
            return send(x, &ask, a).await;
        }
    }
    x.cache = Cache::Miss;
    let asked = Instant::now();
    let fetched = fetch(w, req, &ask, cached.as_ref(), asked).await;
    x.upstream_ms = Some(asked.elapsed().as_millis() as u64);
    match fetched {
        Ok(answer) => {
            cache.put(ask.name, &ask.subject, ask.artifact_type, answer.clone());
            send(x, &ask, &answer).await
        }
        Err(e)
            if matches!(
                e.kind,
                Kind::Unavailable | Kind::TooManyRequests | Kind::BadGateway
            ) =>
        {
            let (name, subject) = (ask.name, ask.subject);
            if let Some(a) = cached {
                tracing::warn!(name, %subject, error = %e, "upstream unavailable; serving the cached referrers");
                x.cache = Cache::Hit;
                return send(x, &ask, &a).await;
            }
            match from_pulled_tag(w, &ask).await {
                Some(a) => {
                    tracing::warn!(name, %subject, error = %e, "upstream unavailable; serving the referrers of the cached fallback tag");
                    x.cache = Cache::Hit;
                    send(x, &ask, &a).await
                }
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

async fn send(x: &mut Exchange<'_>, ask: &Ask<'_>, a: &Answer) -> Result<()> {
    let mut headers = vec![("Content-Type", OCI_INDEX)];
    if ask.artifact_type.is_some() {
        headers.push(("OCI-Filters-Applied", "artifactType"));
    }
    x.send_full(200, &headers, a.body.to_vec())
        .await
        .map_err(io)
}

/// The answer of `descriptors` (filtered here), confirmed at `at`.
fn answer(
    descriptors: Vec<serde_json::Value>,
    ask: &Ask<'_>,
    source: Source,
    at: Instant,
) -> Answer {
    let kept = pure::filter(descriptors, ask.artifact_type);
    Answer {
        body: pure::index(&kept).into(),
        at,
        source,
    }
}

/// Ask upstream: the API, else the fallback tag (steps 2 and 3 of the module's text).
async fn fetch(
    w: &Rc<Worker>,
    req: &Request,
    ask: &Ask<'_>,
    cached: Option<&Answer>,
    at: Instant,
) -> Result<Answer> {
    let via = req.via.as_deref();
    let mut tail = format!("referrers/{}", ask.subject);
    if let Some(t) = ask.artifact_type {
        tail.push_str("?artifactType=");
        tail.push_str(&crate::route::percent_encode(t));
    }
    let headers = upstream_headers(Some(OCI_INDEX), via);
    let resp = w.upstream.send("GET", ask.name, &tail, &headers).await?;
    match resp.status {
        200 => {
            let link = resp.header("link").map(str::to_string);
            let body = resp.read_capped(limits::REFERRERS_BODY_BYTES_MAX).await?;
            if let Some(mut all) = pure::descriptors(&body) {
                let mut read = body.len() as u64;
                let mut next = link
                    .as_deref()
                    .and_then(|l| pure::next_page(l, &ask.subject));
                let mut pages = 1;
                while let Some(tail) = next.take() {
                    if pages >= limits::REFERRERS_PAGES_MAX {
                        tracing::info!(name = ask.name, subject = %ask.subject, pages, "upstream's referrers have more pages than ringcache follows; answering with those read");
                        break;
                    }
                    let resp = w.upstream.send("GET", ask.name, &tail, &headers).await?;
                    if resp.status != 200 {
                        return Err(status_error(resp.status, Kind::BadGateway));
                    }
                    let link = resp.header("link").map(str::to_string);
                    let cap = limits::REFERRERS_BODY_BYTES_MAX.saturating_sub(read);
                    let body = resp.read_capped(cap).await?;
                    read += body.len() as u64;
                    all.extend(pure::descriptors(&body).ok_or_else(|| {
                        Error::upstream(Kind::BadGateway, "a referrers page is not an index")
                    })?);
                    next = link
                        .as_deref()
                        .and_then(|l| pure::next_page(l, &ask.subject));
                    pages += 1;
                }
                return Ok(answer(all, ask, Source::Api, at));
            }
            tracing::debug!(
                name = ask.name,
                "upstream's referrers answer is not an index: using the fallback tag"
            );
        }
        // No referrers API (the spec's answer of a registry without it).
        404 => resp.discard().await,
        s => {
            resp.discard().await;
            return Err(status_error(s, Kind::ManifestUnknown));
        }
    }
    fallback(w, req, ask, cached, at).await
}

/// The referrers tag schema: resolve `sha256-<hex>` with HEAD; its index lists the referrers.
async fn fallback(
    w: &Rc<Worker>,
    req: &Request,
    ask: &Ask<'_>,
    cached: Option<&Answer>,
    at: Instant,
) -> Result<Answer> {
    let tag = pure::fallback_tag(&ask.subject);
    let via = req.via.as_deref();
    let tail = format!("manifests/{tag}");
    let headers = upstream_headers(Some(MANIFEST_ACCEPT_DEFAULT), via);
    let resp = w.upstream.send("HEAD", ask.name, &tail, &headers).await?;
    match resp.status {
        200 => {}
        404 => return Ok(answer(Vec::new(), ask, Source::Empty, at)),
        s => return Err(status_error(s, Kind::ManifestUnknown)),
    }
    let index = resp
        .header("docker-content-digest")
        .and_then(|d| Digest::parse(d).ok());
    drop(resp);
    if let (Some(d), Some(c)) = (index, cached) {
        if c.source == Source::Tag(d) {
            // Unchanged since the answer we have: confirmed again, nothing to read.
            return Ok(Answer { at, ..c.clone() });
        }
    }
    let body = match index {
        Some(d) => match stored(w, d).await? {
            Some(body) => body,
            None => {
                let body = get(w, ask.name, &format!("manifests/{d}"), via).await?;
                if Digest::of(&body) != d {
                    return Err(Error::upstream(
                        Kind::BadGateway,
                        "the fallback tag's index does not match its digest",
                    ));
                }
                body
            }
        },
        None => get(w, ask.name, &tail, via).await?,
    };
    let source = Source::Tag(Digest::of(&body));
    // A tag of that name that is not an index names no referrers.
    let descriptors = pure::descriptors(&body).unwrap_or_default();
    Ok(answer(descriptors, ask, source, at))
}

/// A manifest upstream has in the request's repository (it just said so), GET whole.
async fn get(w: &Rc<Worker>, name: &str, tail: &str, via: Option<&str>) -> Result<Vec<u8>> {
    let headers = upstream_headers(Some(MANIFEST_ACCEPT_DEFAULT), via);
    let resp = w.upstream.send("GET", name, tail, &headers).await?;
    if resp.status != 200 {
        return Err(status_error(resp.status, Kind::ManifestUnknown));
    }
    resp.read_capped(limits::REFERRERS_BODY_BYTES_MAX).await
}

/// A manifest's bytes from the store, if committed there.
async fn stored(w: &Rc<Worker>, digest: Digest) -> Result<Option<Vec<u8>>> {
    let Some(entry) = w.shared.store.index.get(&digest) else {
        return Ok(None);
    };
    if entry.size > limits::REFERRERS_BODY_BYTES_MAX {
        return Ok(None);
    }
    Ok(read_small(w, digest, entry.size)
        .await?
        .map(|(_, body)| body))
}

/// Upstream is failing and no answer is cached: the fallback tag as a client last pulled it
/// through the tag path (its resolution in the tag cache, its index in the store).
async fn from_pulled_tag(w: &Rc<Worker>, ask: &Ask<'_>) -> Option<Answer> {
    let tag = pure::fallback_tag(&ask.subject);
    let r = w.shared.tags.get(ask.name, &tag, MANIFEST_ACCEPT_DEFAULT)?;
    let body = stored(w, r.digest).await.ok()??;
    let descriptors = pure::descriptors(&body)?;
    Some(answer(descriptors, ask, Source::Tag(r.digest), r.at))
}
