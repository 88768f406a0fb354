//! Allocation edge cases where a policy's shortcuts could answer wrongly:
//! a nearly full pool whose free slots cannot hold a request must fail
//! with `PoolFull` (and its exact counts), and the same request must be
//! placed correctly once room is made. The default policy keeps a summary
//! of each segment's longest free run and trusts it, when it is marked
//! exact, to skip reading the segment's bits; these cases are built so
//! that a summary trusted when it should not be leads to a wrong answer.
//! Every test runs under both policies.

#[macro_use]
mod policies;

use swiotlb::{Device, Direction, DmaMask, Error, Mapping, Policy, Pool, PoolConfig};

both_policies!(
    free_slots_in_different_segments_hold_no_request_across_them,
    free_run_split_by_a_boundary_holds_no_request_across_it,
);

const SLOT: usize = 512;
const NSLOTS: u32 = 128;

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// A pool of 128 slots of 512 bytes in one area, with `segment` slots per
/// segment.
fn pool<P: Policy>(segment: u32) -> Pool<P> {
    let config = PoolConfig::DEFAULT
        .with_slot_shift(9)
        .with_segment(segment)
        .with_nareas(1)
        .with_page_shift(12);
    Pool::new_heap(NSLOTS as usize * SLOT, config).unwrap()
}

/// The pool slot a mapping's first byte is in.
fn slot_of<P: Policy>(pool: &Pool<P>, m: &Mapping<'_, Vec<u8>, P>) -> u32 {
    ((m.bounce_phys().unwrap().0 - pool.start().0) / SLOT as u64) as u32
}

/// Fills every slot with a one-slot mapping, returned by slot.
fn fill<'p, P: Policy>(pool: &'p Pool<P>, dev: &Device) -> Vec<Mapping<'p, Vec<u8>, P>> {
    let mut maps: Vec<Mapping<'p, Vec<u8>, P>> = (0..NSLOTS)
        .map(|i| {
            pool.map(dev, vec![i as u8; SLOT], Direction::ToDevice)
                .unwrap()
        })
        .collect();
    maps.sort_by_key(|m| slot_of(pool, m));
    let slots: Vec<u32> = maps.iter().map(|m| slot_of(pool, m)).collect();
    assert_eq!(
        slots,
        (0..NSLOTS).collect::<Vec<_>>(),
        "one mapping per slot"
    );
    assert_eq!(pool.stats().io_tlb_used, NSLOTS as u64);
    maps
}

/// Gives back the one-slot mappings at `slots` (in `maps`, by slot).
fn unmap_slots<P: Policy>(maps: &mut [Option<Mapping<'_, Vec<u8>, P>>], slots: &[u32]) {
    for &s in slots {
        let m = maps[s as usize].take().expect("mapped");
        assert_eq!(m.unmap(), vec![s as u8; SLOT]);
    }
}

/// Segments of 2 slots, all full, then one slot freed in each of segments
/// 0 and 1: two slots are free but no segment holds two, so a two-slot
/// request fails with `PoolFull` (2 requested, 2 free, largest run 1).
/// Every other segment's summary is left high by the fill (a map that
/// takes a segment's last run does not rescan it), so only reading the
/// bits tells that they are full. Once the other slot of segment 0 is
/// free, the request takes segment 0.
fn free_slots_in_different_segments_hold_no_request_across_them<P: Policy>() {
    let pool = pool::<P>(2);
    let dev = forced();
    let mut maps: Vec<Option<_>> = fill(&pool, &dev).into_iter().map(Some).collect();
    unmap_slots(&mut maps, &[0, 2]);
    let f = pool
        .map(&dev, vec![7u8; 2 * SLOT], Direction::ToDevice)
        .unwrap_err();
    assert_eq!(
        f.error,
        Error::PoolFull {
            requested: 2,
            free: 2,
            largest_run: 1
        }
    );
    unmap_slots(&mut maps, &[1]);
    let m = pool
        .map(&dev, vec![7u8; 2 * SLOT], Direction::ToDevice)
        .unwrap();
    assert_eq!(slot_of(&pool, &m), 0);
    drop(m);
    drop(maps);
    assert_eq!(pool.stats().io_tlb_used, 0);
}

/// One segment of 128 slots and a device whose segment boundary is a page
/// (8 slots of 512 bytes): no mapping may cross a multiple of 8 slots. All
/// slots are mapped, then slots 4 to 11 are freed: a free run of 8, exactly
/// summarised, that a five-slot request (2560 bytes, under a page, so no
/// page alignment) cannot use, since every five-slot start in it crosses
/// slot 8. The request fails with `PoolFull`; once slots 12 to 15 are free
/// too it takes slot 8, the first start that crosses no boundary.
fn free_run_split_by_a_boundary_holds_no_request_across_it<P: Policy>() {
    let pool = pool::<P>(NSLOTS);
    let filler = forced();
    let dev = forced().with_seg_boundary_mask(0xfff);
    let mut maps: Vec<Option<_>> = fill(&pool, &filler).into_iter().map(Some).collect();
    unmap_slots(&mut maps, &(4..12).collect::<Vec<_>>());
    let f = pool
        .map(&dev, vec![9u8; 5 * SLOT], Direction::ToDevice)
        .unwrap_err();
    assert_eq!(
        f.error,
        Error::PoolFull {
            requested: 5,
            free: 8,
            largest_run: 8
        }
    );
    unmap_slots(&mut maps, &(12..16).collect::<Vec<_>>());
    let m = pool
        .map(&dev, vec![9u8; 5 * SLOT], Direction::ToDevice)
        .unwrap();
    assert_eq!(slot_of(&pool, &m), 8);
    drop(m);
    drop(maps);
    assert_eq!(pool.stats().io_tlb_used, 0);
}
