//! Referrers (distribution-spec v1.1 "Listing Referrers", data path step 4 beside tags), the
//! pure part: what an image index's descriptors are, the `artifactType` filter, the index we
//! answer with, the referrers tag schema's fallback tag, the next page of an upstream's
//! answer, and the bounded map of answers ([`Cache`]). The decisions (ask upstream, fall back,
//! stale-if-error) are `proxy::referrers`'s.
//!
//! **Why an in-memory map, not the blob store.** A referrers answer is not content: it has no
//! digest upstream vouches for (the API's answer is built per request, and changes whenever an
//! artifact is pushed), it exists per (repository key, subject digest, `artifactType`), and it
//! must be re-asked within a short freshness window like a tag. Storing it by its digest would
//! give the store entries that nothing links, expire or verify. So answers live here, like tag
//! resolutions: bounded in count ([`crate::limits::REFERRERS_CACHED_MAX`]) and bytes
//! ([`crate::limits::REFERRERS_CACHED_BYTES_MAX`]), the oldest dropped first, and lost on a
//! restart (the next request asks upstream again). A fallback tag's index *is* a manifest: it
//! is read from the store when a client pulled it there, and otherwise fetched by digest and
//! kept only in its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::digest::Digest;
use crate::limits::{REFERRERS_CACHED_BYTES_MAX, REFERRERS_CACHED_MAX};
use crate::media::{DOCKER_LIST, OCI_INDEX};

/// The descriptors of an image index; `None` when `body` is not one: not JSON, not an object,
/// no `manifests` list, or a `mediaType` that names something else. Entries that are not
/// objects are dropped (a descriptor is an object; nothing else can be filtered or served).
pub fn descriptors(body: &[u8]) -> Option<Vec<Value>> {
    let Value::Object(mut index) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    match index.get("mediaType") {
        None => {}
        Some(Value::String(mt)) if mt == OCI_INDEX || mt == DOCKER_LIST => {}
        Some(_) => return None,
    }
    let Value::Array(manifests) = index.remove("manifests")? else {
        return None;
    };
    Some(manifests.into_iter().filter(Value::is_object).collect())
}

/// Keep the descriptors whose `artifactType` is `artifact_type` (all of them for `None`). The
/// spec filters on the descriptor's own `artifactType`, which the API and the referrers tag
/// schema both set from the artifact's manifest.
pub fn filter(descriptors: Vec<Value>, artifact_type: Option<&str>) -> Vec<Value> {
    match artifact_type {
        None => descriptors,
        Some(want) => descriptors
            .into_iter()
            .filter(|d| d.get("artifactType").and_then(Value::as_str) == Some(want))
            .collect(),
    }
}

/// The answer: an OCI image index of `descriptors`.
pub fn index(descriptors: &[Value]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    })
    .to_string()
    .into_bytes()
}

/// The referrers tag schema's tag for `subject`: `sha256-<hex>`, an index of its referrers,
/// pushed by clients (oras, notation, cosign's OCI 1.1 mode) to registries without the API.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// The next page an upstream's `Link` header names (`<url>; rel="next"`), as the part after
/// `/v2/<name>/` to ask the same upstream for: only a page of the same subject's referrers
/// (`referrers/<subject>?...`), whatever origin or repository the URL names (it is asked of
/// the upstream's own origin, for the request's repository), and without an `ns` (the client
/// adds its own).
pub fn next_page(link: &str, subject: &Digest) -> Option<String> {
    let (url, query) = crate::http::url::next_link(link)?;
    let want = format!("/referrers/{subject}");
    let at = url.find(&want)?;
    let path = &url[at + 1..];
    if path.len() + 1 != want.len() {
        return None; // `.../referrers/<subject>/more`, or a longer digest
    }
    Some(match query.is_empty() {
        true => path.to_string(),
        false => format!("{path}?{}", query.join("&")),
    })
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The upstream's referrers API.
    Api,
    /// The fallback tag, which named the index with this digest (a revalidation that finds
    /// the same digest reuses the answer).
    Tag(Digest),
    /// Neither: no referrers known.
    Empty,
}

/// One answer, as sent (already filtered).
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Arc<[u8]>,
    /// When upstream last confirmed it (monotonic clock).
    pub at: Instant,
    pub source: Source,
}

type Key = (String, Digest, Option<String>);

/// Answers by (repository key, subject, `artifactType`), shared by every worker; bounded in
/// entries and bytes, the least recently confirmed dropped first. Read and written only on
/// referrers requests (never on the blob or manifest hit path).
#[derive(Default)]
pub struct Cache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Answer>,
    bytes: usize,
}

fn key(name: &str, subject: &Digest, artifact_type: Option<&str>) -> Key {
    (
        name.to_string(),
        *subject,
        artifact_type.map(str::to_string),
    )
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked holding it (the process is on
        // its way down); the map is whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str, subject: &Digest, artifact_type: Option<&str>) -> Option<Answer> {
        self.lock()
            .map
            .get(&key(name, subject, artifact_type))
            .cloned()
    }

    /// Record an answer (replacing the one before); one too big for the whole budget is not
    /// kept.
    pub fn put(&self, name: &str, subject: &Digest, artifact_type: Option<&str>, answer: Answer) {
        let size = answer.body.len();
        let mut inner = self.lock();
        let k = key(name, subject, artifact_type);
        if let Some(old) = inner.map.remove(&k) {
            inner.bytes -= old.body.len();
        }
        if size > REFERRERS_CACHED_BYTES_MAX {
            return;
        }
        // Full: drop the answers confirmed longest ago (O(n) each, only when full).
        while inner.map.len() >= REFERRERS_CACHED_MAX
            || inner.bytes + size > REFERRERS_CACHED_BYTES_MAX
        {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, a)| a.at)
                .map(|(k, _)| k.clone());
            match oldest.and_then(|k| inner.map.remove(&k)) {
                Some(a) => inner.bytes -= a.body.len(),
                None => break,
            }
        }
        inner.bytes += size;
        inner.map.insert(k, answer);
    }

    /// Answers kept, and their bytes.
    pub fn len_bytes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const SBOM: &str = "application/spdx+json";

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn desc(n: u8, artifact_type: Option<&str>) -> Value {
        let mut v = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d(n).to_string(),
            "size": 100 + n as u64,
        });
        if let Some(t) = artifact_type {
            v["artifactType"] = t.into();
        }
        v
    }

    #[test]
    fn what_is_an_index() {
        let m = format!(r#"{{"digest":"{}"}}"#, d(1));
        let cases: &[(String, Option<usize>)] = &[
            (
                format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#),
                Some(0),
            ),
            (
                format!(r#"{{"schemaVersion":2,"manifests":[{m},{m}]}}"#),
                Some(2),
            ),
            (
                format!(r#"{{"mediaType":"{DOCKER_LIST}","manifests":[{m}]}}"#),
                Some(1),
            ),
            // Non-objects among the descriptors are dropped.
            (format!(r#"{{"manifests":[{m},1,"x",null,[]]}}"#), Some(1)),
            (
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#
                    .into(),
                None,
            ),
            (r#"{"mediaType":7,"manifests":[]}"#.into(), None),
            (r#"{"schemaVersion":2,"layers":[]}"#.into(), None),
            (r#"{"manifests":{}}"#.into(), None),
            (r#"[]"#.into(), None),
            ("404 page not found".into(), None),
            ("".into(), None),
        ];
        for (body, want) in cases {
            assert_eq!(
                descriptors(body.as_bytes()).map(|v| v.len()),
                *want,
                "{body}"
            );
        }
    }

    #[test]
    fn artifact_type_filtering() {
        let all = vec![
            desc(1, Some(SIG)),
            desc(2, Some(SBOM)),
            desc(3, None),
            desc(4, Some(SIG)),
        ];
        let digests = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|d| d["digest"].as_str().unwrap().to_string())
                .collect()
        };
        let cases: &[(Option<&str>, &[u8])] = &[
            (None, &[1, 2, 3, 4]),
            (Some(SIG), &[1, 4]),
            (Some(SBOM), &[2]),
            (Some("application/x-none"), &[]),
            // Exact match: no prefix, no case folding.
            (Some("application/spdx"), &[]),
            (Some("APPLICATION/SPDX+JSON"), &[]),
        ];
        for (t, want) in cases {
            let want: Vec<String> = want.iter().map(|n| d(*n).to_string()).collect();
            assert_eq!(digests(filter(all.clone(), *t)), want, "{t:?}");
        }
        // Filtering an answer twice (upstream did, then we do) changes nothing.
        let once = filter(all.clone(), Some(SIG));
        assert_eq!(filter(once.clone(), Some(SIG)), once);
    }

    #[test]
    fn the_answer_is_an_oci_index() {
        let body = index(&[desc(1, Some(SIG))]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["manifests"][0]["artifactType"], SIG);
        assert_eq!(descriptors(&body).unwrap().len(), 1);
        let empty: Value = serde_json::from_slice(&index(&[])).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn fallback_tags_follow_the_schema() {
        let s = d(9);
        let t = fallback_tag(&s);
        assert_eq!(t, format!("sha256-{}", s.hex()));
        assert!(crate::route::is_tag(&t));
        assert!(crate::route::is_tag(&format!("{t}.sig")));
    }

    #[test]
    fn next_pages() {
        let s = d(1);
        let cases: &[(String, Option<String>)] = &[
            (
                format!(r#"</v2/a/b/referrers/{s}?n=2&last=x>; rel="next""#),
                Some(format!("referrers/{s}?n=2&last=x")),
            ),
            (
                format!(
                    r#"<https://up.example/v2/library/a/referrers/{s}?last=x&ns=docker.io>; rel="next""#
                ),
                Some(format!("referrers/{s}?last=x")),
            ),
            (
                format!(r#"</v2/a/referrers/{s}>; rel=next"#),
                Some(format!("referrers/{s}")),
            ),
            (format!(r#"</v2/a/referrers/{s}?last=x>; rel="prev""#), None),
            (
                format!(r#"</v2/a/referrers/{}?last=x>; rel="next""#, d(2)),
                None,
            ),
            (
                format!(r#"</v2/a/referrers/{s}/x?last=x>; rel="next""#),
                None,
            ),
            (format!(r#"</v2/a/manifests/{s}>; rel="next""#), None),
            (format!(r#"/v2/a/referrers/{s}; rel="next""#), None),
            (format!(r#"</v2/a/referrers/{s}?a b>; rel="next""#), None),
            ("".into(), None),
            ("<>; rel=\"next\"".into(), None),
        ];
        for (link, want) in cases {
            assert_eq!(next_page(link, &s), *want, "{link}");
        }
    }

    fn answer(bytes: usize, at: Instant) -> Answer {
        Answer {
            body: vec![b' '; bytes].into(),
            at,
            source: Source::Api,
        }
    }

    #[test]
    fn the_cache_keys_on_repository_subject_and_type_and_stays_bounded() {
        let c = Cache::default();
        let t0 = Instant::now();
        c.put("a", &d(1), None, answer(10, t0));
        c.put("a", &d(1), Some(SIG), answer(20, t0));
        c.put("ghcr.io//a", &d(1), None, answer(30, t0));
        assert_eq!(c.get("a", &d(1), None).unwrap().body.len(), 10);
        assert_eq!(c.get("a", &d(1), Some(SIG)).unwrap().body.len(), 20);
        assert_eq!(c.get("ghcr.io//a", &d(1), None).unwrap().body.len(), 30);
        assert!(c.get("a", &d(2), None).is_none());
        assert!(c.get("a", &d(1), Some(SBOM)).is_none());
        // Replaced, bytes follow.
        c.put("a", &d(1), None, answer(5, t0));
        assert_eq!(c.len_bytes(), (3, 55));
        // Too big for the whole budget: not kept (and the old answer is gone).
        c.put("a", &d(1), None, answer(REFERRERS_CACHED_BYTES_MAX + 1, t0));
        assert!(c.get("a", &d(1), None).is_none());
        assert_eq!(c.len_bytes(), (2, 50));
        // Bytes: the oldest go first.
        let half = REFERRERS_CACHED_BYTES_MAX / 2;
        c.put(
            "big",
            &d(1),
            None,
            answer(half, t0 + std::time::Duration::from_secs(1)),
        );
        c.put(
            "big",
            &d(2),
            None,
            answer(half, t0 + std::time::Duration::from_secs(2)),
        );
        let (n, bytes) = c.len_bytes();
        assert!(bytes <= REFERRERS_CACHED_BYTES_MAX, "{bytes}");
        assert!(c.get("big", &d(2), None).is_some());
        assert!(c.get("a", &d(1), Some(SIG)).is_none(), "oldest dropped");
        assert!(n <= 3);
        // Entries.
        let c = Cache::default();
        for i in 0..REFERRERS_CACHED_MAX + 5 {
            let s = Digest::of(&i.to_le_bytes());
            c.put(
                "a",
                &s,
                None,
                answer(1, t0 + std::time::Duration::from_millis(i as u64)),
            );
        }
        assert_eq!(c.len_bytes(), (REFERRERS_CACHED_MAX, REFERRERS_CACHED_MAX));
        assert!(c
            .get("a", &Digest::of(&0usize.to_le_bytes()), None)
            .is_none());
    }
}
