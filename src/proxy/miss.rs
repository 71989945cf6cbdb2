//! Misses (data path step 6): follow the digest's fill, leading it if there is none; upstream
//! confirms a digest in a repository other than the fill's; a fill the store cannot take is
//! finished straight from upstream ([`super::bypass`]).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::digest::Digest;
use crate::error::{Error, Kind, Result, Side};
use crate::fill::follow;
use crate::fill::task::{self, Content};
use crate::fill::{Fill, Joined, State};
use crate::http::response::Exchange;
use crate::metrics::{Cache, Type};
use crate::upstream::status_error;
use crate::worker::Worker;

use super::blob::send_range_head;
use super::bypass::{self, Source};
use super::manifest::refuse_unaccepted;
use super::{io, Request, OCTETS};

/// What a miss fetches upstream, and how its answer is labelled.
pub(super) struct Miss<'a> {
    pub(super) digest: Digest,
    /// `blobs/<digest>` or `manifests/<digest>`.
    pub(super) tail: &'a str,
    pub(super) accept: Option<&'a str>,
    /// The kind a 404 maps to.
    pub(super) unknown: Kind,
    /// Content-Type when upstream gives none.
    pub(super) ctype: &'a str,
}

/// Serve a miss: follow the fill of the digest, starting it if there is none. `Ok(false)` when
/// it was committed meanwhile (the caller serves a hit). A follower of a fill that runs under
/// another repository first has upstream confirm the digest in its own.
pub(super) async fn serve_miss(
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
    if w.shared.live.offline() {
        // Said here rather than by a fill that fails: no fill starts.
        return Err(crate::upstream::offline(unknown));
    }
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
                .of(x.upstream)
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
    // The follower's own repository (confirmed above when it is not the fill's): a bypass
    // fetches from its own registry, with its own credentials.
    let src = Source {
        repo: name,
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
pub(super) fn upstream_headers<'a>(
    accept: Option<&'a str>,
    via: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let accept = accept.map(|a| ("Accept", a));
    accept.into_iter().chain(via.map(|v| ("Via", v))).collect()
}

/// HEAD `tail` upstream in `name`: upstream confirms the content exists in that repository.
pub(super) async fn confirm(
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
pub(super) async fn head_upstream(
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

/// Follow a fill: send the head as soon as upstream's size is known, stream what is received,
/// and the last byte once the body is verified.
pub(super) async fn follow_fill(
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
