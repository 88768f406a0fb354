//! Byte counts as people say them, for every subcommand's text output.

/// `64 B`, `1500 B`, `4 KiB`, `6 GiB`, `1.50 GiB`: the largest binary unit
/// that divides `n` exactly; below 1 MiB an odd size stays in bytes (as
/// DMA sizes are quoted), above it two decimals of the largest unit.
pub fn human(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (u, shift) in UNITS {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {u}", n >> shift);
        }
    }
    if n < 1 << 20 {
        return format!("{n} B");
    }
    let (u, shift) = UNITS
        .into_iter()
        .find(|&(_, s)| n >= 1 << s)
        .unwrap_or(("KiB", 10));
    format!("{:.2} {u}", n as f64 / (1u64 << shift) as f64)
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(64), "64 B");
        assert_eq!(human(1500), "1500 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(256 << 10), "256 KiB");
        assert_eq!(human(6 << 30), "6 GiB");
        assert_eq!(human(3 << 29), "1536 MiB");
        assert_eq!(human((1 << 20) + 1), "1.00 MiB");
        assert_eq!(human((5 << 30) / 2 + 3), "2.50 GiB");
    }
}
