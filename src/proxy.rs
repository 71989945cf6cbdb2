//! `serve(request)`: the one place where hit, miss and fill are decided (data path steps
//! 4–7). Everything here is by digest once a tag is resolved.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::digest::Digest;
use crate::error::{Error, Kind, OrErr, Result, Side};
use crate::fill::bypass::{self, Source};
use crate::fill::follow;
use crate::fill::task::{self, Content};
use crate::fill::{Fill, Joined, State};
use crate::http::parse::{resolve_range, RangeResult, RangeSpec};
use crate::http::response::Exchange;
use crate::limits;
use crate::media::Accepts;
use crate::metrics::{Cache, Type};
use crate::route::{Method, Page, Reference, Route};
use crate::store::changes::Change;
use crate::store::tags::Revalidation;
use crate::store::{Entry, Ingest};
use crate::upstream::{status_error, MANIFEST_ACCEPT_DEFAULT};
use crate::worker::Worker;

/// A routed request.
pub struct Request {
    pub method: Method,
    pub route: Route,
    /// The client's Accept headers joined, forwarded upstream for manifests.
    pub accept: Option<String>,
    pub range: Option<RangeSpec>,
    /// The client's `Via` headers joined: refused if it holds our own entry (a loop), else
    /// passed on upstream before ours.
    pub via: Option<String>,
}

const JSON: &str = "application/json; charset=utf-8";
const OCTETS: &str = "application/octet-stream";

fn io(e: std::io::Error) -> Error {
    Error::new(Kind::Internal, Side::Client, "write to client").with_cause(e)
}

pub async fn serve(w: &Rc<Worker>, req: &Request, x: &mut Exchange<'_>) -> Result<()> {
    if req.via.as_deref().is_some_and(crate::upstream::via_loops) {
        return Err(Error::client(
            Kind::LoopDetected,
            "this request already passed through this ringcache (its Via)",
        ));
    }
    match &req.route {
        // Load balancers probe `GET /`: 503 while an operator has marked this node down.
        Route::Root
            if w.shared
                .health_down
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            x.send_full(
                503,
                &[("Content-Type", JSON)],
                br#"{"down":"manual"}"#.to_vec(),
            )
            .await
            .map_err(io)
        }
        Route::Root | Route::Base => x
            .send_full(200, &[("Content-Type", JSON)], b"{}".to_vec())
            .await
            .map_err(io),
        Route::Blob { name, digest } => {
            x.ty = Some(Type::Blob);
            blob(w, req, x, name, *digest).await
        }
        Route::Manifest {
            name,
            reference: Reference::Digest(d),
        } => {
            x.ty = Some(Type::Manifest);
            manifest_by_digest(w, req, x, name, *d, None).await
        }
        Route::Manifest {
            name,
            reference: Reference::Tag(tag),
        } => {
            x.ty = Some(Type::Manifest);
            manifest_by_tag(w, req, x, name, tag).await
        }
        // Cold paths are boxed here and below, so that the connection task (one per open
        // connection) is as small as the hit path needs.
        Route::Tags { name, page } => Box::pin(tags_list(w, req, x, name, page)).await,
        Route::Catalog { page } => Box::pin(catalog(w, x, page)).await,
        // Not served yet. A 404 whose code is not NAME_UNKNOWN is what the distribution-spec
        // prescribes for a registry without the API: clients fall back to the tag schema.
        Route::Referrers { .. } => Err(Error::client(
            Kind::ManifestUnknown,
            "referrers API not supported",
        )),
    }
}

// ----- blobs -----

async fn blob(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    digest: Digest,
) -> Result<()> {
    let store = &w.shared.store;
    loop {
        // The hot path: a descriptor this worker keeps, for an entry still in the index, already
        // found linked to this repository.
        if let Some(hit) = w.files.hit(&digest, name) {
            x.cache = Cache::Hit;
            return match send_range_head(req, x, digest, hit.size, OCTETS).await? {
                Some((start, end)) => x.send_file(&hit.file, start, end).await.map_err(io),
                None => Ok(()),
            };
        }
        if let Some(entry) = store.index.get(&digest) {
            if !entry.linked(name) {
                Box::pin(confirm(
                    w,
                    name,
                    &format!("blobs/{digest}"),
                    None,
                    Kind::BlobUnknown,
                    req.via.as_deref(),
                ))
                .await?;
                w.shared.changes.link(&entry, digest, name);
            }
            entry.touch();
            x.cache = Cache::Hit;
            if send_stored(w, req, x, digest, &entry, OCTETS).await? {
                return Ok(());
            }
            continue; // gone since the lookup: a miss
        }
        if req.method == Method::Head {
            return Box::pin(head_upstream(
                w,
                x,
                name,
                &format!("blobs/{digest}"),
                (None, req.via.as_deref()),
                Kind::BlobUnknown,
                digest,
            ))
            .await;
        }
        let tail = format!("blobs/{digest}");
        let miss = Miss {
            digest,
            tail: &tail,
            accept: None,
            unknown: Kind::BlobUnknown,
            ctype: OCTETS,
        };
        if Box::pin(serve_miss(w, req, x, name, Content::Blob, miss)).await? {
            return Ok(());
        }
        // Committed meanwhile: serve it as a hit.
    }
}

/// What a miss fetches upstream, and how its answer is labelled.
struct Miss<'a> {
    digest: Digest,
    /// `blobs/<digest>` or `manifests/<digest>`.
    tail: &'a str,
    accept: Option<&'a str>,
    /// The kind a 404 maps to.
    unknown: Kind,
    /// Content-Type when upstream gives none.
    ctype: &'a str,
}

/// Serve a miss: follow the fill of the digest, starting it if there is none. `Ok(false)` when
/// it was committed meanwhile (the caller serves a hit). A follower of a fill that runs under
/// another repository first has upstream confirm the digest in its own.
async fn serve_miss(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    content: Content,
    miss: Miss<'_>,
) -> Result<bool> {
    let Miss {
        digest,
        tail,
        accept,
        unknown,
        ctype,
    } = miss;
    let store = &w.shared.store;
    let (fill, cache) = match w
        .shared
        .fills
        .join_or_lead(digest, name, || store.index.contains(&digest))
    {
        Joined::Committed => return Ok(false),
        Joined::Busy => {
            return Err(Error::new(
                Kind::Unavailable,
                Side::Internal,
                "too many fills in flight",
            ))
        }
        Joined::Lead(lease, fill) => {
            tracing::debug!(%digest, worker = w.id, "fill started; following it");
            w.counters()
                .fills_started
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            monoio::spawn(task::run(w.clone(), lease, content, req.via.clone()));
            (fill, Cache::Miss)
        }
        Joined::Follow(fill) => {
            tracing::debug!(%digest, worker = w.id, followers = fill.followers(), "fill joined; following it");
            (fill, Cache::Coalesced)
        }
    };
    if fill.repo != name {
        confirm(w, name, tail, accept, unknown, req.via.as_deref()).await?;
        fill.add_link(name);
    }
    x.cache = cache;
    let src = Source {
        repo: &fill.repo,
        tail,
        accept,
        digest,
        unknown,
        via: req.via.as_deref(),
    };
    follow_fill(w, req, x, &fill, ctype, &src)
        .await
        .map(|()| true)
}

/// The headers of an upstream request: Accept, and the client's Via (passed on).
fn upstream_headers<'a>(accept: Option<&'a str>, via: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let accept = accept.map(|a| ("Accept", a));
    accept.into_iter().chain(via.map(|v| ("Via", v))).collect()
}

/// HEAD `tail` upstream in `name`: upstream confirms the content exists in that repository.
async fn confirm(
    w: &Rc<Worker>,
    name: &str,
    tail: &str,
    accept: Option<&str>,
    unknown: Kind,
    via: Option<&str>,
) -> Result<()> {
    let headers = upstream_headers(accept, via);
    let resp = w.upstream.send("HEAD", name, tail, &headers).await?;
    match resp.status {
        200 => Ok(()),
        s => Err(status_error(s, unknown)),
    }
}

/// Answer a HEAD for content we do not have from upstream's HEAD.
async fn head_upstream(
    w: &Rc<Worker>,
    x: &mut Exchange<'_>,
    name: &str,
    tail: &str,
    (accept, via): (Option<&str>, Option<&str>),
    unknown: Kind,
    digest: Digest,
) -> Result<()> {
    let headers = upstream_headers(accept, via);
    let resp = w.upstream.send("HEAD", name, tail, &headers).await?;
    if resp.status != 200 {
        return Err(status_error(resp.status, unknown));
    }
    let length = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let ctype = match unknown {
        Kind::ManifestUnknown => resp.header("content-type").unwrap_or(OCTETS).to_string(),
        _ => OCTETS.to_string(),
    };
    let digest = digest.to_string();
    x.send_head(
        200,
        length,
        &[
            ("Content-Type", &ctype),
            ("Docker-Content-Digest", &digest),
            ("Accept-Ranges", "bytes"),
        ],
    )
    .await
    .map_err(io)
}

/// Serve committed content from the store: a hit.
async fn send_stored(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    digest: Digest,
    entry: &Arc<Entry>,
    ctype: &str,
) -> Result<bool> {
    let Some(file) = open_committed(w, digest).await? else {
        return Ok(false);
    };
    let len = file
        .metadata()
        .await
        .or_err(Kind::Internal, Side::Store, "stat committed content")?
        .len();
    if len != entry.size {
        // The index and the disk disagree: never serve it; drop the entry so a fill repairs it.
        tracing::error!(%digest, len, indexed = entry.size, "committed file has the wrong size; dropping it from the index");
        w.shared.store.index.remove(&digest);
        return Err(Error::new(
            Kind::Internal,
            Side::Store,
            "committed content has the wrong size",
        ));
    }
    // Checked once against the index (assert in pairs): later hits reuse the descriptor.
    let file = w.files.put(digest, entry, file);
    match send_range_head(req, x, digest, len, ctype).await? {
        Some((start, end)) => x
            .send_file(&file, start, end)
            .await
            .map_err(io)
            .map(|_| true),
        None => Ok(true),
    }
}

/// Open committed content. `None`: the file is gone (expired or evicted between the index
/// lookup and now): the caller serves the request as a miss.
async fn open_committed(w: &Rc<Worker>, digest: Digest) -> Result<Option<monoio::fs::File>> {
    match monoio::fs::File::open(w.shared.store.blob_path(&digest)).await {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Removed since the lookup (or by hand): make sure the index agrees, then miss.
            if let Some(entry) = w.shared.store.index.get(&digest) {
                let path = w.shared.store.blob_path(&digest);
                if !path.exists() {
                    tracing::warn!(%digest, size = entry.size, "indexed content is missing on disk; refetching");
                    w.shared
                        .fills
                        .when_idle(&digest, || w.shared.store.index.remove(&digest));
                }
            }
            Ok(None)
        }
        Err(e) => {
            Err(Error::new(Kind::Internal, Side::Store, "open committed content").with_cause(e))
        }
    }
}

/// Resolve the Range against `size` and send the head. Returns the inclusive byte range the
/// body must carry, or `None` when there is no body to send (HEAD, empty, 416).
async fn send_range_head(
    req: &Request,
    x: &mut Exchange<'_>,
    digest: Digest,
    size: u64,
    ctype: &str,
) -> Result<Option<(u64, u64)>> {
    let digest = digest.text();
    let mut headers = [
        ("Content-Type", ctype),
        ("Docker-Content-Digest", digest.as_str()),
        ("Accept-Ranges", "bytes"),
        ("Content-Range", ""),
    ];
    let (status, start, end, content_range) = match resolve_range(req.range, size) {
        RangeResult::Full => (200, 0, size.saturating_sub(1), None),
        RangeResult::Partial { start, end } => {
            (206, start, end, Some(format!("bytes {start}-{end}/{size}")))
        }
        RangeResult::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            headers[3].1 = &cr;
            x.send_head(416, 0, &headers).await.map_err(io)?;
            return Ok(None);
        }
    };
    let n = match &content_range {
        Some(cr) => {
            headers[3].1 = cr;
            4
        }
        None => 3,
    };
    let length = if size == 0 { 0 } else { end + 1 - start };
    // Deferred: it goes out with the first body bytes (flushed by the connection otherwise).
    x.defer_head(status, length, &headers[..n]);
    Ok((!x.head_only && length > 0).then_some((start, end)))
}

/// Follow a fill: send the head as soon as upstream's size is known, stream what is received,
/// and the last byte once the body is verified.
async fn follow_fill(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    fill: &Arc<Fill>,
    ctype: &str,
    src: &Source<'_>,
) -> Result<()> {
    let limits = &w.shared.live.limits();
    let waited = Instant::now();
    let started = follow::start(fill).await;
    x.upstream_ms = Some(waited.elapsed().as_millis() as u64);
    let (file, size, media_type) = match started {
        State::Failed(kind) => return Err(Error::upstream(kind, "fill failed")),
        State::Bypass => {
            x.cache = Cache::Bypass;
            return bypass::serve_fresh(w, x, src, req.range, ctype).await;
        }
        State::Filling {
            file,
            size: Some(size),
            media_type,
        } if size > 0 => (file, size, media_type),
        // Unknown size (no Content-Length upstream) or empty: wait for the verified whole.
        State::Filling { .. } => match follow::finish(fill).await {
            Ok((file, size, media_type)) => (file, size, media_type),
            Err(Some(kind)) => return Err(Error::upstream(kind, "fill failed")),
            Err(None) => {
                x.cache = Cache::Bypass;
                return bypass::serve_fresh(w, x, src, req.range, ctype).await;
            }
        },
        State::Committed {
            file,
            size,
            media_type,
        } => (file, size, media_type),
        State::Pending => unreachable!("follow::start waits out Pending"),
    };
    let ctype = media_type.as_deref().unwrap_or(ctype).to_string();
    if x.ty == Some(Type::Manifest) {
        refuse_unaccepted(req, &ctype)?;
    }
    let stall = limits.upstream_body_stall * 2;
    let send_stall = limits.send_stall;
    let Some((start, end)) = send_range_head(req, x, fill.digest, size, &ctype).await? else {
        return Ok(());
    };
    x.flush_head().await.map_err(io)?;
    let buf = x.take_buf();
    let chunk = x.chunk();
    let mut sent = follow::Sent::default();
    let (res, buf) = follow::stream(
        fill, &file, start, end, size, x.sock, buf, chunk, send_stall, x.sendfile, stall, &mut sent,
    )
    .await;
    x.put_buf(buf);
    // What went out, also when the stream was cut (the access log's `bytes`).
    x.body_bytes += sent.body;
    x.sendfile_bytes += sent.by_sendfile;
    x.memory_bytes += sent.from_memory;
    match res {
        Ok(()) => Ok(()),
        Err(follow::Cut::Bypass { sent }) => {
            x.cache = Cache::Bypass;
            bypass::serve_rest(w, x, src, fill, &file, start, end, size, sent).await
        }
        Err(cut) => Err(
            Error::new(Kind::BadGateway, Side::Upstream, "follower cut short")
                .with_cause(format!("{cut:?}")),
        ),
    }
}

// ----- manifests -----

/// The Accept to send upstream for a manifest: the client's, or every manifest type we know
/// when the client named none (or only `*/*`, which Distribution does not match OCI types on).
fn accept_or_default(req: &Request) -> &str {
    match req.accept.as_deref() {
        Some(a)
            if a.split(',')
                .any(|t| t.split(';').next().unwrap_or("").trim() != "*/*") =>
        {
            a
        }
        _ => MANIFEST_ACCEPT_DEFAULT,
    }
}

async fn manifest_by_digest(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    digest: Digest,
    confirmed: Option<&str>,
) -> Result<()> {
    let store = &w.shared.store;
    loop {
        // The hot path, as for blobs: a kept descriptor that knows its media type.
        if let Some(hit) = w.files.hit(&digest, name) {
            if let Some(mt) = &hit.media_type {
                refuse_unaccepted(req, mt)?;
                x.cache = Cache::Hit;
                let d = digest.text();
                x.defer_head(
                    200,
                    hit.size,
                    &[("Content-Type", mt), ("Docker-Content-Digest", d.as_str())],
                );
                if x.head_only || hit.size == 0 {
                    return Ok(());
                }
                return x.send_file(&hit.file, 0, hit.size - 1).await.map_err(io);
            }
        }
        let tail = format!("manifests/{digest}");
        if let Some(entry) = store.index.get(&digest) {
            if !entry.linked(name) {
                if confirmed != Some(name) {
                    Box::pin(confirm(
                        w,
                        name,
                        &tail,
                        Some(accept_or_default(req)),
                        Kind::ManifestUnknown,
                        req.via.as_deref(),
                    ))
                    .await?;
                }
                w.shared.changes.link(&entry, digest, name);
            }
            entry.touch();
            x.cache = Cache::Hit;
            if Box::pin(send_manifest(w, req, x, digest, &entry)).await? {
                return Ok(());
            }
            continue; // gone since the lookup: a miss
        }
        if req.method == Method::Head {
            return Box::pin(head_upstream(
                w,
                x,
                name,
                &tail,
                (Some(accept_or_default(req)), req.via.as_deref()),
                Kind::ManifestUnknown,
                digest,
            ))
            .await;
        }
        let accept = accept_or_default(req);
        let content = Content::Manifest {
            accept: accept.to_string(),
        };
        let ctype = "application/vnd.oci.image.manifest.v1+json";
        let miss = Miss {
            digest,
            tail: &tail,
            accept: Some(accept),
            unknown: Kind::ManifestUnknown,
            ctype,
        };
        if Box::pin(serve_miss(w, req, x, name, content, miss)).await? {
            return Ok(());
        }
        // Committed meanwhile: serve it as a hit.
    }
}

/// Manifests are small (≤ 4 MiB): read whole from the store and sent from memory, with the
/// media type upstream gave, or sniffed from the JSON for content indexed at startup.
async fn send_manifest(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    digest: Digest,
    entry: &Arc<Entry>,
) -> Result<bool> {
    let Some((file, body)) = read_small(w, digest, entry.size).await? else {
        return Ok(false);
    };
    let media_type = match entry.media_type() {
        Some(mt) => mt,
        None => {
            let mt: Arc<str> = crate::media::sniff(&body).into();
            entry.set_media_type(mt.clone());
            mt
        }
    };
    // Later hits on this worker take the kept descriptor.
    w.files.put(digest, entry, file);
    refuse_unaccepted(req, &media_type)?;
    let d = digest.text();
    x.send_full(
        200,
        &[
            ("Content-Type", &media_type),
            ("Docker-Content-Digest", d.as_str()),
        ],
        body,
    )
    .await
    .map_err(io)
    .map(|_| true)
}

/// A manifest by digest is answered with its stored type, or refused as upstream would refuse
/// it (an OCI type the client's `Accept` does not name: [`crate::media::by_digest_refused`]).
fn refuse_unaccepted(req: &Request, media_type: &str) -> Result<()> {
    if crate::media::by_digest_refused(req.accept.as_deref(), media_type) {
        return Err(Error::client(
            Kind::ManifestUnknown,
            "the manifest's media type is not in the request's Accept",
        ));
    }
    Ok(())
}

async fn read_small(
    w: &Rc<Worker>,
    digest: Digest,
    size: u64,
) -> Result<Option<(monoio::fs::File, Vec<u8>)>> {
    if size > limits::MANIFEST_BYTES_MAX {
        return Err(Error::new(
            Kind::Internal,
            Side::Store,
            "manifest over the size cap",
        ));
    }
    let Some(file) = open_committed(w, digest).await? else {
        return Ok(None);
    };
    let buf = Vec::with_capacity(size as usize);
    let (res, buf) = file.read_exact_at(buf, 0).await;
    res.or_err(Kind::Internal, Side::Store, "read manifest")?;
    Ok(Some((file, buf)))
}

async fn manifest_by_tag(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    tag: &str,
) -> Result<()> {
    let shared = &w.shared;
    // Only an answer upstream would give this client's Accept ([`crate::media::reusable`]).
    let cached = w.tags.get(&shared.tags, name, tag, accept_or_default(req));
    if let Some(r) = &cached {
        // Fresh, and the content is here or on its way (a fill's followers may finish before
        // its commit): no upstream request. This worker's kept descriptor answers first
        // without touching anything shared.
        if r.at.elapsed() < shared.config.tags_fresh_for
            && (w.files.keeps(&r.digest)
                || shared.store.index.contains(&r.digest)
                || shared.fills.contains(&r.digest))
        {
            return manifest_by_digest(w, req, x, name, r.digest, Some(name)).await;
        }
    }
    Box::pin(revalidate_tag(w, req, x, name, tag, cached)).await
}

/// Resolve a tag upstream (HEAD; one at a time per tag), then serve the manifest by digest.
async fn revalidate_tag(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    tag: &str,
    cached: Option<crate::store::tags::Resolution>,
) -> Result<()> {
    let shared = &w.shared;
    let tail = format!("manifests/{tag}");
    let accept = accept_or_default(req).to_string();
    let asked = Instant::now();
    // One HEAD per tag at a time: concurrent askers wait for it and use its answer.
    let resolved_for = Accepts::parse(&accept);
    let lead = match shared.tags.revalidate(name, tag, &accept) {
        Revalidation::Lead(guard) => Some(guard),
        Revalidation::Wait(done, seen) => {
            done.await;
            let fresh = shared
                .tags
                .get(name, tag, &accept)
                .filter(|r| r.generation > seen);
            if let Some(r) = fresh {
                if shared.store.index.contains(&r.digest) || req.method == Method::Get {
                    return manifest_by_digest(w, req, x, name, r.digest, Some(name)).await;
                }
            }
            None // the leader failed, or answered another Accept: ask ourselves
        }
    };
    let stale = |e: Error| -> Result<Digest> {
        // stale-if-error: upstream down or rate-limiting, and we know what the tag was.
        match (&cached, e.kind) {
            (Some(r), Kind::Unavailable | Kind::TooManyRequests | Kind::BadGateway)
                if shared.store.index.contains(&r.digest) =>
            {
                tracing::warn!(name, tag, error = %e, "upstream unavailable; serving the cached tag");
                Ok(r.digest)
            }
            _ => Err(e),
        }
    };
    let digest = match w
        .upstream
        .send(
            "HEAD",
            name,
            &tail,
            &upstream_headers(Some(&accept), req.via.as_deref()),
        )
        .await
    {
        Err(e) => stale(e)?,
        Ok(resp) if resp.status == 200 => {
            let digest = resp
                .header("docker-content-digest")
                .and_then(|d| Digest::parse(d).ok());
            let media_type: Arc<str> = resp.header("content-type").unwrap_or("").into();
            match digest {
                Some(d) => {
                    shared
                        .changes
                        .tag(&shared.tags, name, tag, resolved_for, d, media_type, asked);
                    d
                }
                None => return manifest_by_tag_get(w, req, x, name, tag, asked).await,
            }
        }
        Ok(resp) if resp.status == 404 => {
            shared.changes.untag(&shared.tags, name, tag, resolved_for);
            return Err(Error::upstream(
                Kind::ManifestUnknown,
                "upstream has no such tag",
            ));
        }
        Ok(resp) => stale(status_error(resp.status, Kind::ManifestUnknown))?,
    };
    drop(lead); // the tag is resolved: wake the waiters before fetching the manifest
    manifest_by_digest(w, req, x, name, digest, Some(name)).await
}

/// Upstream answered the tag HEAD without a digest: GET the manifest by tag, hash it, store it.
async fn manifest_by_tag_get(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    tag: &str,
    asked: Instant,
) -> Result<()> {
    let resp = w
        .upstream
        .send(
            "GET",
            name,
            &format!("manifests/{tag}"),
            &upstream_headers(Some(accept_or_default(req)), req.via.as_deref()),
        )
        .await?;
    if resp.status != 200 {
        return Err(status_error(resp.status, Kind::ManifestUnknown));
    }
    let media_type: Arc<str> = resp.header("content-type").unwrap_or("").into();
    let body = resp.read_capped(limits::MANIFEST_BYTES_MAX).await?;
    let digest = Digest::of(&body);
    let store = &w.shared.store;
    if !store.index.contains(&digest) {
        let mut ingest =
            Ingest::create(store).or_err(Kind::Unavailable, Side::Store, "create ingest file")?;
        ingest
            .append(&body)
            .await
            .or_err(Kind::Unavailable, Side::Store, "write manifest")?;
        let n = ingest
            .commit(store, digest, Some(body.len() as u64))
            .await
            .or_err(Kind::Unavailable, Side::Store, "commit manifest")?;
        store
            .index
            .insert(digest, Arc::new(Entry::new(n, Some(media_type.clone()))));
        w.shared.changes.note(Change::Committed(digest));
    }
    let resolved_for = Accepts::parse(accept_or_default(req));
    w.shared.changes.tag(
        &w.shared.tags,
        name,
        tag,
        resolved_for,
        digest,
        media_type,
        asked,
    );
    manifest_by_digest(w, req, x, name, digest, Some(name)).await
}

// ----- listings -----

async fn tags_list(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    page: &Page,
) -> Result<()> {
    let mut tail = "tags/list".to_string();
    let mut sep = '?';
    if let Some(n) = page.n {
        tail.push_str(&format!("{sep}n={n}"));
        sep = '&';
    }
    if let Some(last) = &page.last {
        tail.push_str(&format!("{sep}last={}", crate::route::percent_encode(last)));
    }
    let resp = w
        .upstream
        .send(
            "GET",
            name,
            &tail,
            &upstream_headers(Some("application/json"), req.via.as_deref()),
        )
        .await?;
    if resp.status != 200 {
        return Err(status_error(resp.status, Kind::NameUnknown));
    }
    let link = resp.header("link").map(str::to_string);
    let body = resp.read_capped(limits::SMALL_BODY_BYTES_MAX).await?;
    let mut headers = vec![("Content-Type", JSON)];
    if let Some(l) = &link {
        headers.push(("Link", l));
    }
    x.send_full(200, &headers, body).await.map_err(io)
}

/// `_catalog` lists the repositories with cached content (the cache's own view), each once
/// under the name upstream knows it by: on Docker Hub `alpine` and `library/alpine` are one
/// repository, listed as `library/alpine`.
async fn catalog(w: &Rc<Worker>, x: &mut Exchange<'_>, page: &Page) -> Result<()> {
    let all = w
        .shared
        .store
        .index
        .repositories_as(|r| w.upstream.repo_name(r).into_owned());
    let start = page
        .last
        .as_ref()
        .map_or(0, |l| all.partition_point(|r| r <= l));
    let n = page.n.map_or(1000, |n| n as usize);
    let slice: Vec<&String> = all[start..].iter().take(n).collect();
    let body = serde_json::json!({ "repositories": slice })
        .to_string()
        .into_bytes();
    let mut headers = vec![("Content-Type", JSON)];
    let link;
    if start + slice.len() < all.len() && !slice.is_empty() {
        link = format!(
            "</v2/_catalog?last={}&n={n}>; rel=\"next\"",
            crate::route::percent_encode(slice[slice.len() - 1])
        );
        headers.push(("Link", &link));
    }
    x.send_full(200, &headers, body).await.map_err(io)
}
