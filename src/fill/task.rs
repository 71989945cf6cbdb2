//! The fill task (data path steps 6–7): GET the content upstream, append each piece to the
//! ingest file while hashing it, publish the byte count, then verify and commit. Owned by its
//! [`Lease`], not by any client.

use std::rc::Rc;
use std::sync::Arc;

use super::Lease;
use crate::error::Kind;
use crate::limits::{CHUNK_BYTES, MANIFEST_BYTES_MAX};
use crate::store::{Entry, Ingest};
use crate::upstream::status_error;
use crate::worker::Worker;

/// What is being filled: decides the upstream path, the Accept header and the size cap.
#[derive(Debug, Clone)]
pub enum Content {
    Blob,
    Manifest { accept: String },
}

/// Run one fill to its end: `Committed`, or `Failed` with the reason clients are told.
pub async fn run(worker: Rc<Worker>, lease: Lease, content: Content) {
    let fill = lease.fill().clone();
    let digest = fill.digest;
    let started = std::time::Instant::now();
    let (tail, accept, unknown, cap) = match &content {
        Content::Blob => (format!("blobs/{digest}"), None, Kind::BlobUnknown, u64::MAX),
        Content::Manifest { accept } => (
            format!("manifests/{digest}"),
            Some(accept.as_str()),
            Kind::ManifestUnknown,
            MANIFEST_BYTES_MAX,
        ),
    };
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let mut resp = match worker
        .upstream
        .send("GET", &fill.repo, &tail, &headers)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%digest, repo = %fill.repo, error = %e, "fill failed before the body");
            return lease.failed(e.kind);
        }
    };
    if resp.status != 200 {
        let kind = status_error(resp.status, unknown).kind;
        tracing::info!(%digest, repo = %fill.repo, status = resp.status, "upstream refused the fill");
        resp.discard().await;
        return lease.failed(kind);
    }
    let size = resp.content_length();
    if size.is_some_and(|s| s > cap) {
        tracing::warn!(%digest, ?size, "upstream manifest over the size cap");
        return lease.failed(Kind::BadGateway);
    }
    let media_type: Option<Arc<str>> = match content {
        Content::Manifest { .. } => resp.header("content-type").map(Into::into),
        Content::Blob => None,
    };
    let store = &worker.shared.store;
    let mut ingest = match Ingest::create(store) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(%digest, error = %e, "cannot create an ingest file");
            return lease.failed(Kind::Unavailable);
        }
    };
    lease.filling(ingest.shared_file(), size, media_type.clone());
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    loop {
        match resp.chunk(buf).await {
            Ok(Some(piece)) => {
                if ingest.written() + piece.len() as u64 > cap.min(size.unwrap_or(u64::MAX)) {
                    tracing::warn!(%digest, "upstream sent more than it declared or than the cap");
                    return lease.failed(Kind::BadGateway);
                }
                let (res, back) = ingest.append(piece).await;
                if let Err(e) = res {
                    tracing::error!(%digest, error = %e, "writing the ingest file failed");
                    return lease.failed(Kind::Unavailable);
                }
                buf = back;
                lease.progress(ingest.written());
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%digest, written = ingest.written(), error = %e, "upstream body failed");
                return lease.failed(Kind::BadGateway);
            }
        }
    }
    match ingest.commit(store, digest, size).await {
        Ok(n) => {
            let entry = store
                .index
                .insert(digest, Arc::new(Entry::new(n, media_type)));
            entry.link(&fill.repo);
            for repo in fill.take_links() {
                entry.link(&repo);
            }
            tracing::info!(%digest, repo = %fill.repo, bytes = n, followers = fill.followers(),
                ms = started.elapsed().as_millis() as u64, "fill committed");
            lease.committed(n);
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "fill not committed");
            lease.failed(Kind::BadGateway);
        }
    }
}
