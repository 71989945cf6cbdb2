//! The write/hash pipeline (data path step 6, [`super`]): a sealed block is queued for two
//! pool jobs per fill, a writer (`O_DIRECT` where the filesystem takes it) and a hasher, each
//! taking its blocks in order, in parallel with each other and with the fill's next reads.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::block::Block;
use super::recent::Recent;
use super::{ALIGN, RECENT_KEEP};

use crate::limits::JOB_BLOCKS;

/// One stage of the pipeline (writing, or hashing): its blocks in order, worked through by at
/// most one pool job at a time.
#[derive(Default)]
pub(super) struct Stage {
    pub(super) queue: VecDeque<Arc<Block>>,
    /// A pool job is working through `queue`.
    pub(super) running: bool,
    /// Time its jobs spent on blocks, in all.
    pub(super) busy: Duration,
}

impl Stage {
    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && !self.running
    }
}

pub(super) struct Stages {
    pub(super) write: Stage,
    pub(super) hash: Stage,
    /// Bytes in the file: the end of the last block written.
    pub(super) written: u64,
    /// The hash context, while no hash job holds it.
    pub(super) hasher: Option<ring::digest::Context>,
    /// The first write error (as kind, OS code, text); writing stops there.
    pub(super) failed: Option<(std::io::ErrorKind, Option<i32>, String)>,
    /// The ingest was dropped: jobs stop at their next block.
    pub(super) abandoned: bool,
}

/// What the fill's event loop and the pool jobs share.
pub(super) struct Pipeline {
    pub(super) stages: Mutex<Stages>,
    /// Notified as a block leaves a stage and as a job ends.
    pub(super) event: event_listener::Event,
}

impl Pipeline {
    /// Empty stages, a fresh hash.
    pub(super) fn new() -> Pipeline {
        Pipeline {
            stages: Mutex::new(Stages {
                write: Stage::default(),
                hash: Stage::default(),
                written: 0,
                hasher: Some(ring::digest::Context::new(&ring::digest::SHA256)),
                failed: None,
                abandoned: false,
            }),
            event: event_listener::Event::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Stages> {
        self.stages.lock().unwrap()
    }

    /// The first write error, again.
    pub(super) fn failure(&self) -> Option<std::io::Error> {
        let st = self.lock();
        let (kind, code, text) = st.failed.as_ref()?;
        Some(match code {
            Some(c) => std::io::Error::from_raw_os_error(*c),
            None => std::io::Error::new(*kind, text.clone()),
        })
    }
}

/// Write the queued blocks in order (up to [`JOB_BLOCKS`]), evicting from `recent` what is
/// in the file; stop at the first error.
pub(super) fn write_job(
    pipe: Arc<Pipeline>,
    writer: Arc<std::fs::File>,
    direct: Option<Arc<std::fs::File>>,
    recent: Arc<Recent>,
) {
    for _ in 0..JOB_BLOCKS {
        let block = match pipe.lock() {
            st if st.abandoned || st.failed.is_some() => break,
            st => match st.write.queue.front() {
                Some(b) => b.clone(),
                None => break,
            },
        };
        let t = std::time::Instant::now();
        let res = write_block(&block, &writer, direct.as_deref());
        let mut st = pipe.lock();
        st.write.busy += t.elapsed();
        match res {
            Ok(()) => {
                st.write.queue.pop_front();
                st.written = block.end();
                recent.evict(st.written, RECENT_KEEP);
            }
            Err(e) => st.failed = Some((e.kind(), e.raw_os_error(), e.to_string())),
        }
        drop(st);
        pipe.event.notify(usize::MAX);
    }
    pipe.lock().write.running = false;
    pipe.event.notify(usize::MAX);
}

/// Hash the queued blocks in order (up to [`JOB_BLOCKS`]).
pub(super) fn hash_job(pipe: Arc<Pipeline>) {
    let mut ctx = pipe.lock().hasher.take().expect("one hash job at a time");
    for _ in 0..JOB_BLOCKS {
        let block = match pipe.lock() {
            st if st.abandoned => break,
            st => match st.hash.queue.front() {
                Some(b) => b.clone(),
                None => break,
            },
        };
        let t = std::time::Instant::now();
        ctx.update(block.bytes());
        let mut st = pipe.lock();
        st.hash.busy += t.elapsed();
        st.hash.queue.pop_front();
        drop(st);
        pipe.event.notify(usize::MAX);
    }
    let mut st = pipe.lock();
    st.hasher = Some(ctx);
    st.hash.running = false;
    drop(st);
    pipe.event.notify(usize::MAX);
}

/// Whether `O_DIRECT` may still be tried (cleared, with one log line, the first time the
/// filesystem refuses it).
pub(super) static DIRECT_OK: AtomicBool = AtomicBool::new(true);

pub(super) fn direct_refused(e: &std::io::Error) {
    if DIRECT_OK.swap(false, Ordering::Relaxed) {
        tracing::info!(error = %e, "the store's filesystem refuses O_DIRECT; fills write through the page cache");
    }
}

/// Write `block` at its offset: its aligned middle by `direct` when there is one, its
/// unaligned ends (and everything, without `direct`) by `writer`. A direct write the
/// filesystem refuses is done again through `writer`.
fn write_block(
    block: &Block,
    writer: &std::fs::File,
    direct: Option<&std::fs::File>,
) -> std::io::Result<()> {
    let (at, end, bytes) = (block.at, block.end(), block.bytes());
    let Some(direct) = direct else {
        return writer.write_all_at(bytes, at);
    };
    let align = ALIGN as u64;
    let first = at.next_multiple_of(align).min(end);
    let last = (end / align * align).max(first);
    let part = |from: u64, to: u64| &bytes[(from - at) as usize..(to - at) as usize];
    writer.write_all_at(part(at, first), at)?;
    match direct.write_all_at(part(first, last), first) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            direct_refused(&e);
            writer.write_all_at(part(first, last), first)?;
        }
        Err(e) => return Err(e),
    }
    writer.write_all_at(part(last, end), last)
}
