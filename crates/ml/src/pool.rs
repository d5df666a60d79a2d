//! The compute pool the forward pass splits its work over: `run(tasks, f)` calls `f(0..tasks)`
//! across the pool's threads and returns when all are done; `for_each_chunk` hands every task
//! its own chunk of one output.
//!
//! A decode step is about 120 dispatches of some tens of µs each. A [`ComputePool`]'s workers
//! spin for [`SPIN`] after a dispatch, so the next one starts without a futex wake-up (as
//! llama.cpp's ggml threadpool does); past that window they park, so an idle engine uses no
//! CPU. The engine installs its pool on the scheduler thread ([`ComputePool::install`]); where
//! none is installed (tests, training) `run` uses the current rayon pool.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a worker spins for the next dispatch before it parks (and a caller for stragglers
/// before it parks). The caller's serial work between two dispatches of a two-thread SmolLM2
/// decode (norms, activation quantization, the argmax between tokens) took 7 µs at the median,
/// 54 µs at p99 and 112 µs at p99.9 on a loaded machine, measured; a wake-up from park costs
/// about 15 µs. 500 µs is meant to span the engine's own work between two steps too (sampling,
/// events; not measured), so a busy engine's workers stay awake; an idle pool spins this long
/// once, then parks. Spinning yields the core every few µs (see `spin_until`), so a longer
/// window costs a loaded machine little: 100 and 500 µs decoded alike there.
/// `OPENLEDGER_POOL_SPIN_US` overrides it (0 parks at once), read when a pool starts.
pub const SPIN: Duration = Duration::from_micros(500);

/// Spins between two reads of the clock (and yields of the core) while spinning.
const SPINS_PER_CLOCK_READ: u32 = 64;

/// Threads a `run` spreads over: the installed pool's, else the current rayon pool's.
pub(crate) fn threads() -> usize {
    INSTALLED.with_borrow(|pool| pool.as_ref().map(|p| p.threads)).unwrap_or_else(rayon::current_num_threads)
}

/// Calls `f(i)` for every `i` in `0..tasks`, in parallel, and waits for all of them. A panic
/// in `f` reaches the caller once every task has finished.
pub(crate) fn run(tasks: usize, f: impl Fn(usize) + Sync) {
    if tasks <= 1 || IN_TASK.get() {
        return (0..tasks).for_each(f);
    }
    match INSTALLED.with_borrow(Clone::clone) {
        Some(pool) => pool.run(tasks, &f),
        None => (0..tasks).into_par_iter().with_max_len(1).for_each(&f),
    }
}

/// Calls `f(c, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), in
/// parallel: every task writes its own disjoint part of one output.
pub(crate) fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if data.len() <= chunk {
        if !data.is_empty() {
            f(0, data);
        }
        return;
    }
    if INSTALLED.with_borrow(Option::is_none) {
        data.par_chunks_mut(chunk).with_max_len(1).enumerate().for_each(|(c, part)| f(c, part));
        return;
    }
    // Tasks take the chunks in turn from one shared iterator: safe code, and the lock is held
    // for a pointer bump only.
    let tasks = data.len().div_ceil(chunk);
    let parts = Mutex::new(data.chunks_mut(chunk).enumerate());
    run(tasks, |_| {
        let next = lock(&parts).next();
        if let Some((c, part)) = next {
            f(c, part);
        }
    });
}

thread_local! {
    /// The pool `run` dispatches to from this thread, set by [`ComputePool::install`].
    static INSTALLED: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// Set on pool workers for good and on a caller while it runs a dispatch's tasks: a `run`
    /// from inside a task runs inline on its thread (the pool is busy with the outer one).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// `threads` threads for [`run`] and [`for_each_chunk`]: the thread that dispatches and
/// `threads - 1` workers. Workers claim tasks from an atomic counter, spin for [`SPIN`] after
/// a dispatch waiting for the next one, then park until one comes. Dropping the pool joins
/// its workers.
pub struct ComputePool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// A dispatch as the workers see it.
#[derive(Clone)]
struct Job {
    /// Lives until the dispatch returns: see `Shared::dispatch`.
    f: &'static Task<'static>,
    tasks: usize,
    generation: usize,
    /// Unparked by the last worker to finish, in case it waits past its spin window.
    caller: Thread,
}

/// What workers wait on, under one lock.
struct Slot {
    /// The dispatch in progress; cleared by its caller once all its tasks are claimed.
    job: Option<Job>,
    /// Workers waiting on `Shared::wake` and not yet notified: the next dispatch notifies
    /// only if some are, once (a notified worker may take a while to run on a busy machine).
    parked: usize,
    stop: bool,
}

struct Shared {
    threads: usize,
    spin: Duration,
    slot: Mutex<Slot>,
    wake: Condvar,
    /// Bumped under `slot`'s lock by every dispatch and by shutdown: what spinning workers
    /// watch, so they touch the lock only when there is something to pick up.
    generation: AtomicUsize,
    /// The next task of the current dispatch to claim.
    next_task: AtomicUsize,
    /// Workers holding the current job: its caller waits for none before it returns.
    busy: AtomicUsize,
    /// Set while a thread dispatches: a second thread's `run` at that time runs inline.
    dispatching: AtomicBool,
    /// The first panic of the current dispatch, re-raised on its caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl ComputePool {
    /// A pool of `threads` threads (at least one: the caller), whose workers spin for [`SPIN`]
    /// (or `OPENLEDGER_POOL_SPIN_US` µs).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let spin = std::env::var("OPENLEDGER_POOL_SPIN_US").ok().and_then(|v| v.parse().ok());
        Self::with_spin(threads, spin.map_or(SPIN, Duration::from_micros))
    }

    fn with_spin(threads: usize, spin: Duration) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            spin,
            slot: Mutex::new(Slot { job: None, parked: 0, stop: false }),
            wake: Condvar::new(),
            generation: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            dispatching: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let mut pool = Self { shared, workers: Vec::with_capacity(threads - 1) };
        for i in 1..threads {
            let shared = pool.shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("openlora-compute-{i}"))
                .spawn(move || shared.work_until_stopped())?; // on error, drop joins the others
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` with this pool as the one [`run`] and [`for_each_chunk`] use on this thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Shared>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                INSTALLED.set(self.0.take());
            }
        }
        let _restore = Restore(INSTALLED.replace(Some(self.shared.clone())));
        f()
    }

    /// [`run`] on this pool.
    #[allow(dead_code)] // the tests call it; the engine goes through `install`
    pub(crate) fn run(&self, tasks: usize, f: &Task<'_>) {
        self.shared.run(tasks, f);
    }

    /// Workers parked (past their spin window), for the tests.
    #[cfg(test)]
    fn parked(&self) -> usize {
        lock(&self.shared.slot).parked
    }
}

impl std::fmt::Debug for ComputePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputePool").field("threads", &self.shared.threads).finish()
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        {
            let mut slot = lock(&self.shared.slot);
            slot.stop = true;
            slot.parked = 0;
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            // Tasks' panics are caught, so a worker cannot have panicked; nothing to report.
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn run(&self, tasks: usize, f: &Task<'_>) {
        let inline = tasks <= 1 || self.threads == 1 || IN_TASK.get();
        if inline || self.dispatching.swap(true, Ordering::Acquire) {
            return (0..tasks).for_each(f);
        }
        let _in_task = Flag::set(&IN_TASK);
        self.dispatch(tasks, f);
        self.dispatching.store(false, Ordering::Release);
        if let Some(payload) = lock(&self.panic).take() {
            panic::resume_unwind(payload);
        }
    }

    /// Publishes `f` to the workers, runs tasks alongside them, and returns once no worker
    /// holds `f` any more (all its tasks have finished).
    fn dispatch<'a>(&self, tasks: usize, f: &'a Task<'a>) {
        // SAFETY: only the lifetime changes. The reference outlives every use: workers take it
        // from `slot.job` under the lock and count themselves in `busy` while they hold it;
        // `Published::drop` clears `slot.job` under the lock and then waits for `busy` to reach
        // zero, and this function cannot return or unwind before that drop (the tasks it runs
        // itself are inside `catch_unwind`, and nothing else here panics).
        #[allow(unsafe_code)]
        let f = unsafe { std::mem::transmute::<&'a Task<'a>, &'static Task<'static>>(f) };
        let job = {
            let mut slot = lock(&self.slot);
            let generation = self.generation.load(Ordering::Relaxed).wrapping_add(1);
            let job = Job { f, tasks, generation, caller: std::thread::current() };
            self.next_task.store(0, Ordering::Relaxed);
            slot.job = Some(job.clone());
            self.generation.store(generation, Ordering::Release);
            if slot.parked > 0 {
                slot.parked = 0;
                self.wake.notify_all();
            }
            job
        };
        let _published = Published(self);
        self.claim_tasks(&job);
    }

    /// Runs tasks of `job` until none is left to claim.
    fn claim_tasks(&self, job: &Job) {
        loop {
            let i = self.next_task.fetch_add(1, Ordering::Relaxed);
            if i >= job.tasks {
                return;
            }
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| (job.f)(i))) {
                // Skip the rest of the dispatch: its caller is about to panic anyway.
                self.next_task.fetch_max(job.tasks, Ordering::Relaxed);
                lock(&self.panic).get_or_insert(payload);
            }
        }
    }

    /// A worker's life: take each dispatch's tasks until the pool is dropped.
    fn work_until_stopped(&self) {
        IN_TASK.set(true);
        let mut seen = 0; // the pool starts at generation 0, before any dispatch
        while let Some(job) = self.next_job(&mut seen) {
            self.claim_tasks(&job);
            let Job { caller, .. } = job; // done with `f`: it may dangle once `busy` drops
            if self.busy.fetch_sub(1, Ordering::Release) == 1 {
                caller.unpark();
            }
        }
    }

    /// Waits for a dispatch newer than `seen` (spinning, then parked) and takes it, counted
    /// in `busy`; `None` once the pool is dropped.
    fn next_job(&self, seen: &mut usize) -> Option<Job> {
        loop {
            let spun_out = !spin_until(self.spin, || self.generation.load(Ordering::Acquire) != *seen);
            let mut slot = lock(&self.slot);
            let idle = |s: &mut Slot| !s.stop && self.generation.load(Ordering::Relaxed) == *seen;
            if spun_out && idle(&mut slot) {
                slot.parked += 1;
                slot = self.wake.wait_while(slot, idle).unwrap_or_else(PoisonError::into_inner);
            }
            if slot.stop {
                return None;
            }
            match &slot.job {
                Some(job) if job.generation != *seen => {
                    *seen = job.generation;
                    self.busy.fetch_add(1, Ordering::Relaxed);
                    return Some(job.clone());
                }
                // The caller finished that dispatch alone: spin again for the next one.
                _ => *seen = self.generation.load(Ordering::Relaxed),
            }
        }
    }
}

/// Spins until `done()` (true) or for `window` (false), offering the core to other threads
/// every few spins: on an idle core `yield_now` returns at once (a fraction of a µs), but
/// where threads outnumber cores, as on a shared machine or when the caller and a worker land
/// on one core, pure spinning holds the core the other thread needs for a whole time slice.
/// Measured on 2 shared cores at load 5-9, one decode bench run (~80k dispatches): pure
/// spinning made 70-88k futex calls (parks, wake-ups) and decoded slower than rayon; with the
/// yields, 150-850.
fn spin_until(window: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    loop {
        for _ in 0..SPINS_PER_CLOCK_READ {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if started.elapsed() >= window {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Withdraws a dispatch's job from the workers and waits until none holds it.
struct Published<'a>(&'a Shared);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        lock(&self.0.slot).job = None;
        // Stragglers finish the tasks they claimed. Past the spin window (a worker descheduled
        // on a busy machine) park until the last one unparks us, rather than burn the core.
        let idle = || self.0.busy.load(Ordering::Acquire) == 0;
        if !spin_until(self.0.spin, idle) {
            while !idle() {
                std::thread::park();
            }
        }
    }
}

/// Sets a thread-local flag until dropped.
struct Flag(&'static std::thread::LocalKey<Cell<bool>>);

impl Flag {
    fn set(key: &'static std::thread::LocalKey<Cell<bool>>) -> Self {
        key.set(true);
        Self(key)
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Locks `mutex`, ignoring poisoning: no code panics while holding these locks, and a task's
/// panic is caught before it could poison one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::AtomicU32;
    use std::thread;

    use super::*;

    fn counting(pool: &ComputePool, tasks: usize) -> Vec<u32> {
        let counts: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
        pool.run(tasks, &|i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        counts.into_iter().map(AtomicU32::into_inner).collect()
    }

    #[test]
    fn every_task_runs_exactly_once_across_many_dispatches() {
        for threads in [1, 2, 3, 4] {
            let pool = ComputePool::new(threads).unwrap();
            for tasks in [0, 1, 2, 3, 7, 64, 1000] {
                for _ in 0..50 {
                    assert_eq!(counting(&pool, tasks), vec![1; tasks], "{threads} threads, {tasks} tasks");
                }
            }
        }
    }

    #[test]
    fn chunks_written_by_the_tasks_are_all_there() {
        let pool = ComputePool::new(3).unwrap();
        pool.install(|| {
            for (len, chunk) in [(0, 4), (5, 8), (8, 8), (129, 128), (1000, 7), (4096, 128)] {
                let mut data = vec![usize::MAX; len];
                for_each_chunk(&mut data, chunk, |c, part| {
                    for (j, x) in part.iter_mut().enumerate() {
                        *x = c * chunk + j;
                    }
                });
                assert_eq!(data, (0..len).collect::<Vec<_>>(), "{len} elements in chunks of {chunk}");
            }
        });
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = ComputePool::new(2).unwrap();
        for failing in [0, 5, 63] {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(64, &|i| {
                    if i == failing {
                        panic!("task {i} failed");
                    }
                })
            }));
            let payload = result.unwrap_err();
            assert_eq!(payload.downcast_ref::<String>().unwrap(), &format!("task {failing} failed"));
            assert_eq!(counting(&pool, 100), vec![1; 100]);
        }
    }

    #[test]
    fn a_panic_on_a_worker_reaches_the_caller() {
        let pool = ComputePool::new(2).unwrap();
        let caller = thread::current().id();
        // Two tasks that wait for each other: the caller runs one, the worker the other.
        let barrier = Barrier::new(2);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(2, &|_| {
                barrier.wait();
                if thread::current().id() != caller {
                    panic!("worker task failed");
                }
            })
        }));
        assert_eq!(*result.unwrap_err().downcast_ref::<&str>().unwrap(), "worker task failed");
        assert_eq!(counting(&pool, 100), vec![1; 100]);
    }

    #[test]
    fn a_run_inside_a_task_runs_inline() {
        let pool = ComputePool::new(2).unwrap();
        let count = AtomicUsize::new(0);
        pool.install(|| {
            run(8, |_| {
                run(8, |_| {
                    count.fetch_add(1, Ordering::Relaxed);
                });
                let mut data = [0u8; 16];
                for_each_chunk(&mut data, 4, |_, part| part.fill(1));
                assert_eq!(data, [1; 16]);
            })
        });
        assert_eq!(count.into_inner(), 64);
    }

    #[test]
    fn parked_workers_wake_up_for_a_later_dispatch() {
        let pool = ComputePool::with_spin(3, Duration::from_micros(100)).unwrap();
        assert_eq!(counting(&pool, 10), vec![1; 10]);
        while pool.parked() < 2 {
            thread::sleep(Duration::from_millis(1));
        }
        // Three tasks that wait for one another: each of the three threads must run one.
        let barrier = Barrier::new(3);
        let ran_on = Mutex::new(Vec::new());
        pool.run(3, &|_| {
            barrier.wait();
            lock(&ran_on).push(thread::current().id());
        });
        let mut ran_on = ran_on.into_inner().unwrap();
        ran_on.sort_by_key(|id| format!("{id:?}"));
        ran_on.dedup();
        assert_eq!(ran_on.len(), 3);
    }

    #[test]
    fn two_threads_dispatching_at_once_both_get_all_their_tasks_run() {
        let pool = ComputePool::new(2).unwrap();
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(counting(&pool, 33), vec![1; 33]);
                    }
                });
            }
        });
    }

    #[test]
    fn threads_are_the_installed_pools_else_rayons() {
        let pool = ComputePool::new(3).unwrap();
        assert_eq!(pool.install(threads), 3);
        assert_eq!(threads(), rayon::current_num_threads());
    }

    #[test]
    fn dropping_the_pool_joins_its_workers() {
        let pool = ComputePool::new(3).unwrap();
        assert_eq!(counting(&pool, 10), vec![1; 10]);
        let shared = Arc::downgrade(&pool.shared);
        drop(pool);
        assert!(shared.upgrade().is_none(), "a worker outlived the pool");
    }
}
