//! Pool statistics, named like Linux's `/sys/kernel/debug/swiotlb` files.

#![forbid(unsafe_code)]

use alloc::vec::Vec;

use crate::error::FailReason;

/// A snapshot of one pool's counters.
///
/// `io_tlb_*` fields carry Linux's debugfs names so that kernel engineers
/// read them without a glossary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Slots in the pool (`io_tlb_nslabs`).
    pub io_tlb_nslabs: u64,
    /// Slots held by live mappings (`io_tlb_used`).
    pub io_tlb_used: u64,
    /// The most slots ever held at once since creation or the last
    /// [`Pool::reset_hiwater`](crate::Pool::reset_hiwater)
    /// (`io_tlb_used_hiwater`). Exact when `hiwater_exact` (one area, or
    /// [`Pool::with_hiwater`](crate::Pool::with_hiwater));
    /// otherwise the sum of each area's own mark, an upper bound.
    pub io_tlb_used_hiwater: u64,
    /// Whether `io_tlb_used_hiwater` is the exact pool-wide mark
    /// ([`Pool::with_hiwater`](crate::Pool::with_hiwater)).
    pub hiwater_exact: bool,
    /// Slots held per area.
    pub area_used: Vec<u64>,
    /// Failed operations by reason, indexed by [`FailReason`].
    /// Serialized as a map from [`FailReason::name`] to the count.
    #[cfg_attr(feature = "serde", serde(serialize_with = "failures_by_name"))]
    pub failures: [u64; FailReason::COUNT],
    /// Bytes copied from originals into bounce slots (map and
    /// `sync_for_device`).
    pub bytes_to_device: u64,
    /// Bytes copied from bounce slots back into originals (unmap and
    /// `sync_for_cpu`).
    pub bytes_from_device: u64,
    /// Mappings the device reached directly, without bouncing.
    pub direct_maps: u64,
}

impl Stats {
    /// Failures counted under `reason`.
    pub fn failures(&self, reason: FailReason) -> u64 {
        self.failures[reason as usize]
    }

    /// All failures.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }
}

/// `failures` as `{"too_large": n, "pool_full": n, ...}`: a reader sees
/// the reasons by the names the text form uses, not by counter index.
#[cfg(feature = "serde")]
fn failures_by_name<S: serde::Serializer>(
    failures: &[u64; FailReason::COUNT],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        FailReason::ALL
            .iter()
            .map(|&r| (r.name(), failures[r as usize])),
    )
}

impl core::fmt::Display for Stats {
    /// One `name value` line per counter, debugfs style.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(f, "io_tlb_nslabs {}", self.io_tlb_nslabs)?;
        writeln!(f, "io_tlb_used {}", self.io_tlb_used)?;
        writeln!(f, "io_tlb_used_hiwater {}", self.io_tlb_used_hiwater)?;
        for (i, u) in self.area_used.iter().enumerate() {
            writeln!(f, "area{i}_used {u}")?;
        }
        for r in FailReason::ALL {
            writeln!(f, "failures_{} {}", r.name(), self.failures(r))?;
        }
        writeln!(f, "bytes_to_device {}", self.bytes_to_device)?;
        writeln!(f, "bytes_from_device {}", self.bytes_from_device)?;
        write!(f, "direct_maps {}", self.direct_maps)
    }
}
