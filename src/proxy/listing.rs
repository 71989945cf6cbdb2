//! Listings: `/v2/<name>/tags/list` and `/v2/_catalog`, relayed from upstream with their
//! pagination.

use std::rc::Rc;

use crate::error::{Kind, Result};
use crate::http::response::Exchange;
use crate::limits;
use crate::route::Page;
use crate::upstream::status_error;
use crate::worker::Worker;

use super::miss::upstream_headers;
use super::{io, Request, JSON};

pub(super) async fn tags_list(
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

/// `_catalog` lists one upstream's repositories with cached content (the cache's own view),
/// each once under the name upstream knows it by: on Docker Hub `alpine` and `library/alpine`
/// are one repository, listed as `library/alpine`.
pub(super) async fn catalog(
    w: &Rc<Worker>,
    x: &mut Exchange<'_>,
    upstream: usize,
    page: &Page,
) -> Result<()> {
    let regs = &w.shared.registries;
    let all = w.shared.store.index.repositories_as(|key| {
        let (u, name) = regs.split(key)?;
        (u == upstream).then(|| w.upstream.get(u).repo_name(name).into_owned())
    });
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
        let ns = match upstream {
            0 => String::new(),
            u => format!("&ns={}", crate::route::percent_encode(regs.name(u))),
        };
        link = format!(
            "</v2/_catalog?last={}&n={n}{ns}>; rel=\"next\"",
            crate::route::percent_encode(slice[slice.len() - 1])
        );
        headers.push(("Link", &link));
    }
    x.send_full(200, &headers, body).await.map_err(io)
}
