//! The in-repo test upstream: speaks the registry read API, counts every request, can demand
//! Bearer tokens from its own token realm (or name another realm), records the headers each
//! request carried, and injects faults (corrupt a byte, truncate, hold the body behind a gate,
//! pace it, interim 1xx answers, bytes past the body, tiny chunks, redirects of any path).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub enum Fault {
    #[default]
    None,
    /// Flip the byte at this offset (the body no longer matches its digest).
    Corrupt(usize),
    /// Send this many bytes of the body, then close (every time).
    Truncate(usize),
    /// Truncate like `Truncate`, on the first GET of the blob only.
    TruncateFirst(usize),
    /// Answer every GET with this status (and `Retry-After: 1` for 429/503), no body.
    Status(u16),
    /// Send this raw response head (bad framing) and then the body bytes as they are.
    RawHead(&'static str),
    /// Send this many bytes, then stall (no bytes, connection open) for 30 s, on the first
    /// GET only.
    StallFirst(usize),
    /// Hold the response head for 30 s on the first GET only.
    HeadStallFirst,
}

/// How the test upstream delimits a blob body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    #[default]
    Length,
    Chunked,
    /// No length: the body ends when the connection closes.
    Close,
    /// Chunked, in chunks of 1 to `max` bytes (sizes drawn from `seed`; all 1 when `max` is
    /// 1), written about 64 KiB of wire bytes at a time.
    Tiny {
        max: usize,
        seed: u64,
    },
}

#[derive(Clone, Default)]
pub struct Blob {
    pub data: Arc<Vec<u8>>,
    pub fault: Fault,
    /// Hold the response (after the head) until the gate opens.
    pub gated: bool,
    /// Pause after each 64 KiB piece (a slow upstream).
    pub pace: Option<Duration>,
    pub framing: Framing,
    /// Serve only under this repository (404 elsewhere), like a registry's access control.
    pub only_in: Option<String>,
    /// Answer a Range request with the whole body (200), as some servers do.
    pub ignore_range: bool,
    /// With `gated`: send this many bytes first, then wait for the gate.
    pub gate_at: usize,
    /// `(seed, len)`: the body is `image::pseudo_random(seed, len)`, produced as it is sent
    /// and never stored (`data` is then unused).
    pub generated: Option<(u64, usize)>,
    /// Send this many interim `100`/`103` responses before the final one, all of it (interims,
    /// head and the whole body) in one write (Length framing; a stored blob).
    pub interim: usize,
    /// Bytes sent after the body, in the same write as its last piece: a body longer than its
    /// Content-Length (Length framing).
    pub trailing: Option<&'static [u8]>,
    /// Answer a HEAD with the body too (a separate write right after the head).
    pub head_body: bool,
}

#[derive(Default)]
pub struct State {
    blobs: Mutex<HashMap<String, Blob>>,
    manifests: Mutex<HashMap<(String, String), (String, Vec<u8>)>>,
    counts: Mutex<HashMap<String, usize>>,
    /// (request line, Authorization header) for every request.
    seen: Mutex<Vec<(String, Option<String>)>>,
    arrived: Condvar,
    /// (user, password) the token realm demands; a token is required on /v2/ when set.
    bearer: Mutex<Option<(String, String)>>,
    gate: Mutex<bool>,
    gate_cv: Condvar,
    /// Answer blob GETs with 307 to this base URL + the same path.
    redirect: Mutex<Option<String>>,
    /// (request line, Range header) of every request that carried a Range.
    ranges: Mutex<Vec<(String, String)>>,
    /// GETs per blob digest so far (for faults on the first GET only).
    blob_gets: Mutex<HashMap<String, usize>>,
    /// Connections accepted so far.
    connections: std::sync::atomic::AtomicUsize,
    /// Status the token endpoint answers with instead of a token.
    token_status: Mutex<Option<u16>>,
    /// Pause before answering a manifest request (a slow upstream for tag HEADs).
    manifest_delay: Mutex<Option<Duration>>,
    /// (request line, every header as (lowercased name, value)) for every request.
    headers: Mutex<Vec<(String, Vec<(String, String)>)>>,
    /// The realm named in Bearer challenges instead of this upstream's own `/token`.
    realm: Mutex<Option<String>>,
    /// (path fragment, Location): a request whose path contains the fragment is answered
    /// `302` to that location (checked before anything else but `/token`).
    redirects: Mutex<Vec<(String, String)>>,
    /// Set by `TestUpstream::stop`: open connections close at their next request.
    stopped: AtomicBool,
    /// The referrers API: `None` answers 404 (a registry without it); `Some(filter)` answers
    /// with the manifests whose `subject` is the digest, filtered by `artifactType` (and
    /// saying so) when `filter`.
    referrers: Mutex<Option<bool>>,
    /// Referrers per page (`Link: ...; rel="next"` to the rest), when set.
    referrers_page: Mutex<Option<usize>>,
    /// (limit, remaining, window seconds) sent as `ratelimit-limit` / `ratelimit-remaining` on
    /// manifest answers (GET and HEAD), as Docker Hub does.
    ratelimit: Mutex<Option<(u64, u64, u64)>>,
    /// Answer every manifest and referrers request with this status, no body.
    manifest_status: Mutex<Option<u16>>,
}

pub const TOKEN: &str = "test-token-123";

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl TestUpstream {
    pub fn start() -> TestUpstream {
        TestUpstream::start_on("127.0.0.1")
    }

    /// Start on another loopback address (a second "host", e.g. a CDN at 127.0.0.2).
    pub fn start_on(ip: &str) -> TestUpstream {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, addr, &st);
                });
            }
        });
        TestUpstream { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_blob(&self, data: Vec<u8>, fault: Fault) -> String {
        self.add_blob_with(Blob {
            data: Arc::new(data),
            fault,
            gated: false,
            ..Default::default()
        })
    }

    /// A large generated blob (never stored): returns its digest, computed by streaming it.
    pub fn add_generated(&self, seed: u64, len: usize, fault: Fault) -> String {
        self.add_blob_with(Blob {
            generated: Some((seed, len)),
            fault,
            ..Default::default()
        })
    }

    pub fn add_blob_with(&self, blob: Blob) -> String {
        let digest = match blob.generated {
            Some((seed, len)) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut off = 0;
                while off < len {
                    let n = (len - off).min(1 << 20);
                    ctx.update(&super::image::pseudo_random_at(seed, off, n));
                    off += n;
                }
                format!(
                    "sha256:{}",
                    ringcache::digest::Digest::from_ring(&ctx.finish()).hex()
                )
            }
            None => format!("sha256:{}", super::sha256_hex(&blob.data)),
        };
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), blob);
        digest
    }

    pub fn add_manifest(&self, name: &str, tag: &str, media_type: &str, body: Vec<u8>) -> String {
        let digest = format!("sha256:{}", super::sha256_hex(&body));
        let mut m = self.state.manifests.lock().unwrap();
        m.insert((name.into(), tag.into()), (media_type.into(), body.clone()));
        m.insert((name.into(), digest.clone()), (media_type.into(), body));
        digest
    }

    pub fn remove_manifest(&self, name: &str, tag: &str) {
        self.state
            .manifests
            .lock()
            .unwrap()
            .remove(&(name.into(), tag.into()));
    }

    /// Demand Bearer tokens, issued by `/token` for these Basic credentials.
    pub fn require_bearer(&self, user: &str, password: &str) {
        *self.state.bearer.lock().unwrap() = Some((user.into(), password.into()));
    }

    /// Redirect every blob GET to `base` (another test upstream) with the same path.
    pub fn redirect_blobs_to(&self, base: &str) {
        *self.state.redirect.lock().unwrap() = Some(base.to_string());
    }

    pub fn open_gate(&self) {
        *self.state.gate.lock().unwrap() = true;
        self.state.gate_cv.notify_all();
    }

    /// Requests seen whose request line starts with `prefix` (e.g. "GET /v2/x/blobs/").
    pub fn count(&self, prefix: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// Wait until `count(prefix) >= n` (bounded).
    pub fn wait_count(&self, prefix: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let mut seen = self.state.seen.lock().unwrap();
        loop {
            let c = seen.iter().filter(|(l, _)| l.starts_with(prefix)).count();
            if c >= n {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "only {c} of {n} requests {prefix:?} within {within:?}"
            );
            seen = self
                .state
                .arrived
                .wait_timeout(seen, deadline - now)
                .unwrap()
                .0;
        }
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn delay_manifests(&self, d: Duration) {
        *self.state.manifest_delay.lock().unwrap() = Some(d);
    }

    /// Make the token endpoint fail with `status`.
    pub fn fail_tokens(&self, status: u16) {
        *self.state.token_status.lock().unwrap() = Some(status);
    }

    /// Name `realm` in Bearer challenges (another host's token endpoint).
    pub fn set_realm(&self, realm: &str) {
        *self.state.realm.lock().unwrap() = Some(realm.to_string());
    }

    /// Answer every request whose path contains `fragment` with `302 Location: location`.
    pub fn redirect_matching(&self, fragment: &str, location: &str) {
        self.state
            .redirects
            .lock()
            .unwrap()
            .push((fragment.to_string(), location.to_string()));
    }

    /// Serve the referrers API (`filter`: apply `artifactType` and say so), or not (`None`:
    /// 404, the default).
    pub fn serve_referrers(&self, filter: Option<bool>) {
        *self.state.referrers.lock().unwrap() = filter;
    }

    /// Page referrers answers, `n` descriptors a page.
    pub fn page_referrers(&self, n: usize) {
        *self.state.referrers_page.lock().unwrap() = Some(n);
    }

    /// Send Docker Hub's rate-limit fields on manifest answers: `(limit, remaining, window)`.
    pub fn set_ratelimit(&self, budget: Option<(u64, u64, u64)>) {
        *self.state.ratelimit.lock().unwrap() = budget;
    }

    /// Answer manifest and referrers requests with `status` (no body), or normally (`None`).
    pub fn fail_manifests(&self, status: Option<u16>) {
        *self.state.manifest_status.lock().unwrap() = status;
    }

    pub fn clear_redirects(&self) {
        self.state.redirects.lock().unwrap().clear();
    }

    /// Every request's line and headers (names lowercased), in arrival order.
    pub fn headers(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.state.headers.lock().unwrap().clone()
    }

    /// The value of header `name` on each request whose line starts with `prefix`.
    pub fn header_of(&self, prefix: &str, name: &str) -> Vec<Option<String>> {
        self.headers()
            .into_iter()
            .filter(|(l, _)| l.starts_with(prefix))
            .map(|(_, hs)| hs.into_iter().find(|(n, _)| n == name).map(|(_, v)| v))
            .collect()
    }

    pub fn ranges(&self) -> Vec<(String, String)> {
        self.state.ranges.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Stop as a registry that went away does: the listener closes, and connections the
    /// cache keeps open close at their next request, unanswered.
    pub fn stop(self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        drop(self);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.open_gate();
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, addr: SocketAddr, st: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || st.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let mut authz = None;
        let mut range = None;
        let mut all = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                all.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                if n.eq_ignore_ascii_case("authorization") {
                    authz = Some(v.trim().to_string());
                } else if n.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        *st.counts
            .lock()
            .unwrap()
            .entry(format!("{method} {target}"))
            .or_default() += 1;
        st.headers
            .lock()
            .unwrap()
            .push((format!("{method} {target}"), all));
        st.seen
            .lock()
            .unwrap()
            .push((format!("{method} {target}"), authz.clone()));
        if let Some(r) = &range {
            st.ranges
                .lock()
                .unwrap()
                .push((format!("{method} {target}"), r.clone()));
        }
        st.arrived.notify_all();
        let head = method == "HEAD";
        let path = target.split('?').next().unwrap_or("").to_string();

        if path == "/token" {
            let creds = st.bearer.lock().unwrap().clone();
            let ok = match (&creds, &authz) {
                (Some((u, p)), Some(a)) => *a == basic(u, p),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let fail = *st.token_status.lock().unwrap();
            if let Some(status) = fail {
                respond(&mut w, status, &[], b"{}", head)?;
            } else if ok {
                respond(
                    &mut w,
                    200,
                    &[("Content-Type", "application/json")],
                    format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).as_bytes(),
                    head,
                )?;
            } else {
                respond(&mut w, 401, &[], b"{}", head)?;
            }
            continue;
        }
        let redirect = st
            .redirects
            .lock()
            .unwrap()
            .iter()
            .find(|(fragment, _)| path.contains(fragment.as_str()))
            .map(|(_, location)| location.clone());
        if let Some(location) = redirect {
            respond(&mut w, 302, &[("Location", &location)], b"", head)?;
            continue;
        }
        if st.bearer.lock().unwrap().is_some()
            && authz.as_deref() != Some(&format!("Bearer {TOKEN}"))
        {
            let name = path
                .trim_start_matches("/v2/")
                .rsplitn(3, '/')
                .nth(2)
                .unwrap_or("")
                .to_string();
            let realm = st
                .realm
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| format!("http://{addr}/token"));
            let challenge = format!(
                r#"Bearer realm="{realm}",service="test-upstream",scope="repository:{name}:pull""#
            );
            respond(
                &mut w,
                401,
                &[
                    ("WWW-Authenticate", &challenge),
                    ("Content-Type", "application/json"),
                ],
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                head,
            )?;
            continue;
        }
        if path == "/v2/" {
            respond(
                &mut w,
                200,
                &[("Content-Type", "application/json")],
                b"{}",
                head,
            )?;
            continue;
        }
        let rest = path.trim_start_matches("/v2/");
        let Some((prefix, reference)) = rest.rsplit_once('/') else {
            respond(&mut w, 404, &[], b"", head)?;
            continue;
        };
        let Some((name, kind)) = prefix.rsplit_once('/') else {
            respond(&mut w, 404, &[], b"", head)?;
            continue;
        };
        match kind {
            "tags" if reference == "list" => {
                let mut tags: Vec<String> = st
                    .manifests
                    .lock()
                    .unwrap()
                    .keys()
                    .filter(|(n, t)| n == name && !t.starts_with("sha256:"))
                    .map(|(_, t)| t.clone())
                    .collect();
                tags.sort();
                let body = format!(
                    r#"{{"name":"{name}","tags":[{}]}}"#,
                    tags.iter()
                        .map(|t| format!("\"{t}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                respond(
                    &mut w,
                    200,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                    head,
                )?;
            }
            "manifests" | "referrers" if st.manifest_status.lock().unwrap().is_some() => {
                let status = st.manifest_status.lock().unwrap().unwrap_or(503);
                respond(&mut w, status, &budget_fields(st), b"", head)?;
            }
            "referrers" => {
                let filter = *st.referrers.lock().unwrap();
                let Some(filter) = filter else {
                    respond(&mut w, 404, &[], b"404 page not found\n", head)?;
                    continue;
                };
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
                        .map(|v| v.replace("%2F", "/").replace("%2B", "+"))
                };
                let wanted = param("artifactType").filter(|_| filter);
                let mut all = referrers_of(st, name, reference);
                if let Some(t) = &wanted {
                    all.retain(|d| d["artifactType"].as_str() == Some(t.as_str()));
                }
                all.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
                let mut extra: Vec<(String, String)> = Vec::new();
                if wanted.is_some() {
                    extra.push(("OCI-Filters-Applied".into(), "artifactType".into()));
                }
                let page = *st.referrers_page.lock().unwrap();
                if let Some(n) = page {
                    if let Some(last) = param("last") {
                        all.retain(|d| d["digest"].as_str().unwrap_or("") > last.as_str());
                    }
                    if all.len() > n {
                        all.truncate(n);
                        let last = all[n - 1]["digest"].as_str().unwrap_or("").to_string();
                        let mut q = format!("last={last}");
                        if let Some(t) = &wanted {
                            q.push_str(&format!("&artifactType={t}"));
                        }
                        extra.push((
                            "Link".into(),
                            format!("</v2/{name}/referrers/{reference}?{q}>; rel=\"next\""),
                        ));
                    }
                }
                let body = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": all,
                })
                .to_string();
                let mut headers: Vec<(&str, &str)> =
                    vec![("Content-Type", "application/vnd.oci.image.index.v1+json")];
                headers.extend(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                respond(&mut w, 200, &headers, body.as_bytes(), head)?;
            }
            "manifests" => {
                let delay = *st.manifest_delay.lock().unwrap();
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let fields = budget_fields(st);
                let m = st
                    .manifests
                    .lock()
                    .unwrap()
                    .get(&(name.to_string(), reference.to_string()))
                    .cloned();
                match m {
                    Some((mt, body)) => {
                        let d = format!("sha256:{}", super::sha256_hex(&body));
                        let mut headers =
                            vec![("Content-Type", mt.as_str()), ("Docker-Content-Digest", &d)];
                        headers.extend(fields.iter().copied());
                        respond(&mut w, 200, &headers, &body, head)?;
                    }
                    None => respond(
                        &mut w,
                        404,
                        &[("Content-Type", "application/json")]
                            .into_iter()
                            .chain(fields.iter().copied())
                            .collect::<Vec<_>>(),
                        br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
                        head,
                    )?,
                }
            }
            "blobs" => {
                let b = st.blobs.lock().unwrap().get(reference).cloned();
                let b = b.filter(|b| b.only_in.as_deref().is_none_or(|only| only == name));
                let Some(b) = b else {
                    respond(
                        &mut w,
                        404,
                        &[("Content-Type", "application/json")],
                        br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#,
                        head,
                    )?;
                    continue;
                };
                let redirect = st.redirect.lock().unwrap().clone();
                if let (Some(base), false) = (redirect, head) {
                    respond(
                        &mut w,
                        307,
                        &[("Location", &format!("{base}{path}?signed=1"))],
                        b"",
                        false,
                    )?;
                    continue;
                }
                let nth = st
                    .blob_gets
                    .lock()
                    .unwrap()
                    .get(reference)
                    .copied()
                    .unwrap_or(0)
                    + 1;
                match b.fault {
                    Fault::Status(code) => {
                        let retry: &[(&str, &str)] = if code == 429 || code == 503 {
                            &[("Retry-After", "1")]
                        } else {
                            &[]
                        };
                        respond(
                            &mut w,
                            code,
                            retry,
                            br#"{"errors":[{"code":"UNAVAILABLE"}]}"#,
                            head,
                        )?;
                        continue;
                    }
                    Fault::RawHead(raw) if !head => {
                        // The connection stays open: a client that reused it would be served.
                        w.write_all(raw.as_bytes())?;
                        w.write_all(&b.data)?;
                        continue;
                    }
                    Fault::HeadStallFirst if !head && nth == 1 => {
                        st.blob_gets
                            .lock()
                            .unwrap()
                            .insert(reference.to_string(), 1);
                        std::thread::sleep(Duration::from_secs(30));
                        return Ok(());
                    }
                    _ => {}
                }
                let total = b.generated.map_or(b.data.len(), |(_, len)| len);
                let start = range
                    .as_deref()
                    .filter(|_| !b.ignore_range && !head)
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|r| r.parse::<usize>().ok())
                    .filter(|&s| s < total)
                    .unwrap_or(0);
                let (status, extra) = if start > 0 {
                    (
                        "206 Partial Content",
                        format!("Content-Range: bytes {start}-{}/{total}\r\n", total - 1),
                    )
                } else {
                    ("200 OK", String::new())
                };
                let framing_header = match b.framing {
                    Framing::Length => format!("Content-Length: {}\r\n", total - start),
                    Framing::Chunked | Framing::Tiny { .. } => {
                        "Transfer-Encoding: chunked\r\n".to_string()
                    }
                    Framing::Close => "Connection: close\r\n".to_string(),
                };
                let head_bytes = format!(
                    "HTTP/1.1 {status}\r\n{framing_header}{extra}Content-Type: application/octet-stream\r\nDocker-Content-Digest: {reference}\r\n\r\n"
                );
                if b.interim > 0 && !head {
                    // Interim answers, the final head and the whole body in one write: a
                    // client must find the final response in what it has already read.
                    let mut all = Vec::new();
                    for i in 0..b.interim {
                        if i % 2 == 0 {
                            all.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        } else {
                            all.extend_from_slice(
                                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                            );
                        }
                    }
                    all.extend_from_slice(head_bytes.as_bytes());
                    all.extend_from_slice(&b.data[start..]);
                    w.write_all(&all)?;
                    continue;
                }
                w.write_all(head_bytes.as_bytes())?;
                if head {
                    if b.head_body {
                        w.write_all(&b.data)?;
                    }
                    continue;
                }
                let nth_get = {
                    let mut g = st.blob_gets.lock().unwrap();
                    let n = g.entry(reference.to_string()).or_default();
                    *n += 1;
                    *n
                };
                // The body from `start`, produced piece by piece: a generated blob is never
                // held in memory, a stored one is sliced.
                let len = total - start;
                let piece_at = |off: usize, n: usize| -> Vec<u8> {
                    let abs = start + off;
                    let mut p = match b.generated {
                        Some((seed, _)) => super::image::pseudo_random_at(seed, abs, n),
                        None => b.data[abs..abs + n].to_vec(),
                    };
                    if let Fault::Corrupt(at) = b.fault {
                        if (abs..abs + n).contains(&at) {
                            p[at - abs] ^= 0xff;
                        }
                    }
                    p
                };
                let limit = match b.fault {
                    Fault::Truncate(at) => at.saturating_sub(start),
                    Fault::TruncateFirst(at) if nth_get == 1 => at.saturating_sub(start),
                    Fault::StallFirst(at) if nth_get == 1 => {
                        w.write_all(&piece_at(0, at.saturating_sub(start)))?;
                        std::thread::sleep(Duration::from_secs(30));
                        return Ok(());
                    }
                    _ => len,
                }
                .min(len);
                if let Framing::Tiny { max, seed } = b.framing {
                    // Tiny chunks, batched into writes of about 64 KiB of wire bytes.
                    let mut rng = seed | 1;
                    let mut wire = Vec::with_capacity(80 * 1024);
                    let mut sent = 0;
                    while sent < limit {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let n = (1 + (rng as usize) % max.max(1)).min(limit - sent);
                        wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        wire.extend_from_slice(&piece_at(sent, n));
                        wire.extend_from_slice(b"\r\n");
                        sent += n;
                        if wire.len() >= 64 * 1024 {
                            w.write_all(&wire)?;
                            wire.clear();
                        }
                    }
                    if limit < len {
                        w.write_all(&wire)?;
                        return Ok(());
                    }
                    wire.extend_from_slice(b"0\r\n\r\n");
                    w.write_all(&wire)?;
                    continue;
                }
                let mut sent = 0;
                if b.gated {
                    let first = b.gate_at.min(limit);
                    if first > 0 {
                        w.write_all(&piece_at(0, first))?;
                    }
                    sent = first;
                    let mut open = st.gate.lock().unwrap();
                    while !*open {
                        open = st.gate_cv.wait(open).unwrap();
                    }
                }
                while sent < limit {
                    let n = (limit - sent).min(64 * 1024);
                    let mut piece = piece_at(sent, n);
                    if b.framing == Framing::Chunked {
                        w.write_all(format!("{n:x}\r\n").as_bytes())?;
                        w.write_all(&piece)?;
                        w.write_all(b"\r\n")?;
                    } else {
                        if sent + n == limit && limit == len {
                            if let Some(extra) = b.trailing {
                                // Past the Content-Length, in the same write.
                                piece.extend_from_slice(extra);
                            }
                        }
                        w.write_all(&piece)?;
                    }
                    sent += n;
                    if let Some(p) = b.pace {
                        std::thread::sleep(p);
                    }
                }
                if limit < len || b.framing == Framing::Close {
                    return Ok(()); // truncated, or close-delimited: close
                }
                if b.framing == Framing::Chunked {
                    w.write_all(b"0\r\n\r\n")?;
                }
            }
            _ => respond(&mut w, 404, &[], b"", head)?,
        }
    }
}

/// Docker Hub's rate-limit fields, when the test set a budget.
fn budget_fields(st: &State) -> Vec<(&'static str, &'static str)> {
    let Some((limit, remaining, window)) = *st.ratelimit.lock().unwrap() else {
        return Vec::new();
    };
    // Leaked: a few short strings per test, and `respond` takes `&str`s.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        ("ratelimit-limit", leak(format!("{limit};w={window}"))),
        (
            "ratelimit-remaining",
            leak(format!("{remaining};w={window}")),
        ),
        ("docker-ratelimit-source", "127.0.0.1"),
    ]
}

/// The referrers of `subject` in `name`: a descriptor of every manifest stored by digest whose
/// `subject` is it, with the artifact type the spec says (the manifest's `artifactType`, else
/// its config's media type).
fn referrers_of(st: &State, name: &str, subject: &str) -> Vec<serde_json::Value> {
    let manifests = st.manifests.lock().unwrap();
    let mut out = Vec::new();
    for ((n, reference), (mt, body)) in manifests.iter() {
        if n != name || !reference.starts_with("sha256:") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            continue;
        };
        if v["subject"]["digest"].as_str() != Some(subject) {
            continue;
        }
        let artifact_type = v["artifactType"]
            .as_str()
            .or(v["config"]["mediaType"].as_str())
            .unwrap_or("");
        let mut d = serde_json::json!({
            "mediaType": mt,
            "digest": reference,
            "size": body.len(),
            "artifactType": artifact_type,
        });
        if let Some(a) = v.get("annotations") {
            d["annotations"] = a.clone();
        }
        out.push(d);
    }
    out
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head {
        bytes.extend_from_slice(body);
    }
    w.write_all(&bytes)
}

pub fn basic(user: &str, password: &str) -> String {
    use std::fmt::Write;
    // base64 by hand: tests should not need the crate under test's dependencies.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.write_char(T[(n >> (18 - 6 * i) & 63) as usize] as char)
                    .unwrap();
            } else {
                out.push('=');
            }
        }
    }
    out
}
