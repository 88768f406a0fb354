//! The pools of a growing tlb, sorted by address and indexed, so that
//! finding the pool of an address takes the same few loads however many
//! pools there are.

#![forbid(unsafe_code)]

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::grow::Member;
use crate::addr::PhysAddr;
use crate::granules::Granules;
use crate::pool::Policy;

/// Pools sorted by address, with their first and last addresses in plain
/// arrays beside them, and (for the tlb's pools) a granule index over
/// them. A lookup reads a hash slot and two 8-byte keys, about 21 ns with
/// the read lock at 1, 100 and 10,000 pools alike; the binary search it
/// falls back to reads 8-byte keys packed in cache lines instead of
/// chasing a pointer to each pool (at 10,000 pools, 268 ns a lookup became
/// ~60 ns that way).
pub(crate) struct Set<P: Policy> {
    pub(crate) starts: Vec<u64>,
    /// Each member's last byte, beside `starts`, so that a lookup checks
    /// bounds without chasing a member pointer.
    lasts: Vec<u64>,
    pub(crate) members: Vec<Arc<Member<P>>>,
    /// Whether to keep `index`: for the pools, which change only when the
    /// tlb grows or shrinks, not for the transient pools, which come and
    /// go with mappings and are searched only for the devices that have
    /// them.
    indexed: bool,
    /// The constant-time lookup, rebuilt when a member comes or goes;
    /// `None` (binary search) when not kept or when the members differ too
    /// much in size.
    index: Option<Granules>,
    /// Counts changes, so that a [`Draft`] made from an older state is
    /// not used.
    generation: u64,
}

/// The arrays and index of a set with one member added, worked out from a
/// snapshot without holding the set's write lock (rebuilding the index of
/// 10,000 pools takes about 0.17 ms, which readers should not wait for).
pub(crate) struct Draft {
    generation: u64,
    starts: Vec<u64>,
    lasts: Vec<u64>,
    /// Whether the set keeps an index ([`Set::indexed`]).
    indexed: bool,
    index: Option<Granules>,
}

impl<P: Policy> Default for Set<P> {
    fn default() -> Self {
        Self {
            starts: Vec::new(),
            lasts: Vec::new(),
            members: Vec::new(),
            indexed: false,
            index: None,
            generation: 0,
        }
    }
}

impl Draft {
    /// Builds the index of the drafted arrays, if the set keeps one.
    pub(crate) fn build_index(mut self) -> Self {
        if self.indexed {
            self.index = Granules::build(&self.starts, &self.lasts);
        }
        self
    }
}

/// The first and last byte of member `m`. A pool is never empty, so its
/// last byte does not wrap.
fn bounds<P: Policy>(m: &Member<P>) -> (u64, u64) {
    (m.start(), m.start() + (m.pool.len() as u64 - 1))
}

impl<P: Policy> Set<P> {
    /// An empty set that keeps an index: the grown pools of a tlb.
    pub(crate) fn indexed() -> Self {
        Self {
            indexed: true,
            ..Self::default()
        }
    }

    fn reindex(&mut self) {
        if self.indexed {
            self.index = Granules::build(&self.starts, &self.lasts);
        }
    }

    pub(crate) fn insert(&mut self, m: Arc<Member<P>>) {
        let (start, last) = bounds(&m);
        let at = self.starts.partition_point(|&p| p < start);
        self.starts.insert(at, start);
        self.lasts.insert(at, last);
        self.members.insert(at, m);
        self.reindex();
        self.generation += 1;
    }

    pub(crate) fn remove(&mut self, at: usize) -> Arc<Member<P>> {
        self.starts.remove(at);
        self.lasts.remove(at);
        let m = self.members.remove(at);
        self.reindex();
        self.generation += 1;
        m
    }

    /// A copy of the arrays with `m` added, to index outside the lock
    /// ([`Draft::build_index`]) and install with [`Set::insert_drafted`].
    pub(crate) fn draft_insert(&self, m: &Member<P>) -> Draft {
        let (start, last) = bounds(m);
        let at = self.starts.partition_point(|&p| p < start);
        let mut starts = Vec::with_capacity(self.starts.len() + 1);
        starts.extend_from_slice(&self.starts[..at]);
        starts.push(start);
        starts.extend_from_slice(&self.starts[at..]);
        let mut lasts = Vec::with_capacity(self.lasts.len() + 1);
        lasts.extend_from_slice(&self.lasts[..at]);
        lasts.push(last);
        lasts.extend_from_slice(&self.lasts[at..]);
        self.draft(starts, lasts)
    }

    /// A draft of this set with these arrays, not yet indexed.
    fn draft(&self, starts: Vec<u64>, lasts: Vec<u64>) -> Draft {
        Draft {
            generation: self.generation,
            starts,
            lasts,
            indexed: self.indexed,
            index: None,
        }
    }

    /// Takes the arrays and index of `draft`, leaving the replaced ones in
    /// it. The members must already match the draft's arrays.
    fn adopt(&mut self, draft: &mut Draft) {
        core::mem::swap(&mut self.starts, &mut draft.starts);
        core::mem::swap(&mut self.lasts, &mut draft.lasts);
        core::mem::swap(&mut self.index, &mut draft.index);
        self.generation += 1;
    }

    /// A copy of the arrays without member `at`, as [`Set::draft_insert`]
    /// for [`Set::remove_drafted`].
    pub(crate) fn draft_remove(&self, at: usize) -> Draft {
        let mut starts = self.starts.clone();
        let mut lasts = self.lasts.clone();
        starts.remove(at);
        lasts.remove(at);
        self.draft(starts, lasts)
    }

    /// Removes member `at`, using `draft` (made by [`Set::draft_remove`]
    /// for the same member) if nothing changed since it was made, else as
    /// [`Set::remove`] does. Returns the member and what it replaced, for
    /// the caller to free after dropping the lock.
    pub(crate) fn remove_drafted(
        &mut self,
        at: usize,
        mut draft: Draft,
    ) -> (Arc<Member<P>>, Draft) {
        if draft.generation != self.generation {
            return (self.remove(at), draft);
        }
        let m = self.members.remove(at);
        self.adopt(&mut draft);
        (m, draft)
    }

    /// Adds `m`, using `draft` (made by [`Set::draft_insert`] for `m`) if
    /// nothing changed since it was made, else as [`Set::insert`] does.
    /// Returns what it replaced, for the caller to free after dropping the
    /// lock.
    pub(crate) fn insert_drafted(&mut self, m: Arc<Member<P>>, mut draft: Draft) -> Draft {
        if draft.generation != self.generation {
            self.insert(m);
            return draft;
        }
        let at = self.starts.partition_point(|&p| p < m.start());
        self.members.insert(at, m);
        self.adopt(&mut draft);
        draft
    }

    /// The index of the member holding `phys`.
    #[inline]
    pub(crate) fn index_of(&self, phys: PhysAddr) -> Option<usize> {
        if let Some(g) = &self.index {
            return g.find(phys.0, &self.starts, &self.lasts);
        }
        let at = self
            .starts
            .partition_point(|&p| p <= phys.0)
            .checked_sub(1)?;
        (phys.0 <= self.lasts[at]).then_some(at)
    }
}

impl<P: Policy> core::ops::Deref for Set<P> {
    type Target = [Arc<Member<P>>];
    fn deref(&self) -> &Self::Target {
        &self.members
    }
}

/// The member of `set` holding `phys`.
pub(crate) fn find<P: Policy>(set: &Set<P>, phys: PhysAddr) -> Option<&Arc<Member<P>>> {
    set.index_of(phys).map(|i| &set.members[i])
}
