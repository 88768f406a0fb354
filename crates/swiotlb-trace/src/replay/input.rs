//! Where a replay reads its trace from, as often as it needs to.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, ParseError};
use crate::event::Record;
use crate::parser::{Format, Parser};

/// A trace a replay can read from its start more than once: a survey pass
/// learns each device's address offset and `min_align_mask` before the
/// replay pass places anything.
pub trait Input {
    /// The trace from its first byte (plain or gzip).
    ///
    /// # Errors
    /// Whatever opening it fails with.
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>>;
}

impl Input for [u8] {
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>> {
        Ok(Box::new(self))
    }
}

impl Input for str {
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>> {
        Ok(Box::new(self.as_bytes()))
    }
}

impl Input for Path {
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>> {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            File::open(self)?,
        )))
    }
}

impl Input for PathBuf {
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>> {
        self.as_path().open()
    }
}

/// Lines that did not parse: how many, and the first few with their line
/// numbers (a replay goes on past them).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Malformed {
    /// Lines reported as errors.
    pub count: u64,
    /// The first [`Malformed::KEPT`] of them, as `line N: what`.
    pub first: Vec<String>,
}

impl Malformed {
    /// How many errors are kept with their text.
    pub const KEPT: usize = 10;

    fn add(&mut self, e: &ParseError) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            let text = e.to_string();
            let text = text.strip_prefix("swiotlb-trace: ").unwrap_or(&text);
            self.first.push(text.to_string());
        }
    }
}

/// Runs `f` on every record of `input` read as `format`. Malformed lines
/// are counted into `malformed` and skipped; an I/O error (or a corrupt
/// gzip stream) ends the read with that error. Returns the lines read.
pub(crate) fn each_record(
    input: &(impl Input + ?Sized),
    format: Format,
    mut malformed: Option<&mut Malformed>,
    mut f: impl FnMut(Record),
) -> Result<u64, ReadError> {
    let reader = input.open().map_err(ReadError::Open)?;
    let mut parser = Parser::with_format(reader, format);
    for r in &mut parser {
        match r {
            Ok(rec) => f(rec),
            Err(ParseError {
                line,
                kind: ErrorKind::Io(kind),
            }) => return Err(ReadError::Read { line, kind }),
            Err(e) => {
                if let Some(m) = malformed.as_deref_mut() {
                    m.add(&e);
                }
            }
        }
    }
    Ok(parser.counts().lines)
}

/// Reading a trace or a kernel log failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// It could not be opened.
    Open(io::Error),
    /// Reading stopped at this line (a disk error, a truncated or corrupt
    /// gzip stream).
    Read {
        /// The line being read.
        line: u64,
        /// What failed.
        kind: io::ErrorKind,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Open(e) => write!(f, "cannot open: {e}"),
            ReadError::Read { line, kind } => {
                write!(
                    f,
                    "reading stopped at line {line}: {}",
                    io::Error::from(*kind)
                )
            }
        }
    }
}

impl std::error::Error for ReadError {}
