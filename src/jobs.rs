//! The pool the fills' write and hash jobs run on ([`crate::store::ingest`]): a thread per
//! worker, taking jobs in the order they came.
//!
//! Not monoio's `spawn_blocking`: a job is fire-and-forget (it reports through the fill's
//! pipeline), and dropping monoio's join handle at once races the pool thread starting the
//! task. In monoio 0.2.4 `drop_join_handle_fast` is a plain load-then-store of the task's
//! state, which can overwrite the running bit the pool thread just set: debug builds panicked
//! in `transition_to_complete` (1 run in ~30 of `tests/coalesce.rs`), and release builds would
//! go on with a corrupt task state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, Once};

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    /// Bounded by the fills: each has at most one write and one hash job queued or running.
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

static POOL: Pool = Pool {
    queue: Mutex::new(VecDeque::new()),
    ready: Condvar::new(),
};
static STARTED: Once = Once::new();
static THREADS: AtomicUsize = AtomicUsize::new(2);

/// How many threads the pool starts (call before the first job; later calls change nothing).
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// Run `job` on the pool.
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    STARTED.call_once(|| {
        for i in 0..THREADS.load(Ordering::Relaxed) {
            std::thread::Builder::new()
                .name(format!("ringcache-job{i}"))
                .spawn(run)
                .expect("start a job thread");
        }
    });
    POOL.queue.lock().unwrap().push_back(Box::new(job));
    POOL.ready.notify_one();
}

fn run() {
    loop {
        let job = {
            let mut queue = POOL.queue.lock().unwrap();
            loop {
                match queue.pop_front() {
                    Some(job) => break job,
                    None => queue = POOL.ready.wait(queue).unwrap(),
                }
            }
        };
        // A job that panics (a bug) loses its own work, not the thread; under `serve` the panic
        // hook aborts the process first (`service::abort_on_panic`: its fill would wait forever).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::failpoint::panic("job-panic");
            job()
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_including_those_spawned_by_jobs_and_after_a_panic() {
        let (tx, rx) = mpsc::channel();
        spawn(|| panic!("a job's bug"));
        for i in 0..100 {
            let tx = tx.clone();
            spawn(move || {
                let tx2 = tx.clone();
                spawn(move || tx2.send(i + 1000).unwrap());
                tx.send(i).unwrap();
            });
        }
        let mut got: Vec<i32> = (0..200)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        let want: Vec<i32> = (0..100).chain(1000..1100).collect();
        assert_eq!(got, want);
    }
}
