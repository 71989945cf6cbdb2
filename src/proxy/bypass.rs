//! Bypass (data path step 8, disk faults): when the store cannot take content — disk full, read-only, I/O or
//! fsync errors — the fill publishes `Bypass` and every follower fetches what it still owes its
//! client straight from upstream: the whole response if it had sent nothing, or the rest of
//! its range with `Range: bytes=<pos>-<end>` if it was mid-body.
//!
//! The integrity rule still holds without the store: a follower sending a whole body hashes
//! it (the prefix it already sent is taken again from the fill's recent blocks, or re-read
//! from its own descriptor of the temp file, which stays readable after the unlink) and holds
//! the last byte back until the sha256 matches.
//! Partial (Range) responses are relayed as upstream sends them.

use monoio::buf::IoBuf;

use crate::digest::Digest;
use crate::error::{Error, Kind, OrErr, Result, Side};
use crate::fill::Fill;
use crate::http::client::Response;
use crate::http::parse::RangeSpec;
use crate::http::response::{send_within, Exchange};
use crate::limits::CHUNK_BYTES;
use crate::upstream::status_error;
use crate::worker::Worker;

/// What to fetch upstream.
pub struct Source<'a> {
    pub repo: &'a str,
    /// `blobs/<digest>` or `manifests/<digest>`.
    pub tail: &'a str,
    pub accept: Option<&'a str>,
    pub digest: Digest,
    /// The kind a 404 maps to.
    pub unknown: Kind,
    /// The client's `Via`, passed on upstream.
    pub via: Option<&'a str>,
}

fn range_value(r: RangeSpec) -> String {
    match r {
        RangeSpec::From {
            first,
            last: Some(last),
        } => format!("bytes={first}-{last}"),
        RangeSpec::From { first, last: None } => format!("bytes={first}-"),
        RangeSpec::Suffix(n) => format!("bytes=-{n}"),
    }
}

/// Serve a client that has been sent nothing yet, straight from upstream.
pub async fn serve_fresh(
    w: &Worker,
    x: &mut Exchange<'_>,
    src: &Source<'_>,
    range: Option<RangeSpec>,
    ctype: &str,
) -> Result<()> {
    let range_h = range.map(range_value);
    let mut headers = Vec::new();
    if let Some(a) = src.accept {
        headers.push(("Accept", a));
    }
    if let Some(r) = &range_h {
        headers.push(("Range", r.as_str()));
    }
    if let Some(v) = src.via {
        headers.push(("Via", v));
    }
    let resp = w.upstream.send("GET", src.repo, src.tail, &headers).await?;
    let digest = src.digest.to_string();
    match resp.status {
        200 => {
            let size = resp.content_length().ok_or_else(|| {
                Error::upstream(
                    Kind::BadGateway,
                    "upstream sent no length; cannot verify without the store",
                )
            })?;
            x.send_head(
                200,
                size,
                &[
                    ("Content-Type", ctype),
                    ("Docker-Content-Digest", &digest),
                    ("Accept-Ranges", "bytes"),
                ],
            )
            .await
            .or_err(Kind::Internal, Side::Client, "write to client")?;
            if x.head_only || size == 0 {
                return Ok(());
            }
            let hasher = ring::digest::Context::new(&ring::digest::SHA256);
            relay(x, resp, size, 0, Some((hasher, src.digest))).await
        }
        206 => {
            let length = resp.content_length().unwrap_or(0);
            let content_range = resp.header("content-range").unwrap_or("").to_string();
            x.send_head(
                206,
                length,
                &[
                    ("Content-Type", ctype),
                    ("Docker-Content-Digest", &digest),
                    ("Content-Range", &content_range),
                ],
            )
            .await
            .or_err(Kind::Internal, Side::Client, "write to client")?;
            relay(x, resp, length, 0, None).await
        }
        s => Err(status_error(s, src.unknown)),
    }
}

/// Finish a response whose head and `sent` bytes of `[start, end]` (of a body of `size`) went
/// out from the fill's temp file before the store failed.
#[allow(clippy::too_many_arguments)]
pub async fn serve_rest(
    w: &Worker,
    x: &mut Exchange<'_>,
    src: &Source<'_>,
    fill: &Fill,
    file: &std::fs::File,
    start: u64,
    end: u64,
    size: u64,
    sent: u64,
) -> Result<()> {
    let pos = start + sent;
    let whole = start == 0 && end + 1 == size;
    let hasher = if whole {
        Some((hash_prefix(fill, file, pos).await?, src.digest))
    } else {
        None
    };
    let (resp, skip) = w
        .upstream
        .get_range(
            src.repo,
            src.tail,
            (src.accept, src.via),
            pos,
            Some(end),
            src.unknown,
        )
        .await?;
    relay(x, resp, end + 1 - pos, skip, hasher).await
}

/// sha256 of the first `len` bytes of the fill's body: from its recent blocks where they
/// still hold them (the newest bytes may never have reached the file: the store failed), else
/// from `file`, read through a descriptor of our own.
async fn hash_prefix(fill: &Fill, file: &std::fs::File, len: u64) -> Result<ring::digest::Context> {
    let file = file
        .try_clone()
        .and_then(monoio::fs::File::from_std)
        .or_err(Kind::Internal, Side::Store, "reopen the temp file")?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    let mut pos = 0;
    while pos < len {
        let want = ((len - pos) as usize).min(CHUNK_BYTES);
        if let Some(piece) = fill.recent_piece(pos, want) {
            ctx.update(piece.bytes());
            pos += piece.len() as u64;
            continue;
        }
        buf.clear();
        let (res, slice) = file
            .read_at(monoio::buf::IoBufMut::slice_mut(buf, 0..want), pos)
            .await;
        buf = slice.into_inner();
        let n = res.or_err(Kind::Internal, Side::Store, "re-read the temp file")?;
        if n == 0 {
            return Err(Error::new(
                Kind::Internal,
                Side::Store,
                "temp file shorter than what was sent",
            ));
        }
        ctx.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(ctx)
}

/// Send `remaining` bytes of `resp`'s body (after dropping `skip` leading bytes). With a
/// hasher, the last byte goes out only if the whole body hashes to the digest.
async fn relay(
    x: &mut Exchange<'_>,
    mut resp: Response,
    mut remaining: u64,
    mut skip: u64,
    mut verify: Option<(ring::digest::Context, Digest)>,
) -> Result<()> {
    let mut buf = x.take_buf();
    buf.reserve(x.chunk());
    while remaining > 0 {
        let mut piece = match resp.chunk(buf).await? {
            Some(p) => p,
            None => {
                return Err(Error::upstream(
                    Kind::BadGateway,
                    "upstream body ended short",
                ))
            }
        };
        if skip > 0 {
            let n = (skip as usize).min(piece.len());
            piece.drain(..n);
            skip -= n as u64;
        }
        piece.truncate(remaining.min(piece.len() as u64) as usize);
        let n = piece.len();
        let mut send = n;
        if let Some((ctx, _)) = verify.as_mut() {
            ctx.update(&piece);
            if n as u64 == remaining {
                send = n - 1; // hold the last byte until the hash is checked
            }
        }
        let (res, back) = send_within(x.sock, piece.slice(0..send), x.send_stall).await;
        let Some(back) = back.map(|slice| slice.into_inner()) else {
            return Err(Error::client(Kind::Internal, "client stopped reading"));
        };
        res.or_err(Kind::Internal, Side::Client, "write to client")?;
        x.body_bytes += send as u64;
        remaining -= n as u64;
        if remaining == 0 {
            if let Some((ctx, digest)) = verify.take() {
                if Digest::from_ring(&ctx.finish()) != digest {
                    return Err(Error::upstream(
                        Kind::BadGateway,
                        "upstream content does not match its digest",
                    ));
                }
                let last = back[n - 1];
                x.write(vec![last]).await.or_err(
                    Kind::Internal,
                    Side::Client,
                    "write to client",
                )?;
                x.body_bytes += 1;
            }
        }
        buf = back;
    }
    x.put_buf(buf);
    Ok(())
}
