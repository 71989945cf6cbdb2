//! The index of committed content (step 5, lookup): digest → [`Entry`], sharded so workers
//! on different cores rarely meet on one lock; a hit takes one shard read lock and clones an
//! `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::digest::Digest;
use crate::limits::SHARDS;

/// One committed digest.
#[derive(Debug)]
pub struct Entry {
    /// File length; a hit checks the open file against it (assert in pairs with commit).
    pub size: u64,
    /// The manifest media type as upstream declared it; `None` for blobs, or for content
    /// indexed from disk at startup (then sniffed from the JSON when served as a manifest).
    media_type: RwLock<Option<Arc<str>>>,
    /// Repositories upstream confirmed this digest in: content is only served under these,
    /// so caching never widens access beyond what upstream allows.
    repos: Mutex<Vec<Arc<str>>>,
    /// Last use, seconds since the Unix epoch: the expiry clock (a hit is one atomic store).
    pub last_access: AtomicU64,
}

impl Entry {
    pub fn new(size: u64, media_type: Option<Arc<str>>) -> Entry {
        Entry {
            size,
            media_type: RwLock::new(media_type),
            repos: Mutex::new(Vec::new()),
            last_access: AtomicU64::new(now_secs()),
        }
    }

    pub fn media_type(&self) -> Option<Arc<str>> {
        self.media_type.read().unwrap().clone()
    }

    pub fn set_media_type(&self, mt: Arc<str>) {
        *self.media_type.write().unwrap() = Some(mt);
    }

    pub fn linked(&self, repo: &str) -> bool {
        self.repos.lock().unwrap().iter().any(|r| &**r == repo)
    }

    pub fn link(&self, repo: &str) {
        let mut repos = self.repos.lock().unwrap();
        if !repos.iter().any(|r| &**r == repo) {
            repos.push(repo.into());
        }
    }

    pub fn repos(&self) -> Vec<Arc<str>> {
        self.repos.lock().unwrap().clone()
    }

    pub fn touch(&self) {
        self.last_access.store(now_secs(), Ordering::Relaxed);
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One shard of the index.
type Shard = RwLock<HashMap<Digest, Arc<Entry>>>;

pub struct Index {
    shards: Box<[Shard]>,
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, d: &Digest) -> &Shard {
        &self.shards[d.shard(SHARDS)]
    }

    pub fn get(&self, d: &Digest) -> Option<Arc<Entry>> {
        self.shard(d).read().unwrap().get(d).cloned()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.shard(d).read().unwrap().contains_key(d)
    }

    /// Insert or replace; returns the entry now in the index.
    pub fn insert(&self, d: Digest, entry: Arc<Entry>) -> Arc<Entry> {
        self.shard(&d).write().unwrap().insert(d, entry.clone());
        entry
    }

    pub fn remove(&self, d: &Digest) -> Option<Arc<Entry>> {
        self.shard(d).write().unwrap().remove(d)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.read().unwrap().values().map(|e| e.size).sum::<u64>())
            .sum()
    }

    /// Every repository some committed digest is linked to, sorted (for `_catalog`).
    pub fn repositories(&self) -> Vec<String> {
        let mut all = std::collections::BTreeSet::new();
        for s in self.shards.iter() {
            for e in s.read().unwrap().values() {
                for r in e.repos() {
                    all.insert(r.to_string());
                }
            }
        }
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_link_remove() {
        let idx = Index::new();
        let d = Digest::of(b"x");
        assert!(idx.get(&d).is_none());
        let e = idx.insert(d, Arc::new(Entry::new(1, None)));
        e.link("a/b");
        e.link("a/b");
        e.link("c");
        assert!(idx.get(&d).unwrap().linked("a/b"));
        assert!(!idx.get(&d).unwrap().linked("a"));
        assert_eq!(idx.repositories(), ["a/b", "c"]);
        assert_eq!((idx.len(), idx.bytes()), (1, 1));
        idx.remove(&d);
        assert!(idx.is_empty());
    }
}
