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
}

#[derive(Default)]
pub struct Tags {
    map: Mutex<HashMap<(String, String), Resolution>>,
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
        map.insert(
            (name.to_string(), tag.to_string()),
            Resolution {
                digest,
                media_type,
                at,
            },
        );
    }

    pub fn remove(&self, name: &str, tag: &str) {
        self.map
            .lock()
            .unwrap()
            .remove(&(name.to_string(), tag.to_string()));
    }
}
