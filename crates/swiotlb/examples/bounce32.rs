//! A 32-bit device on a machine whose buffers live above 4 GiB.
//!
//! The pool sits in "low" memory (physical 0x1000_0000); every heap buffer
//! is made to appear above 4 GiB by the platform translation, so the
//! device, which drives 32 address lines, reaches only the pool. A
//! simulated device thread reads what the driver sent and writes replies;
//! the driver checks every byte. The example shows one mapping up close
//! (the buffer's address above 4 GiB, the bounce address below), then what
//! was copied each way, and the pool's statistics.
//!
//! Run with `cargo run --release -p swiotlb --example bounce32`.

use std::fmt::Write as _;
use std::ptr::NonNull;

use swiotlb::translate::Translate;
use swiotlb::{Device, Direction, DmaAddr, DmaMask, PhysAddr, Pool, PoolConfig};

/// Heap buffers appear 4 GiB above their CPU address; the pool region is
/// given its own low physical base when it is built.
#[derive(Clone)]
struct HighMemory;

impl Translate for HighMemory {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr(ptr as usize as u64 + (1 << 32))
    }
}

/// A pattern that differs per request and per byte.
fn pattern(req: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ req.wrapping_mul(131)) as u8)
        .collect()
}

/// What the run moved, for the summary and its check.
struct Run {
    /// The report to print.
    text: String,
    /// Bytes handed to `map`, both directions.
    mapped: u64,
    /// Bytes of the from-device (reply) mappings.
    replies: u64,
    bytes_to_device: u64,
    bytes_from_device: u64,
}

fn run() -> Run {
    const POOL_BYTES: usize = 4 << 20;
    let mut region = vec![0u8; POOL_BYTES].into_boxed_slice();
    let cpu = NonNull::new(region.as_mut_ptr()).expect("non-null");
    // SAFETY:
    // - `region` is valid for `POOL_BYTES` bytes and outlives `pool` (both
    //   live to the end of `run`, `pool` dropped first);
    // - nothing but the pool touches `region` while the pool lives;
    // - the physical base is ours to define in this simulation.
    let pool: Pool = unsafe {
        Pool::new(
            cpu,
            PhysAddr(0x1000_0000),
            POOL_BYTES,
            PoolConfig::with_areas(2),
        )
    }
    .expect("pool");
    let dev = Device::new(DmaMask::BITS_32).with_translate(HighMemory);
    let mut text = String::new();

    let sizes = [64usize, 512, 1500, 4096, 9000, 65536, 200_000];
    let (mut mapped, mut replies) = (0u64, 0u64);
    for (req, &len) in sizes.iter().cycle().take(70).enumerate() {
        // The driver sends a request ...
        let request = pattern(req, len);
        // The buffer's address as the platform sees it; the Vec's heap
        // memory does not move when the Vec moves into the mapping.
        let buffer_phys = HighMemory.virt_to_phys(request.as_ptr());
        let out = pool
            .map(&dev, request, Direction::ToDevice)
            .expect("map out");
        assert!(out.is_bounced(), "a 32-bit device must bounce high memory");
        assert!(out.dma_addr().as_u64() + len as u64 <= 1 << 32);
        if req == 0 {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "one mapping up close, {len} bytes to the device:");
            let _ = writeln!(
                text,
                "  buffer at {buffer_phys:>#12x}  above 4 GiB: a 32-bit device cannot reach it"
            );
            let _ = writeln!(
                text,
                "  bounce at {:>#12x}  slots in the pool below 4 GiB (physical {}), \
                 the address the device is given",
                out.dma_addr(),
                out.bounce_phys().expect("bounced"),
            );
        }
        // ... and the reply buffer the device will fill.
        let reply = pool
            .map(&dev, vec![0u8; len], Direction::FromDevice)
            .expect("map in");

        // The device: reads the request through its DMA window, answers
        // with the bytes inverted.
        let device = std::thread::scope(|s| {
            s.spawn(|| {
                let mut seen = vec![0u8; len];
                // SAFETY: plays the device: `device_ptr` is the CPU view of
                // `len` bytes the device may access while mapped, and the
                // fresh `seen` does not overlap it.
                unsafe {
                    std::ptr::copy_nonoverlapping(out.device_ptr().as_ptr(), seen.as_mut_ptr(), len)
                };
                for (i, b) in seen.iter().enumerate() {
                    // Plays the device: `i < len`, inside the `len` bytes
                    // of the reply's slots it may write.
                    let at = reply.device_ptr().as_ptr().wrapping_add(i);
                    // SAFETY: `at` is byte `i < len` of the reply's slots,
                    // which the device may write while mapped.
                    unsafe { at.write(!b) };
                }
                seen
            })
            .join()
            .expect("device thread")
        });
        assert_eq!(device, pattern(req, len), "device saw the request");
        out.unmap();
        let answer = reply.unmap();
        assert!(answer.iter().zip(pattern(req, len)).all(|(a, p)| *a == !p));
        mapped += 2 * len as u64;
        replies += len as u64;
    }

    let stats = pool.stats();
    let _ = writeln!(
        text,
        "bounced and checked {mapped} bytes for a 32-bit device: 70 requests out, 70 replies in"
    );
    let _ = writeln!(
        text,
        "every map copies its buffer into the slots, from-device (reply) maps too:\n  \
         Linux does so since CVE-2022-0854, so that stale slot data never reaches a device;\n  \
         bytes_to_device {} = all {mapped} bytes mapped, \
         bytes_from_device {} = the {replies} bytes of replies copied back",
        stats.bytes_to_device, stats.bytes_from_device
    );
    let _ = writeln!(
        text,
        "pool: {} slots of {} bytes in {} areas at {}",
        pool.nslabs(),
        pool.slot_size(),
        pool.nareas(),
        pool.start()
    );
    let _ = writeln!(text, "{stats}");
    let run = Run {
        text,
        mapped,
        replies,
        bytes_to_device: stats.bytes_to_device,
        bytes_from_device: stats.bytes_from_device,
    };
    drop(pool);
    drop(region);
    run
}

fn main() {
    let r = run();
    print!("{}", r.text);
    // What the summary line claims, checked.
    assert_eq!(r.bytes_to_device, r.mapped, "map-time copies go both ways");
    assert_eq!(
        r.bytes_from_device, r.replies,
        "only replies are copied back"
    );
}

#[cfg(test)]
mod tests {
    use super::run;

    /// The demo shows what happened: one buffer above 4 GiB beside its
    /// bounce address below, and map-time copies in both directions.
    #[test]
    fn bounce32_shows_the_bounce_and_the_copies_both_ways() {
        let r = run();
        let line = |start: &str| {
            r.text
                .lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no `{start}` line in\n{}", r.text))
                .to_string()
        };
        let hex = |l: &str| {
            let word = l.split_whitespace().nth(2).unwrap();
            u64::from_str_radix(word.trim_start_matches("0x"), 16).unwrap()
        };
        assert!(hex(&line("buffer at")) >= 1 << 32, "{}", r.text);
        assert!(hex(&line("bounce at")) < 1 << 32, "{}", r.text);
        assert_eq!(hex(&line("bounce at")), 0x1000_0000);
        // From-device maps copy in too: everything mapped went to the slots.
        assert_eq!(r.bytes_to_device, r.mapped);
        assert_eq!(r.bytes_from_device, r.replies);
        assert!(
            line("every map copies").contains("from-device (reply) maps too"),
            "{}",
            r.text
        );
        assert!(r.text.contains("CVE-2022-0854"));
    }
}
