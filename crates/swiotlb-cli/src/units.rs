//! Byte counts as people say them: printed in every subcommand's text
//! output, and read, in one grammar ([`parse_size`]), from options such as
//! `--start 1MiB` and from script lines such as `map rx 64K`. Values inside
//! a kernel command line (`swiotlb explain`) keep the kernel's own grammar
//! instead.

/// `64 B`, `1500 B`, `4 KiB`, `6 GiB`, `1.50 GiB`: the largest binary unit
/// that divides `n` exactly; below 1 MiB an odd size stays in bytes (as
/// DMA sizes are quoted), above it two decimals of the largest unit.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (u, shift) in UNITS {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
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

/// The size grammar in one sentence, for help texts and error messages.
const SIZE_HINT: &str = "a byte count: decimal, or hex after 0x, with `_` allowed between \
     digits, optionally followed by a binary unit, a power of two: B (1), K or KiB (1024), \
     M or MiB (1024^2), G or GiB (1024^3), T or TiB (1024^4), in any case; \
     like 4096, 0x800, 64K, 512MiB, 1G";

/// Reads a whole number: decimal digits, or hexadecimal ones after `0x`
/// (or `0X`), `_` allowed between digits (`1_048_576`, `0x1234_5a10`). No
/// sign, no unit.
pub(crate) fn parse_number(text: &str) -> Option<u64> {
    let (digits, rest) = split_number(text)?;
    rest.is_empty().then_some(digits)
}

/// Reads digits of `radix` (no prefix), `_` allowed between them.
pub(crate) fn parse_radix(text: &str, radix: u32) -> Option<u64> {
    let (n, end) = digits(text, radix)?;
    (end == text.len()).then_some(n)
}

/// The number at the start of `text` (decimal, or hex after `0x`) and the
/// text after it; `None` if there is no number or it does not fit a `u64`.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let (body, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let (n, end) = digits(body, radix)?;
    Some((n, &body[end..]))
}

/// The longest run of `radix` digits and single `_` between them at the
/// start of `s`: its value and length. `None` if the run is empty, starts
/// or ends with `_`, has `__`, or overflows a `u64`.
fn digits(s: &str, radix: u32) -> Option<(u64, usize)> {
    let end = s
        .find(|c: char| !(c.is_digit(radix) || c == '_'))
        .unwrap_or(s.len());
    let run = &s[..end];
    if run.is_empty() || run.starts_with('_') || run.ends_with('_') || run.contains("__") {
        return None;
    }
    let clean: String = run.chars().filter(|&c| c != '_').collect();
    let n = u64::from_str_radix(&clean, radix).ok()?;
    Some((n, end))
}

/// Reads a byte count, the one grammar of every size the command takes,
/// in options (`--start 1MiB`) and in scripts (`map rx 64K`, `sync rx
/// 0x100 32 cpu`): a [`parse_number`], then optionally a binary unit
/// (spaces may come between): `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB`, in any case, each a power of two (1, 2^10, 2^20, 2^30,
/// 2^40). `4096`, `0x800`, `64K`, `64KiB`, `1_048_576`, `512 MiB`, `1G`
/// are sizes; `1.5MiB`, `-1`, `1MB` (ambiguous: 10^6 or 2^20?) are not.
/// After a hex number `B` is a digit: `0x1B` is 27 bytes.
///
/// # Errors
/// [`SizeError`], naming the text and what a size looks like.
pub(crate) fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let bad = || SizeError::NotASize { text: text.into() };
    let (n, unit) = split_number(s).ok_or_else(bad)?;
    let unit = unit.trim_start();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            let digits = &s[..s.len() - unit.len()];
            return Err(SizeError::Ambiguous {
                text: text.into(),
                write: format!("{}{}iB", digits.trim_end(), &unit[..1].to_ascii_uppercase()),
            });
        }
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| SizeError::TooLarge { text: text.into() })
}

/// Why a text is not a byte count (`parse_size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional unit.
    NotASize { text: String },
    /// A decimal unit (`MB`): powers of 1000 or of 1024? `write` is the
    /// binary spelling of the same text (`1MiB`).
    Ambiguous { text: String, write: String },
    /// More bytes than 64 bits count.
    TooLarge { text: String },
}

impl std::fmt::Display for SizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeError::NotASize { text } => write!(f, "`{text}` is not a size ({SIZE_HINT})"),
            SizeError::Ambiguous { text, write } => write!(
                f,
                "`{text}` is ambiguous (powers of 1000 or of 1024?): write {write}"
            ),
            SizeError::TooLarge { text } => write!(f, "`{text}` is too large a size"),
        }
    }
}

impl std::error::Error for SizeError {}

#[cfg(test)]
mod tests {
    use super::{human, parse_number, parse_radix, parse_size};

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
            "+1",
            "0x",
            "0xg",
            "1 XiB",
            "_1",
            "1_",
            "1__0",
            "0x_1",
            "99999999999999999999",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
        let e = |text: &str| parse_size(text).unwrap_err().to_string();
        assert!(e("1MB").contains("write 1MiB"));
        assert!(e("2 gb").contains("write 2GiB"));
        assert!(e("20000000TiB").contains("too large"));
    }

    /// Scripts and options read sizes alike: what a script wrote with `K`,
    /// `M` or `0x` an option takes, and what an option wrote with `MiB` or
    /// `G` a script takes.
    #[test]
    fn one_size_grammar_for_options_and_scripts() {
        assert_eq!(parse_size("0x800"), Ok(2048));
        assert_eq!(parse_size("0x2k"), Ok(2048));
        assert_eq!(parse_size("0x10KiB"), Ok(16 << 10));
        assert_eq!(parse_size("0X1_0000"), Ok(1 << 16));
        // After hex, B is a digit.
        assert_eq!(parse_size("0x1B"), Ok(0x1b));
        assert_eq!(parse_size("0x1 B"), Ok(1));
        assert_eq!(parse_size("4K"), parse_size("4KiB"));
        assert_eq!(parse_size("1M"), parse_size("1MiB"));
        assert_eq!(parse_size("1G"), parse_size("1GiB"));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
    }

    #[test]
    fn numbers_are_decimal_or_hex() {
        assert_eq!(parse_number("4096"), Some(4096));
        assert_eq!(parse_number("0x1000"), Some(4096));
        assert_eq!(parse_number("1_000"), Some(1000));
        for bad in [
            "0x_1",
            "1__0",
            "",
            "-1",
            "+1",
            "0x",
            "4K",
            "99999999999999999999",
        ] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
        assert_eq!(parse_radix("fff", 16), Some(0xfff));
        assert_eq!(parse_radix("1234_5a10", 16), Some(0x1234_5a10));
        assert_eq!(parse_radix("xyz", 16), None);
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
