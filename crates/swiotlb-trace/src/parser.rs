//! The streaming parser: one line in memory at a time.

use std::io::{self, BufRead, BufReader, Read as _};

use flate2::bufread::MultiGzDecoder;

use crate::dmesg;
use crate::error::{ErrorKind, ParseError};
use crate::event::{KernelMessage, Lost, Record};
use crate::field::{self, trim};
use crate::ftrace::{self, Names};
use crate::intern::Intern;

/// The longest line read, in bytes. A `dma_map_sg` of 128 entries prints
/// about 8 KiB; a longer line is reported as [`ErrorKind::TooLong`] and
/// skipped without being held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// What the input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// ftrace `trace` / `trace_pipe` text or `trace-cmd report` output:
    /// every line that is not a comment, a header or an event is an error.
    #[default]
    Trace,
    /// A kernel log: lines that are not swiotlb messages are skipped.
    Dmesg,
}

/// How many lines of each sort a parser has read so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Lines read.
    pub lines: u64,
    /// Records yielded.
    pub records: u64,
    /// Events this crate does not parse (other subsystems' events,
    /// function tracer lines), skipped.
    pub unknown: u64,
    /// Comments, blank lines, `trace-cmd` headers, and log lines that are
    /// not swiotlb messages, skipped.
    pub skipped: u64,
    /// Errors yielded.
    pub errors: u64,
}

/// The input after its first bytes were read to tell plain from gzip:
/// those bytes, then the rest.
type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

enum Source<R> {
    /// Not yet read: plain or gzip is told by the first two bytes.
    Pending(R),
    Plain(Peeked<R>),
    Gzip(BufReader<MultiGzDecoder<Peeked<R>>>),
    Done,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

enum Read {
    Line,
    TooLong,
    Eof,
}

/// One line into `buf` (without its `\n`), at most [`MAX_LINE`] bytes of it.
fn read_line<B: BufRead>(r: &mut B, buf: &mut Vec<u8>) -> io::Result<Read> {
    let mut any = false;
    let mut too_long = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(if done { take + 1 } else { take });
        if done {
            break;
        }
    }
    Ok(match (any, too_long) {
        (false, _) => Read::Eof,
        (true, true) => Read::TooLong,
        (true, false) => Read::Line,
    })
}

/// A streaming parser of a trace or kernel log, plain or gzip: an
/// iterator of records and line-numbered errors. Its memory is the
/// current line plus the names of the devices seen; unknown events are
/// counted ([`Parser::counts`]) and skipped.
pub struct Parser<R> {
    source: Source<R>,
    format: Format,
    buf: Vec<u8>,
    line: u64,
    counts: Counts,
    devices: Intern,
    gfps: Intern,
}

impl<R: BufRead> Parser<R> {
    /// A parser of ftrace or `trace-cmd report` text.
    pub fn new(reader: R) -> Parser<R> {
        Parser::with_format(reader, Format::Trace)
    }

    /// A parser of the given format.
    pub fn with_format(reader: R, format: Format) -> Parser<R> {
        Parser {
            source: Source::Pending(reader),
            format,
            buf: Vec::with_capacity(256),
            line: 0,
            counts: Counts::default(),
            devices: Intern::default(),
            gfps: Intern::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The number of the last line read (1-based; 0 before the first).
    pub fn line(&self) -> u64 {
        self.line
    }

    fn read(&mut self) -> io::Result<Read> {
        if let Source::Pending(_) = self.source {
            let Source::Pending(mut r) = std::mem::replace(&mut self.source, Source::Done) else {
                unreachable!("matched above")
            };
            // The magic is two bytes, and a reader may hand out one at a
            // time: take them out and put them back in front.
            let mut head = Vec::with_capacity(GZIP_MAGIC.len());
            while head.len() < GZIP_MAGIC.len() {
                let b = match r.fill_buf() {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if b.is_empty() {
                    break;
                }
                let n = b.len().min(GZIP_MAGIC.len() - head.len());
                head.extend_from_slice(&b[..n]);
                r.consume(n);
            }
            let gzip = head == GZIP_MAGIC;
            let r = io::Cursor::new(head).chain(r);
            self.source = if gzip {
                Source::Gzip(BufReader::with_capacity(64 * 1024, MultiGzDecoder::new(r)))
            } else {
                Source::Plain(r)
            };
        }
        match &mut self.source {
            Source::Plain(r) => read_line(r, &mut self.buf),
            Source::Gzip(r) => read_line(r, &mut self.buf),
            Source::Pending(_) | Source::Done => Ok(Read::Eof),
        }
    }
}

enum Outcome {
    Record(Record),
    Unknown,
    Skip,
}

/// `CPU:N [LOST M EVENTS]` (ftrace) or `CPU:N [M EVENTS DROPPED]`.
fn lost(line: &[u8], n: u64) -> Option<Lost> {
    let rest = line.strip_prefix(b"CPU:")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let cpu = u32::try_from(field::dec(&rest[..digits])?).ok()?;
    let note = trim(&rest[digits..]);
    if !note.starts_with(b"[")
        || !(memchr::memmem::find(note, b"LOST").is_some()
            || memchr::memmem::find(note, b"DROPPED").is_some())
    {
        return None;
    }
    let events = note
        .split(|c| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(field::dec);
    Some(Lost {
        line: n,
        cpu,
        events,
    })
}

/// `trace-cmd report`'s lines before the events.
fn trace_cmd_header(line: &[u8]) -> bool {
    line.starts_with(b"cpus=")
        || line.starts_with(b"version = ")
        || (line.starts_with(b"CPU ") && line.ends_with(b" is empty"))
}

fn parse_trace(line: &[u8], n: u64, names: &mut Names<'_>) -> Result<Outcome, ErrorKind> {
    let t = trim(line);
    if t.is_empty() || t[0] == b'#' || trace_cmd_header(t) {
        return Ok(Outcome::Skip);
    }
    if let Some(l) = lost(t, n) {
        return Ok(Outcome::Record(Record::Lost(l)));
    }
    let h = ftrace::header(line)?;
    let Some((name, fields)) = ftrace::event_name(h.rest) else {
        return Ok(Outcome::Unknown);
    };
    Ok(match ftrace::event(&h, n, name, fields, names)? {
        Some(e) => Outcome::Record(Record::Event(e)),
        None => Outcome::Unknown,
    })
}

impl<R: BufRead> Iterator for Parser<R> {
    type Item = Result<Record, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            let read = match self.read() {
                Ok(r) => r,
                Err(e) => {
                    self.source = Source::Done;
                    self.counts.errors += 1;
                    return Some(Err(ParseError {
                        line: self.line + 1,
                        kind: ErrorKind::Io(e.kind()),
                    }));
                }
            };
            let n = match read {
                Read::Eof => {
                    self.source = Source::Done;
                    return None;
                }
                Read::TooLong | Read::Line => {
                    self.line += 1;
                    self.counts.lines += 1;
                    self.line
                }
            };
            let outcome = match read {
                Read::TooLong => Err(ErrorKind::TooLong),
                _ => match self.format {
                    Format::Trace => parse_trace(
                        &self.buf,
                        n,
                        &mut Names {
                            devices: &mut self.devices,
                            gfps: &mut self.gfps,
                        },
                    ),
                    Format::Dmesg => dmesg::parse(&self.buf, &mut self.devices).map(|m| match m {
                        Some(m) => Outcome::Record(Record::Kernel(KernelMessage {
                            line: n,
                            timestamp_ns: m.timestamp_ns,
                            device: m.device,
                            message: m.message,
                        })),
                        None => Outcome::Skip,
                    }),
                },
            };
            match outcome {
                Ok(Outcome::Record(r)) => {
                    self.counts.records += 1;
                    return Some(Ok(r));
                }
                Ok(Outcome::Unknown) => self.counts.unknown += 1,
                Ok(Outcome::Skip) => self.counts.skipped += 1,
                Err(kind) => {
                    self.counts.errors += 1;
                    return Some(Err(ParseError { line: n, kind }));
                }
            }
        }
    }
}
