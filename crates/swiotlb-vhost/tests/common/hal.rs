//! A test-only virtio-drivers `Hal` whose every DMA byte lies in shared
//! memory registered with the device: rings from `dma_alloc` in arena 0,
//! and `share` bouncing into the current bounce arena. Fakes really copy:
//! `share` copies into the bounce area and `unshare` copies back, so a
//! forgotten sync shows up as wrong data. Addresses are identity (DMA
//! address = address in this process), as `SharedMemory::region` gives.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use swiotlb_host::{RegionInfo, SharedMemory};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Granule of bounce allocations.
const GRANULE: usize = 64;

struct Arena {
    mem: SharedMemory,
    /// Allocations by offset: length.
    used: BTreeMap<usize, usize>,
    /// Shares bounced here.
    shares: u64,
}

impl Arena {
    fn base(&self) -> u64 {
        self.mem.as_ptr().as_ptr() as u64
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.base() && addr < self.base() + self.mem.len() as u64
    }

    /// First fit of `len` bytes aligned to `align`.
    fn alloc(&mut self, len: usize, align: usize) -> Option<usize> {
        let mut at = 0usize;
        for (&off, &l) in &self.used {
            if off >= at + len {
                break;
            }
            at = (off + l).next_multiple_of(align);
        }
        if at + len > self.mem.len() {
            return None;
        }
        self.used.insert(at, len);
        Some(at)
    }

    fn free(&mut self, off: usize) {
        assert!(
            self.used.remove(&off).is_some(),
            "test hal: free of {off:#x}, never allocated"
        );
    }
}

struct State {
    arenas: Vec<Arena>,
    bounce: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The Hal. Its memory is set up with [`TestHal::reset`].
pub struct TestHal;

impl TestHal {
    /// Forgets every arena and starts with one of `len` bytes; returns its
    /// region (identity DMA address).
    pub fn reset(len: usize) -> RegionInfo {
        let mem = SharedMemory::new("swiotlb-vhost-test", len).expect("test hal: memfd");
        let info = mem.info(mem.as_ptr().as_ptr() as u64);
        *state() = Some(State {
            arenas: vec![Arena {
                mem,
                used: BTreeMap::new(),
                shares: 0,
            }],
            bounce: 0,
        });
        info
    }

    /// Adds an arena of `len` bytes; returns its index and region.
    pub fn add_arena(len: usize) -> (usize, RegionInfo) {
        let mem = SharedMemory::new("swiotlb-vhost-test-2", len).expect("test hal: memfd");
        let info = mem.info(mem.as_ptr().as_ptr() as u64);
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        st.arenas.push(Arena {
            mem,
            used: BTreeMap::new(),
            shares: 0,
        });
        (st.arenas.len() - 1, info)
    }

    /// Drops the last arena, which must be empty and no longer bounced to.
    pub fn remove_last_arena() {
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        let a = st.arenas.pop().expect("test hal: no arena");
        assert!(a.used.is_empty(), "test hal: removing an arena in use");
        assert!(st.bounce < st.arenas.len());
    }

    /// Makes `share` bounce into arena `i`.
    pub fn bounce_to(i: usize) {
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        assert!(i < st.arenas.len());
        st.bounce = i;
    }

    /// Shares bounced into arena `i` so far.
    pub fn shares_in(i: usize) -> u64 {
        state().as_ref().expect("test hal: reset first").arenas[i].shares
    }
}

fn arena_of(st: &mut State, addr: u64) -> &mut Arena {
    st.arenas
        .iter_mut()
        .find(|a| a.contains(addr))
        .unwrap_or_else(|| panic!("test hal: {addr:#x} is in no arena"))
}

// SAFETY: `dma_alloc` returns page-aligned, zeroed, exclusively allocated
// memory of the arena (a live shared mapping) until `dma_dealloc`; `share`
// returns a device address of a private bounce area of the buffer's length,
// valid until `unshare`, which copies back and frees it; identity
// addresses, so the device address is the address of the bytes.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        let a = &mut st.arenas[0];
        let Some(off) = a.alloc(pages * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: `off + pages * PAGE_SIZE` lies inside the arena's mapping
        // (checked by `alloc`).
        let ptr = unsafe { a.mem.as_ptr().add(off) };
        // SAFETY: the range was just allocated to nobody else, inside the
        // writable mapping.
        unsafe { ptr.write_bytes(0, pages * PAGE_SIZE) };
        (ptr.as_ptr() as u64, ptr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        let a = arena_of(st, paddr);
        let off = (paddr - a.base()) as usize;
        a.free(off);
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        panic!("test hal: a vhost-user transport has no MMIO")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        let i = st.bounce;
        let a = &mut st.arenas[i];
        let off = a
            .alloc(len.max(1).next_multiple_of(GRANULE), GRANULE)
            .expect("test hal: bounce arena full");
        a.shares += 1;
        // SAFETY: `off + len` lies inside the arena's mapping (`alloc`).
        let dst = unsafe { a.mem.as_ptr().add(off) };
        // Always copy in, whatever the direction: Linux swiotlb does too,
        // so a device that writes less than the buffer leaks no stale
        // bounce bytes.
        // SAFETY: the caller's buffer is valid for `len` reads; the bounce
        // area was just allocated, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(buffer.as_ptr().cast::<u8>(), dst.as_ptr(), len) };
        dst.as_ptr() as u64
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        let mut st = state();
        let st = st.as_mut().expect("test hal: reset first");
        let a = arena_of(st, paddr);
        let off = (paddr - a.base()) as usize;
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` is the identity address of the bounce area
            // `share` allocated for this buffer, `len` bytes in the mapping.
            let src = unsafe { a.mem.as_ptr().add(off) };
            // SAFETY: the caller's buffer is valid for `len` writes and is
            // not the bounce area.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), buffer.as_ptr().cast::<u8>(), len)
            };
        }
        a.free(off);
    }
}
