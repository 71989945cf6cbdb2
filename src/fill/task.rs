//! The fill task (data path steps 6–7): GET the content upstream, read it straight into
//! ingest blocks — each read appended to the open block and published to followers at once,
//! a block sealed (then written and hashed behind) only when full or at the body's end, so
//! the cost per byte does not depend on how upstream cuts its body — then verify and commit.
//! Owned by its [`Lease`], not by any client.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Lease;
use crate::error::Kind;
use crate::limits::{FILL_RESUMES_MAX, FILL_RESUME_BACKOFF, MANIFEST_BYTES_MAX};
use crate::metrics::{Counters, Tallies};
use crate::store::changes::Change;
use crate::store::changes::Changes;
use crate::store::ingest::CommitError;
use crate::store::Store;
use crate::store::{Entry, Ingest};
use crate::upstream::{status_error, Upstreams};

/// What a fill uses of the worker that runs it (the worker implements it; the fill imports
/// nothing above itself): its upstream client, the store, its counters, the process-wide
/// tallies and the journal of changes.
pub trait Env: 'static {
    fn upstream(&self) -> &Upstreams;
    fn store(&self) -> &Store;
    fn counters(&self) -> &Counters;
    fn tallies(&self) -> &Tallies;
    fn changes(&self) -> &Changes;
}

/// What is being filled: decides the upstream path, the Accept header and the size cap.
#[derive(Debug, Clone)]
pub enum Content {
    Blob,
    Manifest { accept: String },
}

fn tally(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Run one fill to its end: `Committed`, or `Failed` with the reason clients are told. `via`
/// is the leader's `Via`, passed on upstream (a loop of proxies ends at the one that sees its
/// own entry come back).
pub async fn run<E: Env>(worker: Rc<E>, lease: Lease, content: Content, via: Option<String>) {
    let fill = lease.fill().clone();
    let digest = fill.digest;
    let started = std::time::Instant::now();
    // The upstream the fill's repository key belongs to: its counters.
    let up = worker.upstream().registries().upstream_of(&fill.repo);
    let (tail, accept, unknown, cap) = match &content {
        Content::Blob => (format!("blobs/{digest}"), None, Kind::BlobUnknown, u64::MAX),
        Content::Manifest { accept } => (
            format!("manifests/{digest}"),
            Some(accept.as_str()),
            Kind::ManifestUnknown,
            MANIFEST_BYTES_MAX,
        ),
    };
    let mut headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    if let Some(v) = &via {
        headers.push(("Via", v));
    }
    let ty = match content {
        Content::Blob => crate::metrics::Type::Blob,
        Content::Manifest { .. } => crate::metrics::Type::Manifest,
    };
    let mut resp = match worker
        .upstream()
        .send("GET", &fill.repo, &tail, &headers)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if e.kind == Kind::Unauthorized {
                // The upstream module warns about refused credentials, once a minute.
                tracing::debug!(%digest, repo = %fill.repo, error = %e, "fill failed before the body");
            } else {
                tracing::warn!(%digest, repo = %fill.repo, error = %e, "fill failed before the body");
            }
            tally(&worker.tallies().failed_upstream_status);
            return lease.failed(e.kind);
        }
    };
    if resp.status != 200 {
        let kind = status_error(resp.status, unknown).kind;
        tracing::info!(%digest, repo = %fill.repo, status = resp.status, "upstream refused the fill");
        resp.discard().await;
        tally(&worker.tallies().failed_upstream_status);
        return lease.failed(kind);
    }
    let size = resp.content_length();
    if size.is_some_and(|s| s > cap) {
        tracing::warn!(%digest, ?size, "upstream manifest over the size cap");
        tally(&worker.tallies().failed_upstream_body);
        return lease.failed(Kind::BadGateway);
    }
    let media_type: Option<Arc<str>> = match content {
        Content::Manifest { .. } => resp.header("content-type").map(Into::into),
        Content::Blob => None,
    };
    let store = worker.store();
    let mut ingest = match Ingest::create(store) {
        Ok(i) => i,
        Err(e) => {
            store.incidents.report("create", &e);
            tracing::debug!(%digest, error = %e, "cannot create an ingest file; bypassing the store");
            tally(&worker.counters().of(up).bypassed);
            return lease.bypass();
        }
    };
    lease.filling(
        ingest.shared_file(),
        ingest.recent(),
        size,
        media_type.clone(),
    );
    ingest.on_accepted(lease.publisher());
    let mut resumes = 0;
    // Bytes of the current response to drop before appending: upstream ignored our Range and
    // sent the body from its start. What we drop is what we already have; the sha256 at commit
    // covers the whole file, so a changed prefix upstream can never be committed.
    let mut skip = 0u64;
    // Where the fill's time goes, for its log line.
    let (mut read_us, mut pace_us, mut store_us) = (0u128, 0u128, 0u128);
    // The block being filled: reads are appended to it until it is full or the body ends.
    let mut open: Option<crate::store::ingest::OpenBlock> = None;
    loop {
        let block = match open.take() {
            Some(b) => b,
            None => {
                // Room for one more block in the store's pipeline, then a fresh block.
                let t0 = std::time::Instant::now();
                let ready = ingest.ready().await;
                store_us += t0.elapsed().as_micros();
                if let Err(e) = ready {
                    store.incidents.report("write", &e);
                    tracing::debug!(%digest, error = %e, "writing the ingest file failed; bypassing the store");
                    tally(&worker.counters().of(up).bypassed);
                    return lease.bypass();
                }
                ingest.open_block()
            }
        };
        // The furthest follower near enough; then upstream's next read lands straight in the
        // block.
        let t1 = std::time::Instant::now();
        fill.pace().await;
        pace_us += t1.elapsed().as_micros();
        let t2 = std::time::Instant::now();
        let got = resp.chunk_into(block).await;
        read_us += t2.elapsed().as_micros();
        match got {
            Ok(Some(mut block)) => {
                if skip > 0 {
                    let drop = (skip as usize).min(block.unpublished());
                    block.drop_unpublished(drop);
                    skip -= drop as u64;
                }
                let fresh = block.unpublished() as u64;
                if ingest.accepted() + fresh > cap.min(size.unwrap_or(u64::MAX)) {
                    tracing::warn!(%digest, "upstream sent more than it declared or than the cap");
                    tally(&worker.tallies().failed_upstream_body);
                    return lease.failed(Kind::BadGateway);
                }
                worker.counters().of(up).pulled_bytes[ty as usize]
                    .fetch_add(fresh, Ordering::Relaxed);
                if block.is_full() {
                    ingest.accept(block);
                } else {
                    // Followers get what came, at once; the block stays open for more.
                    ingest.publish(&block);
                    open = Some(block);
                }
            }
            Ok(None) if size.is_none_or(|s| ingest.accepted() == s) => {
                ingest.seal_open();
                break;
            }
            Ok(None) | Err(_) if size.is_some() => {
                // Upstream broke mid-body (error, stall or short body): keep what was
                // published (the read that failed took the block's handle; seal it from the
                // ingest's side) and resume where we are, with bounded retries and a
                // doubling pause.
                ingest.seal_open();
                let written = ingest.accepted();
                loop {
                    if resumes >= FILL_RESUMES_MAX {
                        tracing::warn!(%digest, written, "upstream body failed: resumes exhausted");
                        tally(&worker.tallies().failed_upstream_body);
                        return lease.failed(Kind::BadGateway);
                    }
                    monoio::time::sleep(FILL_RESUME_BACKOFF * 2u32.pow(resumes)).await;
                    tally(&worker.counters().of(up).resumes);
                    resumes += 1;
                    tracing::info!(%digest, written, resume = resumes, "upstream body broke; resuming with Range");
                    match worker
                        .upstream()
                        .get_range(
                            &fill.repo,
                            &tail,
                            (accept, via.as_deref()),
                            written,
                            None,
                            unknown,
                        )
                        .await
                    {
                        Ok((r, s)) => {
                            resp = r;
                            skip = s;
                            break;
                        }
                        Err(e) => tracing::info!(%digest, error = %e, "resume attempt failed"),
                    }
                }
            }
            Ok(None) => unreachable!("without a declared size the body ends when upstream says"),
            Err(e) => {
                tracing::warn!(%digest, written = ingest.written(), error = %e, "upstream body failed");
                tally(&worker.tallies().failed_upstream_body);
                return lease.failed(Kind::BadGateway);
            }
        }
    }
    crate::failpoint::hit("fill-before-verify").await;
    // Verified content may go out to followers now; the last writes, the fsync and the rename
    // follow.
    let pieces = ingest.pieces();
    let verified = ingest.verify(digest, size).await;
    if verified.is_ok() {
        lease.verified();
        if let Err(e) = ingest.flush().await {
            store.incidents.report("write", &e);
            tracing::debug!(%digest, error = %e, "writing the ingest file failed; bypassing the store");
            tally(&worker.counters().of(up).bypassed);
            return lease.bypass();
        }
    }
    let (writing, hashing) = ingest.busy();
    let result = match verified {
        Ok(()) => ingest.commit(store, digest, size).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => {
            let entry = store
                .index
                .insert(digest, Arc::new(Entry::new(n, media_type)));
            entry.link(&fill.repo);
            for repo in fill.take_links() {
                entry.link(&repo);
            }
            worker.changes().note(Change::Committed(digest));
            // upstream_ms / store_ms / paced_ms: time waiting on upstream reads, on the store's
            // jobs (a disk-bound fill shows a large store_ms) and on followers (Fill::pace);
            // write_ms / hash_ms: what the store's jobs took, in all.
            tracing::info!(%digest, repo = %fill.repo, bytes = n, pieces, followers = fill.followers(),
                ms = started.elapsed().as_millis() as u64, upstream_ms = (read_us / 1000) as u64,
                store_ms = (store_us / 1000) as u64, paced_ms = (pace_us / 1000) as u64, write_ms = writing.as_millis() as u64,
                hash_ms = hashing.as_millis() as u64, "fill committed");
            lease.committed(n);
        }
        Err(CommitError::Io(e)) => {
            // fsync, rename or the directory fsync failed: never trust that file. Followers
            // fetch and verify the rest themselves.
            store.incidents.report("commit", &e);
            tracing::debug!(%digest, error = %e, "commit failed; bypassing the store");
            tally(&worker.counters().of(up).bypassed);
            lease.bypass();
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "fill not committed");
            tally(&worker.tallies().failed_verification);
            lease.failed(Kind::BadGateway);
        }
    }
}

/// The fill's decisions against a canned upstream (a thread on loopback answering each
/// connection with the next scripted response) and a temp store: no binary, no sleeps.
#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Mutex;

    use super::*;
    use crate::config::Config;
    use crate::digest::Digest;
    use crate::fill::{Fills, Joined, State};
    use crate::store::changes::queue;

    struct TestEnv {
        upstream: Upstreams,
        store: Store,
        counters: Counters,
        tallies: Tallies,
        changes: Changes,
    }

    impl Env for TestEnv {
        fn upstream(&self) -> &Upstreams {
            &self.upstream
        }
        fn store(&self) -> &Store {
            &self.store
        }
        fn counters(&self) -> &Counters {
            &self.counters
        }
        fn tallies(&self) -> &Tallies {
            &self.tallies
        }
        fn changes(&self) -> &Changes {
            &self.changes
        }
    }

    /// An origin that answers the n-th connection with `responses[n]` and closes it; the
    /// request heads it got.
    fn origin(responses: Vec<Vec<u8>>) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = conn.write_all(&response);
            }
        });
        (addr, seen)
    }

    fn head(status: &str, headers: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n").into_bytes()
    }

    /// Run one fill of `body`'s digest against the scripted origin: the fill's end state, the
    /// environment and the requests upstream got.
    fn fill(
        body: &[u8],
        responses: Vec<Vec<u8>>,
    ) -> (State, Rc<TestEnv>, Vec<String>, tempfile::TempDir) {
        fill_with(body, responses, |_| {})
    }

    /// As [`fill`], with `before` run on the store's root once it is open.
    fn fill_with(
        body: &[u8],
        responses: Vec<Vec<u8>>,
        before: impl FnOnce(&std::path::Path),
    ) -> (State, Rc<TestEnv>, Vec<String>, tempfile::TempDir) {
        let (addr, seen) = origin(responses);
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_yaml(&format!(
            "proxy: {{remoteurl: http://{addr}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n",
            dir.path().display()
        ))
        .unwrap();
        let tls = crate::live::tls_of(&config).unwrap();
        let live = Arc::new(crate::live::Reloadable::new(&config, tls));
        let digest = Digest::of(body);
        let state = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let env = Rc::new(TestEnv {
                    upstream: Upstreams::new(&config, &config.limits, &[Arc::default()], &live),
                    store: {
                        let store = Store::open(dir.path()).unwrap();
                        before(dir.path());
                        store
                    },
                    counters: Counters::default(),
                    tallies: Tallies::default(),
                    changes: queue().0,
                });
                let fills = Fills::new(4);
                let Joined::Lead(lease, fill) = fills.join_or_lead(digest, "a/b", || false) else {
                    panic!("no fill led");
                };
                run(env.clone(), lease, Content::Blob, None).await;
                (fill.state(), env)
            });
        let seen = seen.lock().unwrap().clone();
        (state.0, state.1, seen, dir)
    }

    #[test]
    fn a_body_cut_midway_is_resumed_with_range_and_committed() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let half = body.len() / 2;
        let mut first = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
        first.extend_from_slice(&body[..half]);
        let mut rest = head(
            "206 Partial Content",
            &format!(
                "Content-Length: {}\r\nContent-Range: bytes {half}-{}/{}\r\n",
                body.len() - half,
                body.len() - 1,
                body.len()
            ),
        );
        rest.extend_from_slice(&body[half..]);
        let (state, env, seen, _dir) = fill(&body, vec![first, rest]);
        assert!(
            matches!(state, State::Committed { size, .. } if size == body.len() as u64),
            "{state:?}"
        );
        assert!(env.store.index.contains(&Digest::of(&body)));
        assert_eq!(env.counters.of(0).resumes.load(Ordering::Relaxed), 1);
        assert_eq!(seen.len(), 2);
        assert!(
            seen[1]
                .to_ascii_lowercase()
                .contains(&format!("range: bytes={half}-")),
            "{}",
            seen[1]
        );
    }

    #[test]
    fn a_body_that_fails_verification_publishes_failed_and_commits_nothing() {
        let body = vec![7u8; 100_000];
        let mut corrupt = body.clone();
        corrupt[50_000] ^= 1;
        let mut response = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
        response.extend_from_slice(&corrupt);
        let (state, env, _, dir) = fill(&body, vec![response]);
        assert!(matches!(state, State::Failed(_)), "{state:?}");
        assert!(!env.store.index.contains(&Digest::of(&body)));
        assert_eq!(env.tallies.failed_verification.load(Ordering::Relaxed), 1);
        // Nothing left behind: the temp file is gone, nothing under blobs/.
        let ingest = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .count();
        assert_eq!(ingest, 0);
    }

    /// The store cannot take the content (here `ingest/` is not a directory): the fill hands
    /// its followers over to upstream (Bypass) and counts it; nothing is committed.
    #[test]
    fn a_store_that_cannot_take_the_content_makes_the_fill_bypass() {
        let body = vec![9u8; 50_000];
        let mut response = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
        response.extend_from_slice(&body);
        let (state, env, _, _dir) = fill_with(&body, vec![response], |root| {
            std::fs::remove_dir_all(root.join("ingest")).unwrap();
            std::fs::write(root.join("ingest"), b"not a directory").unwrap();
        });
        assert!(matches!(state, State::Bypass), "{state:?}");
        assert_eq!(env.counters.of(0).bypassed.load(Ordering::Relaxed), 1);
        assert!(!env.store.index.contains(&Digest::of(&body)));
    }

    #[test]
    fn an_upstream_404_fails_the_fill_with_blob_unknown() {
        let (state, _, seen, _dir) =
            fill(b"x", vec![head("404 Not Found", "Content-Length: 0\r\n")]);
        assert!(
            matches!(state, State::Failed(Kind::BlobUnknown)),
            "{state:?}"
        );
        assert_eq!(seen.len(), 1);
    }
}
