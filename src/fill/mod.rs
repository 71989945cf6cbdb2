//! Single-flight fills (data path steps 6–7).
//!
//! [`Fills`] is the sharded in-flight map: digest → [`Fill`]. The first requester of a
//! missing digest gets a [`Lease`] and spawns the fill task (`task.rs`), which is owned by the
//! lease and not by any client: a client that goes away does not stop it. Every requester,
//! the first one included, then *follows* the fill (`follow.rs`): it streams the temp file up to
//! the published byte count, waking on progress, and holds the final byte back until the fill's
//! body is verified (its `verified` flag, set before the fsync and the rename of the commit), so
//! a body that fails verification is never delivered complete.
//!
//! Only three things cross cores in ringcache; this map is one. Bytes cross through it only
//! as the fill's few most recent blocks ([`crate::store::ingest::Recent`], in memory,
//! read-only, published as soon as they are received, before their write): followers send
//! the newest bytes from there, and older bytes from the file. The fill paces itself to its
//! furthest follower ([`Fill::pace`]), briefly, so that one stays within those blocks.

pub mod follow;
pub mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;

use crate::digest::Digest;
use crate::error::Kind;
use crate::limits::SHARDS;
use crate::store::ingest::Recent;

/// The state of one fill. Transitions: `Pending → Filling → Committed | Failed`, or
/// `Pending → Failed`; each transition asserts where it starts from.
#[derive(Debug, Clone)]
pub enum State {
    /// The fill has asked upstream and has no response head yet.
    Pending,
    /// Upstream answered 200: the body is being appended to `file`; [`Fill::written`] bytes
    /// of it are there to read. `size` is upstream's Content-Length, when it sent one.
    Filling {
        file: Arc<std::fs::File>,
        size: Option<u64>,
        media_type: Option<Arc<str>>,
    },
    /// Verified, renamed into the store and indexed. `file` still reads the same content.
    Committed {
        file: Arc<std::fs::File>,
        size: u64,
        media_type: Option<Arc<str>>,
    },
    /// Nothing will be committed. The kind is what a client that has no bytes yet is told;
    /// a client mid-body is cut short.
    Failed(Kind),
    /// The store cannot take this content (disk full, read-only, I/O error): nothing will be
    /// committed, and every follower fetches the rest straight from upstream ([`crate::proxy::bypass`]).
    Bypass,
}

/// One fill in flight, shared by its task and every follower, on any worker.
pub struct Fill {
    pub digest: Digest,
    /// The repository the fill fetches under (upstream confirms the digest there).
    pub repo: String,
    state: Mutex<State>,
    /// Bytes of the body readable by followers (in the fill's recent blocks or the temp
    /// file). Published as the ingest accepts each block, with Release; never decreases.
    written: AtomicU64,
    /// The fill's most recent blocks (set once, when the body starts).
    recent: std::sync::OnceLock<Arc<Recent>>,
    /// Set once the whole body is received and hashes to the digest — before the last
    /// writes, the fsync and the rename of the commit: followers may send the last byte from
    /// then on (what they send is verified; the commit's durability is the store's business,
    /// not the client's).
    verified: std::sync::atomic::AtomicBool,
    /// Notified on every published change of `written` or `state`.
    progress: Event,
    /// Followers that joined (the first requester included).
    followers: AtomicUsize,
    /// Followers streaming the body now (see [`Fill::pace`]).
    streaming: AtomicUsize,
    /// The furthest body offset a follower has sent up to.
    front: AtomicU64,
    /// Notified as `front` moves and as followers stop streaming (the fill may be pacing).
    paced: Event,
    /// Further repositories upstream confirmed this digest in while the fill ran; linked at
    /// commit.
    links: Mutex<Vec<String>>,
}

impl Fill {
    fn new(digest: Digest, repo: &str) -> Fill {
        Fill {
            digest,
            repo: repo.to_string(),
            state: Mutex::new(State::Pending),
            written: AtomicU64::new(0),
            recent: Default::default(),
            verified: Default::default(),
            progress: Event::new(),
            followers: AtomicUsize::new(0),
            streaming: AtomicUsize::new(0),
            front: AtomicU64::new(0),
            paced: Event::new(),
            links: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap().clone()
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// How much of the body the temp file holds, of the `published` bytes (a [`Fill::written`]
    /// read earlier): those before the oldest recent block, or all of them when no block is
    /// held. The bytes past it may be only in memory: a read or sendfile from the file stops
    /// here (the file ends there, though the page at its end may be cached).
    pub fn in_file(&self, published: u64) -> u64 {
        match self.recent.get().and_then(|r| r.oldest_at()) {
            Some(at) => at.min(published),
            None => published,
        }
    }

    /// Up to `want` bytes of the body at `pos` (below [`Fill::written`]) from the fill's
    /// recent blocks in memory; `None` if they no longer hold it (read the file).
    pub fn recent_piece(&self, pos: u64, want: usize) -> Option<crate::store::ingest::Piece> {
        self.recent.get()?.piece_at(pos, want)
    }

    /// Called by the fill before each upstream read: wait (at most [`PACE_WAIT`]) while
    /// followers are streaming and even the furthest ahead of them is behind the newest
    /// [`PACE_BLOCKS`] recent blocks. The fill stays within its followers' reach in memory
    /// while any of them keeps up, and leaves slower ones behind: they read the file.
    pub async fn pace(&self) {
        self.pace_for(PACE_WAIT).await
    }

    async fn pace_for(&self, most: std::time::Duration) {
        let Some(recent) = self.recent.get() else {
            return;
        };
        let deadline = std::time::Instant::now() + most;
        loop {
            let listener = self.paced.listen();
            if self.streaming.load(Ordering::Acquire) == 0 {
                return;
            }
            match recent.start_of_newest(PACE_BLOCKS) {
                Some(from) if self.front.load(Ordering::Acquire) < from => {}
                _ => return,
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || monoio::time::timeout(left, listener).await.is_err() {
                return;
            }
        }
    }

    /// A follower sent the body up to `pos` (or starts streaming there).
    fn advanced(&self, pos: u64) {
        if self.front.fetch_max(pos, Ordering::AcqRel) < pos {
            self.paced.notify(1);
        }
    }

    /// Count a follower as streaming until the guard drops.
    fn streaming(&self) -> Streaming<'_> {
        self.streaming.fetch_add(1, Ordering::AcqRel);
        Streaming(self)
    }

    fn publish(&self, written: u64) {
        let before = self.written.swap(written, Ordering::AcqRel);
        assert!(written >= before, "published byte count went backwards");
        self.progress.notify(usize::MAX);
    }

    /// The body is complete and matches the digest (see [`Lease::verified`]).
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::Relaxed)
    }

    /// A listener to await before re-checking state (create it *before* the check, so a
    /// notification in between is not lost).
    pub fn listen(&self) -> event_listener::EventListener {
        self.progress.listen()
    }

    /// Record a repository upstream confirmed the digest in, to be linked at commit.
    pub fn add_link(&self, repo: &str) {
        self.links.lock().unwrap().push(repo.to_string());
    }

    pub fn take_links(&self) -> Vec<String> {
        std::mem::take(&mut *self.links.lock().unwrap())
    }

    fn transition(&self, next: State) {
        let mut state = self.state.lock().unwrap();
        let ok = matches!(
            (&*state, &next),
            (State::Pending, State::Filling { .. })
                | (State::Pending, State::Failed(_))
                | (State::Pending, State::Bypass)
                | (State::Filling { .. }, State::Committed { .. })
                | (State::Filling { .. }, State::Failed(_))
                | (State::Filling { .. }, State::Bypass)
        );
        assert!(
            ok,
            "fill {}: bad transition {:?} -> {:?}",
            self.digest, *state, next
        );
        *state = next;
        drop(state);
        self.progress.notify(usize::MAX);
    }

    fn is_terminal(&self) -> bool {
        matches!(
            *self.state.lock().unwrap(),
            State::Committed { .. } | State::Failed(_) | State::Bypass
        )
    }
}

/// How far behind the newest block the furthest follower may be before the fill waits for it
/// (in blocks; half of what a fill keeps, so it is still in memory after the next ones).
pub const PACE_BLOCKS: usize = crate::store::ingest::RECENT_KEEP / 2;
/// The longest a fill waits for its followers before it takes the next block: a follower
/// that is slower than the fill falls behind after this, and reads from the file.
pub const PACE_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// A follower streaming the body (see [`Fill::pace`]).
struct Streaming<'a>(&'a Fill);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.streaming.fetch_sub(1, Ordering::AcqRel);
        self.0.paced.notify(1);
    }
}

/// The result of asking for a digest that the index does not have.
pub enum Joined {
    /// Start the fill: the lease is the fill task's, and the caller follows too.
    Lead(Lease, Arc<Fill>),
    /// A fill is in flight: follow it.
    Follow(Arc<Fill>),
    /// It was committed between the caller's index lookup and now: serve it as a hit.
    Committed,
    /// Too many fills in flight.
    Busy,
}

/// One shard of the in-flight map.
type Shard = Mutex<HashMap<Digest, Arc<Fill>>>;

/// The sharded in-flight map.
pub struct Fills {
    shards: Box<[Shard]>,
    inflight: AtomicUsize,
    inflight_max: usize,
}

impl Fills {
    pub fn new(inflight_max: usize) -> Arc<Fills> {
        Arc::new(Fills {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            inflight: AtomicUsize::new(0),
            inflight_max,
        })
    }

    /// Join the fill of `digest`, or lead a new one. `committed` re-checks the index under
    /// the shard lock: a fill inserts into the index before it leaves this map, so a requester
    /// that missed the index but finds no fill here learns that it was just committed.
    pub fn join_or_lead(
        self: &Arc<Self>,
        digest: Digest,
        repo: &str,
        committed: impl FnOnce() -> bool,
    ) -> Joined {
        let mut shard = self.shards[digest.shard(SHARDS)].lock().unwrap();
        if let Some(fill) = shard.get(&digest) {
            fill.followers.fetch_add(1, Ordering::Relaxed);
            return Joined::Follow(fill.clone());
        }
        if committed() {
            return Joined::Committed;
        }
        if self.inflight.load(Ordering::Relaxed) >= self.inflight_max {
            return Joined::Busy;
        }
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let fill = Arc::new(Fill::new(digest, repo));
        fill.followers.store(1, Ordering::Relaxed);
        shard.insert(digest, fill.clone());
        Joined::Lead(
            Lease {
                fills: self.clone(),
                fill: fill.clone(),
                done: false,
            },
            fill,
        )
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether a fill of `digest` is in flight.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.shards[digest.shard(SHARDS)]
            .lock()
            .unwrap()
            .contains_key(digest)
    }

    /// Run `f` under the digest's shard lock if no fill of it is in flight (`None` if one is):
    /// removals use this, so no fill can start or commit that digest meanwhile.
    pub fn when_idle<R>(&self, digest: &Digest, f: impl FnOnce() -> R) -> Option<R> {
        let shard = self.shards[digest.shard(SHARDS)].lock().unwrap();
        if shard.contains_key(digest) {
            return None;
        }
        let r = f();
        drop(shard);
        Some(r)
    }

    fn remove(&self, fill: &Arc<Fill>) {
        let mut shard = self.shards[fill.digest.shard(SHARDS)].lock().unwrap();
        if shard
            .get(&fill.digest)
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            shard.remove(&fill.digest);
            self.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The fill task's obligation: it must end the fill, `Committed` or `Failed`. Dropped
/// unfinished (the task panicked or was cancelled), it publishes `Failed` so no follower is
/// left waiting, and leaves the map so the next request starts afresh.
pub struct Lease {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    done: bool,
}

impl Lease {
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Upstream answered 200: the body is coming into `file` (its latest blocks in
    /// `recent`).
    pub fn filling(
        &self,
        file: Arc<std::fs::File>,
        recent: Arc<Recent>,
        size: Option<u64>,
        media_type: Option<Arc<str>>,
    ) {
        let _ = self.fill.recent.set(recent);
        self.fill.transition(State::Filling {
            file,
            size,
            media_type,
        });
    }

    /// Publishes to followers that `n` bytes are now readable, from the fill's recent blocks
    /// or the file (called by the ingest as it accepts blocks; never with a smaller count than
    /// before).
    pub fn publisher(&self) -> crate::store::ingest::OnAccepted {
        let fill = self.fill.clone();
        Arc::new(move |n| fill.publish(n))
    }

    /// Every byte is received and the sha256 matches: followers may finish before the last
    /// writes, the commit's fsync and the rename.
    pub fn verified(&self) {
        self.fill.verified.store(true, Ordering::Release);
        self.fill.progress.notify(usize::MAX);
    }

    /// The content is verified, in the store and in the index.
    pub fn committed(mut self, size: u64) {
        let (file, media_type) = match self.fill.state() {
            State::Filling {
                file, media_type, ..
            } => (file, media_type),
            other => panic!("commit from {other:?}"),
        };
        self.fill.transition(State::Committed {
            file,
            size,
            media_type,
        });
        self.done = true;
        self.fills.remove(&self.fill);
    }

    pub fn failed(mut self, kind: Kind) {
        self.fail(kind);
    }

    /// The store failed: followers go to upstream themselves.
    pub fn bypass(mut self) {
        if !self.fill.is_terminal() {
            self.fill.transition(State::Bypass);
        }
        self.done = true;
        self.fills.remove(&self.fill);
    }

    fn fail(&mut self, kind: Kind) {
        if !self.fill.is_terminal() {
            self.fill.transition(State::Failed(kind));
        }
        self.done = true;
        self.fills.remove(&self.fill);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            tracing::error!(digest = %self.fill.digest, "fill ended without commit or failure; failing it");
            self.fail(Kind::Internal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<std::fs::File> {
        Arc::new(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn one_leader_many_followers() {
        let fills = Fills::new(10);
        let d = Digest::of(b"a");
        let Joined::Lead(lease, _) = fills.join_or_lead(d, "r", || false) else {
            panic!()
        };
        for _ in 0..3 {
            assert!(matches!(
                fills.join_or_lead(d, "r", || false),
                Joined::Follow(_)
            ));
        }
        assert_eq!(lease.fill().followers(), 4);
        lease.filling(file(), Arc::default(), Some(3), None);
        (lease.publisher())(3);
        lease.committed(3);
        assert_eq!(fills.inflight(), 0);
        // After commit the map no longer has it, and the index (re-checked) does.
        assert!(matches!(
            fills.join_or_lead(d, "r", || true),
            Joined::Committed
        ));
    }

    #[test]
    fn dropped_lease_fails_and_frees() {
        let fills = Fills::new(10);
        let d = Digest::of(b"b");
        let Joined::Lead(lease, fill) = fills.join_or_lead(d, "r", || false) else {
            panic!()
        };
        drop(lease);
        assert!(matches!(fill.state(), State::Failed(Kind::Internal)));
        assert!(matches!(
            fills.join_or_lead(d, "r", || false),
            Joined::Lead(..)
        ));
    }

    #[test]
    fn removal_waits_for_no_fill_in_flight() {
        let fills = Fills::new(10);
        let d = Digest::of(b"e");
        let Joined::Lead(lease, _) = fills.join_or_lead(d, "r", || false) else {
            panic!()
        };
        assert_eq!(
            fills.when_idle(&d, || "removed"),
            None,
            "never while a fill is in flight"
        );
        lease.failed(Kind::BadGateway);
        assert_eq!(fills.when_idle(&d, || "removed"), Some("removed"));
    }

    #[test]
    fn inflight_cap() {
        let fills = Fills::new(1);
        let _a = fills.join_or_lead(Digest::of(b"1"), "r", || false);
        assert!(matches!(
            fills.join_or_lead(Digest::of(b"2"), "r", || false),
            Joined::Busy
        ));
    }

    #[test]
    #[should_panic(expected = "commit from")]
    fn transitions_are_checked() {
        let fills = Fills::new(1);
        let Joined::Lead(lease, _) = fills.join_or_lead(Digest::of(b"c"), "r", || false) else {
            panic!()
        };
        lease.committed(0);
    }

    /// Run `test` on a runtime, with a store and a fill led by the caller (keyed by `key`).
    fn led_fill<F: std::future::Future<Output = ()>>(
        key: &[u8],
        test: impl FnOnce(crate::store::Store, Lease, Arc<Fill>) -> F,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let fills = Fills::new(1);
        let Joined::Lead(lease, fill) = fills.join_or_lead(Digest::of(key), "r", || false) else {
            panic!()
        };
        rt.block_on(test(store, lease, fill));
    }

    /// The fill waits for the furthest of its streaming followers once that one is behind the
    /// newest [`PACE_BLOCKS`] blocks, and goes on as soon as it moves up or stops streaming.
    #[test]
    fn the_fill_paces_itself_to_its_furthest_follower() {
        use crate::store::ingest::{Ingest, RECENT_KEEP};
        use std::time::Duration;
        led_fill(b"p", |store, lease, fill| async move {
            let mut ingest = Ingest::create_with(&store, false).unwrap();
            lease.filling(ingest.shared_file(), ingest.recent(), None, None);
            async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
                let limit = Duration::from_secs(30);
                monoio::time::timeout(limit, f)
                    .await
                    .expect("a bounded wait")
            }
            // Start a pace (with no time limit to speak of) and see it wait.
            async fn waiting(fill: Arc<Fill>) -> monoio::task::JoinHandle<()> {
                let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let d = done.clone();
                let task = monoio::spawn(async move {
                    fill.pace_for(Duration::from_secs(600)).await;
                    d.store(true, Ordering::SeqCst);
                });
                for _ in 0..10 {
                    monoio::time::sleep(Duration::ZERO).await;
                }
                assert!(
                    !done.load(Ordering::SeqCst),
                    "the fill waits for its follower"
                );
                task
            }
            // No follower streaming: the fill never waits, however far ahead it is.
            for _ in 0..RECENT_KEEP {
                bounded(fill.pace_for(Duration::from_secs(600))).await;
                ingest.append(&[7u8; 1000]).await.unwrap();
            }
            // Only the newest PACE_BLOCKS blocks count as near the front.
            let front = ((RECENT_KEEP - PACE_BLOCKS) * 1000) as u64;
            let newer = |pos| fill.recent_piece(pos, 1).unwrap().newer();
            assert!(newer(front) < PACE_BLOCKS && newer(front - 1) >= PACE_BLOCKS);
            // A follower streaming from 0, behind the newest blocks: the fill waits...
            let streaming = fill.streaming();
            let task = waiting(fill.clone()).await;
            // ...until it moves within reach (the oldest of the newest PACE_BLOCKS blocks).
            fill.advanced(front);
            // Goes on once the follower is near.
            bounded(task).await;
            // Behind again, then gone: the fill goes on when it stops streaming.
            for _ in 0..PACE_BLOCKS + 1 {
                ingest.append(&[7u8; 1000]).await.unwrap();
            }
            let task = waiting(fill.clone()).await;
            drop(streaming);
            // Goes on once no follower streams.
            bounded(task).await;
            // A follower that does not move holds the fill only for the longest wait.
            let _stalled = fill.streaming();
            bounded(fill.pace_for(Duration::from_millis(1))).await;
            lease.failed(Kind::BadGateway);
        });
    }

    /// What a follower may take from the temp file is in it, byte for byte, while the blocks
    /// after it are still being written: the file ends there, and a sendfile past it (its last
    /// page cached by the buffered write of a block's unaligned tail) cut followers short.
    #[test]
    fn the_file_holds_every_byte_a_follower_may_read_from_it() {
        use crate::store::ingest::Ingest;
        use std::os::unix::fs::FileExt;
        led_fill(b"f", |store, lease, fill| async move {
            let mut ingest = Ingest::create_with(&store, false).unwrap();
            let file = ingest.shared_file();
            lease.filling(file.clone(), ingest.recent(), None, None);
            let mut body = Vec::new();
            let mut lagged = 0;
            // Unaligned pieces, so that block ends fall inside pages.
            for i in 0..64u32 {
                let piece: Vec<u8> = (0..70_001 + i * 13).map(|j| (i + j) as u8).collect();
                body.extend_from_slice(&piece);
                ingest.append(&piece).await.unwrap();
                let published = ingest.accepted();
                let in_file = fill.in_file(published);
                let size = file.metadata().unwrap().len();
                assert!(in_file <= size, "{in_file} claimed, the file has {size}");
                let mut got = vec![0u8; in_file as usize];
                file.read_exact_at(&mut got, 0).unwrap();
                assert!(
                    got == body[..in_file as usize],
                    "the file's bytes are the body's"
                );
                lagged += usize::from(in_file < published);
            }
            // The case that matters happened: the file behind what was published.
            assert!(lagged > 0, "writes never lagged: the test proved nothing");
            lease.failed(Kind::BadGateway);
        });
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn published_count_never_decreases() {
        let fills = Fills::new(1);
        let Joined::Lead(lease, _) = fills.join_or_lead(Digest::of(b"d"), "r", || false) else {
            panic!()
        };
        lease.filling(file(), Arc::default(), None, None);
        (lease.publisher())(10);
        (lease.publisher())(5);
    }
}
