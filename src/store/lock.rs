//! One process per cache directory: an exclusive `flock` on `<root>/lock`, taken before
//! anything in the tree is touched and held for as long as the [`super::Store`] lives (the
//! process's life, for `serve`), with the holder's pid written in the file so that the next
//! one can name it. Without it, a second instance on the same root sweeps the first one's
//! fills in progress out of `ingest/` at its start.
//!
//! `flock`, not `fcntl` record locks: a record lock is dropped when the process closes *any*
//! descriptor of the file (and a second open in the same process does not conflict with it),
//! while a `flock` belongs to the open file description and conflicts with every other one.
//! That description is opened `O_CLOEXEC`, so no program this process executes inherits it
//! and holds the lock after this process is gone. It ends when the descriptor closes, and the
//! kernel closes it when the process dies however it dies: a stale lock file holds nothing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file's name under the root.
pub const LOCK_FILE: &str = "lock";

/// Held: the root is ours until this is dropped.
#[derive(Debug)]
pub struct Lock {
    _file: Option<File>,
}

/// Another process holds the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    pub root: PathBuf,
    /// As it wrote it in the lock file (absent if it could not be read).
    pub pid: Option<u32>,
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(
                f,
                "cache directory {} is in use by pid {pid}",
                self.root.display()
            ),
            None => write!(
                f,
                "cache directory {} is in use by another process",
                self.root.display()
            ),
        }
    }
}

impl std::error::Error for InUse {}

impl Lock {
    /// Take the lock on `root` (an existing directory), or fail with an [`InUse`] inside the
    /// `io::Error` (kind `WouldBlock`) if another process holds it.
    ///
    /// The descriptor held is read-only (`flock` needs no write access), so the filesystem
    /// can still be remounted read-only under a running cache; the pid is written through a
    /// second descriptor, closed at once (closing it leaves the lock alone). On a read-only
    /// filesystem without a lock file, nothing can write the tree and no lock is taken.
    pub fn acquire(root: &Path) -> io::Result<Lock> {
        let path = root.join(LOCK_FILE);
        let file = match open(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                tracing::warn!(root = %root.display(), "read-only cache directory without a lock file: not locked");
                return Ok(Lock { _file: None });
            }
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            let mut text = String::new();
            let pid = (&file)
                .take(32)
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                InUse {
                    root: root.to_path_buf(),
                    pid,
                },
            ));
        }
        // Ours now: say who holds it. Best effort (a full or read-only disk still locks).
        let written = options()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot write the pid into the lock file");
        }
        Ok(Lock { _file: Some(file) })
    }
}

/// `O_NOFOLLOW` (and std's `O_CLOEXEC`): never through a link.
fn options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW).mode(0o644);
    o
}

/// The lock file, read-only, made first if it is missing. A link where it belongs (no
/// ringcache makes one) is removed — the link itself — and never written through.
fn open(path: &Path) -> io::Result<File> {
    for _ in 0..2 {
        match options().read(true).open(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                options().write(true).create(true).open(path)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                tracing::warn!(path = %path.display(), "the lock file is a symbolic link: removing the link");
                std::fs::remove_file(path)?;
            }
            r => return r,
        }
    }
    options().read(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_one_root_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = Lock::acquire(dir.path()).unwrap();
        let e = Lock::acquire(dir.path()).unwrap_err();
        let busy = e.get_ref().and_then(|i| i.downcast_ref::<InUse>()).unwrap();
        assert_eq!(busy.pid, Some(std::process::id()));
        assert!(busy.to_string().contains("is in use by pid"), "{busy}");
        drop(held);
        let _again = Lock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_linked_lock_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&victim, root.join(LOCK_FILE)).unwrap();
        let _held = Lock::acquire(&root).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(root.join(LOCK_FILE))
            .unwrap()
            .is_file());
    }
}
