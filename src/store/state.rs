//! Persisted state (`state/`): what must survive a restart besides the content itself —
//! last-access times, media types, repository links, tag resolutions.
//!
//! An append-only journal of JSON lines (`journal.jsonl`): each flush appends only what
//! changed since the last one and fsyncs once, so its cost follows the changes, not the store.
//! When the journal grows past a few times the live state, it is compacted into
//! `snapshot.jsonl` (written to a temp file, fsynced, renamed, directory fsynced) and emptied.
//! Loading reads the snapshot, then the journal; a line that cannot be read as a record (torn
//! by a crash mid-append, even inside a multi-byte character; written by a newer version) is
//! skipped wherever it is. Files are the truth: records for content that is not on disk are
//! dropped.
//!
//! Times are wall-clock seconds here, and only here. Ages are measured at save time
//! (`saved_at − last access`), so neither downtime nor a wall-clock jump while stopped can
//! expire everything or keep everything forever.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media::Accepts;

/// One journal line. Fields have full names here and one-letter keys on disk (`serde`
/// renames), which keeps a journal of millions of lines small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Record {
    /// Content committed: its size, media type and last access (wall seconds).
    #[serde(rename = "c")]
    Commit {
        #[serde(rename = "d")]
        digest: String,
        #[serde(rename = "s")]
        size: u64,
        #[serde(rename = "m")]
        media_type: Option<String>,
        #[serde(rename = "a")]
        last_access: u64,
    },
    /// Upstream confirmed the digest in a repository.
    #[serde(rename = "l")]
    Link {
        #[serde(rename = "d")]
        digest: String,
        #[serde(rename = "r")]
        repository: String,
    },
    /// Last access of the digest (wall seconds).
    #[serde(rename = "a")]
    Access {
        #[serde(rename = "d")]
        digest: String,
        #[serde(rename = "a")]
        last_access: u64,
    },
    /// The digest was removed (expired or evicted).
    #[serde(rename = "x")]
    Remove {
        #[serde(rename = "d")]
        digest: String,
    },
    /// A tag of a repository resolved to a digest (with its media type) for requests accepting
    /// the manifest types `accepts` ([`crate::media::Accepts`] bits). Lines written before
    /// `accepts` existed have none: see `Loaded::apply`.
    #[serde(rename = "t")]
    Tag {
        #[serde(rename = "n")]
        name: String,
        #[serde(rename = "t")]
        tag: String,
        #[serde(rename = "d")]
        digest: String,
        #[serde(rename = "m")]
        media_type: String,
        #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
        accepts: Option<u16>,
    },
    /// Tag dropped (upstream said 404 to requests accepting `accepts`; without it, every
    /// answer).
    #[serde(rename = "u")]
    Untag {
        #[serde(rename = "n")]
        name: String,
        #[serde(rename = "t")]
        tag: String,
        #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
        accepts: Option<u16>,
    },
    /// End of a flush, at a wall second.
    #[serde(rename = "s")]
    Saved {
        #[serde(rename = "t")]
        at: u64,
    },
}

/// What a load found, per digest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    pub size: u64,
    pub media_type: Option<String>,
    pub repos: Vec<String>,
    /// Wall second of the last access.
    pub last_access: u64,
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub entries: HashMap<Digest, Saved>,
    /// Tag answers by (repository, tag, the manifest types the request accepted).
    pub tags: HashMap<(String, String, Accepts), (Digest, String)>,
    /// Wall second of the last completed flush.
    pub saved_at: Option<u64>,
}

impl Loaded {
    fn apply(&mut self, r: Record) {
        let hex = |d: &str| Digest::from_hex(d);
        match r {
            Record::Commit {
                digest: d,
                size: s,
                media_type: m,
                last_access: a,
            } => {
                if let Some(d) = hex(&d) {
                    let e = self.entries.entry(d).or_default();
                    e.size = s;
                    e.media_type = m.or(e.media_type.take());
                    e.last_access = e.last_access.max(a);
                }
            }
            Record::Link {
                digest: d,
                repository: r,
            } => {
                if let Some(e) = hex(&d).and_then(|d| self.entries.get_mut(&d)) {
                    if !e.repos.contains(&r) {
                        e.repos.push(r);
                    }
                }
            }
            Record::Access {
                digest: d,
                last_access: a,
            } => {
                if let Some(e) = hex(&d).and_then(|d| self.entries.get_mut(&d)) {
                    e.last_access = a;
                }
            }
            Record::Remove { digest: d } => {
                if let Some(d) = hex(&d) {
                    self.entries.remove(&d);
                }
            }
            Record::Tag {
                name: n,
                tag: t,
                digest: d,
                media_type: m,
                accepts: q,
            } => {
                // A line from before answers were kept per Accept: an index or list is the
                // stored manifest, right for anyone who accepts it; a single manifest may have
                // been one platform picked for a client that took no index, so it is dropped
                // (the tag is asked upstream again).
                let resolved_for = match q {
                    Some(q) => Accepts::from_bits(q),
                    None if crate::media::is_list(&m) => Accepts::ALL,
                    None => return,
                };
                if let Some(d) = hex(&d) {
                    self.tags.insert((n, t, resolved_for), (d, m));
                }
            }
            Record::Untag {
                name: n,
                tag: t,
                accepts: Some(q),
            } => {
                self.tags.remove(&(n, t, Accepts::from_bits(q)));
            }
            Record::Untag {
                name: n,
                tag: t,
                accepts: None,
            } => {
                self.tags.retain(|(n2, t2, _), _| *n2 != n || *t2 != t);
            }
            Record::Saved { at: t } => self.saved_at = Some(t),
        }
    }

    /// The whole state as records (for a snapshot).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (d, e) in &self.entries {
            out.push(Record::Commit {
                digest: d.hex(),
                size: e.size,
                media_type: e.media_type.clone(),
                last_access: e.last_access,
            });
            for r in &e.repos {
                out.push(Record::Link {
                    digest: d.hex(),
                    repository: r.clone(),
                });
            }
        }
        for ((n, t, q), (d, m)) in &self.tags {
            out.push(Record::Tag {
                name: n.clone(),
                tag: t.clone(),
                digest: d.hex(),
                media_type: m.clone(),
                accepts: Some(q.bits()),
            });
        }
        if let Some(t) = self.saved_at {
            out.push(Record::Saved { at: t });
        }
        out
    }
}

/// The journal writer (owned by the expiry thread). The file is opened per flush (every few
/// seconds) rather than held, so nothing keeps the cache filesystem busy between flushes.
pub struct Journal {
    dir: PathBuf,
    lines: usize,
}

const JOURNAL: &str = "journal.jsonl";
const SNAPSHOT: &str = "snapshot.jsonl";

fn read_lines(path: &Path, into: &mut Loaded) -> std::io::Result<usize> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    read_records(std::io::BufReader::new(file), into)
}

/// Apply every record in `lines` (JSON lines) and count them. Lines are read as bytes: a torn,
/// non-UTF-8 or unknown line (crash mid-append, newer version) is skipped, not fatal; only an
/// I/O error stops the load.
fn read_records(mut lines: impl BufRead, into: &mut Loaded) -> std::io::Result<usize> {
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            return Ok(n);
        }
        if let Ok(r) = serde_json::from_slice::<Record>(&line) {
            into.apply(r);
            n += 1;
        }
    }
}

impl Loaded {
    /// Read `state/` without opening it for writing or making anything (tools that look at a
    /// store another process may be using: `export`, `check-config`).
    pub fn read(dir: &Path) -> std::io::Result<Loaded> {
        let mut loaded = Loaded::default();
        read_lines(&dir.join(SNAPSHOT), &mut loaded)?;
        read_lines(&dir.join(JOURNAL), &mut loaded)?;
        Ok(loaded)
    }
}

impl Journal {
    /// Load `state/` and open the journal for appending.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let mut loaded = Loaded::default();
        read_lines(&dir.join(SNAPSHOT), &mut loaded)?;
        let lines = read_lines(&dir.join(JOURNAL), &mut loaded)?;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                lines,
            },
            loaded,
        ))
    }

    /// Append records and make them durable (one fsync).
    pub fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 96);
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(JOURNAL))?;
        file.write_all(&buf)?;
        file.sync_data()?;
        self.lines += records.len();
        Ok(())
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Replace snapshot + journal with one snapshot of `state`: temp, fsync, rename, fsync the
    /// directory, then an empty journal. A crash between leaves the new snapshot plus the old
    /// journal, whose records are idempotent on top of it.
    pub fn compact(&mut self, state: &Loaded) -> std::io::Result<()> {
        let tmp = self.dir.join("snapshot.jsonl.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            let mut buf = Vec::new();
            for r in state.records() {
                serde_json::to_writer(&mut buf, &r).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.dir.join(JOURNAL))?;
        file.sync_all()?;
        self.lines = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys on disk are the one-letter ones journals were written with.
    #[test]
    fn journal_lines_keep_their_keys() {
        let d = Digest::of(b"x").hex();
        let cases = [
            (
                format!(r#"{{"k":"c","d":"{d}","s":3,"m":"mt","a":7}}"#),
                Record::Commit {
                    digest: d.clone(),
                    size: 3,
                    media_type: Some("mt".into()),
                    last_access: 7,
                },
            ),
            (
                format!(r#"{{"k":"t","n":"a/b","t":"v1","d":"{d}","m":"mt","q":15}}"#),
                Record::Tag {
                    name: "a/b".into(),
                    tag: "v1".into(),
                    digest: d.clone(),
                    media_type: "mt".into(),
                    accepts: Some(15),
                },
            ),
            (
                r#"{"k":"u","n":"a/b","t":"v1"}"#.to_string(),
                Record::Untag {
                    name: "a/b".into(),
                    tag: "v1".into(),
                    accepts: None,
                },
            ),
            (r#"{"k":"s","t":9}"#.to_string(), Record::Saved { at: 9 }),
        ];
        for (line, record) in cases {
            assert_eq!(
                serde_json::from_str::<Record>(&line).unwrap(),
                record,
                "{line}"
            );
            assert_eq!(serde_json::to_string(&record).unwrap(), line);
        }
    }

    #[test]
    fn journal_roundtrip_compaction_and_torn_lines() {
        let dir = tempfile_dir();
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        {
            let (mut j, loaded) = Journal::open(&dir).unwrap();
            assert!(loaded.entries.is_empty());
            j.append(&[
                Record::Commit {
                    digest: d1.hex(),
                    size: 1,
                    media_type: Some("mt".into()),
                    last_access: 100,
                },
                Record::Link {
                    digest: d1.hex(),
                    repository: "a/b".into(),
                },
                Record::Commit {
                    digest: d2.hex(),
                    size: 2,
                    media_type: None,
                    last_access: 100,
                },
                Record::Access {
                    digest: d1.hex(),
                    last_access: 150,
                },
                Record::Remove { digest: d2.hex() },
                Record::Tag {
                    name: "a/b".into(),
                    tag: "v1".into(),
                    digest: d1.hex(),
                    media_type: "mt".into(),
                    accepts: Some(Accepts::ALL.bits()),
                },
                Record::Saved { at: 160 },
            ])
            .unwrap();
        }
        // A crash mid-append leaves a torn last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL))
            .unwrap()
            .write_all(b"{\"k\":\"a\",\"d\":\"ab")
            .unwrap();
        let (mut j, loaded) = Journal::open(&dir).unwrap();
        let want = Saved {
            size: 1,
            media_type: Some("mt".into()),
            repos: vec!["a/b".into()],
            last_access: 150,
        };
        assert_eq!(loaded.entries.get(&d1), Some(&want));
        assert!(!loaded.entries.contains_key(&d2));
        assert_eq!(
            loaded.tags.get(&("a/b".into(), "v1".into(), Accepts::ALL)),
            Some(&(d1, "mt".into()))
        );
        assert_eq!(loaded.saved_at, Some(160));
        j.compact(&loaded).unwrap();
        assert_eq!(j.lines(), 0);
        let (_, again) = Journal::open(&dir).unwrap();
        assert_eq!(again.entries.get(&d1), Some(&want));
        assert_eq!(again.saved_at, Some(160));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_lines_are_skipped_anywhere() {
        let dir = tempfile_dir();
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        let commit = |d: &Digest, a: u64| {
            let mut l = serde_json::to_vec(&Record::Commit {
                digest: d.hex(),
                size: 1,
                media_type: None,
                last_access: a,
            })
            .unwrap();
            l.push(b'\n');
            l
        };
        let mut journal = commit(&d1, 100);
        // Torn in the middle of a multi-byte character, then a later line.
        journal.extend_from_slice(b"{\"k\":\"t\",\"n\":\"caf\xc3\n");
        journal.extend_from_slice(b"\xff\xfe garbage \x80\n");
        journal.extend_from_slice(b"{\"k\":\"s\",\"t\":7}\n");
        journal.extend_from_slice(b"not json\n");
        journal.extend(commit(&d2, 200));
        // A torn last line, cut inside a character.
        journal.extend_from_slice(b"{\"k\":\"l\",\"r\":\"\xe2\x82");
        std::fs::write(dir.join(JOURNAL), &journal).unwrap();
        let (j, loaded) = Journal::open(&dir).unwrap();
        assert_eq!(loaded.entries.len(), 2);
        assert_eq!(loaded.entries[&d1].last_access, 100);
        assert_eq!(loaded.entries[&d2].last_access, 200);
        assert_eq!(loaded.saved_at, Some(7));
        assert_eq!(j.lines(), 3, "readable records counted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let mut name = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut name).unwrap();
        let d = std::env::temp_dir().join(format!("ringcache-state-{}", crate::digest::hex(&name)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        // A few digests (and a malformed one) so records meet each other.
        let d = prop::sample::select(vec![
            Digest::of(b"1").hex(),
            Digest::of(b"2").hex(),
            Digest::of(b"3").hex(),
            "zz".to_string(),
        ]);
        let text = ".{0,6}";
        prop_oneof![
            (
                d.clone(),
                any::<u64>(),
                prop::option::of(text),
                any::<u64>()
            )
                .prop_map(|(d, s, m, a)| Record::Commit {
                    digest: d,
                    size: s,
                    media_type: m,
                    last_access: a
                }),
            (d.clone(), text).prop_map(|(d, r)| Record::Link {
                digest: d,
                repository: r
            }),
            (d.clone(), any::<u64>()).prop_map(|(d, a)| Record::Access {
                digest: d,
                last_access: a
            }),
            d.clone().prop_map(|d| Record::Remove { digest: d }),
            (text, text, d, text, prop::option::of(any::<u16>())).prop_map(|(n, t, d, m, q)| {
                Record::Tag {
                    name: n,
                    tag: t,
                    digest: d,
                    media_type: m,
                    accepts: q,
                }
            }),
            (text, text, prop::option::of(any::<u16>())).prop_map(|(n, t, q)| Record::Untag {
                name: n,
                tag: t,
                accepts: q
            }),
            any::<u64>().prop_map(|t| Record::Saved { at: t }),
        ]
    }

    /// A line that is never a record: a strict prefix of one (an object left open, possibly cut
    /// inside a character), or bytes that are not UTF-8.
    fn unreadable() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (record(), any::<prop::sample::Index>()).prop_map(|(r, at)| {
                let mut l = serde_json::to_vec(&r).unwrap();
                l.truncate(at.index(l.len()));
                l
            }),
            (
                prop::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..32),
                any::<prop::sample::Index>(),
                // Bytes that never occur in UTF-8.
                prop::sample::select(vec![0xc0u8, 0xc1, 0xf5, 0xfe, 0xff]),
            )
                .prop_map(|(mut l, at, bad)| {
                    l.insert(at.index(l.len() + 1), bad);
                    l
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never fail a load.
        #[test]
        fn prop_journal_never_fails(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut into = Loaded::default();
            prop_assert!(read_records(&bytes[..], &mut into).is_ok());
        }

        /// Unreadable lines anywhere (last one possibly unterminated) change nothing: the load
        /// equals one of the readable records alone.
        #[test]
        fn prop_journal_skips_unreadable_lines(
            lines in prop::collection::vec(
                prop_oneof![
                    3 => record().prop_map(Ok),
                    1 => unreadable().prop_map(Err),
                ],
                0..24,
            ),
            torn_end in unreadable(),
        ) {
            let mut bytes = Vec::new();
            let mut want = Loaded::default();
            let mut good = 0;
            for l in lines {
                match l {
                    Ok(r) => {
                        serde_json::to_writer(&mut bytes, &r).unwrap();
                        want.apply(r);
                        good += 1;
                    }
                    Err(garbage) => bytes.extend_from_slice(&garbage),
                }
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(&torn_end);
            let mut got = Loaded::default();
            prop_assert_eq!(read_records(&bytes[..], &mut got).ok(), Some(good));
            prop_assert_eq!(got.entries, want.entries);
            prop_assert_eq!(got.tags, want.tags);
            prop_assert_eq!(got.saved_at, want.saved_at);
        }
    }
}
