//! The virtio-blk device: requests off a queue, against a raw image file.
//!
//! Everything here works on whatever guest memory it is handed and never
//! touches memory of its own by address: every descriptor is checked to lie
//! inside the guest regions before it is used, and a chain that points
//! outside them is answered with VIRTIO_BLK_S_IOERR (VIRTIO 1.2 §5.2.6) rather
//! than followed. Even unchecked (the [`Faults::with_outside`] fault), an
//! address reaches only what the guest memory map holds: the regions the
//! frontend shared, nothing else.

use std::fs::{File, OpenOptions};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions,
};

use crate::fault::{Faults, OutsideAddr, FAULT_BYTE};
use crate::stats::{Counters, Stats};
use crate::Error;

/// The sector of the virtio-blk request header, whatever the block size
/// (VIRTIO 1.2 §5.2.6: "sector ... in 512-byte units").
pub const SECTOR_SIZE: u64 = 512;

/// The request header: type, reserved, sector (VIRTIO 1.2 §5.2.6).
const HEADER_LEN: usize = 16;

/// The most bytes copied through this process at once: a request's data
/// moves in pieces of this size, so a chain claiming gigabytes costs no more
/// than this much of our memory.
const CHUNK: usize = 64 * 1024;

/// A span of guest memory named by a descriptor, or part of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    addr: GuestAddress,
    len: u64,
}

/// Split `spans` after `at` bytes.
fn split_spans(spans: &[Span], at: u64) -> (Vec<Span>, Vec<Span>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = at;
    for s in spans {
        if left >= s.len {
            head.push(*s);
            left -= s.len;
        } else if left == 0 {
            tail.push(*s);
        } else {
            head.push(Span {
                addr: s.addr,
                len: left,
            });
            tail.push(Span {
                addr: GuestAddress(s.addr.0 + left),
                len: s.len - left,
            });
            left = 0;
        }
    }
    (head, tail)
}

fn total(spans: &[Span]) -> u64 {
    spans.iter().map(|s| s.len).sum()
}

/// The raw image behind the device.
#[derive(Debug)]
pub(crate) struct Disk {
    file: File,
    /// Whole sectors only: a trailing partial sector is not addressable.
    sectors: u64,
    readonly: bool,
}

impl Disk {
    pub(crate) fn open(path: &Path, readonly: bool) -> Result<Self, Error> {
        let image = |source| Error::Image {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(image)?;
        let len = file.metadata().map_err(image)?.len();
        Ok(Self {
            file,
            sectors: len / SECTOR_SIZE,
            readonly,
        })
    }

    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    pub(crate) fn readonly(&self) -> bool {
        self.readonly
    }

    /// The byte offset of `len` bytes at `sector`, if they are all on the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(start)
    }
}

/// One request's outcome.
struct Completion {
    /// The used length before any lie: data bytes written plus the status.
    len: u32,
    /// Buffers a rewrite fault overwrites after the completion is published.
    returned: Vec<Span>,
}

/// A write the device makes after a completion was published
/// ([`Faults::with_rewrite`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LateWrite {
    addr: GuestAddress,
    len: u64,
}

/// What the queue's owner does once a pass over the queue is done.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Batch {
    /// Whether the driver wants an interrupt for the used entries added.
    pub(crate) notify: bool,
    /// Overwrites of completed buffers, to make after the notification.
    pub(crate) late_writes: Vec<LateWrite>,
    /// The device should die now ([`Faults::with_die_after`]); the request
    /// that triggered it was not answered.
    pub(crate) die: bool,
}

/// A virtio-blk device: an image, an identity, its faults and its counters.
#[derive(Debug)]
pub(crate) struct Device {
    disk: Disk,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    faults: Faults,
    counters: Arc<Counters>,
    /// Requests taken off the ring, for the faults that count them.
    seen: AtomicU64,
    /// Reads and writes with data seen, for the `outside` fault.
    data_requests: AtomicU64,
}

impl Device {
    pub(crate) fn new(disk: Disk, serial: &str, faults: Faults) -> Self {
        // VIRTIO 1.2 §5.2.6.1: a string of up to 20 bytes, NUL-padded, not
        // NUL-terminated when it has all 20.
        let mut id = [0; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            disk,
            id,
            faults,
            counters: Arc::default(),
            seen: AtomicU64::new(0),
            data_requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn disk(&self) -> &Disk {
        &self.disk
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Take every available request off `queue`, answer it and put it on the
    /// used ring. With VIRTIO_RING_F_EVENT_IDX the pass repeats until no
    /// request arrived while notifications were off (the vhost-device loop).
    pub(crate) fn process_queue<M>(
        &self,
        queue: &mut Queue,
        mem: M,
    ) -> Result<Batch, virtio_queue::Error>
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let mut batch = Batch::default();
        loop {
            let event_idx = queue.event_idx_enabled();
            if event_idx {
                queue.disable_notification(&*mem)?;
            }
            while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
                if self.faults.die_after.is_some_and(|after| n > after) {
                    batch.die = true;
                    return Ok(batch);
                }
                Counters::add(&self.counters.requests, 1);
                if self.faults.hang_after.is_some_and(|after| n > after) {
                    Counters::add(&self.counters.unanswered, 1);
                    continue;
                }
                let done = self.handle(&descs, &*mem);
                let len = self.faults.used_len(done.len);
                if len != done.len {
                    Counters::add(&self.counters.faults, 1);
                }
                queue.add_used(&*mem, head, len)?;
                if self.faults.rewrite {
                    batch
                        .late_writes
                        .extend(done.returned.iter().map(|s| LateWrite {
                            addr: s.addr,
                            len: s.len,
                        }));
                }
            }
            if !event_idx || !queue.enable_notification(&*mem)? {
                break;
            }
        }
        batch.notify = queue.needs_notification(&*mem)?;
        Ok(batch)
    }

    /// Make the late writes of a batch: after the notification, so the
    /// driver may already be reading the buffers.
    pub(crate) fn late_writes<M: GuestMemory + ?Sized>(&self, mem: &M, writes: &[LateWrite]) {
        if writes.is_empty() {
            return;
        }
        std::thread::sleep(self.faults.rewrite_delay);
        for w in writes {
            if fill(mem, w.addr, w.len, FAULT_BYTE) {
                Counters::add(&self.counters.faults, 1);
            }
        }
    }

    /// Answer one request given as its descriptors.
    fn handle<M: GuestMemory + ?Sized>(&self, descs: &[Descriptor], mem: &M) -> Completion {
        let c = &self.counters;
        let nothing = Completion {
            len: 0,
            returned: Vec::new(),
        };
        // Device-readable descriptors come first, then device-writable ones
        // (VIRTIO 1.2 §2.7.4.2); the status is the last writable byte.
        let split = descs
            .iter()
            .position(Descriptor::is_write_only)
            .unwrap_or(descs.len());
        let span = |d: &Descriptor| Span {
            addr: d.addr(),
            len: u64::from(d.len()),
        };
        let readable: Vec<Span> = descs[..split].iter().map(span).collect();
        let writable: Vec<Span> = descs[split..].iter().map(span).collect();
        let Some(status_at) = writable
            .iter()
            .rev()
            .find(|s| s.len > 0)
            .map(|s| GuestAddress(s.addr.0 + (s.len - 1)))
        else {
            // Nowhere to say anything: no status, no used bytes.
            Counters::add(&c.io_errors, 1);
            return nothing;
        };
        let status_ok = inside(mem, status_at, 1, Permissions::Write);
        let fail = |status: u32| {
            if status == VIRTIO_BLK_S_UNSUPP {
                Counters::add(&c.unsupported, 1);
            } else {
                Counters::add(&c.io_errors, 1);
            }
            if status_ok && put_status(mem, status_at, status) {
                Completion {
                    len: 1,
                    returned: Vec::new(),
                }
            } else {
                Completion {
                    len: 0,
                    returned: Vec::new(),
                }
            }
        };
        let misordered = descs[split..].iter().any(|d| !d.is_write_only());
        let outside = readable
            .iter()
            .any(|s| !inside(mem, s.addr, s.len, Permissions::Read))
            || writable
                .iter()
                .any(|s| !inside(mem, s.addr, s.len, Permissions::Write));
        if outside {
            self.refused(None, "a descriptor");
        }
        if misordered || outside || total(&readable) < HEADER_LEN as u64 {
            return fail(VIRTIO_BLK_S_IOERR);
        }
        let (header_spans, out_data) = split_spans(&readable, HEADER_LEN as u64);
        let (in_data, _) = split_spans(&writable, total(&writable) - 1);
        let mut header = [0u8; HEADER_LEN];
        if !read_spans(mem, &header_spans, &mut header) {
            return fail(VIRTIO_BLK_S_IOERR);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        match kind {
            VIRTIO_BLK_T_IN => {
                let len = total(&in_data);
                let Some(offset) = self
                    .disk
                    .range(sector, len)
                    .filter(|_| len % SECTOR_SIZE == 0)
                else {
                    return fail(VIRTIO_BLK_S_IOERR);
                };
                let in_data = self.misplace(mem, in_data);
                let (written, ok) = self.read_disk(mem, &in_data, offset);
                if !ok {
                    if !all_inside(mem, &in_data, Permissions::Write) {
                        self.refused(Some(sector), "its data");
                    }
                    // Used length still counts what did reach the buffers.
                    Counters::add(&c.io_errors, 1);
                    put_status(mem, status_at, VIRTIO_BLK_S_IOERR);
                    return Completion {
                        len: u32::try_from(written + 1).unwrap_or(u32::MAX),
                        returned: Vec::new(),
                    };
                }
                self.overrun(mem, &in_data);
                Counters::add(&c.reads, 1);
                self.ok(mem, status_at, written, in_data)
            }
            VIRTIO_BLK_T_OUT => {
                let len = total(&out_data);
                let Some(offset) = self
                    .disk
                    .range(sector, len)
                    .filter(|_| len % SECTOR_SIZE == 0)
                else {
                    return fail(VIRTIO_BLK_S_IOERR);
                };
                if self.disk.readonly {
                    return fail(VIRTIO_BLK_S_IOERR);
                }
                let out_data = self.misplace(mem, out_data);
                if !self.write_disk(mem, &out_data, offset) {
                    if !all_inside(mem, &out_data, Permissions::Read) {
                        self.refused(Some(sector), "its data");
                    }
                    return fail(VIRTIO_BLK_S_IOERR);
                }
                Counters::add(&c.writes, 1);
                self.ok(mem, status_at, 0, Vec::new())
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.disk.file.sync_data().is_err() {
                    return fail(VIRTIO_BLK_S_IOERR);
                }
                Counters::add(&c.flushes, 1);
                self.ok(mem, status_at, 0, Vec::new())
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = total(&in_data).min(self.id.len() as u64);
                let (id_spans, _) = split_spans(&in_data, n);
                // `n` is at most 20 and the spans were checked above.
                let n = usize::try_from(n).unwrap_or(0);
                if !write_spans(mem, &id_spans, &self.id[..n]) {
                    return fail(VIRTIO_BLK_S_IOERR);
                }
                self.overrun(mem, &in_data);
                Counters::add(&c.get_ids, 1);
                self.ok(mem, status_at, n as u64, Vec::new())
            }
            _ => fail(VIRTIO_BLK_S_UNSUPP),
        }
    }

    fn ok<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        status_at: GuestAddress,
        written: u64,
        returned: Vec<Span>,
    ) -> Completion {
        if !put_status(mem, status_at, VIRTIO_BLK_S_OK) {
            Counters::add(&self.counters.io_errors, 1);
            return Completion {
                len: 0,
                returned: Vec::new(),
            };
        }
        Completion {
            len: u32::try_from(written + 1).unwrap_or(u32::MAX),
            returned,
        }
    }

    /// Copy the disk from `offset` into `spans`; returns the bytes written
    /// into guest memory and whether all of them were.
    fn read_disk<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        spans: &[Span],
        offset: u64,
    ) -> (u64, bool) {
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        for s in spans {
            let mut at = 0u64;
            while at < s.len {
                let n = (s.len - at).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                if self.disk.file.read_exact_at(chunk, offset + done).is_err() {
                    return (done, false);
                }
                if done == 0 && self.faults.corrupt_reads {
                    chunk[0] ^= 0xFF;
                    Counters::add(&self.counters.faults, 1);
                }
                if mem.write_slice(chunk, GuestAddress(s.addr.0 + at)).is_err() {
                    return (done, false);
                }
                at += n as u64;
                done += n as u64;
                Counters::add(&self.counters.bytes_read, n as u64);
            }
        }
        (done, true)
    }

    /// Copy `spans` to the disk at `offset`; whether all of it went.
    fn write_disk<M: GuestMemory + ?Sized>(&self, mem: &M, spans: &[Span], offset: u64) -> bool {
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        for s in spans {
            let mut at = 0u64;
            while at < s.len {
                let n = (s.len - at).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                if mem.read_slice(chunk, GuestAddress(s.addr.0 + at)).is_err()
                    || self.disk.file.write_all_at(chunk, offset + done).is_err()
                {
                    return false;
                }
                at += n as u64;
                done += n as u64;
                Counters::add(&self.counters.bytes_written, n as u64);
            }
        }
        true
    }

    /// The `outside` fault: the next request with data, while addresses
    /// are left, gets its data laid end to end from the next one instead
    /// of at its descriptors' addresses. Nothing is checked: the copies
    /// find out.
    fn misplace<M: GuestMemory + ?Sized>(&self, mem: &M, data: Vec<Span>) -> Vec<Span> {
        let Some(first) = data.first() else {
            return data;
        };
        if self.faults.outside.is_empty() {
            return data;
        }
        let n = self.data_requests.fetch_add(1, Ordering::Relaxed);
        let Some(target) = usize::try_from(n)
            .ok()
            .and_then(|n| self.faults.outside.get(n))
        else {
            return data;
        };
        let mut at = match target {
            OutsideAddr::At(addr) => *addr,
            OutsideAddr::PastRegionEnd => mem
                .physical_memory()
                .and_then(|m| m.find_region(first.addr))
                .map_or(first.addr.0, |r| r.start_addr().0.saturating_add(r.len())),
        };
        Counters::add(&self.counters.faults, 1);
        data.iter()
            .map(|s| {
                let moved = Span {
                    addr: GuestAddress(at),
                    len: s.len,
                };
                at = at.saturating_add(s.len);
                moved
            })
            .collect()
    }

    /// Count and tell of a request refused because `what` lay outside guest
    /// memory.
    fn refused(&self, sector: Option<u64>, what: &str) {
        Counters::add(&self.counters.outside, 1);
        let n = self.counters.outside.load(Ordering::Relaxed);
        match sector {
            Some(s) => eprintln!(
                "swiotlb-blkdev: request at sector {s}: {what} lies outside guest memory: \
                 refused with VIRTIO_BLK_S_IOERR ({n} so far)"
            ),
            None => eprintln!(
                "swiotlb-blkdev: a request: {what} lies outside guest memory: \
                 refused with VIRTIO_BLK_S_IOERR ({n} so far)"
            ),
        }
    }

    /// The overrun fault: write past the end of the last returned buffer,
    /// where the guest has memory.
    fn overrun<M: GuestMemory + ?Sized>(&self, mem: &M, data: &[Span]) {
        let Some(last) = data.last() else { return };
        if self.faults.overrun == 0 {
            return;
        }
        let Some(end) = last.addr.0.checked_add(last.len) else {
            return;
        };
        if fill(
            mem,
            GuestAddress(end),
            u64::from(self.faults.overrun),
            FAULT_BYTE,
        ) {
            Counters::add(&self.counters.faults, 1);
        }
    }
}

/// Whether `len` bytes at `addr` are all guest memory open for `access`.
fn inside<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u64,
    access: Permissions,
) -> bool {
    usize::try_from(len).is_ok_and(|len| mem.check_range(addr, len, access))
}

/// Whether every span is guest memory open for `access`.
fn all_inside<M: GuestMemory + ?Sized>(mem: &M, spans: &[Span], access: Permissions) -> bool {
    spans.iter().all(|s| inside(mem, s.addr, s.len, access))
}

fn put_status<M: GuestMemory + ?Sized>(mem: &M, at: GuestAddress, status: u32) -> bool {
    // The status values all fit in the status byte.
    let byte = u8::try_from(status).unwrap_or(u8::MAX);
    mem.write_slice(&[byte], at).is_ok()
}

fn read_spans<M: GuestMemory + ?Sized>(mem: &M, spans: &[Span], out: &mut [u8]) -> bool {
    let mut at = 0;
    for s in spans {
        let Ok(n) = usize::try_from(s.len) else {
            return false;
        };
        let Some(dst) = out.get_mut(at..at + n) else {
            return false;
        };
        if mem.read_slice(dst, s.addr).is_err() {
            return false;
        }
        at += n;
    }
    true
}

fn write_spans<M: GuestMemory + ?Sized>(mem: &M, spans: &[Span], data: &[u8]) -> bool {
    let mut at = 0;
    for s in spans {
        let Ok(n) = usize::try_from(s.len) else {
            return false;
        };
        let Some(src) = data.get(at..at + n) else {
            return false;
        };
        if mem.write_slice(src, s.addr).is_err() {
            return false;
        }
        at += n;
    }
    true
}

/// Fill `len` bytes at `addr` with `byte`, only if all of them are guest
/// memory; whether it did.
fn fill<M: GuestMemory + ?Sized>(mem: &M, addr: GuestAddress, len: u64, byte: u8) -> bool {
    if len == 0 || !inside(mem, addr, len, Permissions::Write) {
        return false;
    }
    let buf = vec![byte; CHUNK];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        if mem
            .write_slice(&buf[..n], GuestAddress(addr.0 + at))
            .is_err()
        {
            return false;
        }
        at += n as u64;
    }
    true
}

#[cfg(test)]
mod tests;
