//! The allocator-alone hooks that `swiotlb bench` drives
//! (`Pool::alloc_request`, `Pool::alloc_free_n`): they run the policy's
//! real search and give the slots straight back, so their figures mean
//! something only if the search finds what a map would find and the pool
//! is left as it was.

use swiotlb::{Device, Direction, DmaMask, Error, PhysAddr, Policy, Pool, PoolConfig};

/// Runs a generic test under each policy.
macro_rules! both_policies {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn fast() {
                super::$name::<swiotlb::Fast>();
            }
            #[test]
            fn nextfit() {
                super::$name::<swiotlb::NextFit>();
            }
        })*
    };
}

both_policies!(alloc_free_n_finds_free_slots_and_gives_them_back);

/// With the first four slots of a 16-slot pool held by a mapping, a
/// page-sized request (two page-aligned slots) is found in free slots
/// after them, `n` times over, and every pair gives its slots back: the
/// pool's use and every slot's state are as before. A request no area can
/// hold finds nothing; one that cannot be made at all is refused as a map
/// refuses it.
fn alloc_free_n_finds_free_slots_and_gives_them_back<P: Policy>() {
    let pool = Pool::<P>::new_heap(16 * 2048, PoolConfig::default()).unwrap();
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let held = pool
        .map(&dev, vec![0u8; 8192], Direction::ToDevice)
        .unwrap();
    let used = pool.stats().io_tlb_used;
    assert_eq!(used, 4);
    let free: Vec<bool> = (0..16).map(|s| pool.slot_is_free(s)).collect();
    assert!(!free[0] && !free[1], "the mapping holds the first slots");

    let req = pool.alloc_request(&dev, PhysAddr(0x10_0000), 4096).unwrap();
    assert_eq!(req.nslots, 2);
    for n in [1, 2, 10] {
        let s = pool.alloc_free_n(&req, 0, n).expect("room for two slots");
        assert!(s % 2 == 0, "page aligned: slot {s}");
        assert!(
            free[s as usize] && free[s as usize + 1],
            "slot {s} was held"
        );
        assert_eq!(pool.stats().io_tlb_used, used, "slots not given back");
        let now: Vec<bool> = (0..16).map(|s| pool.slot_is_free(s)).collect();
        assert_eq!(now, free, "slot states changed");
    }
    let big = pool
        .alloc_request(&dev, PhysAddr(0x10_0000), 13 * 2048)
        .unwrap();
    assert_eq!(pool.alloc_free_n(&big, 0, 1), None, "12 slots free");
    assert_eq!(
        pool.alloc_request(&dev, PhysAddr(0x10_0000), 0),
        Err(Error::ZeroSize)
    );
    assert_eq!(held.unmap(), vec![0u8; 8192]);
}
