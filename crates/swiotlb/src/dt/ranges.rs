//! Which `dma-ranges` window of a bus translates each pool.
//!
//! The rule (the module's "Reachability") takes, for a pool whose
//! physical bytes are `base..=last`, the first window in property order
//! whose parent (CPU-side) range holds all of them. Asking each window in
//! turn for each pool costs windows × pools, and a blob may carry tens of
//! thousands of each. [`first_windows`] answers every pool of one bus in
//! one pass over the windows instead: the pools wait in a tree ordered by
//! `base`, and each window, in property order, takes every waiting pool it
//! holds. A pool is taken once, by the first window that holds it, so the
//! pass costs (windows + pools) · log pools.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

/// One window of a `dma-ranges`: parent addresses `lo..=hi` appear on the
/// bus from `child` up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    /// First parent address.
    pub lo: u64,
    /// Last parent address.
    pub hi: u64,
    /// The bus address of `lo`.
    pub child: u64,
}

/// For each pool `(base, last)` of `pools`, the first of `windows` (in
/// their order) with `lo <= base` and `last <= hi`, or `None`.
pub(super) fn first_windows(
    windows: impl Iterator<Item = Window>,
    pools: &[(u64, u64)],
) -> Vec<Option<Window>> {
    let mut found = vec![None; pools.len()];
    if pools.is_empty() {
        return found;
    }
    // The pools by base; a window holds pool j only if lo <= base_j, so
    // the ones it may hold are a suffix of this order.
    let mut order: Vec<u32> = (0..pools.len() as u32).collect();
    order.sort_unstable_by_key(|&j| pools[j as usize].0);
    let bases: Vec<u64> = order.iter().map(|&j| pools[j as usize].0).collect();
    let mut waiting = MinTree::new(order.iter().map(|&j| pools[j as usize].1));
    let mut left = pools.len();
    for w in windows {
        let from = bases.partition_point(|&b| b < w.lo);
        // Every waiting pool from there whose last byte is inside the
        // window: its base is at least lo, and at most last <= hi.
        while let Some(k) = waiting.first_at_most(from, w.hi) {
            found[order[k] as usize] = Some(w);
            waiting.remove(k);
            left -= 1;
        }
        if left == 0 {
            break;
        }
    }
    found
}

/// A segment tree over a sequence of `u64`, each node holding the least
/// value among its leaves still present: finds the first present leaf at
/// or after a position whose value is at most a bound, in O(log n).
struct MinTree {
    /// Leaves in a power-of-two row; node `i` has children `2i`, `2i + 1`.
    width: usize,
    /// `None`: no leaf below is present (removed, or padding).
    node: Vec<Option<u64>>,
}

/// The least of two nodes' values; an absent side does not count.
fn least(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

impl MinTree {
    fn new(values: impl ExactSizeIterator<Item = u64>) -> Self {
        let width = values.len().next_power_of_two();
        let mut node = vec![None; 2 * width];
        for (i, v) in values.enumerate() {
            node[width + i] = Some(v);
        }
        for i in (1..width).rev() {
            node[i] = least(node[2 * i], node[2 * i + 1]);
        }
        Self { width, node }
    }

    /// The first present leaf at or after `from` holding at most `bound`.
    fn first_at_most(&self, from: usize, bound: u64) -> Option<usize> {
        self.search(1, 0, self.width, from, bound)
    }

    /// The search below node `at`, which covers leaves `lo..lo + len`.
    /// Only the nodes along the edge at `from` and the one path that
    /// succeeds go deeper than one step, so the search is O(log n).
    fn search(&self, at: usize, lo: usize, len: usize, from: usize, bound: u64) -> Option<usize> {
        if lo + len <= from || self.node[at].is_none_or(|v| v > bound) {
            return None;
        }
        if len == 1 {
            return Some(lo);
        }
        let half = len / 2;
        self.search(2 * at, lo, half, from, bound)
            .or_else(|| self.search(2 * at + 1, lo + half, half, from, bound))
    }

    fn remove(&mut self, leaf: usize) {
        let mut i = self.width + leaf;
        self.node[i] = None;
        while i > 1 {
            i /= 2;
            self.node[i] = least(self.node[2 * i], self.node[2 * i + 1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule, asked window by window.
    fn naive(windows: &[Window], pools: &[(u64, u64)]) -> Vec<Option<Window>> {
        pools
            .iter()
            .map(|&(b, l)| windows.iter().copied().find(|w| w.lo <= b && l <= w.hi))
            .collect()
    }

    fn window(lo: u64, hi: u64, child: u64) -> Window {
        Window { lo, hi, child }
    }

    #[test]
    fn first_window_in_order_wins() {
        let ws = [
            window(0x1000, 0x1fff, 1),
            window(0, u64::MAX, 2),
            window(0x1000, 0x1fff, 3),
        ];
        let pools = [
            (0x1000, 0x1fff),
            (0x1800, 0x2000),
            (0, 0),
            (u64::MAX, u64::MAX),
        ];
        let got = first_windows(ws.iter().copied(), &pools);
        assert_eq!(got, naive(&ws, &pools));
        assert_eq!(got[0].map(|w| w.child), Some(1));
        assert_eq!(got[1].map(|w| w.child), Some(2));
        assert_eq!(got[3].map(|w| w.child), Some(2));
    }

    #[test]
    fn no_window_no_pool() {
        assert_eq!(first_windows([].into_iter(), &[(1, 2)]), [None]);
        assert!(first_windows([window(0, 9, 0)].into_iter(), &[]).is_empty());
    }

    proptest! {
        /// Small coordinates, so windows and pools overlap, nest and
        /// repeat often.
        #[test]
        fn agrees_with_the_rule(
            ws in proptest::collection::vec((0u64..64, 0u64..64), 0..24),
            ps in proptest::collection::vec((0u64..64, 0u64..16), 0..24),
        ) {
            let ws: Vec<Window> = ws
                .into_iter()
                .enumerate()
                .map(|(i, (a, len))| window(a, a + len, i as u64))
                .collect();
            let ps: Vec<(u64, u64)> = ps.into_iter().map(|(b, len)| (b, b + len)).collect();
            prop_assert_eq!(first_windows(ws.iter().copied(), &ps), naive(&ws, &ps));
        }
    }
}
