//! The vhost-user side: [`VhostUserBackend`] for the device.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::{Device, SECTOR_SIZE};
use crate::fault::DIED_EXIT_CODE;

/// Entries of the one queue. virtio-drivers and Linux both size their
/// queue from this maximum; 256 is what qemu-storage-daemon offers.
pub const QUEUE_SIZE: u16 = 256;

/// Data segments per request: the queue size less the header and the
/// status, as QEMU's virtio-blk computes it.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// The length of the `virtio_blk_config` fields this device fills (up to and
/// including `num_queues`); later fields read as zero.
const CONFIG_LEN: usize = 36;

/// The guest memory as the daemon shares it with the backend.
pub(crate) type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// A virtio-blk device behind a vhost-user socket.
pub(crate) struct BlkBackend {
    device: Device,
    mem: Mutex<Memory>,
    /// Written before a deliberate death ([`crate::Faults::with_die_after`]).
    stats_path: Option<PathBuf>,
}

impl BlkBackend {
    pub(crate) fn new(device: Device, mem: Memory, stats_path: Option<PathBuf>) -> Self {
        Self {
            device,
            mem: Mutex::new(mem),
            stats_path,
        }
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The `virtio_blk_config` structure (VIRTIO 1.2 §5.2.4), little-endian.
    pub(crate) fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        // capacity: in 512-byte sectors whatever blk_size says
        c[0..8].copy_from_slice(&self.device.disk().sectors().to_le_bytes());
        // size_max (8..12) stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        // topology (24..32) and writeback (32) stay 0
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    fn process(&self, vring: &VringRwLock) -> io::Result<()> {
        let mem = self
            .mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .memory();
        let batch = {
            let mut state = vring.get_mut();
            let batch = self
                .device
                .process_queue(state.get_queue_mut(), &*mem)
                .map_err(io::Error::other)?;
            if batch.notify {
                state.signal_used_queue()?;
            }
            batch
        };
        self.device.late_writes(&*mem, &batch.late_writes);
        if batch.die {
            self.die();
        }
        Ok(())
    }

    /// The die fault: leave as a crashed device would, without closing the
    /// connection in order (the counters are still written, for the test).
    fn die(&self) -> ! {
        eprintln!("swiotlb-blkdev: dying on purpose (die-after fault)");
        if let Some(path) = &self.stats_path {
            let _ = crate::server::write_stats(path, &self.device.stats());
        }
        std::process::exit(DIED_EXIT_CODE)
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.device.disk().readonly() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // CONFIGURE_MEM_SLOTS: the frontend adds and removes regions while
        // running (ADD_MEM_REG / REM_MEM_REG); vhost-user-backend swaps the
        // memory atomically and calls `update_memory`.
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queue itself carries the flag (the daemon sets it on every
        // vring) and `Device::process_queue` reads it from there.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The frontend may ask for a larger structure than ours (QEMU asks
        // for its whole `virtio_blk_config`): fields we do not fill read as
        // zero. A request beyond the vhost-user limit gets an empty answer,
        // which the protocol turns into an error for the frontend.
        let Some(end) = offset.checked_add(size) else {
            return Vec::new();
        };
        if size == 0 || end > vhost::vhost_user::message::VHOST_USER_CONFIG_SIZE {
            return Vec::new();
        }
        let config = self.config();
        (offset..end)
            .map(|i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| config.get(i))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "swiotlb-blkdev: unexpected event set {evset:?}"
            )));
        }
        match (device_event, vrings.first()) {
            (0, Some(vring)) => self.process(vring),
            _ => Err(io::Error::other(format!(
                "swiotlb-blkdev: event {device_event} for a queue it does not have"
            ))),
        }
    }
}

/// The backend as the daemon holds it.
pub(crate) type SharedBackend = Arc<BlkBackend>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Disk;
    use crate::Faults;

    fn backend(sectors: u64, readonly: bool) -> (tempfile::NamedTempFile, BlkBackend) {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(sectors * SECTOR_SIZE + 100).unwrap();
        let disk = Disk::open(img.path(), readonly).unwrap();
        let device = Device::new(disk, "cfg", Faults::none());
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        (img, BlkBackend::new(device, mem, None))
    }

    #[test]
    fn config_space_has_capacity_seg_max_and_blk_size() {
        let (_img, b) = backend(2048, false);
        let c = b.get_config(0, 36);
        assert_eq!(c.len(), 36);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 1);
    }

    #[test]
    fn config_space_honours_offset_and_size_and_never_panics() {
        let (_img, b) = backend(0x0102, false);
        // One byte in the middle of capacity.
        assert_eq!(b.get_config(1, 1), vec![0x01]);
        // Straddling the end of the fields we fill: zero-padded.
        let tail = b.get_config(30, 60);
        assert_eq!(tail.len(), 60);
        assert_eq!(&tail[4..6], &1u16.to_le_bytes());
        assert!(tail[6..].iter().all(|&x| x == 0));
        // Past every field, still the size asked for.
        assert_eq!(b.get_config(200, 8), vec![0; 8]);
        // Nothing, or too much, or an overflowing end: an empty answer.
        assert!(b.get_config(0, 0).is_empty());
        assert!(b.get_config(0, 0x1001).is_empty());
        assert!(b.get_config(u32::MAX, 2).is_empty());
        assert!(b.get_config(0x1000, 1).is_empty());
    }

    #[test]
    fn features_offered() {
        let (_img, b) = backend(8, false);
        let f = b.features();
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_RING_F_EVENT_IDX,
        ] {
            assert_ne!(f & 1 << bit, 0, "feature bit {bit}");
        }
        assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        let (_img, ro) = backend(8, true);
        assert_ne!(ro.features() & 1 << VIRTIO_BLK_F_RO, 0);
        assert!(b.protocol_features().contains(
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures::CONFIG
        ));
    }
}
