//! A small fork-join pool for the CPU kernels. Generation calls a parallel kernel a few hundred
//! times per token, each taking tens of microseconds, so the fork must cost about a microsecond:
//! workers spin briefly on an epoch counter before they sleep, and the calling thread does the
//! first share of the work itself.
//!
//! One pool serves the whole process. When two engines (the LLM and the embedder threads) call it
//! at once, the second runs its tasks on its own thread instead of waiting, so neither blocks.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: long enough to span the gap between two
/// kernels of one token, short enough not to steal a core from other work for long.
const SPIN: Duration = Duration::from_micros(200);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; a worker runs the job when it sees a new value.
    epoch: AtomicUsize,
    /// The current job, valid while `pending > 0`. Written only by the thread that holds `busy`.
    task: UnsafeCell<Option<*const Task>>,
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `task` is written before `epoch` is published (Release) and read after it is observed
// (Acquire); the writer waits for `pending == 0` before it writes again or returns.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    busy: Mutex<()>,
}

impl Pool {
    /// A pool that runs jobs on `threads` threads, the caller's included.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("companero-kernel-{index}"))
                .spawn(move || work(&shared, index))
                .expect("spawn a kernel thread");
        }
        Pool {
            threads,
            shared,
            busy: Mutex::new(()),
        }
    }

    /// The process-wide pool, sized by `CANDLE_NUM_THREADS` (what `--threads` sets) or the
    /// number of cores.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::env::var("CANDLE_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(threads)
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for every `i` in `0..threads()`, in parallel, and returns when all are done.
    pub fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        let Ok(_busy) = self.busy.try_lock() else {
            // Another engine holds the workers: do the whole job here.
            (0..self.threads).for_each(task);
            return;
        };
        if self.threads == 1 {
            task(0);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: the pointer is only dereferenced by workers before they decrement `pending`,
        // and this function does not return before `pending` is zero, so `task` outlives it.
        unsafe {
            let erased: *const Task =
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(task);
            *shared.task.get() = Some(erased);
        }
        shared.pending.store(self.threads - 1, Ordering::Relaxed);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        task(0);
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
    }

    /// Splits `0..len` into one contiguous range per thread, boundaries on multiples of `align`,
    /// and runs `task(range)` for each non-empty one.
    pub fn split(&self, len: usize, align: usize, task: impl Fn(std::ops::Range<usize>) + Sync) {
        let align = align.max(1);
        let units = len.div_ceil(align);
        let threads = self.threads.min(units).max(1);
        if threads == 1 {
            task(0..len);
            return;
        }
        let per = units.div_ceil(threads);
        self.run(&|index| {
            let start = (index * per * align).min(len);
            let end = ((index + 1) * per * align).min(len);
            if start < end {
                task(start..end);
            }
        });
    }

    /// Splits `data` into one contiguous part per thread (boundaries on multiples of `align`)
    /// and runs `task(offset, part)` on each, in parallel.
    pub fn split_mut<T: Send>(
        &self,
        data: &mut [T],
        align: usize,
        task: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let base = SharedSlice(data.as_mut_ptr());
        self.split(data.len(), align, |range| {
            // SAFETY: `split` hands out disjoint ranges inside `data`, which outlives the call.
            let part =
                unsafe { std::slice::from_raw_parts_mut(base.get().add(range.start), range.len()) };
            task(range.start, part);
        });
    }
}

impl Pool {
    /// Runs `task(i, &mut items[i])` for every item, threads taking the next unclaimed item as
    /// they finish one, so uneven items still keep every thread busy.
    pub fn for_each<T: Send>(&self, items: &mut [T], task: impl Fn(usize, &mut T) + Sync) {
        let next = AtomicUsize::new(0);
        let base = SharedSlice(items.as_mut_ptr());
        let count = items.len();
        let threads = self.threads.min(count);
        let claim = |_thread: usize| {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                // SAFETY: every index is claimed exactly once, so the references are disjoint.
                task(index, unsafe { &mut *base.get().add(index) });
            }
        };
        if threads <= 1 {
            claim(0);
        } else {
            self.run(&claim);
        }
    }
}

struct SharedSlice<T>(*mut T);
// SAFETY: only used by `split_mut`, whose parts are disjoint.
unsafe impl<T: Send> Sync for SharedSlice<T> {}
unsafe impl<T: Send> Send for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    /// A method, so closures capture the whole wrapper rather than its raw pointer field.
    fn get(&self) -> *mut T {
        self.0
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

fn work(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let spin_until = Instant::now() + SPIN;
        let mut epoch = shared.epoch.load(Ordering::Acquire);
        while epoch == seen && Instant::now() < spin_until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            epoch = shared.epoch.load(Ordering::Acquire);
        }
        if epoch == seen {
            let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            loop {
                epoch = shared.epoch.load(Ordering::SeqCst);
                if epoch != seen || shared.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        seen = epoch;
        // SAFETY: see `Pool::run`; the job stays alive until `pending` reaches zero.
        let task = unsafe { &*(*shared.task.get()).expect("a published task") };
        task(index);
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job_and_ranges_cover_the_input() {
        let pool = Pool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        let covered: Vec<AtomicUsize> = (0..103).map(|_| AtomicUsize::new(0)).collect();
        pool.split(103, 8, |range| {
            assert_eq!(range.start % 8, 0);
            for i in range {
                covered[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(covered.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }
}
