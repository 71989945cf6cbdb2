//! Changes to journal (data path steps 4, 6–7): commits, links and tag resolutions, sent by
//! the workers to the expiry thread ([`crate::expiry`]), which applies them to its wheel and
//! appends them to the journal ([`super::state`]). A bounded queue, never on the hit path: a
//! change that does not fit is dropped and re-learnt from upstream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::index::Entry;
use super::tags::Tags;
use crate::digest::Digest;
use crate::media::Accepts;

pub use crate::limits::CHANGES_QUEUED_MAX;

/// A change to journal: what workers tell the expiry thread.
#[derive(Debug, Clone)]
pub enum Change {
    /// Content was committed (its entry is in the index).
    Committed(Digest),
    /// Upstream confirmed an existing digest in another repository.
    Linked(Digest, String),
    /// A tag resolved for requests accepting `resolved_for`.
    Tagged {
        name: String,
        tag: String,
        resolved_for: Accepts,
        digest: Digest,
        media_type: String,
    },
    /// Upstream said 404 to requests accepting `resolved_for`.
    Untagged {
        name: String,
        tag: String,
        resolved_for: Accepts,
    },
}

/// The workers' end of the queue of changes: bounded at [`CHANGES_QUEUED_MAX`], its memory following what
/// is queued (std's bounded channel allocates and touches every slot up front: 7 MiB of RSS
/// for 65,536 changes that are almost never there).
pub struct Changes {
    tx: std::sync::mpsc::Sender<Change>,
    queued: Arc<AtomicUsize>,
}

/// The expiry thread's end.
pub struct ChangeReceiver {
    rx: Receiver<Change>,
    queued: Arc<AtomicUsize>,
}

/// A bounded queue of changes.
pub fn queue() -> (Changes, ChangeReceiver) {
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Changes {
            tx,
            queued: queued.clone(),
        },
        ChangeReceiver { rx, queued },
    )
}

impl Changes {
    /// Queue `ev`; `false` (dropped) when the queue is full or the expiry thread is gone.
    pub fn try_send(&self, ev: Change) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= CHANGES_QUEUED_MAX {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.tx.send(ev).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Tell the expiry thread something (dropped, with a debug line, if its queue is full).
    pub fn note(&self, change: Change) {
        if !self.try_send(change) {
            tracing::debug!("expiry queue full; change dropped");
        }
    }

    /// Record a tag resolution for requests accepting `resolved_for` in `tags` (and journal it).
    #[allow(clippy::too_many_arguments)]
    pub fn tag(
        &self,
        tags: &Tags,
        name: &str,
        tag: &str,
        resolved_for: Accepts,
        digest: Digest,
        media_type: Arc<str>,
        at: std::time::Instant,
    ) {
        tags.put(name, tag, resolved_for, digest, media_type.clone(), at);
        self.note(Change::Tagged {
            name: name.into(),
            tag: tag.into(),
            resolved_for,
            digest,
            media_type: media_type.to_string(),
        });
    }

    /// Drop from `tags` a tag upstream no longer has for requests accepting `resolved_for` (and
    /// journal that).
    pub fn untag(&self, tags: &Tags, name: &str, tag: &str, resolved_for: Accepts) {
        tags.remove(name, tag, resolved_for);
        self.note(Change::Untagged {
            name: name.into(),
            tag: tag.into(),
            resolved_for,
        });
    }

    /// Link a digest to a repository upstream confirmed it in, and remember that.
    pub fn link(&self, entry: &Entry, digest: Digest, repo: &str) {
        if !entry.linked(repo) {
            entry.link(repo);
            self.note(Change::Linked(digest, repo.to_string()));
        }
    }
}

impl ChangeReceiver {
    fn took(&self, ev: Change) -> Change {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        ev
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<Change, RecvTimeoutError> {
        self.rx.recv_timeout(d).map(|ev| self.took(ev))
    }

    pub fn try_recv(&self) -> Option<Change> {
        self.rx.try_recv().ok().map(|ev| self.took(ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> Change {
        Change::Untagged {
            name: "a".into(),
            tag: i.to_string(),
            resolved_for: Accepts::ALL,
        }
    }

    #[test]
    fn the_event_queue_is_bounded_and_frees_its_room_as_it_is_read() {
        let (tx, rx) = queue();
        for i in 0..CHANGES_QUEUED_MAX {
            assert!(tx.try_send(ev(i)), "event {i} fits");
        }
        assert!(!tx.try_send(ev(CHANGES_QUEUED_MAX)), "full: dropped");
        assert!(!tx.try_send(ev(CHANGES_QUEUED_MAX)), "still full");
        // In order, and each one read makes room for one more.
        match rx.try_recv() {
            Some(Change::Untagged { tag, .. }) => assert_eq!(tag, "0"),
            other => panic!("{other:?}"),
        }
        assert!(tx.try_send(ev(0)));
        assert!(!tx.try_send(ev(0)));
        let mut n = 0;
        while rx.try_recv().is_some() {
            n += 1;
        }
        assert_eq!(n, CHANGES_QUEUED_MAX);
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_err());
        assert!(tx.try_send(ev(1)));
        assert!(rx.recv_timeout(Duration::from_millis(1)).is_ok());
        // The expiry thread gone: refused, and the count not left raised.
        drop(rx);
        assert!(!tx.try_send(ev(2)));
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }
}
