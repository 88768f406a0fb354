//! A Xen-like platform: a guest's physically contiguous memory sits on
//! machine frames that are not contiguous, so reachability must be judged
//! on the physical address too (Ian Campbell, "swiotlb cleanup", 2009:
//! `dma_capable` needs both addresses).

use swiotlb::translate::{Limits, Translate};
use swiotlb::{Device, Direction, DmaAddr, DmaMask, PhysAddr, Pool, PoolConfig};

const FRAME: u64 = 4096;

/// Guest frame `i` lives at machine frame `frames[i]`; the pool's frames,
/// given by the platform as machine-contiguous (what swiotlb-xen arranges
/// with a memory exchange), map one to one.
struct XenLike {
    /// Guest-physical base of the "ordinary" memory this table covers.
    base: u64,
    frames: Vec<u64>,
    /// Guest-physical range of the pool, identity-mapped to machine.
    pool: (u64, u64),
}

impl XenLike {
    fn machine(&self, phys: u64) -> u64 {
        if (self.pool.0..self.pool.1).contains(&phys) {
            return phys;
        }
        let off = phys - self.base;
        self.frames[(off / FRAME) as usize] * FRAME + off % FRAME
    }
}

impl Translate for XenLike {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(self.machine(phys.0))
    }

    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        if (self.pool.0..self.pool.1).contains(&dma.0) {
            return PhysAddr(dma.0);
        }
        let frame = dma.0 / FRAME;
        let i = self
            .frames
            .iter()
            .position(|&f| f == frame)
            .expect("known frame");
        PhysAddr(self.base + i as u64 * FRAME + dma.0 % FRAME)
    }

    /// Reachable only if every guest frame of the range is machine-contiguous
    /// with the first: a judgement only the physical address allows.
    fn dma_capable(&self, limits: &Limits, phys: PhysAddr, dma: DmaAddr, size: usize) -> bool {
        let first = phys.0 / FRAME;
        let last = (phys.0 + size as u64 - 1) / FRAME;
        let contiguous = (first..=last)
            .all(|f| self.machine(f * FRAME) == self.machine(first * FRAME) + (f - first) * FRAME);
        contiguous && dma.0 + size as u64 - 1 <= limits.highest()
    }
}

#[test]
fn straddling_buffer_bounces_and_one_frame_buffer_does_not() {
    let pool: Pool = Pool::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let start = pool.start().0;
    let base = 0x4000_0000;
    // Guest frames 0,1,2,3 on machine frames 10, 11, 50, 51: 1 -> 2 is a
    // discontinuity.
    let xen = XenLike {
        base,
        frames: vec![10, 11, 50, 51],
        pool: (start, start + pool.len() as u64),
    };
    let dev = Device::new(DmaMask::BITS_64).with_translate(&xen);

    let mut orig = vec![0u8; 4 * FRAME as usize];
    for (i, b) in orig.iter_mut().enumerate() {
        *b = i as u8;
    }
    // Within frames 0-1 (machine 10-11, contiguous): direct.
    let inside = PhysAddr(base + 100);
    let cpu = orig.as_mut_ptr().wrapping_add(100);
    // SAFETY: `cpu` is byte 100 of `orig`, valid for 5000 more bytes;
    // `orig` outlives the mappings and is not touched while mapped.
    let dma = unsafe { pool.map_raw(&dev, inside, cpu, 5000, Direction::ToDevice) }.unwrap();
    assert_eq!(dma, DmaAddr(10 * FRAME + 100));
    assert_eq!(pool.stats().direct_maps, 1);

    // Straddling frames 1-2 (machine 11 then 50): the device address alone
    // (11 * 4096 + 4000) looks fine, but the bytes are not contiguous on the
    // machine, so it must bounce.
    let straddle = PhysAddr(base + FRAME + 4000);
    let cpu = orig.as_mut_ptr().wrapping_add(FRAME as usize + 4000);
    // SAFETY: `cpu` is inside `orig`, valid for 200 more bytes; `orig`
    // outlives the mappings and is not touched while mapped.
    let dma2 = unsafe { pool.map_raw(&dev, straddle, cpu, 200, Direction::ToDevice) }.unwrap();
    assert!(
        pool.contains(xen.dma_to_phys(dma2)),
        "bounced into the pool"
    );
    assert_eq!(pool.stats().io_tlb_used, 1);
    // The bounce holds the original's bytes.
    let off = (xen.dma_to_phys(dma2) - pool.start()) as usize;
    let at = pool.vaddr().as_ptr().wrapping_add(off);
    // SAFETY: `off` is inside the pool (checked above), and the mapping is
    // live for 200 bytes from there; `at` comes from the pool's own
    // pointer, not an integer, so provenance is kept.
    let seen = unsafe { std::slice::from_raw_parts(at, 200) };
    assert_eq!(seen, &orig[FRAME as usize + 4000..FRAME as usize + 4200]);
    // SAFETY: the mapping is live and `orig` is still valid.
    let r = unsafe { pool.unmap_raw(&dev, dma2, 200, Direction::ToDevice, swiotlb::Attrs::NONE) };
    r.unwrap();
    // SAFETY: the mapping is live and `orig` is still valid.
    let r = unsafe { pool.unmap_raw(&dev, dma, 5000, Direction::ToDevice, swiotlb::Attrs::NONE) };
    r.unwrap();
    assert_eq!(pool.stats().io_tlb_used, 0);
}
