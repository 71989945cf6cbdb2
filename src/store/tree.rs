//! The store's directories, opened from the root one component at a time and never through a
//! symbolic link (data path step 7, commit; and start). The root itself is the operator's
//! path and may be a link; everything below it is ringcache's own tree, and a link there is
//! an incident, not a place to write: a link at `blobs/sha256/ab` would take commits outside
//! the root, one at `ingest/` would make start-up delete the files of its target.
//!
//! Each step is `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)`: the kernel refuses a link
//! as the component itself, and the parent is a descriptor, so nothing swapped in above it
//! after it was opened can redirect the walk (the same guarantee as `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, for fixed names without `..`, on any kernel and
//! under seccomp profiles that refuse `openat2`). A link found where a directory belongs is
//! removed — the link itself, never its target — and a real directory made in its place; a
//! missing directory is made again.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Open the root directory (following links: the operator chose the path).
pub fn open_root(root: &Path) -> io::Result<File> {
    let path = cstr(root.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd).map(File::from)
}

/// The directory at `parts` below `root` (each a plain name), made where missing. A link
/// where a directory belongs is replaced by a directory (and logged); anything else that is
/// not a directory is an error (`ENOTDIR`).
pub fn dir(root: &File, parts: &[&str]) -> io::Result<File> {
    let mut cur: Option<File> = None;
    let mut shown = String::new();
    for part in parts {
        shown = if shown.is_empty() {
            part.to_string()
        } else {
            format!("{shown}/{part}")
        };
        let parent = cur.as_ref().unwrap_or(root);
        cur = Some(child_dir(parent, part, &shown)?);
    }
    match cur {
        Some(d) => Ok(d),
        None => root.try_clone(),
    }
}

/// One step of [`dir`]: `name` in `parent` (`shown` names it in logs and errors).
fn child_dir(parent: &File, name: &str, shown: &str) -> io::Result<File> {
    let c = cstr(name.as_bytes())?;
    // Two rounds at most: the second follows a mkdir (or the removal of a link, then a mkdir).
    for _ in 0..2 {
        match open_at(parent, &c) {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => mkdir_at(parent, &c)?,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                if !is_link_at(parent, &c)? {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{shown} in the cache directory is not a directory"),
                    ));
                }
                let target = link_target(parent, &c);
                tracing::warn!(
                    path = shown,
                    target,
                    "a symbolic link in the cache directory where a directory belongs: removing the link (not its target) and making a directory"
                );
                unlink_at(parent, &c, 0)?;
                mkdir_at(parent, &c)?;
            }
            Err(e) => return Err(e),
        }
    }
    open_at(parent, &c)
}

fn open_at(parent: &File, name: &CString) -> io::Result<File> {
    // SAFETY: `parent` is an open descriptor and `name` a NUL-terminated string, both alive
    // for the call.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    owned(fd).map(File::from)
}

fn mkdir_at(parent: &File, name: &CString) -> io::Result<()> {
    // SAFETY: as in `open_at`.
    let r = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Made meanwhile by someone else: the next open decides what it is.
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

/// `unlinkat` (`flags`: 0 for a file or link, `AT_REMOVEDIR` for an empty directory).
pub fn unlink_at(parent: &File, name: &CString, flags: i32) -> io::Result<()> {
    // SAFETY: as in `open_at`.
    let r = unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_link_at(parent: &File, name: &CString) -> io::Result<bool> {
    // SAFETY: `st` is plain data the call fills; the other arguments as in `open_at`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    let r = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// Where a link points, for the log line (lossy; empty if it cannot be read).
fn link_target(parent: &File, name: &CString) -> String {
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is writable for its length; the other arguments as in `open_at`.
    let n = unsafe {
        libc::readlinkat(
            parent.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n)
        .ok()
        .and_then(|n| buf.get(..n))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Move `from` (a path) to `name` in the directory `dir`, replacing what is there.
pub fn rename_into(from: &Path, dir: &File, name: &str) -> io::Result<()> {
    let (from, to) = (cstr(from.as_os_str().as_bytes())?, cstr(name.as_bytes())?);
    // SAFETY: both names are NUL-terminated strings and `dir` an open descriptor, all alive
    // for the call.
    let r = unsafe { libc::renameat(libc::AT_FDCWD, from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Create (or truncate) the regular file `name` in `dir`, never through a link.
pub fn create_at(dir: &File, name: &str) -> io::Result<File> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: as in `open_at`.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )
    };
    owned(fd).map(File::from)
}

pub fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empty the directory at `path` (ingest/): files and links are unlinked (a link, not its
/// target), directories removed whole without following links inside them (std's
/// `remove_dir_all` opens each level with `O_NOFOLLOW`). Returns how many entries went.
pub fn sweep(path: &Path) -> io::Result<u64> {
    let mut swept = 0;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        // `file_type` does not follow links.
        if e.file_type()?.is_dir() {
            tracing::warn!(path = %e.path().display(), "a directory in ingest/: removing it");
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
        swept += 1;
    }
    Ok(swept)
}

/// Whether every component of `rel` below `root` is a real directory (no link, nothing
/// missing): what `verify`, which must not change the tree on a dry run, checks before it
/// reads or removes anything there.
pub fn is_real_dir(root: &Path, rel: &str) -> bool {
    let mut p = root.to_path_buf();
    rel.split('/').all(|part| {
        p.push(part);
        std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_dir())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_replaced_never_followed_and_missing_dirs_made() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        symlink(&outside, root.join("blobs/sha256/ab")).unwrap();
        let r = open_root(&root).unwrap();
        let d = dir(&r, &["blobs", "sha256", "ab"]).unwrap();
        assert!(std::fs::symlink_metadata(root.join("blobs/sha256/ab"))
            .unwrap()
            .is_dir());
        assert!(
            outside.join("keep").exists(),
            "the link's target is untouched"
        );
        create_at(&d, "f").unwrap();
        assert!(root.join("blobs/sha256/ab/f").exists());
        // Missing: made again, parents too.
        std::fs::remove_dir_all(root.join("blobs")).unwrap();
        dir(&r, &["blobs", "sha256", "cd"]).unwrap();
        assert!(root.join("blobs/sha256/cd").is_dir());
        // A file where a directory belongs is an error, and stays.
        std::fs::write(root.join("blobs/sha256/ef"), b"").unwrap();
        let e = dir(&r, &["blobs", "sha256", "ef"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
        assert!(root.join("blobs/sha256/ef").is_file());
        // A link at a higher level is replaced too.
        std::fs::remove_dir_all(root.join("blobs")).unwrap();
        symlink(&outside, root.join("blobs")).unwrap();
        dir(&r, &["blobs", "sha256"]).unwrap();
        assert!(!outside.join("sha256").exists());
        assert!(is_real_dir(&root, "blobs/sha256"));
    }
}
