//! CPU hints: which area of a pool a map searches first.
//!
//! Linux starts a map at the running CPU's own area
//! (`raw_smp_processor_id()`), so that CPUs mapping at once take different
//! area locks. The core asks the installed [`CpuHint`] and, with none,
//! starts every map at area 0. Install one of these once, at start-up:
//!
//! ```
//! // Maps start in the area of the CPU they run on.
//! swiotlb::set_cpu_hint(&swiotlb_host::RunningCpu);
//! ```

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use swiotlb::CpuHint;

/// The CPU the calling thread is running on, from `sched_getcpu()` (one
/// read of the vDSO or a system call): Linux's `raw_smp_processor_id()`
/// as a user-space program sees it. A thread may move to another CPU
/// right after; like Linux's, the hint only picks where the search starts,
/// so a stale one costs a contended lock, never a wrong answer.
///
/// Choose it when threads outnumber CPUs or move between them: maps on
/// the same CPU share an area as they would in the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunningCpu;

impl CpuHint for RunningCpu {
    fn cpu(&self) -> usize {
        rustix::thread::sched_getcpu()
    }
}

/// Each thread its own area, in turn: the first time a thread maps it
/// takes the next number of a process-wide counter and keeps it.
///
/// Choose it for a few long-lived threads, each mapping a stream of its
/// own (a benchmark's workers, one queue per thread): two threads never
/// share an area until there are more threads than areas, wherever the
/// scheduler puts them. The numbers depend on the order in which threads
/// first map, not on what they run on.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadHint;

/// The next thread's number.
static NEXT: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    // Const-initialised, with no destructor: reading it is one load, where
    // a lazily initialised thread-local checks its state first.
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl CpuHint for ThreadHint {
    #[inline]
    fn cpu(&self) -> usize {
        HINT.with(|h| {
            let mut v = h.get();
            if v == usize::MAX {
                // Areas are a power of two in number, so any value works;
                // MAX is only the "not yet" mark.
                v = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
                h.set(v);
            }
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_number_and_the_next_thread_takes_the_next() {
        let mine = ThreadHint.cpu();
        assert_eq!(ThreadHint.cpu(), mine, "a thread keeps its number");
        let a = std::thread::spawn(|| ThreadHint.cpu()).join().unwrap();
        let b = std::thread::spawn(|| ThreadHint.cpu()).join().unwrap();
        // Other tests of this binary may take numbers in between.
        assert!(a != b && a != mine && b != mine, "{mine} {a} {b}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "sched_getcpu is a system call miri cannot run")]
    fn the_running_cpu_is_one_the_machine_has() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let affinity = rustix::thread::sched_getaffinity(None).unwrap();
        let cpu = RunningCpu.cpu();
        assert!(affinity.is_set(cpu), "cpu {cpu} of {cpus}");
    }
}
