//! Expiry, capacity and persisted state (data path step 9), on one thread of its own.
//!
//! - **TTL from last use**: one wheel deadline per committed entry at `last access + ttl`.
//!   When it fires, the entry's last access (one atomic store per hit, no lock on the hit
//!   path) decides: re-arm, or remove. Driven once a second on the monotonic clock, so an entry
//!   goes at most one tick plus one second after its deadline.
//! - **Size cap**: past `high_water_percent` of `size_max`, least-recently-used entries are
//!   evicted down to `low_water_percent`. The LRU order is a B-tree keyed by the access tick
//!   recorded when the entry entered it; a popped entry that has been used since is put back
//!   under its new tick, so each eviction costs O(log n) and never scans the store.
//! - **Never break a reader**: removal runs under the in-flight map's shard lock and skips a
//!   digest with a fill in flight; a client already streaming a removed file keeps its open
//!   descriptor; a hit that finds the file gone is served as a miss.
//! - **State**: commits, links, tags and changed access times are appended to the journal
//!   (`store::state`) every `state_interval` and at shutdown; compacted now and then.
//!
//! Workers reach this thread only through a bounded queue of [`Change`]s (commits, links,
//! tags; [`crate::store::changes`]): nothing on the hit path.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Instant;

use crate::digest::Digest;
use crate::store::changes::{Change, ChangeReceiver};
use crate::store::index::{now_ms, now_secs, now_tick};
use crate::store::state::{Journal, Loaded, Record, Saved};
use crate::wheel::{TimerId, Wheel};
use crate::worker::Shared;

/// Wall-clock second of a monotonic time (ms).
fn wall_of(ms: u64) -> u64 {
    now_secs().saturating_sub(now_ms().saturating_sub(ms) / 1000)
}

/// Apply the loaded state to a freshly scanned store: media types, links and ages for the
/// files that exist; tags as stale resolutions (usable for stale-if-error, revalidated first).
pub fn restore(shared: &Shared, loaded: &Loaded) {
    // Links and tags under plain names are the default upstream's. When the default upstream
    // stands for another registry than when they were recorded, they are not its: dropped
    // (the new registry confirms what it has; nothing is served on the old one's word).
    let plain_kept = default_registry_kept(shared);
    let keep = |key: &str| plain_kept || key.contains(crate::registry::KEY_SEP);
    let ttl = shared
        .config
        .upstream
        .ttl
        .map_or(u64::MAX / 2000, |d| d.as_secs());
    let saved_at = loaded.saved_at.unwrap_or_else(now_secs);
    let now = now_ms();
    let mut restored = 0;
    for (digest, saved) in &loaded.entries {
        let Some(entry) = shared.store.index.get(digest) else {
            continue;
        };
        if let Some(mt) = &saved.media_type {
            entry.set_media_type(mt.as_str().into());
        }
        for r in saved.repos.iter().filter(|r| keep(r)) {
            entry.link(r);
        }
        // Age at save time, clamped to [0, ttl]: downtime and clock jumps do not count.
        let age_ms = saved_at.saturating_sub(saved.last_access).min(ttl) * 1000;
        entry.last_access.store(now - age_ms, Ordering::Relaxed);
        entry
            .persisted_access
            .store(now - age_ms, Ordering::Relaxed);
        restored += 1;
    }
    let regs = shared.config.registries();
    for ((name, tag, resolved_for), (digest, mt)) in &loaded.tags {
        if !keep(name) {
            continue;
        }
        // A tag of a registry no longer configured stays out (its key names no upstream).
        let Some((u, _)) = regs.split(name) else {
            continue;
        };
        let stale = Instant::now()
            .checked_sub(shared.live.fresh_for(u))
            .unwrap_or_else(Instant::now);
        if shared.store.index.contains(digest) {
            shared
                .tags
                .put(name, tag, *resolved_for, *digest, mt.as_str().into(), stale);
        }
    }
    tracing::info!(restored, tags = loaded.tags.len(), "state restored");
}

/// Whether the default upstream stands for the same registry as when the state was saved
/// (recorded in `state/default-registry`, rewritten here); true for a store without the file.
fn default_registry_kept(shared: &Shared) -> bool {
    let dir = shared.config.root_dir.join("state");
    let path = dir.join("default-registry");
    let now = shared.registries.name(0).to_string();
    let before = std::fs::read_to_string(&path).ok();
    let kept = match before.as_deref().map(str::trim) {
        None => true,
        Some(b) => b == now,
    };
    if !kept {
        tracing::warn!(
            before = %before.as_deref().unwrap_or("").trim(),
            now = %now,
            "the default upstream stands for another registry than when the cache was written: its repositories' links and tags are dropped (content stays, confirmed again by the new registry)"
        );
    }
    let tmp = dir.join("default-registry.tmp");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, format!("{now}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the default upstream's registry name");
    }
    kept
}

struct Expiry {
    shared: Arc<Shared>,
    /// In milliseconds: the shortest upstream TTL, when deadlines are armed (an entry's own
    /// TTL is decided when its deadline fires, [`Expiry::ttl_of`]).
    ttl: Option<u64>,
    /// Each upstream's TTL (ms; `None`: never expires), and which upstream a key is of.
    ttls: Vec<Option<u64>>,
    registries: crate::registry::Registries,
    wheel: Wheel<Digest>,
    timers: HashMap<Digest, TimerId>,
    /// (last access in ms when inserted, digest): the LRU order, corrected lazily.
    lru: BTreeSet<(u64, Digest)>,
    journal: Journal,
    /// The state as journalled, for compaction.
    state: Loaded,
    pending: Vec<Record>,
    /// `ringcache.pin` and what it resolves to ([`crate::pin`]): kept past their TTL and
    /// never evicted.
    pins: Pins,
}

/// The pinned images and their digests, resolved again when a commit or a tag may have
/// changed them, or the pins themselves changed (SIGHUP).
struct Pins {
    refs: Vec<crate::reference::ImageRef>,
    digests: std::collections::HashSet<Digest>,
    /// Something changed since the last resolution.
    dirty: bool,
    /// The reload generation `refs` were read at.
    generation: u64,
    resolved_at: Option<Instant>,
}

/// Run the expiry thread until `shared.stopping` is set; flushes the state before returning.
pub fn run(shared: Arc<Shared>, changes: ChangeReceiver, journal: Journal, state: Loaded) {
    let ttls: Vec<Option<u64>> = shared
        .config
        .all_upstreams()
        .map(|u| u.ttl.map(|d| (d.as_millis() as u64).max(1000)))
        .collect();
    let ttl = ttls.iter().flatten().copied().min();
    let pins = shared.live.pins.read().unwrap().clone();
    let mut x = Expiry {
        ttl,
        ttls,
        registries: shared.config.registries(),
        wheel: Wheel::new(now_tick()),
        timers: HashMap::new(),
        lru: BTreeSet::new(),
        journal,
        state,
        pending: Vec::new(),
        pins: Pins {
            refs: pins,
            digests: Default::default(),
            dirty: true,
            generation: shared.live.generation.load(Ordering::Acquire),
            resolved_at: None,
        },
        shared,
    };
    for (digest, entry) in x.shared.store.index.entries() {
        x.arm(digest, entry.last_access());
    }
    let interval = x.shared.config.state_interval;
    let mut last_flush = Instant::now();
    loop {
        match changes.recv_timeout(crate::limits::EXPIRY_WAIT) {
            Ok(ev) => {
                x.apply(ev);
                while let Some(ev) = changes.try_recv() {
                    x.apply(ev);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        x.resolve_pins();
        for (digest, _) in x.wheel.advance(now_tick()) {
            x.timers.remove(&digest);
            x.fired(digest, now_ms());
        }
        x.enforce_cap();
        // Memory, too: spare fill blocks go once fills have stopped.
        crate::store::ingest::trim_spares();
        if last_flush.elapsed() >= interval {
            x.flush();
            last_flush = Instant::now();
        }
        if x.shared.stopping.load(Ordering::SeqCst) {
            while let Some(ev) = changes.try_recv() {
                x.apply(ev);
            }
            break;
        }
    }
    x.flush();
    tracing::info!("state saved");
}

impl Expiry {
    fn arm(&mut self, digest: Digest, last_access: u64) {
        if let Some(old) = self.timers.remove(&digest) {
            self.wheel.cancel(old);
        }
        if let Some(ttl) = self.ttl {
            // Deadlines are in wheel ticks (seconds), rounded up.
            let due_tick = (last_access + ttl).div_ceil(1000);
            self.timers
                .insert(digest, self.wheel.insert(digest, due_tick));
        }
        self.lru.insert((last_access, digest));
    }

    fn apply(&mut self, ev: Change) {
        // A commit may be a pinned tag's manifest; a tag may be a pinned one.
        self.pins.dirty = true;
        match ev {
            Change::Committed(digest) => {
                let Some(entry) = self.shared.store.index.get(&digest) else {
                    return;
                };
                self.arm(digest, entry.last_access());
                let la = entry.last_access();
                entry.persisted_access.store(la, Ordering::Relaxed);
                let saved = Saved {
                    size: entry.size,
                    media_type: entry.media_type().map(|m| m.to_string()),
                    repos: entry.repos().iter().map(|r| r.to_string()).collect(),
                    last_access: wall_of(la),
                };
                self.pending.push(Record::Commit {
                    digest: digest.hex(),
                    size: saved.size,
                    media_type: saved.media_type.clone(),
                    last_access: saved.last_access,
                });
                for r in &saved.repos {
                    self.pending.push(Record::Link {
                        digest: digest.hex(),
                        repository: r.clone(),
                    });
                }
                self.state.entries.insert(digest, saved);
            }
            Change::Linked(digest, repo) => {
                if let Some(e) = self.state.entries.get_mut(&digest) {
                    if !e.repos.contains(&repo) {
                        e.repos.push(repo.clone());
                        self.pending.push(Record::Link {
                            digest: digest.hex(),
                            repository: repo,
                        });
                    }
                }
            }
            Change::Tagged {
                name,
                tag,
                resolved_for,
                digest,
                media_type,
            } => {
                let key = (name.clone(), tag.clone(), resolved_for);
                if self.state.tags.get(&key) != Some(&(digest, media_type.clone())) {
                    self.pending.push(Record::Tag {
                        name,
                        tag,
                        digest: digest.hex(),
                        media_type: media_type.clone(),
                        accepts: Some(resolved_for.bits()),
                    });
                    self.state.tags.insert(key, (digest, media_type));
                }
            }
            Change::Untagged {
                name,
                tag,
                resolved_for,
            } => {
                let key = (name.clone(), tag.clone(), resolved_for);
                if self.state.tags.remove(&key).is_some() {
                    self.pending.push(Record::Untag {
                        name,
                        tag,
                        accepts: Some(resolved_for.bits()),
                    });
                }
            }
        }
    }

    /// A deadline fired: re-arm if the entry was used since, else remove it.
    fn fired(&mut self, digest: Digest, now_ms: u64) {
        let Some(entry) = self.shared.store.index.get(&digest) else {
            return;
        };
        // Content kept without expiry for one of its upstreams is not re-armed: it stays.
        let Some(ttl) = self.ttl_of(&entry) else {
            return;
        };
        if self.pins.digests.contains(&digest) {
            // Pinned: looked at again a TTL from now (it expires then if unpinned and unused).
            let due_ms = now_ms.saturating_add(ttl);
            self.timers
                .insert(digest, self.wheel.insert(digest, due_ms.div_ceil(1000)));
            return;
        }
        match policy::deadline(entry.last_access(), ttl, now_ms) {
            policy::Deadline::Rearm { due_ms } => {
                self.timers
                    .insert(digest, self.wheel.insert(digest, due_ms.div_ceil(1000)));
            }
            policy::Deadline::Expire => {
                self.remove(digest, "expired");
            }
        }
    }

    /// An entry's TTL: the longest of the upstreams whose repositories link it (content
    /// shared by two registries lives as long as the more patient one keeps it); the default
    /// upstream's for an entry with no link.
    fn ttl_of(&self, entry: &crate::store::Entry) -> Option<u64> {
        let mut longest = None;
        let mut any = false;
        for repo in entry.repos() {
            any = true;
            let u = self.registries.upstream_of(&repo);
            match self.ttls.get(u).copied().flatten() {
                None => return None,
                Some(t) => longest = longest.max(Some(t)),
            }
        }
        if any {
            longest
        } else {
            self.ttls.first().copied().flatten()
        }
    }

    fn enforce_cap(&mut self) {
        let Some(max) = self.shared.config.size_max_bytes else {
            return;
        };
        let config = &self.shared.config;
        let (high, low) =
            policy::water_marks(max, config.high_water_percent, config.low_water_percent);
        let shared = self.shared.clone();
        let index = &shared.store.index;
        let mut lru = std::mem::take(&mut self.lru);
        policy::evict(
            &mut lru,
            || index.bytes(),
            high,
            low,
            |d| index.get(d).map(|e| e.last_access()),
            // Pinned content stays (queued, for when it is unpinned).
            |d| !self.pins.digests.contains(&d) && self.remove(d, "evicted"),
        );
        self.lru = lru;
    }

    /// Resolve the pins again if they, a commit or a tag changed since (at most once per
    /// [`crate::limits::PIN_RESOLVE_EVERY`]): tags from the journalled state, manifests read
    /// from the store.
    fn resolve_pins(&mut self) {
        let generation = self.shared.live.generation.load(Ordering::Acquire);
        if generation != self.pins.generation {
            self.pins.generation = generation;
            let refs = self.shared.live.pins.read().unwrap().clone();
            if refs != self.pins.refs {
                self.pins.refs = refs;
                self.pins.dirty = true;
                self.pins.resolved_at = None;
            }
        }
        if !self.pins.dirty
            || (self.pins.refs.is_empty() && self.pins.digests.is_empty())
            || self
                .pins
                .resolved_at
                .is_some_and(|t| t.elapsed() < crate::limits::PIN_RESOLVE_EVERY)
        {
            return;
        }
        self.pins.dirty = false;
        self.pins.resolved_at = Some(Instant::now());
        let wanted = crate::pin::tag_keys(&self.pins.refs, &self.registries);
        let mut tags: HashMap<(&str, &str), Vec<Digest>> = HashMap::new();
        for ((name, tag, _), (digest, _)) in &self.state.tags {
            if wanted.get(name).is_some_and(|t| t.contains(tag)) {
                tags.entry((name, tag)).or_default().push(*digest);
            }
        }
        let store = &self.shared.store;
        let r = crate::pin::resolve(
            &self.pins.refs,
            &self.registries,
            |k, t| tags.get(&(k, t)).cloned().unwrap_or_default(),
            |d| {
                let entry = store.index.get(d)?;
                (entry.size <= crate::limits::MANIFEST_BYTES_MAX)
                    .then(|| std::fs::read(store.blob_path(d)).ok())
                    .flatten()
            },
        );
        if r.digests != self.pins.digests {
            let bytes: u64 = r
                .digests
                .iter()
                .filter_map(|d| store.index.get(d).map(|e| e.size))
                .sum();
            tracing::info!(
                images = self.pins.refs.len(),
                digests = r.digests.len(),
                bytes,
                pending = ?r.pending,
                "pins resolved"
            );
            self.pins.digests = r.digests;
        }
    }

    /// Remove a committed entry unless a fill for it is in flight. Returns whether it went.
    fn remove(&mut self, digest: Digest, why: &'static str) -> bool {
        let store = &self.shared.store;
        let path = store.blob_path(&digest);
        let removed = self.shared.fills.when_idle(&digest, || {
            let entry = store.index.remove(&digest);
            // The index no longer has it: new requests miss. Unlink under the same lock so a
            // new fill of this digest cannot commit in between; readers keep their descriptors.
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%digest, error = %e, "removing an expired or evicted file failed");
                }
            }
            entry
        });
        match removed {
            Some(Some(entry)) => {
                if let Some(t) = self.timers.remove(&digest) {
                    self.wheel.cancel(t);
                }
                self.state.entries.remove(&digest);
                self.pending.push(Record::Remove {
                    digest: digest.hex(),
                });
                let tally = if why == "expired" {
                    &self.shared.tallies.expirations
                } else {
                    &self.shared.tallies.evictions
                };
                tally.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%digest, bytes = entry.size, store_bytes = store.index.bytes(), "entry {why}");
                true
            }
            Some(None) => true,
            None => false, // a fill is in flight: leave it
        }
    }

    /// Append what changed (commits, links, tags, removals, access times) and compact when
    /// the journal has grown well past the live state.
    fn flush(&mut self) {
        for (digest, entry) in self.shared.store.index.entries() {
            let la = entry.last_access();
            if entry.persisted_access.swap(la, Ordering::Relaxed) != la {
                let a = wall_of(la);
                if let Some(s) = self.state.entries.get_mut(&digest) {
                    s.last_access = a;
                } else {
                    // Indexed from disk at start with no saved state: record it now.
                    let saved = Saved {
                        size: entry.size,
                        media_type: entry.media_type().map(|m| m.to_string()),
                        repos: entry.repos().iter().map(|r| r.to_string()).collect(),
                        last_access: a,
                    };
                    self.pending.push(Record::Commit {
                        digest: digest.hex(),
                        size: saved.size,
                        media_type: saved.media_type.clone(),
                        last_access: a,
                    });
                    self.state.entries.insert(digest, saved);
                }
                self.pending.push(Record::Access {
                    digest: digest.hex(),
                    last_access: a,
                });
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let t = now_secs();
        self.pending.push(Record::Saved { at: t });
        self.state.saved_at = Some(t);
        let records = std::mem::take(&mut self.pending);
        if let Err(e) = self.journal.append(&records) {
            self.shared
                .store
                .incidents
                .report("state journal write", &e);
            return;
        }
        tracing::debug!(records = records.len(), "state flushed");
        let live = self.state.entries.len() + self.state.tags.len();
        if self.journal.lines() > 4 * live + 10_000 {
            if let Err(e) = self.journal.compact(&self.state) {
                self.shared.store.incidents.report("state compaction", &e);
            }
        }
    }
}

/// The expiry policy, pure: what a fired deadline means, and which entries the size cap
/// evicts. `now` and every access time are passed in (milliseconds on the monotonic clock).
pub mod policy {
    use std::collections::BTreeSet;

    use crate::digest::Digest;

    /// What a fired deadline means for an entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Deadline {
        /// Used since the deadline was set: a new one, `ttl` after the last use.
        Rearm { due_ms: u64 },
        /// Not used for `ttl`: remove it.
        Expire,
    }

    /// The TTL counts from the last use.
    pub fn deadline(last_access_ms: u64, ttl_ms: u64, now_ms: u64) -> Deadline {
        let due_ms = last_access_ms.saturating_add(ttl_ms);
        if due_ms > now_ms {
            Deadline::Rearm { due_ms }
        } else {
            Deadline::Expire
        }
    }

    /// Eviction starts above `high_percent` of the cap and stops at `low_percent` of it.
    pub fn water_marks(max: u64, high_percent: u64, low_percent: u64) -> (u64, u64) {
        (max / 100 * high_percent, max / 100 * low_percent)
    }

    /// Evict least-recently-used entries while `bytes()` is above `low`, once it is above
    /// `high`. `lru` holds (last access when queued, digest); an entry used since it was
    /// queued goes back in line at its new time; one gone from the index is dropped; one that
    /// `remove` keeps (a fill in flight) stays queued for the next round. `remove` says
    /// whether the entry went.
    pub fn evict(
        lru: &mut BTreeSet<(u64, Digest)>,
        bytes: impl Fn() -> u64,
        high: u64,
        low: u64,
        last_access: impl Fn(&Digest) -> Option<u64>,
        mut remove: impl FnMut(Digest) -> bool,
    ) {
        if bytes() <= high {
            return;
        }
        let mut kept = Vec::new();
        while bytes() > low {
            let Some((queued, digest)) = lru.pop_first() else {
                break;
            };
            let Some(la) = last_access(&digest) else {
                continue;
            };
            if la != queued {
                lru.insert((la, digest));
                continue;
            }
            if !remove(digest) {
                kept.push((queued, digest));
            }
        }
        lru.extend(kept);
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::cell::RefCell;
        use std::collections::HashMap;

        #[test]
        fn a_deadline_rearms_after_a_use_and_expires_without_one() {
            let ttl = 10_000;
            for (last, now, want) in [
                (0, 10_000, Deadline::Expire),
                (0, 20_000, Deadline::Expire),
                (5_000, 10_000, Deadline::Rearm { due_ms: 15_000 }),
                (9_999, 10_000, Deadline::Rearm { due_ms: 19_999 }),
                (u64::MAX - 1, 0, Deadline::Rearm { due_ms: u64::MAX }),
            ] {
                assert_eq!(deadline(last, ttl, now), want, "last use {last}, now {now}");
            }
        }

        fn d(n: u8) -> Digest {
            Digest::of(&[n])
        }

        /// Entries of 10 bytes each, by digest, with their last access; some being filled.
        struct Fake {
            access: RefCell<HashMap<Digest, u64>>,
            in_flight: Vec<Digest>,
            removed: RefCell<Vec<u8>>,
        }

        impl Fake {
            fn evict(&self, lru: &mut BTreeSet<(u64, Digest)>, high: u64, low: u64) {
                let names: HashMap<Digest, u8> = (0..10).map(|n| (d(n), n)).collect();
                evict(
                    lru,
                    || self.access.borrow().len() as u64 * 10,
                    high,
                    low,
                    |x| self.access.borrow().get(x).copied(),
                    |x| {
                        if self.in_flight.contains(&x) {
                            return false;
                        }
                        self.access.borrow_mut().remove(&x);
                        self.removed.borrow_mut().push(names[&x]);
                        true
                    },
                );
            }
        }

        #[test]
        fn the_cap_evicts_the_least_recently_used_down_to_the_low_mark() {
            let (high, low) = water_marks(100, 95, 70);
            assert_eq!((high, low), (95, 70));
            // Ten entries of 10 bytes, used at times 1..=10 (entry 0 the oldest).
            let fake = Fake {
                access: RefCell::new((0..10).map(|n| (d(n), n as u64 + 1)).collect()),
                in_flight: vec![d(1)],
                removed: RefCell::new(Vec::new()),
            };
            let mut lru: BTreeSet<_> = (0..10).map(|n| (n as u64 + 1, d(n))).collect();
            // Entry 2 was used since it was queued: it goes back in line at its new time.
            fake.access.borrow_mut().insert(d(2), 50);
            fake.evict(&mut lru, high, low);
            // 100 bytes > 95: evicted down to 70, oldest first; 1 is being filled (kept),
            // 2 was used since.
            assert_eq!(*fake.removed.borrow(), vec![0, 3, 4]);
            assert!(lru.contains(&(2, d(1))), "a kept entry stays queued");
            assert!(lru.contains(&(50, d(2))), "re-queued at its last use");
            // At or below the high mark: nothing more.
            fake.evict(&mut lru, high, low);
            assert_eq!(fake.removed.borrow().len(), 3);
        }
    }
}
