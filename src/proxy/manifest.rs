//! Manifests (data path steps 4–5): by digest (a hit, or a miss filled like a blob), by tag
//! (resolved upstream with HEAD within a freshness window, stale-if-error); a client's
//! `Accept` decides which stored manifest it may get ([`crate::media::Accepts`]).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::digest::Digest;
use crate::error::{Error, Kind, OrErr, Result, Side};
use crate::fill::task::Content;
use crate::http::response::Exchange;
use crate::limits;
use crate::media::Accepts;
use crate::metrics::Cache;
use crate::route::Method;
use crate::store::changes::Change;
use crate::store::tags::Revalidation;
use crate::store::{Entry, Ingest};
use crate::upstream::{status_error, MANIFEST_ACCEPT_DEFAULT};
use crate::worker::Worker;

use super::blob::open_committed;
use super::miss::{confirm, head_upstream, serve_miss, upstream_headers, Miss};
use super::{io, Request};

/// The client's Accept as the tag cache reads it: the client's, or every manifest type we know
/// when the client named none (or only `*/*`, which Distribution does not match OCI types on).
/// No allocation: this is on the path of a cached tag.
pub(super) fn accept_or_default(req: &Request) -> &str {
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

/// The Accept sent upstream for a tag: rebuilt from what the cache keys the answer on
/// ([`crate::media::canonical`]), so upstream answers exactly the kind of client the answer is
/// filed for.
fn upstream_accept(req: &Request) -> String {
    crate::media::canonical(accept_or_default(req))
        .unwrap_or_else(|| MANIFEST_ACCEPT_DEFAULT.to_string())
}

pub(super) async fn manifest_by_digest(
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
                    // Whether the repository has the digest, whatever this client accepts.
                    Box::pin(confirm(
                        w,
                        name,
                        &tail,
                        Some(MANIFEST_ACCEPT_DEFAULT),
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
                (Some(&upstream_accept(req)), req.via.as_deref()),
                Kind::ManifestUnknown,
                digest,
            ))
            .await;
        }
        // The fill serves every client that joins it: it asks for every type, and each client's
        // own Accept is applied here (refuse_unaccepted), not by upstream for the first one.
        let accept = MANIFEST_ACCEPT_DEFAULT;
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
pub(super) async fn send_manifest(
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
pub(super) fn refuse_unaccepted(req: &Request, media_type: &str) -> Result<()> {
    if crate::media::by_digest_refused(req.accept.as_deref(), media_type) {
        return Err(Error::client(
            Kind::ManifestUnknown,
            "the manifest's media type is not in the request's Accept",
        ));
    }
    Ok(())
}

pub(super) async fn read_small(
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

pub(super) async fn manifest_by_tag(
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
        // Offline (`ringcache.offline`), a cached tag is the answer whatever its age.
        if (r.at.elapsed() < shared.live.fresh_for(x.upstream) || shared.live.offline())
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
pub(super) async fn revalidate_tag(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    tag: &str,
    cached: Option<crate::store::tags::Resolution>,
) -> Result<()> {
    let shared = &w.shared;
    let tail = format!("manifests/{tag}");
    // The cache reads the client's own Accept; upstream is asked with the canonical one, which
    // names the same known types.
    let client_accept = accept_or_default(req);
    let accept = upstream_accept(req);
    let asked = Instant::now();
    // One HEAD per tag at a time: concurrent askers wait for it and use its answer.
    let resolved_for = Accepts::parse(client_accept);
    let lead = match shared.tags.revalidate(name, tag, client_accept) {
        Revalidation::Lead(guard) => Some(guard),
        Revalidation::Wait(done, seen) => {
            done.await;
            let fresh = shared
                .tags
                .get(name, tag, client_accept)
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
pub(super) async fn manifest_by_tag_get(
    w: &Rc<Worker>,
    req: &Request,
    x: &mut Exchange<'_>,
    name: &str,
    tag: &str,
    asked: Instant,
) -> Result<()> {
    let accept = upstream_accept(req);
    let resp = w
        .upstream
        .send(
            "GET",
            name,
            &format!("manifests/{tag}"),
            &upstream_headers(Some(&accept), req.via.as_deref()),
        )
        .await?;
    if resp.status != 200 {
        return Err(status_error(resp.status, Kind::ManifestUnknown));
    }
    let media_type: Arc<str> = resp.header("content-type").unwrap_or("").into();
    let body = resp.read_capped(limits::MANIFEST_BYTES_MAX).await?;
    // Only a manifest is stored and tagged: a JSON object with a schema version.
    let manifest = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.get("schemaVersion").is_some_and(|s| s.is_u64()));
    if !manifest {
        return Err(Error::upstream(
            Kind::BadGateway,
            "upstream answered a manifest GET with something that is not a manifest",
        ));
    }
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
    let resolved_for = Accepts::parse(&accept);
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
