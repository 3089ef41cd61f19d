//! Parallel regions on the caller's rayon pool whose threads wait by
//! spinning, not by sleeping.
//!
//! A training step is a dozen parallel regions of tens of microseconds
//! each. Rayon's idle workers, and a thread waiting for the half of a
//! `join` that another took, go to sleep after a few microseconds without
//! work; on the virtual machines this project runs on, waking a sleeping
//! vCPU costs 20-50 us, as long as a region itself. So [`run`]:
//!
//! 1. keeps the pool's other threads looking for work for [`SPIN_IDLE`]
//!    after its caller's latest region (one spinning job per thread, which
//!    runs whatever rayon work appears meanwhile), so that the next
//!    region's tasks start at once;
//! 2. has its caller spin, not sleep, until the tasks others took are done.
//!
//! Neither when the pool has more threads than the process has cores:
//! a spinning thread would then keep a thread with work off its core.
//!
//! Tasks are claimed in order from a shared counter; which thread runs a
//! task changes no result (each task writes its own part of the output).
//! This is what OpenMP runtimes do by default (`GOMP_SPINCOUNT`); measured:
//! docs/performance-log.md, 2026-12-02, 63ba0a1.
//!
//! [`side_by_side`] runs two closures at once on a pool of two, each alone
//! on its thread (every region inside runs on the thread that starts it):
//! for two independent ops that each list their operand's non-zeros, one
//! op a core lists each once, where splitting each op over both cores had
//! both cores list it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long the pool's threads keep spinning after a caller's latest
/// region: longer than the serial gaps between a step's regions and
/// between steps, short enough that an idle library user's cores are
/// freed at once (a few steps of the tutorial network).
pub(crate) const SPIN_IDLE: Duration = Duration::from_millis(2);

/// A caller's spinning helpers.
#[derive(Default)]
struct Keeper {
    /// Helpers armed and not yet stopped (some may not have started): no
    /// more are armed until they have all stopped.
    alive: AtomicUsize,
    /// Helpers that have started spinning, ever.
    started: AtomicUsize,
    /// When the caller last started a region (nanoseconds since [`epoch`]).
    last: AtomicU64,
}

thread_local! {
    /// This thread's helpers, when it calls [`run`].
    static KEEPER: Arc<Keeper> = Arc::new(Keeper::default());
    /// Whether this thread is inside a region (running tasks or waiting for
    /// them): a helper that lands here then returns at once, since it would
    /// hold the region up for as long as it spins.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread runs its regions alone ([`serial`]).
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// The threads a region started on this thread may use: the pool's, or
/// one inside [`serial`].
pub(crate) fn threads() -> usize {
    if SERIAL.get() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f` with every region it starts on this thread alone.
fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.set(self.0);
        }
    }
    let _restore = Restore(SERIAL.replace(true));
    f()
}

/// Whether [`side_by_side`] runs its two closures at once here: on a rayon
/// pool of two threads (the current one), when the process has two cores.
///
/// ```
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
/// assert!(!pool.install(kiln_kernels::runs_side_by_side));
/// ```
pub fn runs_side_by_side() -> bool {
    threads() == 2 && cores() >= 2
}

/// Runs `a` and `b` at once, one on each thread of a pool of two, each
/// op in them alone on its thread (every region they start runs on the
/// thread that starts it), when [`runs_side_by_side`]; elsewhere `a`, then
/// `b`, each with the whole pool. At once only if the other thread is free
/// to take `b` (else the caller runs both), so neither side may wait for
/// the other. Results are the same either way, as they are at any thread
/// count; a panic in either side reaches the caller once both have ended.
///
/// ```
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let (mut left, mut right) = (vec![0u32; 4], vec![0u32; 4]);
/// let (a, b) = pool.install(|| {
///     kiln_kernels::side_by_side(
///         || {
///             left.iter_mut().for_each(|v| *v += 1);
///             left.len()
///         },
///         || right.iter_mut().map(|v| *v + 2).sum::<u32>(),
///     )
/// });
/// assert_eq!((a, b, left), (4, 8, vec![1; 4]));
/// ```
pub fn side_by_side<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    if !runs_side_by_side() {
        return (a(), b());
    }
    let sides = (Mutex::new(Some(a)), Mutex::new(Some(b)));
    let results = (Mutex::new(None), Mutex::new(None));
    fn take<V>(m: &Mutex<Option<V>>) -> Option<V> {
        m.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
    fn put<V>(m: &Mutex<Option<V>>, v: V) {
        *m.lock().unwrap_or_else(PoisonError::into_inner) = Some(v);
    }
    // A region of two tasks, so that whichever thread ends first spins.
    run(vec![false, true], |second| {
        serial(|| {
            if second {
                let b = take(&sides.1).expect("b runs once");
                put(&results.1, b());
            } else {
                let a = take(&sides.0).expect("a runs once");
                put(&results.0, a());
            }
        })
    });
    (take(&results.0).expect("a ran"), take(&results.1).expect("b ran"))
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The cores this process may run on.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// Runs `f` on every item, in parallel on the current rayon pool (each item
/// exactly once); returns when all are done. With one item or one thread,
/// in order on the calling thread.
pub(crate) fn run<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = threads();
    let n = items.len();
    if n <= 1 || threads <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    // Each slot is taken by the one task that claimed its index.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let next = AtomicUsize::new(0);
    let left = AtomicUsize::new(n);
    let claim = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        // Counts the task as done even if `f` panics, so that the caller's
        // wait ends and `scope` passes the panic on.
        let _done = Done(&left);
        let item = slots[i].lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(item) = item {
            f(item);
        }
    };
    // More threads than cores: a spinning thread would hold a core that a
    // thread with work waits for, so rayon's own waiting is kept.
    let spins = threads <= cores();
    rayon::scope(|s| {
        let _region = Region::enter();
        if spins {
            keep_awake();
        }
        for _ in 1..threads.min(n) {
            s.spawn(|_| claim());
        }
        claim();
        while spins && left.load(Ordering::Acquire) > 0 {
            // Our own spawned claims that no other thread took yet.
            if rayon::yield_local() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    });
}

/// Decrements a count of tasks left when dropped.
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Marks the current thread as inside a region, restoring the mark it had.
struct Region(bool);

impl Region {
    fn enter() -> Self {
        Region(IN_REGION.replace(true))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        IN_REGION.set(self.0);
    }
}

/// Notes a region of the calling thread and, when none of its helpers is
/// left, arms one on every other thread of the pool.
fn keep_awake() {
    let threads = rayon::current_num_threads();
    KEEPER.with(|k| {
        let now = now_ns();
        k.last.store(now, Ordering::Relaxed);
        if k.alive.load(Ordering::Acquire) > 0 {
            return;
        }
        let (keeper, caller) = (Arc::clone(k), rayon::current_thread_index());
        k.alive.fetch_add(threads - usize::from(caller.is_some()), Ordering::AcqRel);
        rayon::spawn_broadcast(move |ctx| {
            if Some(ctx.index()) != caller {
                spin(&keeper);
                keeper.alive.fetch_sub(1, Ordering::AcqRel);
            }
        });
    });
}

/// Runs the pool's work as it appears until the caller of `k` has started
/// no region for [`SPIN_IDLE`].
fn spin(k: &Keeper) {
    if IN_REGION.get() {
        return;
    }
    k.started.fetch_add(1, Ordering::Relaxed);
    let idle = SPIN_IDLE.as_nanos() as u64;
    loop {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            continue;
        }
        if now_ns().saturating_sub(k.last.load(Ordering::Relaxed)) > idle {
            break;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    #[test]
    fn every_item_runs_once_at_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            for n in [0, 1, 2, 3, 7, 64] {
                let mut out = vec![0u32; n];
                pool(threads).install(|| {
                    for _ in 0..3 {
                        run(out.iter_mut().enumerate().collect(), |(i, o)| *o += i as u32 + 1);
                    }
                });
                let want: Vec<u32> = (0..n as u32).map(|i| 3 * (i + 1)).collect();
                assert_eq!(out, want, "{threads} threads, {n} items");
            }
        }
    }

    #[test]
    fn runs_from_outside_a_pool_and_nested() {
        let mut out = vec![0usize; 9];
        run(out.chunks_mut(3).enumerate().collect(), |(i, c)| {
            let mut inner = vec![0usize; 3];
            run(inner.iter_mut().enumerate().collect(), |(j, o)| *o = 3 * i + j);
            c.copy_from_slice(&inner);
        });
        assert_eq!(out, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let caught = pool(2)
            .install(|| std::panic::catch_unwind(|| run((0..8).collect(), |i: i32| assert!(i != 5, "task five"))));
        let msg = caught.unwrap_err();
        let text = msg.downcast_ref::<&str>().copied().or(msg.downcast_ref::<String>().map(String::as_str));
        assert_eq!(text, Some("task five"));
    }

    #[test]
    fn helpers_spin_while_regions_come_and_stop_after() {
        let threads = cores().min(3);
        assert!(threads >= 2, "this test needs two cores");
        let p = pool(threads);
        let give_up = Instant::now() + Duration::from_secs(20);
        // Regions one after the other until every other thread spins (a
        // fresh pool's threads may take a while to start).
        let k = p.install(|| {
            let k = KEEPER.with(Arc::clone);
            while k.started.load(Ordering::Relaxed) < threads - 1 && Instant::now() < give_up {
                run((0..6).collect(), |_: i32| {});
            }
            k
        });
        assert!(k.started.load(Ordering::Relaxed) >= threads - 1, "not every other thread spun");
        while k.alive.load(Ordering::Acquire) > 0 && Instant::now() < give_up {
            std::thread::sleep(SPIN_IDLE);
        }
        assert_eq!(k.alive.load(Ordering::Acquire), 0, "helpers still spinning");
    }

    #[test]
    fn side_by_side_runs_both_at_once_each_alone_on_a_pool_of_two() {
        if cores() < 2 {
            eprintln!("skipped: one core, where side_by_side runs one side after the other");
            return;
        }
        let (a_saw_b, b_saw_a) = pool(2).install(|| {
            assert!(runs_side_by_side());
            let (a_up, b_up) = (AtomicUsize::new(0), AtomicUsize::new(0));
            // Each side waits for the other to start: only sides that run
            // at once both see the other (a bounded wait, so that a wrong
            // one-after-the-other fails instead of hanging).
            let wait_for = |up: &AtomicUsize| {
                let give_up = Instant::now() + Duration::from_secs(20);
                while up.load(Ordering::Acquire) == 0 && Instant::now() < give_up {
                    std::hint::spin_loop();
                }
                up.load(Ordering::Acquire) == 1 && threads() == 1
            };
            side_by_side(
                || {
                    a_up.store(1, Ordering::Release);
                    wait_for(&b_up)
                },
                || {
                    b_up.store(1, Ordering::Release);
                    wait_for(&a_up)
                },
            )
        });
        assert!(a_saw_b && b_saw_a, "the sides did not run at once, each alone: {a_saw_b} {b_saw_a}");
        // Back to the whole pool after.
        assert_eq!(pool(2).install(threads), 2);
    }

    #[test]
    fn a_panicking_side_reaches_the_caller_and_leaves_the_pool_whole() {
        let p = pool(2);
        let caught = p.install(|| std::panic::catch_unwind(|| side_by_side(|| (), || panic!("side b"))));
        let msg = caught.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>().copied(), Some("side b"));
        assert_eq!(p.install(threads), 2);
        // Nested: the inner pair runs one side after the other, alone.
        let inner = p.install(|| side_by_side(|| side_by_side(threads, threads), threads));
        assert_eq!(inner.0, (1, 1));
    }

    #[test]
    fn side_by_side_runs_one_then_the_other_with_the_whole_pool_elsewhere() {
        for n in [1, 3] {
            let order = Mutex::new(Vec::new());
            let got = pool(n).install(|| {
                side_by_side(
                    || {
                        order.lock().unwrap().push('a');
                        threads()
                    },
                    || {
                        order.lock().unwrap().push('b');
                        threads()
                    },
                )
            });
            assert_eq!(got, (n, n), "{n} threads");
            assert_eq!(*order.lock().unwrap(), ['a', 'b']);
        }
    }

    #[test]
    fn no_thread_spins_when_threads_outnumber_cores() {
        let k = pool(cores() + 1).install(|| {
            for _ in 0..100 {
                run((0..6).collect(), |_: i32| {});
            }
            KEEPER.with(Arc::clone)
        });
        assert_eq!(k.started.load(Ordering::Relaxed), 0);
        assert_eq!(k.alive.load(Ordering::Acquire), 0);
    }
}
