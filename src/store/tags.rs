//! Tag → digest resolutions (data path step 4), shared by all workers: inside the freshness
//! window a tag is answered from here without asking upstream; when upstream is down or
//! rate-limits, the last resolution is served (stale-if-error).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::digest::Digest;
use crate::limits::TAGS_MAX;

#[derive(Debug, Clone)]
pub struct Resolution {
    pub digest: Digest,
    pub media_type: Arc<str>,
    /// When upstream last confirmed this (monotonic clock).
    pub at: Instant,
    /// Increases with every resolution recorded: a waiter knows it got a new answer.
    pub generation: u64,
}

#[derive(Default)]
pub struct Tags {
    map: Mutex<HashMap<(String, String), Resolution>>,
    /// Tags being revalidated upstream now: later askers wait for that one HEAD.
    revalidating: Mutex<HashMap<(String, String), Arc<event_listener::Event>>>,
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
    key: (String, String),
}

impl Drop for RevalidationGuard<'_> {
    fn drop(&mut self) {
        if let Some(ev) = self.tags.revalidating.lock().unwrap().remove(&self.key) {
            ev.notify(usize::MAX);
        }
    }
}

impl Tags {
    pub fn get(&self, name: &str, tag: &str) -> Option<Resolution> {
        self.map
            .lock()
            .unwrap()
            .get(&(name.to_string(), tag.to_string()))
            .cloned()
    }

    pub fn put(&self, name: &str, tag: &str, digest: Digest, media_type: Arc<str>, at: Instant) {
        let mut map = self.map.lock().unwrap();
        if map.len() >= TAGS_MAX {
            // Full: drop the resolution upstream confirmed longest ago (rare; O(n) only then).
            if let Some(oldest) = map.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        // Raised after the insert: a worker that sees the new value finds the new entry.
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        map.insert(
            (name.to_string(), tag.to_string()),
            Resolution {
                digest,
                media_type,
                at,
                generation,
            },
        );
        self.generation.store(generation, Ordering::Release);
    }

    /// Lead the revalidation of a tag, or wait for the one in flight (the listener is made
    /// under the lock, so the leader's wake-up cannot be missed).
    pub fn revalidate(&self, name: &str, tag: &str) -> Revalidation<'_> {
        let key = (name.to_string(), tag.to_string());
        let mut inflight = self.revalidating.lock().unwrap();
        if let Some(ev) = inflight.get(&key) {
            let seen = self.get(name, tag).map_or(0, |r| r.generation);
            return Revalidation::Wait(ev.listen(), seen);
        }
        inflight.insert(key.clone(), Arc::new(event_listener::Event::new()));
        Revalidation::Lead(RevalidationGuard { tags: self, key })
    }

    pub fn remove(&self, name: &str, tag: &str) {
        let mut map = self.map.lock().unwrap();
        map.remove(&(name.to_string(), tag.to_string()));
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
    map: RefCell<HashMap<String, HashMap<String, Resolution>>>,
    len: Cell<usize>,
}

/// Resolutions one worker keeps at most (past it the copy starts again).
pub const LOCAL_MAX: usize = 4096;

impl Local {
    pub fn get(&self, tags: &Tags, name: &str, tag: &str) -> Option<Resolution> {
        // Read before the shared map: a change seen here is in the map read below.
        let generation = tags.generation.load(Ordering::Acquire);
        let mut map = self.map.borrow_mut();
        if generation != self.generation.get() || self.len.get() >= LOCAL_MAX {
            map.clear();
            self.len.set(0);
            self.generation.set(generation);
        }
        if let Some(r) = map.get(name).and_then(|m| m.get(tag)) {
            return Some(r.clone());
        }
        let mut r = tags.get(name, tag)?;
        // A copy of this worker's own: cloning it touches no other core's cache line.
        r.media_type = Arc::from(&*r.media_type);
        map.entry(name.to_string())
            .or_default()
            .insert(tag.to_string(), r.clone());
        self.len.set(self.len.get() + 1);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn a_workers_copy_answers_what_the_shared_map_holds_and_nothing_it_dropped() {
        let tags = Tags::default();
        let local = Local::default();
        let at = Instant::now();
        assert!(local.get(&tags, "a/b", "v1").is_none());
        tags.put("a/b", "v1", digest(1), "m1".into(), at);
        let r = local.get(&tags, "a/b", "v1").unwrap();
        assert_eq!((r.digest, &*r.media_type), (digest(1), "m1"));
        // Kept, and a copy of this worker's own.
        let kept = local.get(&tags, "a/b", "v1").unwrap();
        assert!(!Arc::ptr_eq(
            &kept.media_type,
            &tags.get("a/b", "v1").unwrap().media_type
        ));
        assert_eq!(local.len.get(), 1);
        // Re-resolved by another worker: the copy follows at once.
        tags.put("a/b", "v1", digest(2), "m2".into(), at);
        let r = local.get(&tags, "a/b", "v1").unwrap();
        assert_eq!((r.digest, &*r.media_type), (digest(2), "m2"));
        // Removed (upstream said 404): gone here too.
        tags.remove("a/b", "v1");
        assert!(local.get(&tags, "a/b", "v1").is_none());
        // Bounded.
        for i in 0..LOCAL_MAX + 10 {
            tags.map.lock().unwrap().insert(
                ("n".into(), i.to_string()),
                Resolution {
                    digest: digest(3),
                    media_type: "m".into(),
                    at,
                    generation: 0,
                },
            );
        }
        for i in 0..LOCAL_MAX + 10 {
            assert!(local.get(&tags, "n", &i.to_string()).is_some());
            assert!(local.len.get() <= LOCAL_MAX);
        }
    }
}
