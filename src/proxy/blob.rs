//! Blobs (data path steps 5–6): a hit streams the committed file (a kept descriptor, else
//! opened from the index), a miss follows the digest's fill ([`super::miss`]); ranges.

use std::rc::Rc;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, Kind, OrErr, Result, Side};
use crate::fill::task::Content;
use crate::http::parse::{resolve_range, RangeResult};
use crate::http::response::Exchange;
use crate::metrics::Cache;
use crate::route::Method;
use crate::store::Entry;
use crate::worker::Worker;

use super::miss::{confirm, head_upstream, serve_miss, Miss};
use super::{io, Request, OCTETS};

pub(super) async fn blob(
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

/// Serve committed content from the store: a hit.
pub(super) async fn send_stored(
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
pub(super) async fn open_committed(
    w: &Rc<Worker>,
    digest: Digest,
) -> Result<Option<monoio::fs::File>> {
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
pub(super) async fn send_range_head(
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
