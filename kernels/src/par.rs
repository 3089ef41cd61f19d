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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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

/// How far apart the two cores of a pool of two are, as the cost of moving
/// a cache line between them shows it ([`placement`]).
///
/// The 2-vCPU virtual machines this project runs on move their vCPUs
/// between the host's cores from one minute to the next: a cache line goes
/// from one to the other and back in 45-120 ns on some placements (one
/// core complex, a shared L3) and in 350-500 ns on others (two complexes),
/// and a training step then takes about 40% longer. Where a step has two
/// schedules that differ in what crosses between the cores, it asks which
/// placement it runs on. No result depends on the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A cache line goes there and back in under [`FAR_ROUND_TRIP`]; also
    /// the answer on any pool other than two threads on two cores, and
    /// before a measurement has succeeded.
    Near,
    /// A round trip takes [`FAR_ROUND_TRIP`] or longer: what one core wrote
    /// is expensive for the other to read.
    Far,
}

/// The round trip from which two cores count as [`Placement::Far`]:
/// between the two clusters measured on AMD Zen 5 VMs (45-120 and 350-500
/// ns; docs/performance-log.md).
pub const FAR_ROUND_TRIP: Duration = Duration::from_nanos(250);

/// How long a measurement stands: the host moves vCPUs over seconds to
/// minutes, and a measurement costs about 32 round trips (15 us when far).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How soon to measure again after a try that the other thread did not
/// join (it was busy).
const PROBE_RETRY: Duration = Duration::from_millis(5);

/// Round trips a measurement times.
const PROBE_TRIPS: u32 = 32;

/// When (nanoseconds since [`epoch`]) [`placement`] measures next, and
/// whether the latest measurement found the cores far apart.
static NEXT_PROBE: AtomicU64 = AtomicU64::new(0);
static PROBED_FAR: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The placement [`with_placement`] imposes on this thread.
    static FORCED: Cell<Option<Placement>> = const { Cell::new(None) };
}

/// The placement `KILN_PLACEMENT` (`near` or `far`) imposes on the
/// process, read once; unset or `auto`: measured.
fn placement_from_env() -> Option<Placement> {
    static ENV: OnceLock<Option<Placement>> = OnceLock::new();
    *ENV.get_or_init(|| match std::env::var("KILN_PLACEMENT").as_deref() {
        Ok("near") => Some(Placement::Near),
        Ok("far") => Some(Placement::Far),
        Ok("auto") | Err(_) => None,
        Ok(other) => {
            eprintln!("warning: KILN_PLACEMENT={other:?} is not near, far or auto; measuring instead");
            None
        }
    })
}

/// Where the current pool's two threads run ([`Placement`]), measured by
/// timing cache-line round trips between them ([`round_trip`]) at most
/// every half second, unless [`with_placement`] or `KILN_PLACEMENT` says.
///
/// ```
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
/// assert_eq!(pool.install(kiln_kernels::placement), kiln_kernels::Placement::Near);
/// ```
pub fn placement() -> Placement {
    if let Some(p) = FORCED.get().or_else(placement_from_env) {
        return p;
    }
    if !runs_side_by_side() {
        return Placement::Near;
    }
    let now = now_ns();
    if now >= NEXT_PROBE.load(Ordering::Relaxed) {
        let trip = round_trip();
        let wait = if trip.is_some() { PROBE_EVERY } else { PROBE_RETRY };
        NEXT_PROBE.store(now + wait.as_nanos() as u64, Ordering::Relaxed);
        if let Some(trip) = trip {
            PROBED_FAR.store(trip >= FAR_ROUND_TRIP, Ordering::Relaxed);
        }
    }
    if PROBED_FAR.load(Ordering::Relaxed) {
        Placement::Far
    } else {
        Placement::Near
    }
}

/// Runs `f` with [`placement`] answering `p` on this thread (tests, and
/// measurements of either schedule); the previous answer is restored after.
///
/// ```
/// use kiln_kernels::{placement, with_placement, Placement};
/// assert_eq!(with_placement(Placement::Far, placement), Placement::Far);
/// ```
pub fn with_placement<R>(p: Placement, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Placement>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.set(self.0);
        }
    }
    let _restore = Restore(FORCED.replace(Some(p)));
    f()
}

/// The median round trip of a cache line between this thread and the
/// other thread of a pool of two ([`side_by_side`]), of 32 trips; `None` when
/// the other thread did not join within 50 us (it was busy, or the pool is
/// not two threads on two cores).
///
/// ```
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
/// assert_eq!(pool.install(kiln_kernels::round_trip), None);
/// ```
pub fn round_trip() -> Option<Duration> {
    // 0: the other side is not in yet; 1: it is; then 2i + 2 is the i-th
    // ping and 2i + 3 its answer; DONE: this side has finished.
    const DONE: u32 = u32::MAX;
    if !runs_side_by_side() {
        return None;
    }
    let line = AtomicU32::new(0);
    let give_up = Duration::from_micros(50);
    // Spins until `line` holds `want` (true), or DONE, or `give_up` passes.
    let wait = |want: u32| {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            match line.load(Ordering::Acquire) {
                v if v == want => return true,
                DONE => return false,
                _ => {}
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > give_up {
                return false;
            }
            std::hint::spin_loop();
        }
    };
    let (trip, ()) = side_by_side(
        || {
            let mut trips = Vec::with_capacity(PROBE_TRIPS as usize);
            if wait(1) {
                for i in 0..PROBE_TRIPS {
                    let start = Instant::now();
                    line.store(2 * i + 2, Ordering::Release);
                    if !wait(2 * i + 3) {
                        trips.clear();
                        break;
                    }
                    trips.push(start.elapsed());
                }
            }
            line.store(DONE, Ordering::Release);
            // The median: an interrupt during one trip must not make a
            // near placement look far.
            trips.sort_unstable();
            trips.get(trips.len() / 2).copied()
        },
        || {
            // Only if the other side has not finished (side_by_side ran
            // the two one after the other).
            if line.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                for i in 0..PROBE_TRIPS {
                    if !wait(2 * i + 2) {
                        return;
                    }
                    line.store(2 * i + 3, Ordering::Release);
                }
            }
        },
    );
    trip
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

    #[test]
    fn the_placement_is_near_off_a_pool_of_two_and_forced_where_asked() {
        for n in [1, 3] {
            assert_eq!(pool(n).install(placement), Placement::Near, "{n} threads");
            assert_eq!(pool(n).install(round_trip), None, "{n} threads");
        }
        let p = pool(2);
        for forced in [Placement::Near, Placement::Far] {
            assert_eq!(p.install(|| with_placement(forced, placement)), forced);
            // Nested, and restored after.
            let inner = with_placement(forced, || {
                let other = if forced == Placement::Far { Placement::Near } else { Placement::Far };
                (with_placement(other, placement), placement())
            });
            assert_eq!(inner.1, forced);
            assert_ne!(inner.0, forced);
        }
        assert_eq!(FORCED.get(), None);
    }

    #[test]
    fn a_round_trip_is_measured_when_the_other_thread_is_free() {
        if cores() < 2 {
            eprintln!("skipped: one core");
            return;
        }
        let p = pool(2);
        let give_up = Instant::now() + Duration::from_secs(20);
        // A fresh pool's other thread may take a while to start, and a busy
        // host may hold it up: try until a measurement succeeds.
        let trip = p.install(|| loop {
            run((0..4).collect(), |_: i32| {});
            match round_trip() {
                Some(t) => break Some(t),
                None if Instant::now() > give_up => break None,
                None => {}
            }
        });
        let trip = trip.expect("no round trip in 20 s");
        assert!(trip > Duration::ZERO && trip < Duration::from_millis(1), "{trip:?}");
    }

    #[test]
    fn no_round_trip_when_the_other_thread_is_busy() {
        if cores() < 2 {
            eprintln!("skipped: one core");
            return;
        }
        let p = pool(2);
        let release = AtomicBool::new(false);
        let trip = p.install(|| {
            rayon::scope(|s| {
                // Holds the other thread (or this one, then the probe runs
                // alone after it) until the probe has answered.
                s.spawn(|_| {
                    let give_up = Instant::now() + Duration::from_secs(20);
                    while !release.load(Ordering::Acquire) && Instant::now() < give_up {
                        std::hint::spin_loop();
                    }
                });
                // Give the spawned job time to be taken by the other thread.
                std::thread::sleep(Duration::from_millis(20));
                let trip = round_trip();
                release.store(true, Ordering::Release);
                trip
            })
        });
        assert_eq!(trip, None);
    }
}
