//! `auth.htpasswd`: Basic credentials checked against the bcrypt entries of an htpasswd file
//! (as the reference registry, which takes bcrypt only; other entries are reported at start
//! and ignored). The file is read at start and on SIGHUP.
//!
//! A bcrypt check costs tens of milliseconds of a core, so it never runs on an event loop: it
//! is a job on [`crate::jobs`], at most [`AUTH_CHECKS_INFLIGHT_MAX`] per worker at once, and
//! concurrent requests with the same credentials wait for one check. A success is remembered
//! by the worker for [`AUTH_CACHE_TTL`] ([`AUTH_CACHE_MAX`] entries) under an HMAC of user and
//! password with a key made at start: the password itself is never kept.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;

use super::Reason;
use crate::limits::{
    AUTH_CACHE_MAX, AUTH_CACHE_TTL, AUTH_CHECKS_INFLIGHT_MAX, AUTH_FAILURES_PER_ADDR_MAX,
    AUTH_FAILURES_WINDOW, AUTH_FAILURE_ADDRS_MAX, HTPASSWD_BYTES_MAX,
};

pub struct Htpasswd {
    realm: RwLock<String>,
    /// user → bcrypt hash.
    users: RwLock<Arc<HashMap<String, String>>>,
    /// Checked when the user is unknown, so that an unknown user costs as long as a wrong
    /// password: a hash of a random password at the cost most of the file's entries use.
    dummy: RwLock<String>,
    /// Bumped on reload: every worker forgets what it verified against older entries.
    generation: AtomicU64,
}

impl Htpasswd {
    pub fn load(realm: &str, path: &Path) -> Result<(Htpasswd, Vec<String>), String> {
        let (users, notes) = read(path)?;
        Ok((
            Htpasswd {
                realm: RwLock::new(realm.to_string()),
                dummy: RwLock::new(dummy_for(&users)),
                users: RwLock::new(Arc::new(users)),
                generation: AtomicU64::new(0),
            },
            notes,
        ))
    }

    pub fn reload(&self, realm: &str, path: &Path) -> Result<Vec<String>, String> {
        let (users, notes) = read(path)?;
        *self.dummy.write().unwrap() = dummy_for(&users);
        *self.users.write().unwrap() = Arc::new(users);
        *self.realm.write().unwrap() = realm.to_string();
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(notes)
    }

    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.read().unwrap())
    }

    /// Check a request's `Authorization` value. `within`: how long to wait for a check slot;
    /// `client`: the address failures are counted against.
    pub async fn check(
        &self,
        authorization: Option<&[u8]>,
        within: Duration,
        client: std::net::IpAddr,
    ) -> Result<(), Reason> {
        let value = authorization.ok_or(Reason::Missing)?;
        let (user, password) = basic(value).ok_or(Reason::Malformed)?;
        let generation = self.generation.load(Ordering::Acquire);
        let key = cache_key(&user, &password);
        let now = Instant::now();
        if LOCAL.with(|l| l.borrow_mut().verified(&key, generation, now)) {
            return Ok(());
        }
        if LOCAL.with(|l| l.borrow_mut().throttled(client, now)) {
            return Err(Reason::Throttled);
        }
        // One check per (user, password) at a time on this worker, against one generation of
        // the file: the others wait for it (a request after a reload never takes a result
        // checked against the entries before it).
        let flying = (key, generation);
        let flight = match LOCAL.with(|l| l.borrow().flying.get(&flying).cloned()) {
            Some(f) => f,
            None => {
                let hash = self.users.read().unwrap().get(&user).cloned();
                let known = hash.is_some();
                let hash = hash.unwrap_or_else(|| self.dummy.read().unwrap().clone());
                let slots = SLOTS.with(|s| s.clone());
                if !slots.take(within).await {
                    return Err(Reason::Busy);
                }
                let flight = Arc::new(Flight::default());
                LOCAL.with(|l| l.borrow_mut().flying.insert(flying, flight.clone()));
                let job = flight.clone();
                crate::jobs::spawn(move || {
                    // Always the whole bcrypt check (an unknown user against the dummy): the
                    // time taken says nothing about which users exist.
                    let matched = bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false);
                    let ok = matched && known;
                    *job.result.lock().unwrap() = Some(ok);
                    job.done.notify(usize::MAX);
                    slots.give();
                });
                flight
            }
        };
        let ok = flight.wait().await;
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.flying
                .get(&flying)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                l.flying.remove(&flying);
                if ok {
                    l.remember(key, generation, now);
                }
            }
            if ok {
                l.failures.remove(&client);
            } else {
                l.failed(client, now);
            }
        });
        if ok {
            Ok(())
        } else {
            Err(Reason::Credentials)
        }
    }
}

/// `Basic <base64(user:password)>` (RFC 7617); `None` if it is not that.
fn basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// HMAC-SHA256 of user and password under a key made once per process.
fn cache_key(user: &str, password: &str) -> [u8; 32] {
    static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"ringcache"))
    });
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(&(user.len() as u64).to_le_bytes());
    ctx.update(user.as_bytes());
    ctx.update(password.as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// One bcrypt check in progress: its result, set by the job (on a pool thread).
#[derive(Default)]
struct Flight {
    result: Mutex<Option<bool>>,
    done: event_listener::Event,
}

impl Flight {
    async fn wait(&self) -> bool {
        // Bounded: the job always ends and sets the result; each turn is one wake.
        loop {
            let listener = self.done.listen();
            if let Some(ok) = *self.result.lock().unwrap() {
                return ok;
            }
            listener.await;
        }
    }
}

/// A worker's check slots ([`AUTH_CHECKS_INFLIGHT_MAX`]), given back by the job itself, so a
/// client that leaves mid-check does not free a slot whose job still runs.
#[derive(Default)]
struct Slots {
    busy: AtomicUsize,
    freed: event_listener::Event,
}

impl Slots {
    async fn take(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let listener = self.freed.listen();
            let n = self.busy.load(Ordering::Acquire);
            if n < AUTH_CHECKS_INFLIGHT_MAX {
                if self
                    .busy
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || monoio::time::timeout(left, listener).await.is_err() {
                return false;
            }
        }
    }

    fn give(&self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify(1);
    }
}

/// What one worker verified, and its checks in flight.
#[derive(Default)]
struct Local {
    /// key → (generation, verified at).
    verified: HashMap<[u8; 32], (u64, Instant)>,
    /// (key, generation of the file) → its check.
    flying: HashMap<([u8; 32], u64), Arc<Flight>>,
    /// client address → (failed checks, since when).
    failures: HashMap<std::net::IpAddr, (u32, Instant)>,
}

impl Local {
    /// Whether `client` failed too often lately to be checked again now.
    fn throttled(&mut self, client: std::net::IpAddr, now: Instant) -> bool {
        match self.failures.get(&client) {
            Some((n, since)) if now.duration_since(*since) < AUTH_FAILURES_WINDOW => {
                *n >= AUTH_FAILURES_PER_ADDR_MAX
            }
            Some(_) => {
                self.failures.remove(&client);
                false
            }
            None => false,
        }
    }

    fn failed(&mut self, client: std::net::IpAddr, now: Instant) {
        if self.failures.len() >= AUTH_FAILURE_ADDRS_MAX && !self.failures.contains_key(&client) {
            self.failures
                .retain(|_, (_, since)| now.duration_since(*since) < AUTH_FAILURES_WINDOW);
            if self.failures.len() >= AUTH_FAILURE_ADDRS_MAX {
                self.failures.clear();
            }
        }
        let e = self.failures.entry(client).or_insert((0, now));
        if now.duration_since(e.1) >= AUTH_FAILURES_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    fn verified(&mut self, key: &[u8; 32], generation: u64, now: Instant) -> bool {
        match self.verified.get(key) {
            Some((g, at)) if *g == generation && now.duration_since(*at) < AUTH_CACHE_TTL => true,
            Some(_) => {
                self.verified.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember(&mut self, key: [u8; 32], generation: u64, now: Instant) {
        if self.verified.len() >= AUTH_CACHE_MAX {
            self.verified
                .retain(|_, (g, at)| *g == generation && now.duration_since(*at) < AUTH_CACHE_TTL);
        }
        if self.verified.len() >= AUTH_CACHE_MAX {
            // Still full of live entries: start over (each costs one more check, no more).
            self.verified.clear();
        }
        self.verified.insert(key, (generation, now));
    }
}

thread_local! {
    /// Per worker (a worker is one thread).
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
    static SLOTS: Arc<Slots> = Arc::new(Slots::default());
}

/// The dummy hash for unknown users: a random password's, at the cost most entries use
/// (bcrypt's default where the file has none).
fn dummy_for(users: &HashMap<String, String>) -> String {
    let mut costs: HashMap<u32, usize> = HashMap::new();
    for h in users.values() {
        if let Some(c) = h.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
            *costs.entry(c).or_default() += 1;
        }
    }
    let cost = costs
        .into_iter()
        .max_by_key(|(c, n)| (*n, *c))
        .map_or(bcrypt::DEFAULT_COST, |(c, _)| c)
        .clamp(4, 16);
    let mut secret = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret);
    bcrypt::hash(secret, cost).unwrap_or_default()
}

/// Read an htpasswd file: bcrypt entries, and a note for each line that is not one.
fn read(path: &Path) -> Result<(HashMap<String, String>, Vec<String>), String> {
    use std::io::Read;
    let key = "auth.htpasswd.path";
    let f = std::fs::File::open(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(HTPASSWD_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if text.len() as u64 > HTPASSWD_BYTES_MAX {
        return Err(format!(
            "{key}: {}: larger than {HTPASSWD_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(parse(&text, &path.display().to_string()))
}

/// The bcrypt entries of an htpasswd text; a note for each other line.
pub fn parse(text: &str, name: &str) -> (HashMap<String, String>, Vec<String>) {
    let mut users = HashMap::new();
    let mut notes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            notes.push(format!("{name}:{}: not user:hash; ignored", i + 1));
            continue;
        };
        let bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p));
        if !bcrypt {
            notes.push(format!(
                "{name}:{}: user {:?} is not a bcrypt entry (only bcrypt is accepted, as by the reference registry); ignored: re-create it with htpasswd -B",
                i + 1,
                user.escape_debug().to_string()
            ));
            continue;
        }
        users.insert(user.to_string(), hash.to_string());
    }
    (users, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_users_cost_what_the_files_entries_cost() {
        let mut users = HashMap::new();
        users.insert("a".to_string(), bcrypt::hash("x", 5).unwrap());
        users.insert("b".to_string(), bcrypt::hash("y", 5).unwrap());
        users.insert("c".to_string(), bcrypt::hash("z", 6).unwrap());
        let dummy = dummy_for(&users);
        assert_eq!(&dummy[4..6], "05", "{dummy}");
        assert!(!bcrypt::verify("x", &dummy).unwrap());
        // A failed-address window: throttled at the limit, forgotten after the window.
        let mut l = Local::default();
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AUTH_FAILURES_PER_ADDR_MAX {
            assert!(!l.throttled(ip, t0));
            l.failed(ip, t0);
        }
        assert!(l.throttled(ip, t0));
        assert!(!l.throttled("192.0.2.2".parse().unwrap(), t0));
        assert!(!l.throttled(ip, t0 + AUTH_FAILURES_WINDOW));
    }

    #[test]
    fn basic_values_parse_or_not() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for (value, want) in [
            (
                format!("Basic {}", enc("bob:hunter2")),
                Some(("bob", "hunter2")),
            ),
            (format!("basic  {}", enc("bob:a:b")), Some(("bob", "a:b"))),
            (format!("Basic {}", enc("bob")), None),
            ("Basic !!!".to_string(), None),
            (format!("Bearer {}", enc("bob:x")), None),
            ("Basic".to_string(), None),
        ] {
            let got = basic(value.as_bytes());
            let got = got.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            assert_eq!(got, want, "{value}");
        }
    }

    #[test]
    fn only_bcrypt_entries_are_taken_and_the_rest_reported() {
        let text = "# users\nbob:$2y$05$abcdefghijklmnopqrstuu5Xq1bW2Y3Z4a5b6c7d8e9f0g1h2i3j4k\nmd5:$apr1$x$y\nsha:{SHA}abc\n\nnocolon\nalice:$2b$10$zzz\n";
        let (users, notes) = parse(text, "f");
        let mut names: Vec<_> = users.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("f:3") && notes[0].contains("\"md5\""),
            "{notes:?}"
        );
    }

    proptest::proptest! {
        /// Untrusted bytes (a header value, a file's text) never panic the parsers.
        #[test]
        fn prop_any_value_and_any_file_parse_or_not(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            text in "(?s).{0,300}",
        ) {
            let _ = basic(&raw);
            let (users, _) = parse(&text, "f");
            proptest::prop_assert!(users.values().all(|h| h.starts_with("$2")));
        }
    }

    #[test]
    fn the_dummy_hash_is_a_valid_bcrypt_hash() {
        let dummy = dummy_for(&HashMap::new());
        assert!(bcrypt::verify("x", &dummy).is_ok(), "{dummy}");
    }

    #[test]
    fn keys_differ_by_user_and_password_and_the_cache_is_bounded() {
        assert_ne!(cache_key("ab", "c"), cache_key("a", "bc"));
        assert_eq!(cache_key("a", "b"), cache_key("a", "b"));
        let mut l = Local::default();
        let now = Instant::now();
        for i in 0..(AUTH_CACHE_MAX + 10) {
            l.remember(cache_key(&i.to_string(), "p"), 0, now);
            assert!(l.verified.len() <= AUTH_CACHE_MAX);
        }
        let k = cache_key("x", "p");
        l.remember(k, 0, now);
        assert!(l.verified(&k, 0, now));
        assert!(!l.verified(&k, 1, now), "a reload forgets");
        l.remember(k, 0, now);
        assert!(!l.verified(&k, 0, now + AUTH_CACHE_TTL), "expired");
    }
}
