use super::*;
use crate::error::ParamProblem;
use proptest::prelude::*;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn region(base: u64, size: u64, force: bool) -> RegionParam {
    RegionParam {
        base: PhysAddr(base),
        size,
        force,
    }
}

fn bad_region(at: usize, problem: RegionProblem) -> Result<RegionParam> {
    Err(Error::BadRegion { at, problem })
}

/// `memparse()`: every suffix, in both cases, and each base.
#[test]
fn region_reads_every_suffix_in_both_cases() {
    let cases: &[(&str, u64)] = &[
        ("256k", 256 * KIB),
        ("256K", 256 * KIB),
        ("1m", MIB),
        ("1M", MIB),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1t", 1 << 40),
        ("1T", 1 << 40),
        ("1p", 1 << 50),
        ("1P", 1 << 50),
        ("1e", 1 << 60),
        ("1E", 1 << 60),
        ("262144", 262_144),
    ];
    for (size, want) in cases {
        let text = format!("{size}@0");
        let r = RegionParam::parse_strict(&text).unwrap();
        assert_eq!(r.size, *want, "{text}");
        assert_eq!(RegionParam::parse(&text), Ok(r), "{text}");
        // The address takes the same units.
        let text = format!("256K@{size}");
        assert_eq!(
            RegionParam::parse_strict(&text).map(|r| r.base),
            Ok(PhysAddr(*want)),
            "{text}"
        );
    }
}

#[test]
fn region_reads_hex_and_octal() {
    let r = RegionParam::read("0x400000@0x10000000,force").unwrap();
    assert_eq!(r.param, region(0x1000_0000, 0x40_0000, true));
    assert_eq!((r.size.radix, r.address.radix), (16, 16));
    // Octal, as memparse() reads a leading 0: 01000K is 512 KiB.
    let r = RegionParam::read("01000K@0100000000").unwrap();
    assert_eq!(r.param, region(0o100_000_000, 512 * KIB, false));
    assert_eq!((r.size.radix, r.address.radix), (8, 8));
    assert_eq!(r.size.suffix, Some(b'K'));
    assert_eq!((r.size.at, r.size.len), (0, 6));
    // Hex digits and a suffix: 0x10M is 16 MiB.
    assert_eq!(
        RegionParam::parse_strict("0x10M@0x1m").map(|r| (r.base, r.size)),
        Ok((PhysAddr(MIB), 16 * MIB))
    );
    // The key may be given with the value.
    assert_eq!(
        RegionParam::parse_strict("swiotlb.region=4M@256M"),
        Ok(region(256 * MIB, 4 * MIB, false))
    );
}

/// Every refusal, in both modes, each with its own problem.
#[test]
fn region_refusals_in_both_modes() {
    use RegionProblem::*;
    let small = TooSmall {
        size: 254 * KIB,
        segment: 256 * KIB,
    };
    let cases: &[(&str, Result<RegionParam>)] = &[
        ("", bad_region(0, Garbage)),
        ("force", bad_region(0, Garbage)),
        ("4M", bad_region(2, Garbage)),
        ("4M@", bad_region(3, Garbage)),
        ("4M@x", bad_region(3, Garbage)),
        ("4M@256M,", bad_region(7, Garbage)),
        ("4M@256M,noforce", bad_region(7, Garbage)),
        ("4M@256M,Force", bad_region(7, Garbage)),
        ("4M@256M ", bad_region(7, Garbage)),
        ("4Q@256M", bad_region(1, Garbage)),
        ("4MM@256M", bad_region(2, Garbage)),
        ("-4M@256M", bad_region(0, Garbage)),
        ("4M:256M", bad_region(2, Garbage)),
        ("18446744073709551616@0", bad_region(0, SizeOverflow)),
        ("16E@0", bad_region(0, SizeOverflow)),
        ("0x1000000000000000K@0", bad_region(0, SizeOverflow)),
        ("4M@18446744073709551616", bad_region(3, AddressOverflow)),
        ("4M@16E", bad_region(3, AddressOverflow)),
        ("4M@0xffffffffffff0000", bad_region(0, EndOverflow)),
        ("15E@2E", bad_region(0, EndOverflow)),
        (
            "128K@1M",
            bad_region(
                0,
                TooSmall {
                    size: 128 * KIB,
                    segment: 256 * KIB,
                },
            ),
        ),
        (
            "0@1M",
            bad_region(
                0,
                TooSmall {
                    size: 0,
                    segment: 256 * KIB,
                },
            ),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(RegionParam::parse(text), *want, "lenient {text:?}");
        assert_eq!(RegionParam::parse_strict(text), *want, "strict {text:?}");
    }
    // A region that ends exactly at 2^64 is not past it.
    assert_eq!(
        RegionParam::parse_strict("1M@0xfffffffffff00000"),
        Ok(region(0xffff_ffff_fff0_0000, MIB, false))
    );
    // Shrunk below a segment: refused by the lenient parser too, and the
    // strict one says why first.
    assert_eq!(RegionParam::parse("256K@1"), bad_region(0, small));
    assert_eq!(
        RegionParam::parse_strict("256K@1"),
        bad_region(5, Unaligned)
    );
}

/// Not whole slots: strict refuses, lenient shrinks inward and says so.
#[test]
fn region_unaligned_is_shrunk_or_refused() {
    // Base 1 MiB + 1: up to the next slot; end down to a slot.
    let r = RegionParam::read("0x100000@0x100001").unwrap();
    assert!(r.shrunk);
    assert_eq!(r.param, region(MIB + 2048, MIB - 2048, false));
    assert_eq!(
        RegionParam::parse_strict("0x100000@0x100001"),
        bad_region(9, RegionProblem::Unaligned)
    );
    // Only the size: the end comes down.
    let r = RegionParam::read("1000000@16M").unwrap();
    assert_eq!(
        r.param,
        region(16 * MIB, 1_000_000 - 1_000_000 % 2048, false)
    );
    assert!(r.shrunk);
    assert_eq!(
        RegionParam::parse_strict("1000000@16M"),
        bad_region(0, RegionProblem::Unaligned)
    );
    assert!(!RegionParam::read("1M@16M").unwrap().shrunk);
}

fn line_findings(line: &str) -> Vec<LineFinding> {
    Cmdline::read(line).unwrap().findings().copied().collect()
}

const MICROVM: &str = "console=ttyS0 reboot=k panic=1 \
    virtio_mmio.device=4K@0xd0000000:5 swiotlb.region=4M@0x10000000,force";

#[test]
fn line_reads_a_microvm_command_line() {
    let c = Cmdline::parse_strict(MICROVM).unwrap();
    assert_eq!(c.region, Some(region(0x1000_0000, 4 * MIB, true)));
    assert_eq!(c.swiotlb, None);
    assert_eq!(c.high, None);
    assert_eq!(c.force(), Force::Force);
    let pool = c.region_pool(1).unwrap();
    assert_eq!((pool.nslabs, pool.nareas), (2048, 1));
    assert!(line_findings(MICROVM).is_empty());
    // Nothing after `--` is read: it is init's.
    let c = Cmdline::parse_strict("quiet -- swiotlb.region=4M@256M").unwrap();
    assert_eq!(c.region, None);
    // Offsets of a refused region count from the start of the line.
    assert_eq!(
        Cmdline::parse("quiet swiotlb.region=4M@"),
        Err(Error::BadRegion {
            at: 24,
            problem: RegionProblem::Garbage
        })
    );
    assert_eq!(
        Cmdline::parse("swiotlb.region"),
        Err(Error::BadRegion {
            at: 14,
            problem: RegionProblem::Garbage
        })
    );
}

#[test]
fn line_repeated_key_is_refused_or_the_last_taken() {
    let line = "swiotlb.region=4M@256M quiet swiotlb.region=8M@512M";
    assert_eq!(
        Cmdline::parse_strict(line),
        Err(Error::BadCmdline {
            at: 29,
            problem: CmdlineProblem::Repeated {
                key: CmdlineKey::Region,
                first: 0
            }
        })
    );
    let r = Cmdline::read(line).unwrap();
    assert_eq!(r.cmdline.region, Some(region(512 * MIB, 8 * MIB, false)));
    assert_eq!(
        r.findings().copied().collect::<Vec<_>>(),
        [LineFinding::Repeated {
            key: CmdlineKey::Region,
            first: 0,
            last: 29
        }]
    );
    // The other keys too; `swiotlb=` values merge (see below).
    let line = "swiotlb=force swiotlb=,2";
    let merged = Cmdline::parse(line).unwrap().swiotlb.unwrap();
    assert_eq!((merged.nareas, merged.force), (Some(2), Force::Force));
    assert!(matches!(
        Cmdline::parse_strict(line),
        Err(Error::BadCmdline {
            at: 14,
            problem: CmdlineProblem::Repeated {
                key: CmdlineKey::Swiotlb,
                first: 0
            }
        })
    ));
    assert!(matches!(
        Cmdline::parse_strict("swiotlb.high=1024 swiotlb.high=2048"),
        Err(Error::BadCmdline {
            problem: CmdlineProblem::Repeated {
                key: CmdlineKey::High,
                ..
            },
            ..
        })
    ));
}

/// Found by fuzzing (`cmdline`): a value is the text after its key, as
/// Linux hands it to the key's parser, so a value that itself starts with
/// the key is not a number. `swiotlb=swiotlb=422` was read as 422 slots,
/// where Linux ignores the whole value; the offsets of the strict
/// parser's errors were off by the key's length.
#[test]
fn a_value_that_repeats_its_key_is_not_read_as_a_number() {
    let c = Cmdline::parse("swiotlb=swiotlb=422").unwrap();
    assert_eq!(c.swiotlb, Some(SwiotlbParam::default()));
    let c = Cmdline::parse("swiotlb=swiotlb=force").unwrap();
    assert_eq!(c.swiotlb.unwrap().force, Force::Default);
    assert_eq!(
        Cmdline::parse_strict("quiet swiotlb=swiotlb=65536"),
        Err(Error::BadParam {
            at: 14,
            problem: ParamProblem::Trailing
        })
    );
    // `swiotlb.high=` likewise: not a whole number.
    assert_eq!(
        Cmdline::parse("swiotlb.high=swiotlb.high=2048"),
        Err(Error::BadParam {
            at: 13,
            problem: ParamProblem::Trailing
        })
    );
    // A lone value may still carry its key (`SwiotlbParam::parse`).
    assert_eq!(SwiotlbParam::parse("swiotlb=422").nslabs, Some(512));
    assert_eq!(
        HighParam::parse_strict("swiotlb.high=2048").unwrap().nslabs,
        2048
    );
}

#[test]
fn line_unaligned_region_is_shrunk_and_said() {
    let line = "swiotlb.region=0x100000@0x100001";
    assert_eq!(
        line_findings(line),
        [LineFinding::RegionShrunk {
            at: 15,
            from_base: 0x10_0001,
            from_size: 0x10_0000
        }]
    );
    assert_eq!(
        Cmdline::parse_strict(line),
        Err(Error::BadRegion {
            at: 24,
            problem: RegionProblem::Unaligned
        })
    );
}

/// The precedence the module documentation states.
#[test]
fn line_precedence() {
    // The region sets the size; the slot count is ignored.
    let line = "swiotlb=65536,4 swiotlb.region=4M@256M";
    let r = Cmdline::read(line).unwrap();
    assert_eq!(
        r.findings().copied().collect::<Vec<_>>(),
        [LineFinding::SlotsIgnored {
            at: 8,
            nslabs: 65536
        }]
    );
    assert_eq!(
        Cmdline::parse_strict(line),
        Err(Error::BadCmdline {
            at: 0,
            problem: CmdlineProblem::SlotsOverridden
        })
    );
    // The area count applies to the region's pool.
    let pool = r.cmdline.region_pool(64).unwrap();
    assert_eq!((pool.nslabs, pool.nareas, pool.size), (2048, 4, 4 * MIB));
    let c = Cmdline::parse_strict("swiotlb=,4 swiotlb.region=4M@256M").unwrap();
    assert_eq!(c.region_pool(1).unwrap().nareas, 4);
    // Without one, one per CPU, but no more than the region's segments.
    let c = Cmdline::parse_strict("swiotlb.region=1M@256M").unwrap();
    assert_eq!(c.region_pool(3).unwrap().nareas, 4);
    assert_eq!(c.region_pool(64).unwrap().nareas, 4);
    // swiotlb=force and the region's force are one switch.
    for line in [
        "swiotlb=force swiotlb.region=4M@256M",
        "swiotlb.region=4M@256M,force",
        "swiotlb=force swiotlb.region=4M@256M,force",
    ] {
        let c = Cmdline::parse_strict(line).unwrap();
        assert_eq!(c.force(), Force::Force, "{line}");
        assert!(c.region_pool(1).unwrap().force, "{line}");
    }
    let c = Cmdline::parse_strict("swiotlb.region=4M@256M").unwrap();
    assert_eq!(c.force(), Force::Default);
    // noforce with a region: refused, or noted and dropped.
    let line = "swiotlb=noforce swiotlb.region=4M@256M";
    assert_eq!(
        Cmdline::parse_strict(line),
        Err(Error::BadCmdline {
            at: 0,
            problem: CmdlineProblem::NoForceWithRegion
        })
    );
    let r = Cmdline::read(line).unwrap();
    assert_eq!(
        r.findings().copied().collect::<Vec<_>>(),
        [LineFinding::NoForceIgnored { at: 8 }]
    );
    assert_eq!(r.cmdline.force(), Force::Default);
    assert_eq!(
        Cmdline::parse("swiotlb=noforce").unwrap().force(),
        Force::NoForce
    );
    // swiotlb.high= stays its own pool.
    let c = Cmdline::parse_strict("swiotlb.high=2048 swiotlb.region=4M@256M").unwrap();
    assert_eq!(c.high.map(|h| h.nslabs), Some(2048));
    // The strict swiotlb= check counts from the line.
    assert_eq!(
        Cmdline::parse_strict("quiet swiotlb=1000"),
        Err(Error::BadParam {
            at: 14,
            problem: crate::error::ParamProblem::SlotsRounded
        })
    );
    assert!(Cmdline::parse("quiet swiotlb=1000").is_ok());
}

#[test]
fn region_errors_name_swiotlb_and_the_reason() {
    let e = RegionParam::parse("128K@1M").unwrap_err().to_string();
    assert!(e.starts_with("swiotlb: swiotlb.region="), "{e}");
    assert!(e.contains("smaller than one 262144-byte segment"), "{e}");
    let e = Cmdline::parse_strict("swiotlb=noforce swiotlb.region=4M@256M")
        .unwrap_err()
        .to_string();
    assert!(e.contains("noforce"), "{e}");
}

proptest! {
    /// Random lines, made mostly of the pieces the grammar knows: never a
    /// panic, and a strict success is a lenient one with nothing to say.
    #[test]
    fn random_lines_never_panic(
        words in proptest::collection::vec(
            prop_oneof![
                "[ -~]{0,12}",
                "swiotlb(\\.region|\\.high)?=[0-9a-fxA-FXkKmMgGtTpPeE@,forcen]{0,24}",
                "swiotlb\\.region=(0x)?[0-9]{1,20}[kKmMgGtTpPeEQ]?@(0x)?[0-9a-f]{1,20}[kKmMgGtTpPeE]?(,force)?",
            ],
            0..6,
        ),
    ) {
        let line = words.join(" ");
        let lenient = Cmdline::read(&line);
        if let Ok(strict) = Cmdline::parse_strict(&line) {
            let r = lenient.unwrap();
            prop_assert_eq!(r.cmdline, strict);
            prop_assert_eq!(r.findings().count(), 0);
        }
        if let Ok(c) = Cmdline::parse(&line) {
            if let Some(p) = c.region_pool(4) {
                prop_assert!(p.size >= MIN_REGION_SIZE);
                prop_assert_eq!(p.base.as_u64() % SLOT, 0);
                prop_assert_eq!(p.size % SLOT, 0);
                prop_assert!(p.base.as_u64().checked_add(p.size - 1).is_some());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let line = String::from_utf8_lossy(&bytes);
        let _ = Cmdline::read(&line);
        let _ = Cmdline::parse_strict(&line);
        let _ = RegionParam::read(&line);
        let _ = RegionParam::parse_strict(&line);
    }
}

/// Linux runs `setup_io_tlb_npages()` once per `swiotlb=` on the line, and
/// each run sets only what its value names, on top of what the earlier
/// ones stored: repeated values merge, in order.
#[test]
fn repeated_swiotlb_values_merge_as_linux_stores_them() {
    let read = |line: &str| Cmdline::read(line).unwrap();
    let param = |line: &str| read(line).cmdline.swiotlb.unwrap();
    // A slot count, then an area count: both kept.
    let p = param("swiotlb=65536 quiet swiotlb=,4");
    assert_eq!(
        (p.nslabs, p.nareas, p.force),
        (Some(65536), Some(4), Force::Default)
    );
    assert_eq!(p.resolve(64), p_resolved(65536, 4, Force::Default));
    assert_eq!(
        read("swiotlb=65536 quiet swiotlb=,4")
            .findings()
            .copied()
            .collect::<Vec<_>>(),
        [LineFinding::Merged {
            first: 0,
            last: 20,
            count: 2
        }]
    );
    // The area count rounds the slot count stored before it: 3000 is 3072
    // after step 1, a power of two (4096) once areas are set.
    assert_eq!(param("swiotlb=3000 swiotlb=,2").nslabs, Some(4096));
    // ...but a slot count set after the area count is stored as it comes,
    // and Linux's init does not round it again: 1536 slots, and
    // limit_nareas() leaves the 4 areas (4 segments fit).
    let p = param("swiotlb=,4 swiotlb=1500");
    assert_eq!((p.nslabs, p.nareas), (Some(1536), Some(4)));
    assert_eq!(p.resolve(1), p_resolved(1536, 4, Force::Default));
    // Too small for its areas: Linux cuts the areas to whole segments.
    assert_eq!(
        param("swiotlb=,8 swiotlb=256").resolve(1),
        p_resolved(256, 2, Force::Default)
    );
    // The same in one value rounds the slots up instead.
    assert_eq!(
        SwiotlbParam::parse("256,8").resolve(1),
        p_resolved(1024, 8, Force::Default)
    );
    // The words: each sets its own flag, and noforce wins in either order
    // (swiotlb_init_remap() returns before it reads force).
    assert_eq!(param("swiotlb=force swiotlb=2048").force, Force::Force);
    assert_eq!(param("swiotlb=2048 swiotlb=force").nslabs, Some(2048));
    assert_eq!(param("swiotlb=force swiotlb=noforce").force, Force::NoForce);
    assert_eq!(param("swiotlb=noforce swiotlb=force").force, Force::NoForce);
    // A value Linux ignores changes nothing stored.
    let p = param("swiotlb=4096,2,force swiotlb=junk");
    assert_eq!(
        (p.nslabs, p.nareas, p.force),
        (Some(4096), Some(2), Force::Force)
    );
    // The region's pool takes the merged area count.
    let c = Cmdline::parse("swiotlb=,2 swiotlb.region=4M@256M swiotlb=force").unwrap();
    let pool = c.region_pool(8).unwrap();
    assert_eq!((pool.nareas, pool.force), (2, true));
    // The strict parser still refuses the repeat.
    assert!(matches!(
        Cmdline::parse_strict("swiotlb=65536 swiotlb=,4"),
        Err(Error::BadCmdline {
            problem: CmdlineProblem::Repeated {
                key: CmdlineKey::Swiotlb,
                first: 0
            },
            ..
        })
    ));
}

fn p_resolved(nslabs: u64, nareas: u32, force: Force) -> crate::config::Resolved {
    crate::config::Resolved {
        nslabs,
        nareas,
        bytes: nslabs << IO_TLB_SHIFT,
        force,
    }
}

/// Linux splits the command line at `isspace()`, which on ASCII is Rust's
/// whitespace and the vertical tab.
#[test]
fn a_vertical_tab_separates_words() {
    let c = Cmdline::parse("quiet\x0bswiotlb=force\x0cswiotlb.high=1024").unwrap();
    assert_eq!(c.swiotlb.unwrap().force, Force::Force);
    assert_eq!(c.high.unwrap().nslabs, 1024);
}
