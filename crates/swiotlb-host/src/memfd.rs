//! Memory another process can map: a memfd with its size sealed, mapped
//! shared here, and a growth provider that hands out such regions.
//!
//! The only module of this crate that touches raw memory.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

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
    fd: Arc<OwnedFd>,
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
        Self::map(name, len, None)
    }

    /// As [`new`](Self::new), mapped at address `at` in this process, a
    /// page boundary: for memory that must sit right next to other memory
    /// (a test's canary beside a region shared with a device). Never
    /// replaces a mapping already there.
    ///
    /// # Errors
    /// As [`new`](Self::new); `AlreadyExists` when something is mapped in
    /// `at..at + len` (or the kernel, older than Linux 4.17, placed the
    /// mapping elsewhere); `InvalidInput` for an `at` off a page boundary.
    pub fn new_at(name: &str, len: usize, at: usize) -> io::Result<Self> {
        if at == 0 || at % rustix::param::page_size() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "swiotlb: a shared mapping's address must be a non-null page boundary",
            ));
        }
        Self::map(name, len, Some(at))
    }

    fn map(name: &str, len: usize, at: Option<usize>) -> io::Result<Self> {
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
        let (hint, flags) = match at {
            None => (std::ptr::null_mut(), MapFlags::SHARED),
            Some(at) => (
                std::ptr::without_provenance_mut::<std::ffi::c_void>(at),
                MapFlags::SHARED | MapFlags::FIXED_NOREPLACE,
            ),
        };
        // SAFETY: a new mapping where the kernel finds room: with no hint
        // anywhere, with a hint only there and only if nothing is mapped
        // there (`MAP_FIXED_NOREPLACE` fails rather than replace), so it
        // replaces nothing. The file is `len` bytes long and sealed against
        // shrinking, so every page of the mapping stays backed.
        let addr = unsafe {
            rustix::mm::mmap(hint, len, ProtFlags::READ | ProtFlags::WRITE, flags, &fd, 0)
        }?;
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("swiotlb: mmap returned a null mapping"))?;
        // INVARIANT: mapped above, shared and writable, `len` bytes of `fd`.
        let this = Self {
            fd: Arc::new(fd),
            ptr,
            len,
        };
        if at.is_some_and(|at| at != ptr.as_ptr() as usize) {
            // A kernel that took the flag as a hint; dropping unmaps it.
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "swiotlb: the shared mapping could not be placed where asked",
            ));
        }
        Ok(this)
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
            fd: self.fd.clone(),
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
pub struct SharedBuffer {
    chunk: &'static mut [u8],
    len: usize,
}

/// The address, length and capacity: not the bytes (a chunk may be
/// megabytes, and past `len` it holds whatever was there before).
impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("addr", &self.chunk.as_ptr())
            .field("len", &self.len)
            .field("capacity", &self.chunk.len())
            .finish()
    }
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
/// It holds the memfd itself (shared), not a descriptor number: a
/// `RegionInfo` kept after its memory was freed still names that memory's
/// file, never whatever file reuses the number.
#[derive(Clone, Debug)]
pub struct RegionInfo {
    /// The device address of the region's first byte.
    pub dma: u64,
    /// Its address in this process.
    pub cpu: u64,
    /// Length in bytes.
    pub len: u64,
    /// The memfd holding it.
    pub fd: Arc<OwnedFd>,
    /// Offset of the region's first byte in `fd`.
    pub fd_offset: u64,
}

/// Two descriptions are equal when they name the same bytes of the same
/// open file at the same addresses.
impl PartialEq for RegionInfo {
    fn eq(&self, other: &Self) -> bool {
        self.dma == other.dma
            && self.cpu == other.cpu
            && self.len == other.len
            && self.fd_offset == other.fd_offset
            && self.fd.as_raw_fd() == other.fd.as_raw_fd()
    }
}

impl Eq for RegionInfo {}

impl RegionInfo {
    /// Whether `len` bytes at device address `dma` lie inside the region.
    pub fn contains(&self, dma: u64, len: u64) -> bool {
        dma >= self.dma
            && dma
                .checked_add(len)
                .is_some_and(|end| end <= self.dma.saturating_add(self.len))
    }

    /// The device addresses it covers, `dma..dma + len`, or `None` if
    /// that wraps past the top of the address space.
    pub fn range(&self) -> Option<std::ops::Range<u64>> {
        Some(self.dma..self.dma.checked_add(self.len)?)
    }
}

/// Someone who must know every region a [`MemfdProvider`] hands out before
/// it is used, and every removal before the memory goes: a vhost-user
/// transport adds the region to its device's memory table
/// (`ADD_MEM_REG`) and removes it (`REM_MEM_REG`).
///
/// A listener may read the provider ([`MemfdProvider::regions`],
/// [`MemfdProvider::bytes_live`]) but must not make it allocate, free or
/// subscribe: the provider tells its listeners one change at a time.
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
/// handed to a device, and of its removal before it is unmapped, for as
/// long as their [`Subscription`] lives.
#[derive(Debug)]
pub struct MemfdProvider {
    name: String,
    /// Held while listeners are told of a change, and while one
    /// subscribes: one change at a time, each heard by every listener.
    /// `state` is never held while a listener runs, so listeners may read
    /// the provider.
    changes: Mutex<()>,
    state: Mutex<BTreeMap<usize, SharedMemory>>,
    listeners: Arc<Mutex<Listeners>>,
}

#[derive(Default)]
struct Listeners {
    next_id: u64,
    all: Vec<(u64, Arc<dyn RegionListener>)>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.all.len())
            .finish()
    }
}

/// A listener's place among a [`MemfdProvider`]'s listeners: it hears of
/// changes while this lives, and is let go (dropped by the provider) when
/// this is dropped.
#[must_use = "the listener stops hearing of new regions when the subscription is dropped"]
#[derive(Debug)]
pub struct Subscription {
    listeners: std::sync::Weak<Mutex<Listeners>>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(l) = self.listeners.upgrade() {
            lock(&l).all.retain(|(id, _)| *id != self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemfdProvider {
    /// A provider naming its memfds `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            changes: Mutex::new(()),
            state: Mutex::new(BTreeMap::new()),
            listeners: Arc::new(Mutex::new(Listeners::default())),
        }
    }

    /// The live regions, in address order (identity: device address =
    /// address here).
    pub fn regions(&self) -> Vec<RegionInfo> {
        lock(&self.state)
            .values()
            .map(|m| m.info(m.region().phys.0))
            .collect()
    }

    /// Whether `len` bytes at address `addr` (identity: device address =
    /// address here) lie in one live region: a look-up in the region map,
    /// with nothing allocated, for a device's `dma_capable`.
    pub fn holds(&self, addr: u64, len: u64) -> bool {
        let Ok(key) = usize::try_from(addr) else {
            return false;
        };
        lock(&self.state)
            .range(..=key)
            .next_back()
            .is_some_and(|(&start, m)| {
                let start = start as u64;
                addr.checked_add(len)
                    .is_some_and(|end| end <= start + m.len() as u64)
            })
    }

    /// The listeners now, to tell of a change without holding their list.
    fn listeners(&self) -> Vec<Arc<dyn RegionListener>> {
        lock(&self.listeners)
            .all
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Adds a listener: it is told of every live region now (a refusal
    /// leaves it unsubscribed and is returned), then of every region added
    /// or removed later, while the [`Subscription`] lives.
    ///
    /// # Errors
    /// The first error of [`RegionListener::region_added`] for a live
    /// region.
    pub fn subscribe(&self, listener: Arc<dyn RegionListener>) -> io::Result<Subscription> {
        self.subscribe_knowing(listener, &[])
    }

    /// As [`subscribe`](Self::subscribe) for a listener that already holds
    /// the regions `known` (a device given them in its first memory
    /// table, from [`regions`](Self::regions)): it is told now only of
    /// live regions not among them, so nothing added in between is
    /// missed and nothing is added twice. `known` may hold regions of
    /// other sources too (a device's table has them): only this
    /// provider's live regions are compared with it. A known region of
    /// this provider freed in between is not reported (the device keeps
    /// it in its table, the memfd its `RegionInfo` holds staying open).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub fn subscribe_knowing(
        &self,
        listener: Arc<dyn RegionListener>,
        known: &[RegionInfo],
    ) -> io::Result<Subscription> {
        let _one = lock(&self.changes);
        let new: Vec<_> = self
            .regions()
            .into_iter()
            .filter(|i| !known.contains(i))
            .collect();
        for (i, info) in new.iter().enumerate() {
            if let Err(e) = listener.region_added(info) {
                for taken in &new[..i] {
                    listener.region_removed(taken);
                }
                return Err(e);
            }
        }
        let mut l = lock(&self.listeners);
        let id = l.next_id;
        l.next_id += 1;
        l.all.push((id, listener));
        Ok(Subscription {
            listeners: Arc::downgrade(&self.listeners),
            id,
        })
    }

    /// Bytes held in live regions.
    pub fn bytes_live(&self) -> usize {
        lock(&self.state).values().map(SharedMemory::len).sum()
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
        let _one = lock(&self.changes);
        let listeners = self.listeners();
        for (i, l) in listeners.iter().enumerate() {
            if let Err(e) = l.region_added(&info) {
                for taken in &listeners[..i] {
                    taken.region_removed(&info);
                }
                return Err(ProviderError::hook(Hook::Share, &region, errno(&e)));
            }
        }
        lock(&self.state).insert(region.cpu.as_ptr() as usize, mem);
        Ok(region)
    }

    unsafe fn free(&self, region: Region) {
        let _one = lock(&self.changes);
        let Some(mem) = lock(&self.state).remove(&(region.cpu.as_ptr() as usize)) else {
            debug_assert!(false, "swiotlb: a region freed twice or not ours");
            return;
        };
        let info = mem.info(region.phys.0);
        for l in self.listeners() {
            l.region_removed(&info);
        }
        // Unmapped here (the memfd closes with the last `RegionInfo`): the
        // caller guarantees nothing uses it.
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
    fn new_at_maps_right_after_another_mapping_and_never_over_one() {
        let page = rustix::param::page_size();
        let first = SharedMemory::new("swiotlb-test", 4 * page).unwrap();
        let end = first.as_ptr().as_ptr() as usize + first.len();
        // Over the first mapping: refused, and the first one is untouched.
        let over = SharedMemory::new_at("swiotlb-test", page, end - page).unwrap_err();
        assert_eq!(over.kind(), io::ErrorKind::AlreadyExists, "{over}");
        assert_eq!(
            SharedMemory::new_at("swiotlb-test", page, end + 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        // Right after it, unless something else lives there already.
        match SharedMemory::new_at("swiotlb-test", page, end) {
            Ok(next) => {
                assert_eq!(next.as_ptr().as_ptr() as usize, end);
                // SAFETY: the first mapping is ours, `len` bytes, and
                // nothing else refers to its bytes.
                let a =
                    unsafe { std::slice::from_raw_parts_mut(first.as_ptr().as_ptr(), first.len()) };
                // SAFETY: likewise the second, a different mapping.
                let b = unsafe { std::slice::from_raw_parts(next.as_ptr().as_ptr(), next.len()) };
                a.fill(1);
                assert!(b.iter().all(|&x| x == 0), "two mappings, two memfds");
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}"),
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn leaked_memory_stays_mapped_with_its_fd_open() {
        let m = SharedMemory::new("swiotlb-test", 4096).unwrap();
        let fd = m.fd().as_raw_fd();
        let (bytes, info) = m.leak();
        bytes[4095] = 7;
        assert_eq!(info.fd.as_raw_fd(), fd);
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
        let _sc = p.subscribe(c.clone()).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 1);
        // One that knows the live region hears only of new ones.
        let k = Arc::new(Counting::default());
        let _sk = p.subscribe_knowing(k.clone(), &p.regions()).unwrap();
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
    fn holds_answers_for_live_regions_only() {
        let p = MemfdProvider::new("swiotlb-test");
        let r = p.alloc(8192, PhysAddr(u64::MAX)).unwrap();
        let base = r.phys.0;
        assert!(p.holds(base, 8192));
        assert!(p.holds(base + 4096, 4096));
        assert!(!p.holds(base + 4096, 4097));
        assert!(!p.holds(base - 1, 2));
        assert!(!p.holds(u64::MAX, 2));
        // SAFETY: from `alloc` above, unused, freed once.
        unsafe { p.free(r) };
        assert!(!p.holds(base, 1));
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_listener_hears_while_its_subscription_lives_and_not_after() {
        let p = MemfdProvider::new("swiotlb-test");
        let c = Arc::new(Counting::default());
        let sub = p.subscribe(c.clone()).unwrap();
        let r1 = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 1);
        // The provider holds the listener: dropping our own handle to it
        // changes nothing.
        let weak = Arc::downgrade(&c);
        drop(c);
        let r2 = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        let c = weak.upgrade().expect("held by the subscription");
        assert_eq!(c.added.load(Ordering::SeqCst), 2);
        drop(sub);
        let r3 = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 2, "unsubscribed");
        for r in [r1, r2, r3] {
            // SAFETY: from `alloc` above, unused, freed once.
            unsafe { p.free(r) };
        }
        assert_eq!(c.removed.load(Ordering::SeqCst), 0);
    }

    /// A listener that reads the provider while it is told of a change.
    struct Reading(Arc<MemfdProvider>, AtomicUsize);

    impl RegionListener for Reading {
        fn region_added(&self, _: &RegionInfo) -> io::Result<()> {
            self.1.store(self.0.regions().len(), Ordering::SeqCst);
            Ok(())
        }
        fn region_removed(&self, _: &RegionInfo) {
            self.1.store(self.0.bytes_live(), Ordering::SeqCst);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_listener_may_read_the_provider_it_listens_to() {
        let p = Arc::new(MemfdProvider::new("swiotlb-test"));
        let l = Arc::new(Reading(p.clone(), AtomicUsize::new(99)));
        let _s = p.subscribe(l.clone()).unwrap();
        let r = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        // Told before the region is live: none yet.
        assert_eq!(l.1.load(Ordering::SeqCst), 0);
        // SAFETY: from `alloc` above, unused, freed once.
        unsafe { p.free(r) };
        assert_eq!(l.1.load(Ordering::SeqCst), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_region_kept_after_its_memory_is_freed_still_names_its_own_file() {
        let p = MemfdProvider::new("swiotlb-test");
        let r = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        let kept = p.regions().remove(0);
        // SAFETY: from `alloc` above, unused, freed once.
        unsafe { p.free(r) };
        // A new file may take any free descriptor number; the kept
        // description still holds the memfd, 4096 bytes and sealed.
        let _other = tempfile_like();
        let st = rustix::fs::fstat(&*kept.fd).unwrap();
        assert_eq!(st.st_size, 4096);
        let seals = rustix::fs::fcntl_get_seals(&*kept.fd).unwrap();
        assert!(seals.contains(SealFlags::GROW));
    }

    /// A fresh descriptor, as an unrelated part of the program would open.
    fn tempfile_like() -> OwnedFd {
        rustix::fs::memfd_create("swiotlb-test-other", MemfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn subscribing_knowing_regions_of_other_sources_tells_only_of_its_own() {
        let p = MemfdProvider::new("swiotlb-test");
        let r = p.alloc(4096, PhysAddr(u64::MAX)).unwrap();
        let mut known = p.regions();
        let other = SharedMemory::new("swiotlb-test-other", 4096).unwrap();
        known.push(other.info(other.as_ptr().as_ptr() as u64));
        let c = Arc::new(Counting::default());
        let _s = p.subscribe_knowing(c.clone(), &known).unwrap();
        assert_eq!(c.added.load(Ordering::SeqCst), 0);
        assert_eq!(c.removed.load(Ordering::SeqCst), 0);
        // SAFETY: from `alloc` above, unused, freed once.
        unsafe { p.free(r) };
        assert_eq!(c.removed.load(Ordering::SeqCst), 1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_shared_buffer_debug_shows_no_bytes() {
        let (bufs, _) = SharedMemory::new("swiotlb-test", 1 << 20)
            .unwrap()
            .into_buffers(1 << 20);
        let text = format!("{:?}", bufs[0]);
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("capacity: 1048576"), "{text}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot run memfd_create or mmap")]
    fn a_refusing_listener_fails_the_allocation_and_nothing_is_kept() {
        let p = MemfdProvider::new("swiotlb-test");
        let c = Arc::new(Counting {
            refuse: true,
            ..Counting::default()
        });
        let _s = p.subscribe(c.clone()).unwrap();
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
