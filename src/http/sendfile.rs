//! File → socket without a copy through user space: `sendfile(2)` straight from the page
//! cache, for bodies big enough that the copy matters (hits and fill followers).
//!
//! monoio exposes no splice or sendfile op, and io_uring's splice always goes through an
//! io-wq thread; a plain `sendfile` on the non-blocking socket, with io_uring's poll for
//! writability, is one syscall per socket-buffer's worth and no copy. Its catch: it reads the
//! file synchronously, so a range not in the page cache would stall the whole worker on the
//! disk. [`cached`] asks the kernel first (`cachestat(2)`, Linux 6.5+) and callers read
//! anything else through io_uring as before, which also brings it into the cache.
//!
//! Measured on the 2-core VM: ringcache's CPU for one cold 1 GiB pull went from 2.1–3.1 to
//! ~2.0 seconds, and the 32-client cold fan-out of bench/run.sh from 0.81× to 0.68× of the
//! reference's wall time (README, Benchmarks).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use monoio::net::TcpStream;

/// Bodies (or what is left of them) smaller than this go through a buffer: one write with the
/// head beats a head write plus a sendfile.
const MIN_BYTES: u64 = 64 * 1024;

/// The most one residency check and one run of sendfile calls cover.
const SPAN_BYTES: u64 = 4 << 20;

/// `cachestat(2)` (the same number on every architecture that has it: the generic table).
const SYS_CACHESTAT: libc::c_long = 451;

/// Set once `cachestat` answers ENOSYS (or EPERM under a seccomp filter): every range then
/// counts as not cached, and bodies go through io_uring reads.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct CacheRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct CacheStat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Is every page of `[pos, pos + len)` of `file` in the page cache?
pub fn cached(file: &impl AsRawFd, pos: u64, len: u64) -> bool {
    if len == 0 || UNSUPPORTED.load(Ordering::Relaxed) {
        return len == 0;
    }
    let page = page_size();
    let first = pos / page * page;
    let end = pos + len;
    let range = CacheRange {
        off: first,
        len: end - first,
    };
    let mut stat = CacheStat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live, properly laid out
    // (#[repr(C)], the kernel's struct cachestat_range / cachestat) for the call's duration.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CacheRange,
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    if ret != 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        if matches!(e, Some(libc::ENOSYS) | Some(libc::EPERM)) {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return false;
    }
    stat.nr_cache >= range.len.div_ceil(page)
}

/// Where a run of sendfile from `pos` should stop, when `[pos, end)` is worth sending that
/// way (at least [`MIN_BYTES`]) and its next [`SPAN_BYTES`] are [`cached`]; `None`: read it.
pub fn span(file: &impl AsRawFd, pos: u64, end: u64) -> Option<u64> {
    let span = (end - pos).min(SPAN_BYTES);
    (span >= MIN_BYTES && cached(file, pos, span)).then_some(pos + span)
}

/// Send `[*pos, end)` of `file` to `sock` with sendfile, advancing `*pos` as bytes go out (so
/// a caller cut short knows how far it got). The range should be [`cached`]; the socket is
/// made non-blocking (io_uring's own ops on it are unaffected: they poll, whatever the flag).
/// A client that takes nothing for `stall` is cut with `TimedOut`.
pub async fn send(
    sock: &TcpStream,
    file: &impl AsRawFd,
    pos: &mut u64,
    end: u64,
    stall: Duration,
) -> std::io::Result<()> {
    let (out, fd): (RawFd, RawFd) = (sock.as_raw_fd(), file.as_raw_fd());
    set_nonblocking(out)?;
    while *pos < end {
        let mut off = *pos as libc::off_t;
        let want = (end - *pos).min(SPAN_BYTES) as usize;
        // SAFETY: both descriptors are open for the call (borrowed above); `off` is a live
        // local the kernel reads and updates.
        let n = unsafe { libc::sendfile(out, fd, &mut off, want) };
        if n > 0 {
            *pos += n as u64;
            continue;
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock => {
                match monoio::time::timeout(stall, sock.writable(false)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we hold; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_just_written_is_cached_and_a_range_past_its_end_is_not() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 3 * 4096 + 100]).unwrap();
        assert!(cached(&f, 0, 3 * 4096 + 100));
        assert!(cached(&f, 5000, 100));
        // Pages that do not exist are not cached.
        assert!(!cached(&f, 0, 64 * 4096));
    }

    #[test]
    fn sends_a_range_and_reports_where_it_got() {
        let mut f = tempfile::tempfile().unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&body).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let reader = rt.block_on(async move {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let reader = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut s, &mut v).unwrap();
                v
            });
            let sock = TcpStream::connect(addr).await.unwrap();
            let mut pos = 1000;
            send(&sock, &f, &mut pos, 2_500_000, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(pos, 2_500_000);
            // The runtime closes the socket (the reader's EOF) only while it runs: join after.
            drop(sock);
            reader
        });
        drop(rt);
        let got = reader.join().unwrap();
        assert_eq!(got, body[1000..2_500_000]);
    }
}
