//! `serve(request)`: the one place where hit, miss, fill and bypass are decided (data path
//! steps 4–8), one file per noun: `blob`, `manifest`, `listing`, `referrers`; a miss follows the
//! digest's fill (`miss`), and a fill the store cannot take is finished straight from
//! upstream ([`bypass`]). Everything here is by digest once a tag is resolved.

mod blob;
pub mod bypass;
mod listing;
mod manifest;
mod miss;
mod referrers;
#[cfg(test)]
mod tests;

use std::rc::Rc;

use crate::error::{Error, Kind, Result, Side};
use crate::http::parse::RangeSpec;
use crate::http::response::Exchange;
use crate::metrics::Type;
use crate::route::{Method, Reference, Route};
use crate::worker::Worker;

use blob::blob;
use listing::{catalog, tags_list};
use manifest::{manifest_by_digest, manifest_by_tag};

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
        Route::Catalog { upstream, page } => Box::pin(catalog(w, x, *upstream, page)).await,
        Route::Referrers {
            name,
            digest,
            artifact_type,
        } => {
            let ask = referrers::Ask {
                name,
                subject: *digest,
                artifact_type: artifact_type.as_deref(),
            };
            Box::pin(referrers::referrers(w, req, x, ask)).await
        }
    }
}
