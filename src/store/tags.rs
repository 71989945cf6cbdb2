//! Tag → digest resolutions (data path step 4), shared by all workers: inside the freshness
//! window a tag is answered from here without asking upstream; when upstream is down or
//! rate-limits, the last resolution is served (stale-if-error).

use std::collections::HashMap;
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
    generation: std::sync::atomic::AtomicU64,
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
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        map.insert(
            (name.to_string(), tag.to_string()),
            Resolution {
                digest,
                media_type,
                at,
                generation,
            },
        );
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
        self.map
            .lock()
            .unwrap()
            .remove(&(name.to_string(), tag.to_string()));
    }
}
