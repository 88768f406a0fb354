//! The DMA-API misuse checker (feature `checker`).
//!
//! The safe API ([`Mapping`](crate::Mapping), [`DmaBuffer`](crate::DmaBuffer),
//! `map_sg` of buffers) makes misuse impossible by construction: an owned
//! mapping carries its own address, size and direction. The raw API takes
//! them back from its caller, and that is where this checker looks, as
//! Linux's DMA-API debugging (`CONFIG_DMA_API_DEBUG`) does for drivers. It
//! hooks the raw API of [`Pool`](crate::Pool): `map_raw`,
//! `map_raw_with_attrs`, `bounce_raw`, `unmap_raw`, `sync_for_cpu_raw`,
//! `sync_for_device_raw`, `map_sg_raw`, `unmap_sg_raw`, `alloc_coherent`
//! and `free_coherent`; the same streaming calls of an
//! [`IoTlb`](crate::IoTlb) (and its `bounce_deferred_raw`, recorded when
//! a queued request completes) and of a [`Platform`](crate::Platform)
//! (and its `unmap_raw_into`), wherever the mapping lands: the first
//! pool, a grown pool or a transient one; and, through their pools, their
//! coherent allocations. Each call is checked once: a tlb's or a
//! platform's entry points reach the pools below the pools' own hooks.
//!
//! Every live mapping is recorded with the device it was made for, its
//! device address, size, direction, kind ([`MapKind`]), entry count and
//! the caller location that made it (`#[track_caller]`). Each later call
//! is checked against the record, and each misuse is a typed [`Finding`]
//! given to the installed [`Handler`]; the call itself then goes on
//! exactly as without the checker (returning the typed error it returns
//! anyway, if any). The checker never turns misuse into undefined
//! behaviour, and never changes what a correct program sees.
//!
//! Beyond what Linux checks:
//! - **guard bytes**: a bounced mapping's slot bytes that are not its own
//!   (the padding before the bounce address that `min_align_mask` leaves,
//!   and the tail after its last byte up to the end of its last slot) get a
//!   known pattern at map time, read back at `sync_for_cpu_raw` and unmap:
//!   a device that wrote outside its mapping is
//!   [`Finding::DeviceWroteOutside`];
//! - **CPU writes to a to-device buffer the device owns**: a checksum of
//!   the original is kept at map time (and at `sync_for_device_raw`) for
//!   to-device mappings and compared at `sync_for_cpu_raw` and unmap:
//!   [`Finding::CpuWroteWhileDeviceOwned`].
//!
//! # Usage
//!
//! ```
//! # #[cfg(feature = "checker")] {
//! use swiotlb::checker::{self, Count, FindingKind};
//! static COUNT: Count = Count::new();
//! checker::set_handler(&COUNT);
//! // ... drive the raw API ...
//! assert_eq!(COUNT.get(FindingKind::NeverMapped), 0);
//! # }
//! ```
//!
//! With no handler installed a finding panics (the [`Panic`] handler): a
//! user turned the checker on to hear about misuse, and a panic is the
//! loud report a library has. Install [`Count`] or a [`Log`] to go on.
//!
//! # Device going away, pool going away
//!
//! A device is known by its clones: the transient-pool tracking a
//! [`Device`] carries, which its clones share (two devices built
//! separately with the same settings are two devices, as they are to a
//! growing tlb's transient pools). Map and unmap with clones of one
//! `Device`, as a driver keeps its device. Call [`device_gone`] when
//! tearing a device down before its value goes: each of its mappings
//! still live is reported as [`Finding::LiveAtDeviceGone`] with the
//! location that made it, and forgotten. The drop of its last clone (and
//! of the last transient pool a growing tlb made for it) does the same.
//!
//! A pool dropped with mappings live ends them: no unmap can reach them
//! any more, and the checker forgets them with no finding (the pool is
//! known by the CPU addresses of its memory, which no other live pool
//! shares, unlike its physical ones). So dropping a pool before its
//! devices, as a teardown does, reports nothing.
//!
//! # Reports from a drop
//!
//! A finding reported from a drop (a device's last clone) must not turn
//! into a second panic while the thread unwinds, which aborts the process:
//! with `std`, [`Panic`] writes such a finding to standard error instead
//! of panicking, and any handler called from a drop during unwinding runs
//! under `catch_unwind`. Without `std` the checker cannot tell that a
//! thread unwinds; a `no_std` build's panics do not unwind.
//!
//! # Tests that misuse on purpose
//!
//! [`collect`] (with `std`) runs a closure with this thread's findings
//! kept and returned rather than reported: a test states what its
//! deliberate misuse must find.
//!
//! # Cost
//!
//! With the feature off none of this exists: the module, the hooks (each a
//! `#[cfg(feature = "checker")]` statement in the raw API) and the
//! `#[track_caller]` attributes (`cfg_attr`) are compiled out, and no type
//! gains a field (the device's identity is the address of the transient
//! pool tracking every device already has with `alloc`). With it on, every
//! raw call takes one global lock and scans the live records: a debugging
//! aid, not for production throughput. The lock is the crate's spin lock;
//! the checker is not built under loom (`--cfg swiotlb_loom`).

use alloc::vec::Vec;
use core::fmt;
use core::panic::Location;

use crate::addr::DmaAddr;
use crate::device::Device;
use crate::direction::Direction;
use crate::sync::{AtomicPtr, AtomicU64, Mutex, Ordering};

/// Where a call was made: a source location.
pub type Caller = &'static Location<'static>;

/// What kind of mapping or allocation a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MapKind {
    /// A single mapping (`map_raw`, `bounce_raw`).
    Single,
    /// An entry of a scatter-gather list (`map_sg_raw`).
    Sg,
    /// A coherent allocation (`alloc_coherent`).
    Coherent,
}

/// One misuse of the raw DMA API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// Unmap or free of a device address that no live mapping of the
    /// device starts at (never mapped, or already unmapped).
    NeverMapped {
        /// The device address given.
        dma: DmaAddr,
        /// The size given.
        size: usize,
        /// The unmap or free.
        caller: Caller,
    },
    /// Unmap or free with another size than the mapping's.
    WrongSize {
        /// The mapping's device address.
        dma: DmaAddr,
        /// Its size.
        mapped: usize,
        /// The size given.
        given: usize,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The unmap or free.
        caller: Caller,
    },
    /// Unmap with another direction than the mapping's.
    WrongDirection {
        /// The mapping's device address.
        dma: DmaAddr,
        /// Its direction.
        mapped: Direction,
        /// The direction given.
        given: Direction,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The unmap.
        caller: Caller,
    },
    /// Unmap, free or sync of a mapping of another kind: a single unmap of
    /// a scatter-gather entry, a free of a streaming mapping, a sync or
    /// unmap of a coherent allocation.
    WrongKind {
        /// The mapping's device address.
        dma: DmaAddr,
        /// The kind it was made as.
        expected: MapKind,
        /// The kind of the call.
        found: MapKind,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The call.
        caller: Caller,
    },
    /// `unmap_sg_raw` of a list of another length than was mapped.
    SgCountMismatch {
        /// The entry's device address.
        dma: DmaAddr,
        /// Entries mapped together with it.
        mapped: usize,
        /// Entries given to the unmap.
        given: usize,
        /// Where the list was mapped.
        mapped_at: Caller,
        /// The unmap.
        caller: Caller,
    },
    /// A sync of a range no live mapping of the device holds whole.
    SyncOutside {
        /// The device address given.
        dma: DmaAddr,
        /// The size given.
        size: usize,
        /// The sync.
        caller: Caller,
    },
    /// A sync in a direction the mapping forbids: another direction than
    /// the mapping's, unless it is bidirectional.
    SyncDirection {
        /// The mapping's device address.
        dma: DmaAddr,
        /// Its direction.
        mapped: Direction,
        /// The direction of the sync.
        given: Direction,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The sync.
        caller: Caller,
    },
    /// A mapping still live when its device went away ([`device_gone`]).
    LiveAtDeviceGone {
        /// The mapping's device address.
        dma: DmaAddr,
        /// Its size.
        size: usize,
        /// Its kind.
        kind: MapKind,
        /// Where it was mapped.
        mapped_at: Caller,
    },
    /// The CPU changed a to-device original while the device owned it
    /// (between the map or `sync_for_device_raw` and the next
    /// `sync_for_cpu_raw` or unmap): the device may have read either
    /// version.
    CpuWroteWhileDeviceOwned {
        /// The mapping's device address.
        dma: DmaAddr,
        /// Its size.
        size: usize,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The call that found it.
        caller: Caller,
    },
    /// The device wrote into its slots outside its mapping: the guard
    /// bytes of the padding (negative `offset`) or of the slot tail.
    DeviceWroteOutside {
        /// The mapping's device address.
        dma: DmaAddr,
        /// The first changed byte, from the mapping's first byte.
        offset: i64,
        /// Changed bytes in that region.
        len: usize,
        /// Where it was mapped.
        mapped_at: Caller,
        /// The call that found it.
        caller: Caller,
    },
}

/// Which finding, without its context: the index of [`Count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[expect(missing_docs, reason = "each is the `Finding` variant of its name")]
pub enum FindingKind {
    NeverMapped,
    WrongSize,
    WrongDirection,
    WrongKind,
    SgCountMismatch,
    SyncOutside,
    SyncDirection,
    LiveAtDeviceGone,
    CpuWroteWhileDeviceOwned,
    DeviceWroteOutside,
}

const KINDS: usize = 10;

impl Finding {
    /// Which finding this is.
    pub const fn kind(&self) -> FindingKind {
        match self {
            Finding::NeverMapped { .. } => FindingKind::NeverMapped,
            Finding::WrongSize { .. } => FindingKind::WrongSize,
            Finding::WrongDirection { .. } => FindingKind::WrongDirection,
            Finding::WrongKind { .. } => FindingKind::WrongKind,
            Finding::SgCountMismatch { .. } => FindingKind::SgCountMismatch,
            Finding::SyncOutside { .. } => FindingKind::SyncOutside,
            Finding::SyncDirection { .. } => FindingKind::SyncDirection,
            Finding::LiveAtDeviceGone { .. } => FindingKind::LiveAtDeviceGone,
            Finding::CpuWroteWhileDeviceOwned { .. } => FindingKind::CpuWroteWhileDeviceOwned,
            Finding::DeviceWroteOutside { .. } => FindingKind::DeviceWroteOutside,
        }
    }

    /// The device address the finding is about.
    pub const fn dma(&self) -> DmaAddr {
        match *self {
            Finding::NeverMapped { dma, .. }
            | Finding::WrongSize { dma, .. }
            | Finding::WrongDirection { dma, .. }
            | Finding::WrongKind { dma, .. }
            | Finding::SgCountMismatch { dma, .. }
            | Finding::SyncOutside { dma, .. }
            | Finding::SyncDirection { dma, .. }
            | Finding::LiveAtDeviceGone { dma, .. }
            | Finding::CpuWroteWhileDeviceOwned { dma, .. }
            | Finding::DeviceWroteOutside { dma, .. } => dma,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("swiotlb checker: ")?;
        match *self {
            Finding::NeverMapped { dma, size, caller } => write!(
                f,
                "{caller}: unmap or free of {dma} ({size} bytes), which is not mapped"
            ),
            Finding::WrongSize {
                dma,
                mapped,
                given,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: {dma} unmapped or freed with size {given}, mapped with {mapped} at {mapped_at}"
            ),
            Finding::WrongDirection {
                dma,
                mapped,
                given,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: {dma} unmapped {given:?}, mapped {mapped:?} at {mapped_at}"
            ),
            Finding::WrongKind {
                dma,
                expected,
                found,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: {dma} released or synced as {found:?}, made as {expected:?} at {mapped_at}"
            ),
            Finding::SgCountMismatch {
                dma,
                mapped,
                given,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: scatter-gather entry {dma} unmapped in a list of {given}, mapped in one of {mapped} at {mapped_at}"
            ),
            Finding::SyncOutside { dma, size, caller } => write!(
                f,
                "{caller}: sync of {size} bytes at {dma}, outside any live mapping"
            ),
            Finding::SyncDirection {
                dma,
                mapped,
                given,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: sync {given:?} of {dma}, mapped {mapped:?} at {mapped_at}"
            ),
            Finding::LiveAtDeviceGone {
                dma,
                size,
                kind,
                mapped_at,
            } => write!(
                f,
                "{mapped_at}: {kind:?} mapping of {size} bytes at {dma} still live when its device went away"
            ),
            Finding::CpuWroteWhileDeviceOwned {
                dma,
                size,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: the CPU changed the to-device buffer of {dma} ({size} bytes, mapped at {mapped_at}) while the device owned it"
            ),
            Finding::DeviceWroteOutside {
                dma,
                offset,
                len,
                mapped_at,
                caller,
            } => write!(
                f,
                "{caller}: the device wrote {len} bytes outside its mapping {dma} (mapped at {mapped_at}), from offset {offset}"
            ),
        }
    }
}

/// What receives findings: installed with [`set_handler`].
pub trait Handler: Sync {
    /// Reports one finding. Called with no lock of the checker held, on
    /// the thread of the misusing call.
    fn report(&self, finding: &Finding);
}

/// Panics with the finding (the default when no handler is installed).
///
/// Never a second panic: with `std`, a finding reported while the thread
/// is already panicking (a device dropped during unwinding, as a
/// container drops the rest of its elements after one of their drops
/// panicked) is written to standard error instead, since a panic escaping
/// a drop during unwinding aborts the process. Without `std` the checker
/// cannot tell; a `no_std` build's panic handler does not unwind (kernels
/// and firmware halt or abort), so there is no unwinding drop to panic in
/// twice.
#[derive(Clone, Copy, Debug, Default)]
pub struct Panic;

impl Handler for Panic {
    fn report(&self, finding: &Finding) {
        #[cfg(feature = "std")]
        if std::thread::panicking() {
            std::eprintln!("{finding} (found while the thread was panicking already)");
            return;
        }
        panic!("{finding}");
    }
}

/// Counts findings by kind; nothing else.
#[derive(Debug)]
pub struct Count([AtomicU64; KINDS]);

impl Count {
    /// All counts zero.
    #[expect(
        clippy::declare_interior_mutable_const,
        reason = "a fresh counter per array element, as intended"
    )]
    pub const fn new() -> Self {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Self([ZERO; KINDS])
    }

    /// Findings of `kind` so far.
    pub fn get(&self, kind: FindingKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    /// Findings of every kind so far.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Count {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for Count {
    fn report(&self, finding: &Finding) {
        self.0[finding.kind() as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Gives each finding to a function: a log line (`log::warn!`, `printk`,
/// a serial port), a test's collector.
#[derive(Clone, Copy)]
pub struct Log<F: Fn(&Finding) + Sync>(pub F);

impl<F: Fn(&Finding) + Sync> Handler for Log<F> {
    fn report(&self, finding: &Finding) {
        (self.0)(finding);
    }
}

impl<F: Fn(&Finding) + Sync> fmt::Debug for Log<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Log(..)")
    }
}

static HANDLER: Mutex<Option<&'static dyn Handler>> = Mutex::new(None);

/// Installs the handler every later finding goes to, in place of the one
/// before (the default is [`Panic`]).
pub fn set_handler(handler: &'static dyn Handler) {
    *HANDLER.lock() = Some(handler);
}

/// The installed handler, [`Panic`] if none.
fn handler() -> &'static dyn Handler {
    let h = *HANDLER.lock();
    h.unwrap_or(&Panic)
}

/// Gives `findings` to the installed handler, with no checker lock held
/// (or to this thread's [`collect`], if one runs).
fn report(findings: impl IntoIterator<Item = Finding>) {
    for f in findings {
        if !collected(&f) {
            handler().report(&f);
        }
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    /// The findings of the innermost [`collect`] running on this thread.
    static COLLECTING: core::cell::RefCell<Option<Vec<Finding>>> =
        const { core::cell::RefCell::new(None) };
}

/// Keeps `f` for this thread's [`collect`], if one runs; whether it did.
fn collected(f: &Finding) -> bool {
    #[cfg(feature = "std")]
    {
        COLLECTING
            .try_with(|c| c.borrow_mut().as_mut().map(|v| v.push(*f)).is_some())
            .unwrap_or(false)
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = f;
        false
    }
}

/// Runs `f` with the findings of this thread kept rather than given to
/// the handler, and returns them (in order) with `f`'s result: for tests
/// that misuse the raw API on purpose and check what the checker says.
/// Other threads' findings still go to the handler; a `collect` inside
/// another keeps its own, and the outer one's go on after it returns (or
/// unwinds).
#[cfg(feature = "std")]
pub fn collect<R>(f: impl FnOnce() -> R) -> (R, Vec<Finding>) {
    /// Puts the outer collection back, also when `f` unwinds.
    struct Restore(Option<Vec<Finding>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            COLLECTING.with(|c| *c.borrow_mut() = outer);
        }
    }
    let outer = COLLECTING.with(|c| c.borrow_mut().replace(Vec::new()));
    let restore = Restore(outer);
    let r = f();
    let found = COLLECTING
        .with(|c| c.borrow_mut().take())
        .unwrap_or_default();
    drop(restore);
    (r, found)
}

/// [`report`] from a `Drop` implementation. A panic that escapes a drop
/// running during unwinding aborts the process, so with `std`, while the
/// thread is panicking, the handler runs under `catch_unwind`: a handler
/// that panics there (a [`Log`] closure that asserts) loses its panic, not
/// the process ([`Panic`] itself writes to standard error then). Outside
/// unwinding a handler's panic leaves the drop as any panic would.
fn report_from_drop(findings: impl IntoIterator<Item = Finding>) {
    for f in findings {
        if collected(&f) {
            continue;
        }
        let h = handler();
        #[cfg(feature = "std")]
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| h.report(&f)));
            continue;
        }
        h.report(&f);
    }
}

/// One live mapping.
#[derive(Debug)]
struct Record {
    /// The device's identity ([`Device::checker_id`]).
    dev: usize,
    dma: u64,
    size: usize,
    /// `None` for `bounce_raw` and coherent allocations, which take none.
    dir: Option<Direction>,
    kind: MapKind,
    /// Entries of its scatter-gather list; 1 otherwise.
    nents: usize,
    mapped_at: Caller,
    /// The original, for the checksum of a to-device mapping.
    cpu: AtomicPtr<u8>,
    /// Checksum of the original while the device owns a to-device
    /// mapping; `None` otherwise (other directions, or the CPU owns it
    /// after a `sync_for_cpu_raw`).
    sum: Option<u64>,
    /// The CPU address of its bounce bytes, for a mapping or allocation
    /// in a pool: the pool that holds it ends it when it is dropped
    /// ([`pool_gone`]). `None` for a direct mapping. Not the physical
    /// address: pools of different address spaces (guests, simulated
    /// memory) may share physical addresses, never CPU ones.
    slot: Option<usize>,
    /// The bounce address, where the CPU address is not known (a queued
    /// deferred bounce completes where no pool is at hand): the pool
    /// dropped over it ends it too.
    phys: Option<u64>,
    /// Whether its guard bytes were written at map time (a streaming
    /// mapping bounced by a hooked call); only then are they read back.
    guarded: bool,
}

impl Record {
    fn contains(&self, dma: u64, size: usize) -> bool {
        dma >= self.dma
            && (dma - self.dma)
                .checked_add(size as u64)
                .is_some_and(|end| end <= self.size as u64)
    }
}

static LIVE: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// FNV-1a over `len` bytes at `p`, read one at a time through the raw
/// pointer (no reference is made to memory a device may use).
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
unsafe fn checksum(p: *const u8, len: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..len {
        // SAFETY: `i < len`, and `p` is valid for reads of `len` bytes
        // (this function's contract).
        let b = unsafe { p.wrapping_add(i).read() };
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a hook was called about: one device address of one device.
pub(crate) struct At {
    pub(crate) dev: usize,
    pub(crate) dma: DmaAddr,
    pub(crate) size: usize,
    pub(crate) caller: Caller,
}

/// Where a new mapping sits: the CPU address of its bounce bytes in the
/// pool that holds it (`None` for a direct mapping, or not known), and
/// whether its guard bytes were written.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Placement {
    pub(crate) slot: Option<usize>,
    /// The bounce address, for a placement whose `slot` is not known.
    pub(crate) phys: Option<u64>,
    pub(crate) guarded: bool,
}

/// Records a new mapping of `at.size` bytes of `cpu`, made at `at.caller`.
///
/// # Safety
/// For a to-device mapping, `cpu` is valid for reads of `at.size` bytes
/// (the raw map's contract).
pub(crate) unsafe fn mapped(
    at: &At,
    cpu: *mut u8,
    dir: Option<Direction>,
    kind: MapKind,
    nents: usize,
    placed: Placement,
) {
    let sum = (dir == Some(Direction::ToDevice)).then(|| {
        // SAFETY: a to-device mapping's original is valid for reads of its
        // size (this function's contract).
        unsafe { checksum(cpu, at.size) }
    });
    LIVE.lock().push(Record {
        dev: at.dev,
        dma: at.dma.0,
        size: at.size,
        dir,
        kind,
        nents,
        mapped_at: at.caller,
        cpu: AtomicPtr::new(cpu),
        sum,
        slot: placed.slot,
        phys: placed.phys,
        guarded: placed.guarded,
    });
}

/// What a release (unmap or free) is: its kind, direction and list length.
pub(crate) struct Release {
    pub(crate) kind: MapKind,
    pub(crate) dir: Option<Direction>,
    pub(crate) nents: usize,
}

/// Checks a release of the mapping at `at.dma` against its record and
/// reports what is wrong; returns where it was mapped, and whether its
/// guard bytes were written, when the release names a live mapping. A
/// to-device original the device still owns is compared with its
/// checksum.
///
/// # Safety
/// The original of a live to-device mapping at `at.dma` is still valid
/// for reads (the raw unmap's contract).
pub(crate) unsafe fn releasing(at: &At, rel: &Release) -> Option<(Caller, bool)> {
    let mut found = Vec::new();
    let mapped_at = {
        let live = LIVE.lock();
        match live.iter().find(|r| r.dev == at.dev && r.dma == at.dma.0) {
            None => {
                found.push(Finding::NeverMapped {
                    dma: at.dma,
                    size: at.size,
                    caller: at.caller,
                });
                None
            }
            Some(r) => {
                let (dma, mapped_at, caller) = (at.dma, r.mapped_at, at.caller);
                if r.kind != rel.kind {
                    found.push(Finding::WrongKind {
                        dma,
                        expected: r.kind,
                        found: rel.kind,
                        mapped_at,
                        caller,
                    });
                }
                if r.size != at.size {
                    found.push(Finding::WrongSize {
                        dma,
                        mapped: r.size,
                        given: at.size,
                        mapped_at,
                        caller,
                    });
                }
                if let (Some(mapped), Some(given)) = (r.dir, rel.dir) {
                    if mapped != given {
                        found.push(Finding::WrongDirection {
                            dma,
                            mapped,
                            given,
                            mapped_at,
                            caller,
                        });
                    }
                }
                if r.kind == MapKind::Sg && rel.kind == MapKind::Sg && r.nents != rel.nents {
                    found.push(Finding::SgCountMismatch {
                        dma,
                        mapped: r.nents,
                        given: rel.nents,
                        mapped_at,
                        caller,
                    });
                }
                if let Some(sum) = r.sum {
                    // SAFETY: a live to-device mapping's original is still
                    // valid for reads of its size (this function's
                    // contract).
                    let now = unsafe { checksum(r.cpu.load(Ordering::Relaxed), r.size) };
                    if now != sum {
                        found.push(Finding::CpuWroteWhileDeviceOwned {
                            dma,
                            size: r.size,
                            mapped_at,
                            caller,
                        });
                    }
                }
                Some((mapped_at, r.guarded))
            }
        }
    };
    report(found);
    mapped_at
}

/// Forgets the mapping at `dma` of device `dev`: it was released.
pub(crate) fn released(dev: usize, dma: DmaAddr) {
    let mut live = LIVE.lock();
    if let Some(i) = live.iter().position(|r| r.dev == dev && r.dma == dma.0) {
        live.swap_remove(i);
    }
}

/// Checks a sync of `[at.dma, at.dma + at.size)` in direction `dir`
/// against the mapping that holds it, and moves a to-device mapping's
/// ownership: `for_cpu` compares the original with its checksum and hands
/// it to the CPU; a sync for the device takes a new checksum. Returns the
/// mapping's device address, where it was mapped and whether its guard
/// bytes were written, if there is one.
///
/// # Safety
/// The original of the live mapping holding `at.dma` is valid for reads
/// (the raw sync's contract).
pub(crate) unsafe fn syncing(
    at: &At,
    dir: Direction,
    for_cpu: bool,
) -> Option<(DmaAddr, Caller, bool)> {
    let mut found = Vec::new();
    let r = {
        let mut live = LIVE.lock();
        let hit = live
            .iter_mut()
            .find(|r| r.dev == at.dev && r.contains(at.dma.0, at.size));
        match hit {
            None => {
                found.push(Finding::SyncOutside {
                    dma: at.dma,
                    size: at.size,
                    caller: at.caller,
                });
                None
            }
            Some(r) => {
                let (dma, mapped_at, caller) = (DmaAddr(r.dma), r.mapped_at, at.caller);
                if r.kind == MapKind::Coherent {
                    found.push(Finding::WrongKind {
                        dma,
                        expected: MapKind::Coherent,
                        found: MapKind::Single,
                        mapped_at,
                        caller,
                    });
                }
                if let Some(mapped) = r.dir {
                    if mapped != Direction::Bidirectional && mapped != dir {
                        found.push(Finding::SyncDirection {
                            dma,
                            mapped,
                            given: dir,
                            mapped_at,
                            caller,
                        });
                    }
                }
                if r.dir == Some(Direction::ToDevice) {
                    let cpu = r.cpu.load(Ordering::Relaxed);
                    // SAFETY: a live to-device mapping's original is valid
                    // for reads of its size (this function's contract).
                    let now = unsafe { checksum(cpu, r.size) };
                    if for_cpu {
                        if r.sum.is_some_and(|sum| sum != now) {
                            found.push(Finding::CpuWroteWhileDeviceOwned {
                                dma,
                                size: r.size,
                                mapped_at,
                                caller,
                            });
                        }
                        r.sum = None;
                    } else {
                        r.sum = Some(now);
                    }
                }
                Some((dma, mapped_at, r.guarded))
            }
        }
    };
    report(found);
    r
}

/// Reports the changed guard bytes a check found around the mapping at
/// `dma`.
pub(crate) fn scribbled(
    dma: DmaAddr,
    found: [Option<crate::pool::Scribble>; 2],
    mapped_at: Caller,
    caller: Caller,
) {
    report(
        found
            .into_iter()
            .flatten()
            .map(|s| Finding::DeviceWroteOutside {
                dma,
                offset: s.offset,
                len: s.len,
                mapped_at,
                caller,
            }),
    );
}

/// The device `dev` goes away: reports each of its mappings still live as
/// [`Finding::LiveAtDeviceGone`] and forgets them. Clones of a device are
/// the same device. The checker does the same by itself when the last
/// clone of a device is dropped (with the last transient pool a growing
/// tlb made for it); this is for a device that goes away before its value
/// does (a hot-unplug, a driver's remove).
pub fn device_gone<T>(dev: &Device<T>) {
    report(gone(dev.checker_id()));
}

/// The last clone of the device of identity `id` was dropped (its
/// tracking, from `Drop`): [`device_gone`], reported safely for a drop
/// ([`report_from_drop`]).
pub(crate) fn dropped(id: usize) {
    report_from_drop(gone(id));
}

/// Forgets the live mappings of device `id`; their findings.
fn gone(id: usize) -> Vec<Finding> {
    let gone: Vec<Record> = {
        let mut live = LIVE.lock();
        let (gone, keep) = core::mem::take(&mut *live)
            .into_iter()
            .partition(|r| r.dev == id);
        *live = keep;
        gone
    };
    gone.into_iter()
        .map(|r| Finding::LiveAtDeviceGone {
            dma: DmaAddr(r.dma),
            size: r.size,
            kind: r.kind,
            mapped_at: r.mapped_at,
        })
        .collect()
}

/// The pool over the CPU addresses `[start, start + len)` is dropped:
/// the mappings and
/// allocations it held ended with it (no unmap or free can reach them
/// any more), and are forgotten without a finding. Dropping a pool with
/// mappings live is allowed (the safe API's borrows forbid it, the raw
/// API leaves teardown to its caller); keeping their records would
/// report them once more when their device goes away, and would confuse
/// them with the mappings of a later pool over the same memory.
pub(crate) fn pool_gone(start: usize, phys: u64, len: usize) {
    let end = start.saturating_add(len);
    let phys_end = phys.saturating_add(len as u64);
    LIVE.lock().retain(|r| match (r.slot, r.phys) {
        (Some(p), _) => !(start..end).contains(&p),
        (None, Some(p)) => !(phys..phys_end).contains(&p),
        (None, None) => true,
    });
}

/// What a guard operation found in the pool holding a device address.
pub(crate) struct InPool {
    /// The CPU address of the bounce bytes.
    pub(crate) slot: usize,
    /// Whether there was a streaming mapping there to guard (the guard
    /// bytes were written, or read back).
    pub(crate) guarded: bool,
    /// For a read-back, the changed guard bytes.
    pub(crate) found: [Option<crate::pool::Scribble>; 2],
}

/// One hooked call of the raw API: the device, the caller, and `guards`,
/// which finds the pool holding a device address (`None` for a direct
/// mapping: no pool holds it) and there writes the guard pattern around
/// the streaming mapping at that address (`check == false`) or reads it
/// back (`true`). A pool, a tlb (its first, grown and transient pools)
/// and a platform (the tlbs that may serve the device) each give theirs;
/// the checks are the same for all three.
pub(crate) struct Hook<G> {
    pub(crate) dev: usize,
    pub(crate) caller: Caller,
    pub(crate) guards: G,
}

impl<G: Fn(DmaAddr, bool) -> Option<InPool>> Hook<G> {
    fn at(&self, dma: DmaAddr, size: usize) -> At {
        At {
            dev: self.dev,
            dma,
            size,
            caller: self.caller,
        }
    }

    /// Records a new mapping (an entry of a list of `nents`, 1 if not a
    /// list) and, if it bounced, fills its guard bytes.
    ///
    /// # Safety
    /// For a to-device mapping, `cpu` is valid for reads of `size` bytes.
    pub(crate) unsafe fn mapped(
        &self,
        dma: DmaAddr,
        cpu: *mut u8,
        size: usize,
        dir: Option<Direction>,
        kind: MapKind,
        nents: usize,
    ) {
        let placed = (self.guards)(dma, false).map_or(Placement::default(), |p| Placement {
            slot: Some(p.slot),
            phys: None,
            guarded: p.guarded,
        });
        // SAFETY: this function's contract.
        unsafe { mapped(&self.at(dma, size), cpu, dir, kind, nents, placed) };
    }

    /// Checks a release (before it runs) against the record and the guard
    /// bytes.
    ///
    /// # Safety
    /// The original of a live mapping at `dma` is valid for reads.
    pub(crate) unsafe fn release(
        &self,
        dma: DmaAddr,
        size: usize,
        dir: Option<Direction>,
        kind: MapKind,
        nents: usize,
    ) {
        let rel = Release { kind, dir, nents };
        // SAFETY: this function's contract.
        let hit = unsafe { releasing(&self.at(dma, size), &rel) };
        if let Some((mapped_at, true)) = hit {
            if let Some(p) = (self.guards)(dma, true) {
                scribbled(dma, p.found, mapped_at, self.caller);
            }
        }
    }

    /// The release of `dma` succeeded: forgets its record.
    pub(crate) fn released(&self, dma: DmaAddr) {
        released(self.dev, dma);
    }

    /// Checks a sync against the record; for the CPU, the guard bytes too.
    ///
    /// # Safety
    /// The original of the live mapping holding `dma` is valid for reads.
    pub(crate) unsafe fn sync(&self, dma: DmaAddr, size: usize, dir: Direction, for_cpu: bool) {
        // SAFETY: this function's contract.
        let hit = unsafe { syncing(&self.at(dma, size), dir, for_cpu) };
        if let (Some((start, mapped_at, true)), true) = (hit, for_cpu) {
            if let Some(p) = (self.guards)(start, true) {
                scribbled(start, p.found, mapped_at, self.caller);
            }
        }
    }
}

/// Live mappings and coherent allocations of `dev` the checker knows of.
pub fn live_mappings<T>(dev: &Device<T>) -> usize {
    let id = dev.checker_id();
    LIVE.lock().iter().filter(|r| r.dev == id).count()
}
