//! Tag → digest resolutions (data path step 4), shared by all workers: inside the freshness
//! window a tag is answered from here without asking upstream; when upstream is down or
//! rate-limits, the last resolution is served (stale-if-error).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::digest::Digest;
use crate::limits::{TAGS_MAX, TAG_ANSWERS_MAX};
use crate::media::{self, Accepts};

pub use crate::limits::TAGS_LOCAL_MAX as LOCAL_MAX;

#[derive(Debug, Clone)]
pub struct Resolution {
    pub digest: Digest,
    pub media_type: Arc<str>,
    /// The manifest types the request that resolved it accepted: upstream's answer depends on
    /// them ([`media::reusable`]).
    pub resolved_for: Accepts,
    /// When upstream last confirmed this (monotonic clock).
    pub at: Instant,
    /// Increases with every resolution recorded: a waiter knows it got a new answer.
    pub generation: u64,
}

impl Resolution {
    /// Would upstream answer a request with this `Accept` (as sent upstream) the same?
    pub fn serves(&self, accept: &str) -> bool {
        self.serves_parsed(accept, Accepts::parse(accept))
    }

    /// [`Resolution::serves`] with the `Accept`'s known types already parsed.
    fn serves_parsed(&self, accept: &str, client: Accepts) -> bool {
        media::reusable_parsed(self.resolved_for, &self.media_type, accept, client)
    }
}

/// The answers of one tag: usually one (most clients accept every type), one more per kind of
/// client that upstream answers differently (one that takes no index gets one platform's
/// manifest). Bounded by [`TAG_ANSWERS_MAX`].
type Answers = Vec<Resolution>;

/// The answer among `answers` for a request with `accept`: one resolved for the same types
/// first, else any that upstream would give it too.
fn pick<'a>(answers: &'a [Resolution], accept: &str) -> Option<&'a Resolution> {
    // Parsed once: this is the path of every cached tag.
    let want = Accepts::parse(accept);
    answers
        .iter()
        .find(|r| r.resolved_for == want && r.serves_parsed(accept, want))
        .or_else(|| answers.iter().find(|r| r.serves_parsed(accept, want)))
}

#[derive(Default)]
pub struct Tags {
    map: Mutex<HashMap<(String, String), Answers>>,
    /// Tags being revalidated upstream now, per kind of `Accept`: later askers wait for that
    /// one HEAD.
    revalidating: Mutex<HashMap<(String, String, Accepts), Arc<event_listener::Event>>>,
    /// Raised after every change to `map`, with its lock held (a put's resolution takes the
    /// new value): workers' [`Local`] copies are good while it stays the same.
    generation: AtomicU64,
}

/// The outcome of asking to revalidate a tag.
pub enum Revalidation<'a> {
    /// Ask upstream; dropping the guard wakes everyone who waited.
    Lead(RevalidationGuard<'a>),
    /// Someone else is asking: wait, then use the resolution if its generation is past this.
    Wait(event_listener::EventListener, u64),
}

pub struct RevalidationGuard<'a> {
    tags: &'a Tags,
    key: (String, String, Accepts),
}

impl Drop for RevalidationGuard<'_> {
    fn drop(&mut self) {
        let ev = lock(&self.tags.revalidating).remove(&self.key);
        if let Some(ev) = ev {
            ev.notify(usize::MAX);
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it (and the process is on
/// its way down); the map itself is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tags {
    /// The resolution of `name:tag` that upstream would give a request with `accept` (the
    /// `Accept` sent upstream).
    pub fn get(&self, name: &str, tag: &str, accept: &str) -> Option<Resolution> {
        let map = lock(&self.map);
        let answers = map.get(&(name.to_string(), tag.to_string()))?;
        pick(answers, accept).cloned()
    }

    /// Record upstream's answer for a request that accepted `resolved_for`: it replaces the
    /// answer recorded for the same types.
    pub fn put(
        &self,
        name: &str,
        tag: &str,
        resolved_for: Accepts,
        digest: Digest,
        media_type: Arc<str>,
        at: Instant,
    ) {
        let mut map = lock(&self.map);
        let key = (name.to_string(), tag.to_string());
        if map.len() >= TAGS_MAX && !map.contains_key(&key) {
            // Full: drop the tag upstream confirmed longest ago (rare; O(n) only then).
            let oldest = map
                .iter()
                .min_by_key(|(_, a)| a.iter().map(|r| r.at).max())
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        // Raised after the insert: a worker that sees the new value finds the new entry.
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let answers = map.entry(key).or_default();
        answers.retain(|r| r.resolved_for != resolved_for);
        if answers.len() >= TAG_ANSWERS_MAX {
            if let Some(i) = (0..answers.len()).min_by_key(|&i| answers[i].at) {
                answers.swap_remove(i);
            }
        }
        answers.push(Resolution {
            digest,
            media_type,
            resolved_for,
            at,
            generation,
        });
        self.generation.store(generation, Ordering::Release);
    }

    /// Lead the revalidation of a tag for one kind of `Accept`, or wait for the one in flight
    /// (the listener is made under the lock, so the leader's wake-up cannot be missed).
    pub fn revalidate(&self, name: &str, tag: &str, accept: &str) -> Revalidation<'_> {
        let key = (name.to_string(), tag.to_string(), Accepts::parse(accept));
        let mut inflight = lock(&self.revalidating);
        if let Some(ev) = inflight.get(&key) {
            let seen = self.get(name, tag, accept).map_or(0, |r| r.generation);
            return Revalidation::Wait(ev.listen(), seen);
        }
        inflight.insert(key.clone(), Arc::new(event_listener::Event::new()));
        Revalidation::Lead(RevalidationGuard { tags: self, key })
    }

    /// Upstream said 404 to a request that accepted `resolved_for`: drop that answer (another
    /// kind of client's answer is dropped when upstream says so to it).
    pub fn remove(&self, name: &str, tag: &str, resolved_for: Accepts) {
        let mut map = lock(&self.map);
        let key = (name.to_string(), tag.to_string());
        if let Some(answers) = map.get_mut(&key) {
            answers.retain(|r| r.resolved_for != resolved_for);
            if answers.is_empty() {
                map.remove(&key);
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Resolutions a worker keeps of its own: a tag asked for again, inside its freshness window,
/// is answered with no lock, no allocation and no shared cache line written (the shared map
/// takes a lock and two key strings per lookup, and every core would bounce its lock word).
/// The copy is dropped whole as soon as the shared map's generation moves (any put or
/// remove), so it never answers anything the shared map would not.
#[derive(Default)]
pub struct Local {
    generation: Cell<u64>,
    map: RefCell<HashMap<String, HashMap<String, Answers>>>,
    len: Cell<usize>,
}

impl Local {
    /// As [`Tags::get`], from this worker's copy where it has the answer.
    pub fn get(&self, tags: &Tags, name: &str, tag: &str, accept: &str) -> Option<Resolution> {
        // Read before the shared map: a change seen here is in the map read below.
        let generation = tags.generation.load(Ordering::Acquire);
        let mut map = self.map.borrow_mut();
        if generation != self.generation.get() || self.len.get() >= LOCAL_MAX {
            map.clear();
            self.len.set(0);
            self.generation.set(generation);
        }
        if let Some(r) = map
            .get(name)
            .and_then(|m| m.get(tag))
            .and_then(|a| pick(a, accept))
        {
            return Some(r.clone());
        }
        let mut r = tags.get(name, tag, accept)?;
        // A copy of this worker's own: cloning it touches no other core's cache line.
        r.media_type = Arc::from(&*r.media_type);
        let answers = map
            .entry(name.to_string())
            .or_default()
            .entry(tag.to_string())
            .or_default();
        if answers.len() < TAG_ANSWERS_MAX {
            answers.push(r.clone());
            self.len.set(self.len.get() + 1);
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{DOCKER_LIST, DOCKER_V2, OCI_INDEX};

    const ALL: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";
    const V2_ONLY: &str = DOCKER_V2;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn put(tags: &Tags, tag: &str, accept: &str, d: u8, mt: &str) {
        tags.put(
            "a/b",
            tag,
            Accepts::parse(accept),
            digest(d),
            mt.into(),
            Instant::now(),
        );
    }

    #[test]
    fn a_workers_copy_answers_what_the_shared_map_holds_and_nothing_it_dropped() {
        let tags = Tags::default();
        let local = Local::default();
        let at = Instant::now();
        assert!(local.get(&tags, "a/b", "v1", ALL).is_none());
        put(&tags, "v1", ALL, 1, OCI_INDEX);
        let r = local.get(&tags, "a/b", "v1", ALL).unwrap();
        assert_eq!((r.digest, &*r.media_type), (digest(1), OCI_INDEX));
        // Kept, and a copy of this worker's own.
        let kept = local.get(&tags, "a/b", "v1", ALL).unwrap();
        assert!(!Arc::ptr_eq(
            &kept.media_type,
            &tags.get("a/b", "v1", ALL).unwrap().media_type
        ));
        assert_eq!(local.len.get(), 1);
        // Re-resolved by another worker: the copy follows at once.
        put(&tags, "v1", ALL, 2, DOCKER_LIST);
        let r = local.get(&tags, "a/b", "v1", ALL).unwrap();
        assert_eq!((r.digest, &*r.media_type), (digest(2), DOCKER_LIST));
        // Removed (upstream said 404): gone here too.
        tags.remove("a/b", "v1", Accepts::parse(ALL));
        assert!(local.get(&tags, "a/b", "v1", ALL).is_none());
        // Bounded.
        for i in 0..LOCAL_MAX + 10 {
            tags.map.lock().unwrap().insert(
                ("n".into(), i.to_string()),
                vec![Resolution {
                    digest: digest(3),
                    media_type: OCI_INDEX.into(),
                    resolved_for: Accepts::ALL,
                    at,
                    generation: 0,
                }],
            );
        }
        for i in 0..LOCAL_MAX + 10 {
            assert!(local.get(&tags, "n", &i.to_string(), ALL).is_some());
            assert!(local.len.get() <= LOCAL_MAX);
        }
    }

    /// A client that takes no index is answered one platform's manifest by upstream: that
    /// answer is never given to a client that takes the index, and the index never to it, in
    /// either order, in the shared map and in a worker's copy.
    #[test]
    fn answers_are_kept_per_kind_of_accept() {
        for v2_first in [true, false] {
            let tags = Tags::default();
            let local = Local::default();
            let both = |tags: &Tags| {
                if v2_first {
                    put(tags, "v1", V2_ONLY, 2, DOCKER_V2);
                    put(tags, "v1", ALL, 1, OCI_INDEX);
                } else {
                    put(tags, "v1", ALL, 1, OCI_INDEX);
                    put(tags, "v1", V2_ONLY, 2, DOCKER_V2);
                }
            };
            // Only the platform pick: not for a multi-platform client.
            put(&tags, "v1", V2_ONLY, 2, DOCKER_V2);
            assert!(tags.get("a/b", "v1", ALL).is_none());
            assert!(local.get(&tags, "a/b", "v1", ALL).is_none());
            assert_eq!(
                local.get(&tags, "a/b", "v1", V2_ONLY).unwrap().digest,
                digest(2)
            );
            // Only the index: not for a client that cannot read one.
            let tags = Tags::default();
            let local = Local::default();
            put(&tags, "v1", ALL, 1, OCI_INDEX);
            assert!(tags.get("a/b", "v1", V2_ONLY).is_none());
            assert!(local.get(&tags, "a/b", "v1", V2_ONLY).is_none());
            // Both: each its own, from the map and from the copy, in any order of asking.
            let tags = Tags::default();
            let local = Local::default();
            both(&tags);
            for accept in [V2_ONLY, ALL, V2_ONLY, ALL] {
                let want = if accept == ALL { 1 } else { 2 };
                assert_eq!(tags.get("a/b", "v1", accept).unwrap().digest, digest(want));
                assert_eq!(
                    local.get(&tags, "a/b", "v1", accept).unwrap().digest,
                    digest(want)
                );
            }
            // A 404 to one kind of client drops only its answer.
            tags.remove("a/b", "v1", Accepts::parse(V2_ONLY));
            assert!(tags.get("a/b", "v1", V2_ONLY).is_none());
            assert_eq!(tags.get("a/b", "v1", ALL).unwrap().digest, digest(1));
        }
    }

    #[test]
    fn answers_per_tag_are_bounded() {
        let tags = Tags::default();
        for bits in 0..64u16 {
            tags.put(
                "a/b",
                "t",
                Accepts::from_bits(bits),
                digest(1),
                DOCKER_V2.into(),
                Instant::now(),
            );
        }
        let n = tags.map.lock().unwrap()[&("a/b".to_string(), "t".to_string())].len();
        assert_eq!(n, TAG_ANSWERS_MAX);
    }
}
