//! Byte counts as people say them: printed in every subcommand's text
//! output, and read from options such as `--start 1MiB`.

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

/// What [`parse_size`] accepts, for error messages.
pub const SIZE_HINT: &str =
    "a number of bytes, optionally followed by B, KiB, MiB, GiB or TiB (K, M, G, T also do), \
     like 4096, 64KiB or 512MiB";

/// Reads a byte count: decimal digits (`_` may separate them), optionally
/// followed by a binary unit: `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` (any case). `64KiB`, `1MiB`, `512 MiB`, `4096` are sizes;
/// `1.5MiB`, `-1`, `1MB` (ambiguous: 10^6 or 2^20?) are not.
///
/// # Errors
/// A message naming the text and what a size looks like.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let (digits, unit) = (&s[..split], s[split..].trim_start());
    let bad = || format!("`{text}` is not a size ({SIZE_HINT})");
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let n: u64 = digits.replace('_', "").parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "`{text}` is ambiguous (powers of 1000 or of 1024?): write {digits}{}iB",
                &unit[..1].to_ascii_uppercase()
            ))
        }
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large a size"))
}

#[cfg(test)]
mod tests {
    use super::{human, parse_size};

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1_048_576"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "0x10",
            "1 XiB",
            "_1",
            "1__0",
            "99999999999999999999",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
        assert!(parse_size("1MB").unwrap_err().contains("write 1MiB"));
        assert!(parse_size("20000000TiB").unwrap_err().contains("too large"));
    }

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
