//! Store incidents (disk full, read-only, I/O errors): logged once per class per minute with a
//! count of what was suppressed, not once per request. While the store fails, fills bypass it
//! (clients are served straight from upstream); every new miss tries the store again, so
//! caching resumes by itself when space returns.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::INCIDENT_LOG_EVERY_SECS as LOG_EVERY_SECS;

/// What kind of store failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// ENOSPC, EDQUOT.
    NoSpace,
    /// EROFS, EACCES, EPERM.
    ReadOnly,
    /// EIO and everything else (fsync failures included).
    Io,
}

impl Class {
    pub fn of(e: &std::io::Error) -> Class {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Class::NoSpace,
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => Class::ReadOnly,
            _ => Class::Io,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::NoSpace => "no_space",
            Class::ReadOnly => "read_only",
            Class::Io => "io",
        }
    }
}

#[derive(Default)]
pub struct Incidents {
    /// Per class: when it was last logged (seconds since the epoch; 0 = never).
    last: [AtomicU64; 3],
    /// Per class: incidents since the last log line.
    suppressed: [AtomicU64; 3],
    /// Per class: incidents in all.
    total: [AtomicU64; 3],
}

impl Incidents {
    /// Record an incident; log it if its class has not been logged within the last minute.
    pub fn report(&self, what: &'static str, e: &std::io::Error) {
        let class = Class::of(e);
        let i = class.index();
        self.total[i].fetch_add(1, Ordering::Relaxed);
        let now = crate::store::index::now_secs();
        let last = self.last[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY_SECS;
        if due
            && self.last[i]
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed[i].swap(0, Ordering::Relaxed);
            tracing::error!(?class, error = %e, suppressed, "store {what} failed; serving from upstream without caching until the store works again");
        } else {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Incidents in all, per class (no_space, read_only, io).
    pub fn by_class(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.total[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(Class::of(&e(libc::ENOSPC)), Class::NoSpace);
        assert_eq!(Class::of(&e(libc::EROFS)), Class::ReadOnly);
        assert_eq!(Class::of(&e(libc::EIO)), Class::Io);
    }

    #[test]
    fn counts_every_incident() {
        let i = Incidents::default();
        for _ in 0..3 {
            i.report("write", &std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        assert_eq!(i.by_class()[0], 3);
        assert_eq!(
            i.suppressed[0].load(Ordering::Relaxed),
            2,
            "logged once, two suppressed"
        );
    }
}
