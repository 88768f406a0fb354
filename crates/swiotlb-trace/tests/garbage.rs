//! No input panics the parser: random bytes, and valid lines with random
//! edits (the near misses a corrupt or truncated trace holds).

use proptest::prelude::*;
use swiotlb_trace::{ErrorKind, Format, Parser};

const TRACE: &str = include_str!("data/sample.trace");
const DMESG: &str = include_str!("data/sample.dmesg");

/// Parses `input` to the end; every line is accounted for once.
fn check(input: &[u8], format: Format) {
    let mut p = Parser::with_format(input, format);
    let mut io = 0;
    let mut last = 0;
    for r in p.by_ref() {
        let line = match r {
            Ok(_) => continue,
            Err(e) => {
                if let ErrorKind::Io(_) = e.kind {
                    io += 1;
                }
                e.line
            }
        };
        assert!(line > last, "error lines go forward");
        last = line;
    }
    let c = p.counts();
    assert_eq!(c.records + c.unknown + c.skipped + c.errors - io, c.lines);
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Truncate(usize),
    Repeat(usize, usize),
}

fn apply(line: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = line.as_bytes().to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *e {
            Edit::Delete(i) if !b.is_empty() => {
                let i = at(i, b.len());
                b.remove(i);
            }
            Edit::Insert(i, c) => {
                let i = at(i, b.len() + 1);
                b.insert(i, c);
            }
            Edit::Replace(i, c) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] = c;
            }
            Edit::Truncate(i) => b.truncate(at(i, b.len() + 1)),
            Edit::Repeat(i, n) if !b.is_empty() => {
                let i = at(i, b.len());
                let piece = b[i..].iter().take(n % 40).copied().collect::<Vec<_>>();
                b.splice(i..i, piece);
            }
            _ => {}
        }
    }
    b
}

/// Bytes the formats give meaning to, drawn more often than chance would.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b"[]-:={},|/ ()<>.#x0123456789abcdefFORCE_\n\t".to_vec()),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte()).prop_map(|(i, c)| Edit::Insert(i, c)),
        (any::<usize>(), byte()).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(byte(), 0..400)) {
        check(&bytes, Format::Trace);
        check(&bytes, Format::Dmesg);
    }

    #[test]
    fn edited_trace_lines_never_panic(
        line in prop::sample::select(TRACE.lines().collect::<Vec<_>>()),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let b = apply(line, &edits);
        check(&b, Format::Trace);
    }

    #[test]
    fn edited_log_lines_never_panic(
        line in prop::sample::select(DMESG.lines().collect::<Vec<_>>()),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let b = apply(line, &edits);
        check(&b, Format::Dmesg);
    }
}
