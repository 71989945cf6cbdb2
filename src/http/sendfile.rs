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
//!
//! **Where it does not pay: a client on this host.** Over a NIC, sendfile hands the NIC page
//! cache pages to read. Over loopback the *receiving process* copies straight out of those
//! pages, from memory, cold: a client that also hashes what it receives went at
//! 0.56–0.70 GB/s by sendfile, and at 1.04–1.08 GB/s when we read each chunk into a buffer and
//! sent it (the receiver then copies from bytes still in the shared cache; the reference
//! registry, which copies, got 0.87–1.08). The copy costs this worker two passes over the
//! bytes, which pays only while it has a core to spare: with 32 clients of one cold fill,
//! copying made the fan-out 1.45× slower, and with 4 warm clients on 2 cores (all CPU-bound)
//! copying up to 2 streams per worker measured 0.93–1.08× nginx against 1.00–1.10× for copying
//! only a lone stream. So a client on this host is sent copies while its stream is the only
//! one on its worker ([`COPY_STREAMS_MAX`]), by sendfile otherwise ([`Policy`]).

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::SendfileMode;

use monoio::net::TcpStream;

pub use crate::limits::COPY_STREAMS_MAX;
pub use crate::limits::SENDFILE_SPAN_BYTES as SPAN_BYTES;

/// Bodies (or what is left of them) smaller than this go through a buffer: one write with the
/// head beats a head write plus a sendfile.
pub const MIN_BYTES: u64 = 64 * 1024;

thread_local! {
    /// Streams of file bytes (hits and fill followers) this worker is sending now.
    static STREAMS: Cell<usize> = const { Cell::new(0) };
}

/// One stream of file bytes to a client, counted while it lives.
pub struct Streaming(());

/// Count a stream for [`Policy::Local`] until the guard drops.
pub fn streaming() -> Streaming {
    STREAMS.with(|s| s.set(s.get() + 1));
    Streaming(())
}

impl Drop for Streaming {
    fn drop(&mut self) {
        STREAMS.with(|s| s.set(s.get() - 1));
    }
}

/// Whether a connection's file bytes may go by sendfile; decided once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A client on another host (or `sendfile: always`): sendfile wherever the pages are cached.
    Always,
    /// `sendfile: never`: every byte through a buffer.
    Never,
    /// A client on this host: copies while its worker has at most [`COPY_STREAMS_MAX`] streams.
    Local,
}

impl Policy {
    /// The policy for a client at `peer`, reached through our address `local` (asked only
    /// when the peer is not on loopback: one `getsockname` per connection at most).
    pub fn for_peer(
        mode: SendfileMode,
        local: impl FnOnce() -> Option<SocketAddr>,
        peer: SocketAddr,
    ) -> Policy {
        match mode {
            SendfileMode::Always => Policy::Always,
            SendfileMode::Never => Policy::Never,
            SendfileMode::Auto if on_this_host(local, peer) => Policy::Local,
            SendfileMode::Auto => Policy::Always,
        }
    }

    /// Whether sendfile may be used now.
    pub fn allows(self) -> bool {
        match self {
            Policy::Always => true,
            Policy::Never => false,
            Policy::Local => STREAMS.with(|s| s.get()) > COPY_STREAMS_MAX,
        }
    }
}

/// Loopback, or our own address: the connection never leaves this host. (A client in a
/// container on a bridge has an address of its own and counts as remote, though a veth, like
/// loopback, hands it our pages; `sendfile: never` suits a node that serves mostly those.)
fn on_this_host(local: impl FnOnce() -> Option<SocketAddr>, peer: SocketAddr) -> bool {
    let p = peer.ip().to_canonical();
    p.is_loopback() || local().is_some_and(|l| l.ip().to_canonical() == p)
}

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

/// Where a run of sendfile from `pos` should stop, when the policy allows it now, `[pos, end)`
/// is worth sending that way (at least [`MIN_BYTES`]) and its next [`SPAN_BYTES`] are
/// [`cached`]; `None`: read it.
pub fn span(policy: Policy, file: &impl AsRawFd, pos: u64, end: u64) -> Option<u64> {
    let span = (end - pos).min(SPAN_BYTES);
    (span >= MIN_BYTES && policy.allows() && cached(file, pos, span)).then_some(pos + span)
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
    fn a_client_on_this_host_gets_copies_while_its_worker_has_few_streams() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let ours = Some(at("10.1.2.3:5000"));
        for (peer, local) in [
            ("127.0.0.1:40000", true),
            ("127.8.9.10:40000", true),
            ("[::1]:40000", true),
            ("[::ffff:127.0.0.1]:40000", true),
            ("10.1.2.3:40000", true),
            ("[::ffff:10.1.2.3]:40000", true),
            ("10.1.2.4:40000", false),
            ("[2001:db8::1]:40000", false),
        ] {
            let p = Policy::for_peer(SendfileMode::Auto, || ours, at(peer));
            assert_eq!(p == Policy::Local, local, "{peer}");
            assert_eq!(
                Policy::for_peer(SendfileMode::Always, || ours, at(peer)),
                Policy::Always
            );
            assert_eq!(
                Policy::for_peer(SendfileMode::Never, || ours, at(peer)),
                Policy::Never
            );
        }
        // Counted per thread (per worker): a fresh thread starts at none.
        std::thread::spawn(|| {
            let mut held = Vec::new();
            for _ in 0..COPY_STREAMS_MAX {
                held.push(streaming());
                assert!(!Policy::Local.allows());
            }
            held.push(streaming());
            assert!(Policy::Local.allows() && Policy::Always.allows() && !Policy::Never.allows());
            held.pop();
            assert!(!Policy::Local.allows());
            drop(held);
            assert_eq!(STREAMS.with(|s| s.get()), 0);
        })
        .join()
        .unwrap();
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
