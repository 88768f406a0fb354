//! Memory another process can map: a memfd with its size sealed, mapped
//! shared here, and a growth provider that hands out such regions.
//!
//! The only module of this crate that touches raw memory.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use swiotlb::provider::{Hook, Provider, ProviderError, Region};
use swiotlb::PhysAddr;

/// Memory in a memfd: created zeroed, its size sealed (it can neither
/// shrink nor grow, so a process that maps it can never fault on a
/// truncated file), mapped shared and writable in this process.
///
/// Give [`fd`](SharedMemory::fd) to another process (over a unix socket,
/// as vhost-user does) and both see the same bytes.
///
/// # Invariants
/// `ptr` is the start of a `MAP_SHARED`, readable and writable mapping of
/// the first `len` bytes of `fd`, which is `len` bytes long and sealed
/// against shrinking; the mapping lives until `drop` unmaps it.
pub struct SharedMemory {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing
// in it is tied to the thread that made it.
unsafe impl Send for SharedMemory {}
// SAFETY: `&SharedMemory` gives only the address and the descriptor; who
// reads or writes the bytes, and how, is up to the code given the address.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// `len` zeroed bytes (rounded up to the page size) in a new memfd
    /// called `name` (shown in `/proc/PID/fd` and `/proc/PID/maps`).
    ///
    /// # Errors
    /// What `memfd_create`, `ftruncate`, sealing or `mmap` returned; an
    /// `InvalidInput` error for a length of zero or one too large.
    pub fn new(name: &str, len: usize) -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = len
            .checked_next_multiple_of(page)
            .filter(|&l| l != 0)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "swiotlb: bad shared length")
            })?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        // SAFETY: a new mapping at an address the kernel picks (no hint),
        // so it replaces nothing; the file is `len` bytes long and sealed
        // against shrinking, so every page of the mapping stays backed.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("swiotlb: mmap returned a null mapping"))?;
        // INVARIANT: mapped above, shared and writable, `len` bytes of `fd`.
        Ok(Self { fd, ptr, len })
    }

    /// The memfd, to hand to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The first byte of the mapping in this process.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a shared memory holds at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The region as the rest of swiotlb sees it, at identity: its
    /// "physical" address is its address in this process.
    pub fn region(&self) -> Region {
        Region {
            cpu: self.ptr,
            phys: PhysAddr(self.ptr.as_ptr() as usize as u64),
            len: self.len,
        }
    }

    /// Keeps the memory mapped, and its memfd open, for the rest of the
    /// process, and gives its bytes as a plain slice: for buffers a
    /// program shares with a device for good (the device is told of the
    /// region with the `RegionInfo`, at identity).
    pub fn leak(self) -> (&'static mut [u8], RegionInfo) {
        let info = self.info(self.ptr.as_ptr() as usize as u64);
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the mapping is `len` readable and writable bytes (the
        // invariant) that nothing unmaps any more (`drop` never runs) and
        // that no other Rust reference points into (this value only ever
        // handed out the address), so an exclusive `'static` slice over it
        // is sound. The device process may write it: like every DMA buffer,
        // its bytes are whatever was last written.
        let bytes = unsafe { std::slice::from_raw_parts_mut(this.ptr.as_ptr(), this.len) };
        (bytes, info)
    }

    /// [`leak`](Self::leak)s the memory and cuts it into buffers of
    /// `size` bytes (the last one shorter if `size` does not divide the
    /// length; none for a `size` of 0), each a [`SharedBuffer`] a driver
    /// can hand to the safe mapping API: for drivers whose buffers live in
    /// memory the device is given too.
    pub fn into_buffers(self, size: usize) -> (Vec<SharedBuffer>, RegionInfo) {
        let (bytes, info) = self.leak();
        if size == 0 {
            return (Vec::new(), info);
        }
        let bufs = bytes
            .chunks_mut(size)
            .map(|chunk| SharedBuffer {
                len: chunk.len(),
                chunk,
            })
            .collect();
        (bufs, info)
    }

    /// What a device must be told to map this memory, the device seeing it
    /// at `dma`.
    pub fn info(&self, dma: u64) -> RegionInfo {
        RegionInfo {
            dma,
            cpu: self.ptr.as_ptr() as usize as u64,
            len: self.len as u64,
            fd: self.fd.as_raw_fd(),
            fd_offset: 0,
        }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new` (the
        // invariant), unmapped once, here; whoever was given the address
        // promised to stop using it before dropping this value (the
        // contract of `Provider::free`, or the owner's own).
        let unmapped = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert!(
            unmapped.is_ok(),
            "swiotlb: munmap of a shared region failed"
        );
        // The descriptor closes when `fd` drops.
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("fd", &self.fd.as_raw_fd())
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

/// A buffer in leaked shared memory ([`SharedMemory::into_buffers`]): a
/// fixed chunk of which the first [`len`](SharedBuffer::len) bytes are the
/// buffer, like a `Vec` that never reallocates. Its bytes do not move when
/// the value moves, so it is a [`DmaBuffer`](swiotlb::DmaBuffer).
#[derive(Debug)]
pub struct SharedBuffer {
    chunk: &'static mut [u8],
    len: usize,
}

impl SharedBuffer {
    /// Bytes in the chunk.
    pub fn capacity(&self) -> usize {
        self.chunk.len()
    }

    /// Makes the buffer `len` bytes long, keeping what its chunk holds.
    ///
    /// # Panics
    /// If `len` exceeds the [`capacity`](Self::capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.chunk.len(),
            "swiotlb: a shared buffer of {} bytes cannot be {len} long",
            self.chunk.len()
        );
        self.len = len;
    }
}

impl std::ops::Deref for SharedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.chunk[..self.len]
    }
}

impl std::ops::DerefMut for SharedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.chunk[..self.len]
    }
}

impl AsMut<[u8]> for SharedBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

// SAFETY: the parts are the chunk's address and the buffer's length, with
// the chunk's length as the rest: the `len` bytes at the address stay valid
// and in place while the buffer is taken apart (the chunk is leaked shared
// memory, never unmapped, and a `&'static mut` no one else holds), and the
// rest owns none of them.
unsafe impl swiotlb::DmaBuffer for SharedBuffer {
    type Rest = usize;

    fn into_raw_parts(self) -> (NonNull<u8>, usize, usize) {
        let cap = self.chunk.len();
        let ptr = NonNull::from(&mut *self.chunk).cast::<u8>();
        (ptr, self.len, cap)
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, cap: usize) -> Self {
        // SAFETY: `ptr` and `cap` are the address and length of the
        // `&'static mut` chunk taken apart by `into_raw_parts` (the
        // caller's obligation), and nothing uses it through `ptr` any more,
        // so the exclusive slice may be made again.
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), cap) };
        Self { chunk, len }
    }
}

/// What a device in another process must be told of one region of shared
/// memory: the vhost-user memory-table entry (`VhostUserMemoryRegion`).
///
/// `fd` is borrowed from whoever owns the memory ([`SharedMemory`], a
/// [`MemfdProvider`]) and is valid only while the region is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The device address of the region's first byte.
    pub dma: u64,
    /// Its address in this process.
    pub cpu: u64,
    /// Length in bytes.
    pub len: u64,
    /// The memfd holding it.
    pub fd: RawFd,
    /// Offset of the region's first byte in `fd`.
    pub fd_offset: u64,
}

impl RegionInfo {
    /// Whether `len` bytes at device address `dma` lie inside the region.
    pub fn contains(&self, dma: u64, len: u64) -> bool {
        dma >= self.dma
            && dma
                .checked_add(len)
                .is_some_and(|end| end <= self.dma.saturating_add(self.len))
    }
}

/// Someone who must know every region a [`MemfdProvider`] hands out before
/// it is used, and every removal before the memory goes: a vhost-user
/// transport adds the region to its device's memory table
/// (`ADD_MEM_REG`) and removes it (`REM_MEM_REG`).
pub trait RegionListener: Send + Sync {
    /// A region is about to be used. An error refuses it: the provider
    /// frees it and the growth that asked for it fails.
    ///
    /// # Errors
    /// Whatever kept the listener from taking the region.
    fn region_added(&self, region: &RegionInfo) -> io::Result<()>;

    /// A region is about to be unmapped; nothing of it is in use.
    fn region_removed(&self, region: &RegionInfo);
}

/// A growth [`Provider`] whose every region is a fresh [`SharedMemory`]:
/// give it to [`Growth::new`](swiotlb::Growth::new) and every pool of the
/// tlb can be mapped by another process. Addresses are identity (a
/// region's physical address is its address here), so a region lies below
/// a limit only where the kernel placed the mapping below it: give it to
/// tlbs without a low limit.
///
/// Listeners ([`subscribe`](MemfdProvider::subscribe)) hear of each region
/// before [`Provider::alloc`] returns it, so before any address in it is
/// handed to a device, and of its removal before it is unmapped.
#[derive(Debug)]
pub struct MemfdProvider {
    name: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Live regions by their address in this process.
    live: BTreeMap<usize, SharedMemory>,
    listeners: Vec<Weak<dyn RegionListener>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("live", &self.live.len())
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl State {
    /// Tells every live listener of a new region; on a refusal, takes it
    /// back from those that took it.
    fn announce(&mut self, info: &RegionInfo) -> io::Result<()> {
        self.listeners.retain(|l| l.strong_count() > 0);
        let live: Vec<_> = self.listeners.iter().filter_map(Weak::upgrade).collect();
        for (i, l) in live.iter().enumerate() {
            if let Err(e) = l.region_added(info) {
                for taken in &live[..i] {
                    taken.region_removed(info);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl MemfdProvider {
    /// A provider naming its memfds `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live regions, in address order (identity: device address =
    /// address here).
    pub fn regions(&self) -> Vec<RegionInfo> {
        let st = self.state();
        st.live
            .values()
            .map(|m| m.info(m.region().phys.0))
            .collect()
    }

    /// Adds a listener: it is told of every live region now (a refusal
    /// leaves it unsubscribed and is returned), then of every region added
    /// or removed later, until it is dropped.
    ///
    /// # Errors
    /// The first error of [`RegionListener::region_added`] for a live
    /// region.
    pub fn subscribe(&self, listener: &Arc<dyn RegionListener>) -> io::Result<()> {
        self.subscribe_knowing(listener, &[])
    }

    /// As [`subscribe`](Self::subscribe) for a listener that already holds
    /// the regions `known` (a device given them in its first memory
    /// table, from [`regions`](Self::regions)): it is told now only of
    /// live regions not among them, so nothing added in between is
    /// missed and nothing is added twice.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub fn subscribe_knowing(
        &self,
        listener: &Arc<dyn RegionListener>,
        known: &[RegionInfo],
    ) -> io::Result<()> {
        let mut st = self.state();
        let infos: Vec<_> = st
            .live
            .values()
            .map(|m| m.info(m.region().phys.0))
            .filter(|i| !known.contains(i))
            .collect();
        for (i, info) in infos.iter().enumerate() {
            if let Err(e) = listener.region_added(info) {
                for taken in &infos[..i] {
                    listener.region_removed(taken);
                }
                return Err(e);
            }
        }
        st.listeners.push(Arc::downgrade(listener));
        Ok(())
    }

    /// Bytes held in live regions.
    pub fn bytes_live(&self) -> usize {
        self.state().live.values().map(SharedMemory::len).sum()
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

// SAFETY: a region is a fresh `SharedMemory`: valid for reads and writes of
// its (page-rounded, so at least `len`) bytes until `free` drops it;
// contiguous in the identity "physical" space (one mapping is one range of
// addresses); below the limit (checked before it is returned); and no other
// code of this process is given its address, so it is the caller's alone
// (the device process that maps the memfd is the device the pool serves).
unsafe impl Provider for MemfdProvider {
    /// A memfd and a mapping need no sleeping in a kernel's sense; the
    /// listeners are told as in `alloc`.
    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.alloc(len, below)
    }

    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        let no_memory = ProviderError::NoMemory { len, below };
        let mem = SharedMemory::new(&self.name, len).map_err(|_| no_memory)?;
        let region = mem.region();
        if !region.is_below(below) {
            return Err(no_memory);
        }
        let info = mem.info(region.phys.0);
        let mut st = self.state();
        st.announce(&info)
            .map_err(|e| ProviderError::hook(Hook::Share, &region, errno(&e)))?;
        st.live.insert(region.cpu.as_ptr() as usize, mem);
        Ok(region)
    }

    unsafe fn free(&self, region: Region) {
        let mut st = self.state();
        let Some(mem) = st.live.remove(&(region.cpu.as_ptr() as usize)) else {
            debug_assert!(false, "swiotlb: a region freed twice or not ours");
            return;
        };
        let info = mem.info(region.phys.0);
        st.listeners.retain(|l| l.strong_count() > 0);
        for l in st.listeners.iter().filter_map(Weak::upgrade) {
            l.region_removed(&info);
        }
        drop(st);
        // Unmapped and closed here: the caller guarantees nothing uses it.
        drop(mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn shared_memory_is_zeroed_sealed_and_seen_through_its_fd() {
        let m = SharedMemory::new("swiotlb-test", 5000).unwrap();
        assert_eq!(m.len() % rustix::param::page_size(), 0);
        assert!(m.len() >= 5000);
        // SAFETY: the mapping holds `len` bytes and is ours alone here.
        let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr().as_ptr(), m.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[..4].copy_from_slice(b"swio");
        // A second mapping of the same fd sees the same bytes.
        let f = std::fs::File::from(m.fd().try_clone_to_owned().unwrap());
        let mut head = [0u8; 4];
        std::os::unix::fs::FileExt::read_at(&f, &mut head, 0).unwrap();
        assert_eq!(&head, b"swio");
        // The size is sealed.
        assert!(f.set_len(m.len() as u64 * 2).is_err());
        assert!(f.set_len(1).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn leaked_memory_stays_mapped_with_its_fd_open() {
        let m = SharedMemory::new("swiotlb-test", 4096).unwrap();
        let fd = m.fd().as_raw_fd();
        let (bytes, info) = m.leak();
        bytes[4095] = 7;
        assert_eq!(info.fd, fd);
        assert_eq!(info.cpu, bytes.as_ptr() as u64);
        assert_eq!(info.dma, info.cpu);
        // The descriptor is still open: fstat works.
        // SAFETY: `fd` is open (leaked above) for the life of the process.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        assert_eq!(rustix::fs::fstat(borrowed).unwrap().st_size, 4096);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn shared_buffers_cut_the_memory_and_survive_being_taken_apart() {
        use swiotlb::DmaBuffer as _;
        let m = SharedMemory::new("swiotlb-test", 3 * 4096).unwrap();
        let (mut bufs, info) = m.into_buffers(5000);
        assert_eq!(bufs.len(), 3);
        assert_eq!(bufs[0].capacity(), 5000);
        assert_eq!(bufs[2].capacity(), 3 * 4096 - 2 * 5000);
        let mut b = bufs.swap_remove(1);
        assert_eq!(b.as_ptr() as u64, info.cpu + 5000);
        b.set_len(10);
        b.copy_from_slice(b"0123456789");
        let (ptr, len, rest) = b.into_raw_parts();
        assert_eq!(
            (ptr.as_ptr() as u64, len, rest),
            (info.cpu + 5000, 10, 5000)
        );
        // SAFETY: the parts of one `into_raw_parts`, used once.
        let mut b = unsafe { SharedBuffer::from_raw_parts(ptr, len, rest) };
        assert_eq!(&b[..], b"0123456789");
        b.set_len(5000);
        assert_eq!(b.len(), 5000);
    }

    #[test]
    #[should_panic(expected = "cannot be 5001 long")]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_shared_buffer_does_not_grow_past_its_chunk() {
        let (mut bufs, _) = SharedMemory::new("swiotlb-test", 4096)
            .unwrap()
            .into_buffers(5000);
        bufs[0].set_len(4096);
        let mut b = SharedMemory::new("swiotlb-test", 5000)
            .unwrap()
            .into_buffers(5000)
            .0
            .remove(0);
        b.set_len(5001);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_zero_length_is_refused() {
        let e = SharedMemory::new("swiotlb-test", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[derive(Default)]
    struct Counting {
        added: AtomicUsize,
        removed: AtomicUsize,
        refuse: bool,
    }

    impl RegionListener for Counting {
        fn region_added(&self, _: &RegionInfo) -> io::Result<()> {
            if self.refuse {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.added.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn region_removed(&self, _: &RegionInfo) {
            self.removed.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn listeners_hear_of_live_regions_new_ones_and_removals() {
        let p = MemfdProvider::new("swiotlb-test");
        let r1 = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        let c = Arc::new(Counting::default());
        let l: Arc<dyn RegionListener> = c.clone();
        p.subscribe(&l).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 1);
        // One that knows the live region hears only of new ones.
        let k = Arc::new(Counting::default());
        let lk: Arc<dyn RegionListener> = k.clone();
        p.subscribe_knowing(&lk, &p.regions()).unwrap();
        assert_eq!(k.added.load(Ordering::SeqCst), 0);
        let r2 = p.alloc(8192, PhysAddr(u64::MAX)).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 2);
        assert_eq!(k.added.load(Ordering::SeqCst), 1);
        assert_eq!(p.regions().len(), 2);
        assert_eq!(p.bytes_live(), r1.len + r2.len);
        // SAFETY: both from `alloc` above, unused, freed once.
        unsafe { p.free(r1) };
        // SAFETY: as for `r1`.
        unsafe { p.free(r2) };
        assert_eq!(c.removed.load(Ordering::SeqCst), 2);
        assert_eq!(k.removed.load(Ordering::SeqCst), 2);
        assert!(p.regions().is_empty());
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_refusing_listener_fails_the_allocation_and_nothing_is_kept() {
        let p = MemfdProvider::new("swiotlb-test");
        let c = Arc::new(Counting {
            refuse: true,
            ..Counting::default()
        });
        let l: Arc<dyn RegionListener> = c.clone();
        p.subscribe(&l).unwrap();
        let e = p.alloc(4096, PhysAddr(u64::MAX)).unwrap_err();
        assert!(
            matches!(
                e,
                ProviderError::HookFailed {
                    hook: Hook::Share,
                    code: 28,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(p.regions().is_empty());
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_region_above_the_limit_is_refused() {
        let p = MemfdProvider::new("swiotlb-test");
        let e = p.alloc(4096, PhysAddr(4096)).unwrap_err();
        assert!(matches!(e, ProviderError::NoMemory { .. }));
        assert!(p.regions().is_empty());
    }
}
