//! The properties of `swiotlb-trace`'s streaming parser that hold for any
//! input, checked by the `trace_ftrace` and `trace_dmesg` targets.
//!
//! For one input, in one format:
//! - every record and error carries the number of the line it came from,
//!   that line is the one the parser just read, and numbers only go up;
//! - an I/O error (a corrupt gzip stream) comes last, numbered one past
//!   the last line read;
//! - the counts add up: every line read is a record, an unknown event, a
//!   skipped line or an error, and the records and errors counted are
//!   those yielded;
//! - plain input has exactly as many lines as `\n`-separated pieces;
//! - a trace yields only events and lost-event notes, a log only kernel
//!   messages; each record's lists are as long as each other and as its
//!   counts say;
//! - reading the same bytes in pieces of any size, with interrupted reads
//!   between them, gives the same records, errors and counts;
//! - the same text gzip-compressed, read in pieces the first of which is
//!   one byte, gives the same records, errors and counts (all short
//!   inputs, one in four long ones: a decoder is dear to set up);
//! - each line parsed alone gives what it gave in the stream: the parser
//!   carries no state from one line to the next but shared names.

use std::io::{self, BufRead, Read};

use swiotlb_trace::{
    AllocKind, ErrorKind, EventKind, Format, FreeKind, ParseError, Parser, Record,
};

/// What one parser yielded, and the line it had read when it did.
#[derive(Debug, PartialEq)]
struct Run {
    items: Vec<(u64, Result<Record, ParseError>)>,
    counts: swiotlb_trace::Counts,
}

/// The line number a record carries.
fn record_line(r: &Record) -> u64 {
    match r {
        Record::Event(e) => e.line,
        Record::Lost(l) => l.line,
        Record::Kernel(k) => k.line,
        other => panic!("a record of a kind this check does not know: {other:?}"),
    }
}

/// The record with its line number set to `n`.
fn renumbered(r: &Record, n: u64) -> Record {
    let mut r = r.clone();
    match &mut r {
        Record::Event(e) => e.line = n,
        Record::Lost(l) => l.line = n,
        Record::Kernel(k) => k.line = n,
        _ => {}
    }
    r
}

/// Runs a parser to its end, checking what must hold item by item.
fn run<R: BufRead>(reader: R, format: Format) -> Run {
    let mut p = Parser::with_format(reader, format);
    let mut items = Vec::new();
    let mut last = 0;
    let mut io_seen = false;
    while let Some(item) = p.next() {
        assert!(!io_seen, "an item after an I/O error");
        let now = p.line();
        let line = match &item {
            Ok(r) => {
                let n = record_line(r);
                assert_eq!(n, now, "a record numbered apart from the line read");
                check_record(r, format);
                n
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("swiotlb-trace: line "), "{text}");
                if let ErrorKind::Io(_) = e.kind {
                    io_seen = true;
                    assert_eq!(e.line, now + 1, "an I/O error names the line being read");
                } else {
                    assert_eq!(e.line, now, "an error numbered apart from the line read");
                }
                e.line
            }
        };
        assert!(line > last, "line numbers go forward: {line} after {last}");
        last = line;
        items.push((now, item));
    }
    // Ended for good.
    assert!(p.next().is_none(), "an item after the end");
    let c = p.counts();
    let io = u64::from(io_seen);
    let records = items.iter().filter(|(_, i)| i.is_ok()).count() as u64;
    assert_eq!(c.records, records, "records counted");
    assert_eq!(c.errors, items.len() as u64 - records, "errors counted");
    assert_eq!(
        c.records + c.unknown + c.skipped + c.errors,
        c.lines + io,
        "every line accounted for once: {c:?}"
    );
    assert_eq!(p.line(), c.lines, "the last line's number is the count");
    Run { items, counts: c }
}

/// What every record promises, whatever the input.
fn check_record(r: &Record, format: Format) {
    match (r, format) {
        (Record::Event(_) | Record::Lost(_), Format::Trace) => {}
        (Record::Kernel(_), Format::Dmesg) => {}
        (r, f) => panic!("{f:?} input gave {r:?}"),
    }
    let Record::Event(e) = r else { return };
    assert_eq!(
        e.device.is_none(),
        matches!(e.kind, EventKind::Marker(_)),
        "only a marker has no device: {e:?}"
    );
    match &e.kind {
        EventKind::MapSg(m) => {
            assert_eq!(m.dma_addrs.len(), m.sizes.len(), "{m:?}");
            if let Some(c) = m.nents {
                assert_eq!(c.shown as usize, m.phys_addrs.len(), "{m:?}");
                assert!(c.shown <= c.total, "{m:?}");
            }
            if let Some(c) = m.ents {
                assert_eq!(c.shown as usize, m.dma_addrs.len(), "{m:?}");
                assert!(c.shown <= c.total, "{m:?}");
            }
            assert!(m.given() >= m.phys_addrs.len(), "{m:?}");
            assert!(m.mapped() >= m.dma_addrs.len(), "{m:?}");
        }
        EventKind::SyncSg(s) => assert_eq!(s.dma_addrs.len(), s.sizes.len(), "{s:?}"),
        EventKind::Alloc(a) if a.kind != AllocKind::Sgt => {
            assert!(a.phys_addrs.is_empty(), "{a:?}")
        }
        EventKind::Free(f) if f.kind != FreeKind::Sgt => {
            assert!(f.phys_addrs.is_empty(), "{f:?}")
        }
        _ => {}
    }
}

/// A reader that hands out the input in pieces of the sizes `sizes`
/// gives, in turn, with an interrupted read before every third piece.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
    interrupt: bool,
}

impl<'a> Pieces<'a> {
    fn new(data: &'a [u8], sizes: &'a [u8]) -> Self {
        Pieces {
            data,
            sizes,
            turn: 0,
            interrupt: false,
        }
    }

    /// The size of the current piece: a few bytes, a line's worth, or
    /// more.
    fn size(&self) -> usize {
        if self.sizes.is_empty() {
            return 1;
        }
        let s = self.sizes[self.turn % self.sizes.len()];
        [1, 2, 3, 7, 16, 61, 256, 1 + usize::from(s)][usize::from(s % 8)]
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let chunk = self.fill_buf()?;
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Pieces<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.interrupt {
            self.interrupt = false;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = self.size().min(self.data.len());
        Ok(&self.data[..n])
    }

    fn consume(&mut self, amt: usize) {
        self.data = &self.data[amt..];
        if amt > 0 {
            self.turn += 1;
            self.interrupt = self.turn.is_multiple_of(3);
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// `data` as a gzip member of stored (uncompressed) deflate blocks: the
/// decoder's whole path without the cost of a compressor, which would
/// dominate a run.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    // Magic, deflate, no flags, no time, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut blocks = data.chunks(u16::MAX as usize).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = b.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The pieces of `data` the parser reads as lines, `\n` removed.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    // A final `\n` ends the last line; it does not start another.
    if out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out
}

/// Checks everything the module promises for `data` in `format`. The
/// first bytes, when `data` is long enough, also choose the piece sizes
/// of the second reading.
pub fn check(data: &[u8], format: Format) {
    let whole = run(data, format);

    // The same bytes in small pieces, with interrupted reads.
    let sizes = &data[..data.len().min(16)];
    let pieces = run(Pieces::new(data, sizes), format);
    if data.starts_with(&GZIP_MAGIC) {
        // Through the gzip decoder. How much of a corrupt stream it
        // decodes before it notices depends on how the input arrives
        // (flate2's business); that it notices does not.
        let failed = |r: &Run| matches!(r.items.last(), Some((_, Err(e))) if matches!(e.kind, ErrorKind::Io(_)));
        if failed(&whole) {
            assert!(
                failed(&pieces),
                "a corrupt stream read in pieces: {pieces:?}"
            );
        } else {
            assert_eq!(pieces, whole, "read in pieces");
        }
        // The plain properties below are about text.
        return;
    }
    assert_eq!(pieces, whole, "read in pieces");
    let io = whole.items.iter().any(|(_, i)| {
        matches!(
            i,
            Err(ParseError {
                kind: ErrorKind::Io(_),
                ..
            })
        )
    });
    assert!(!io, "an I/O error from plain bytes");
    let lines = lines(data);
    assert_eq!(whole.counts.lines, lines.len() as u64, "lines read");

    // Compressed, the same text reads the same, in pieces, the first of
    // one byte: the magic is two. A decoder is dear to set up, so only
    // for some inputs: all short ones, one in four of the rest.
    if data.len() <= 512 || data.len().is_multiple_of(4) {
        let gz = gzip_stored(data);
        let one = [0u8];
        let sizes = [&one[..], sizes].concat();
        let gz_pieces = run(Pieces::new(&gz, &sizes), format);
        assert_eq!(gz_pieces, whole, "gzip of the same text, read in pieces");
    }

    // Each line alone gives what it gave in the stream.
    let mut items = whole.items.iter().peekable();
    for (i, line) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let in_stream = items.next_if(|(at, _)| *at == n);
        if line.starts_with(&GZIP_MAGIC) {
            // Alone, it would be taken for a gzip stream.
            continue;
        }
        // With its `\n`, so that an empty line is a line.
        let mut own = line.to_vec();
        own.push(b'\n');
        let alone = run(own.as_slice(), format);
        match (alone.items.as_slice(), in_stream) {
            ([], None) => {}
            ([(1, Ok(a))], Some((_, Ok(b)))) => {
                assert_eq!(*a, renumbered(b, 1), "line {n} alone")
            }
            ([(1, Err(a))], Some((_, Err(b)))) => {
                assert_eq!(a.kind, b.kind, "line {n} alone")
            }
            (a, b) => panic!("line {n}: alone {a:?}, in the stream {b:?}"),
        }
        let c = alone.counts;
        assert_eq!(c.lines, 1, "line {n} alone is one line");
    }
    assert!(items.next().is_none(), "items past the last line");
}
