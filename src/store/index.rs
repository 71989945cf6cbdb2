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
    /// Last use, in milliseconds of the monotonic clock ([`now_ms`]): the expiry and LRU clock.
    /// A hit is one atomic store; wall-clock time appears only in the persisted state.
    pub last_access: AtomicU64,
    /// The access time last written to the state journal (so only changes are written).
    pub persisted_access: AtomicU64,
    /// Set when the index drops or replaces this entry: workers' kept descriptors of it stop
    /// being used and are closed (a load on the hit path, written once).
    removed: std::sync::atomic::AtomicBool,
}

impl Entry {
    pub fn new(size: u64, media_type: Option<Arc<str>>) -> Entry {
        Entry {
            size,
            media_type: RwLock::new(media_type),
            repos: Mutex::new(Vec::new()),
            last_access: AtomicU64::new(now_ms()),
            persisted_access: AtomicU64::new(0),
            removed: std::sync::atomic::AtomicBool::new(false),
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

    /// Record a use. Stores only when the millisecond changed: a hot entry served from many
    /// cores would otherwise bounce this cache line on every hit.
    pub fn touch(&self) {
        let now = now_ms();
        if self.last_access.load(Ordering::Relaxed) != now {
            self.last_access.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the index has dropped this entry.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn last_access(&self) -> u64 {
        self.last_access.load(Ordering::Relaxed)
    }
}

/// The monotonic clock starts here (ms), so that "a year before start" is still a valid time.
const CLOCK_BASE_MS: u64 = 1 << 42;

/// The monotonic clock in milliseconds, shared by every thread.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    CLOCK_BASE_MS
        + START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
}

/// Milliseconds since the clock was first read (process start, in practice).
pub fn uptime_ms() -> u64 {
    now_ms() - CLOCK_BASE_MS
}

/// The monotonic clock in whole seconds: the timing wheel's ticks.
pub fn now_tick() -> u64 {
    now_ms() / 1000
}

/// Wall-clock seconds since the Unix epoch (for the persisted state and log throttling). With
/// the `failpoints` feature, `RINGCACHE_WALL_OFFSET_SECS` shifts it, to simulate a clock jump.
pub fn now_secs() -> u64 {
    #[cfg(feature = "failpoints")]
    if let Some(off) = std::env::var("RINGCACHE_WALL_OFFSET_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return now.saturating_add_signed(off);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One shard of the index.
type Shard = RwLock<HashMap<Digest, Arc<Entry>>>;

pub struct Index {
    shards: Box<[Shard]>,
    /// Sum of the sizes of all entries (kept with every insert and remove).
    bytes: AtomicU64,
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
            bytes: AtomicU64::new(0),
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
        self.bytes.fetch_add(entry.size, Ordering::Relaxed);
        if let Some(old) = self.shard(&d).write().unwrap().insert(d, entry.clone()) {
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
            old.removed.store(true, Ordering::Release);
        }
        entry
    }

    pub fn remove(&self, d: &Digest) -> Option<Arc<Entry>> {
        let old = self.shard(d).write().unwrap().remove(d);
        if let Some(o) = &old {
            self.bytes.fetch_sub(o.size, Ordering::Relaxed);
            o.removed.store(true, Ordering::Release);
        }
        old
    }

    /// Every digest and entry (for the expiry thread's scans and the state snapshot).
    pub fn entries(&self) -> Vec<(Digest, Arc<Entry>)> {
        let mut out = Vec::with_capacity(self.len());
        for s in self.shards.iter() {
            out.extend(s.read().unwrap().iter().map(|(d, e)| (*d, e.clone())));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Every repository some committed digest is linked to, sorted (for `_catalog`).
    pub fn repositories(&self) -> Vec<String> {
        self.repositories_as(|r| Some(r.to_string()))
    }

    /// Every repository `name` keeps, each under the one name it gives it, sorted and listed
    /// once: links are kept under the name the client used, so Docker Hub's `alpine` and
    /// `library/alpine` are two links but one repository (and another upstream's keys are
    /// left out by giving them no name).
    pub fn repositories_as(&self, name: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let mut all = std::collections::BTreeSet::new();
        for s in self.shards.iter() {
            for e in s.read().unwrap().values() {
                for r in e.repos() {
                    if let Some(n) = name(&r) {
                        all.insert(n);
                    }
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
        // One name per repository: Docker Hub's `library/` rule.
        idx.get(&d).unwrap().link("library/c");
        let hub = |r: &str| Some(crate::upstream::upstream_name(true, r).into_owned());
        assert_eq!(idx.repositories_as(hub), ["a/b", "library/c"]);
        assert_eq!((idx.len(), idx.bytes()), (1, 1));
        idx.remove(&d);
        assert!(idx.is_empty());
    }
}
