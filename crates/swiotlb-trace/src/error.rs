//! The one error type: what was wrong, and on which line.

use std::fmt;
use std::io;

/// A line the parser could not read, with its 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number (for an I/O error, the line being read).
    pub line: u64,
    /// What was wrong.
    pub kind: ErrorKind,
}

/// What was wrong with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not `TASK-PID [CPU] [FLAGS] TIMESTAMP: ...`, nor a comment, header
    /// or lost-events line.
    Header,
    /// The timestamp is not `SECONDS[.FRACTION]:`.
    Timestamp,
    /// A known event without a device name before its fields.
    Device,
    /// A known event without a field it always has.
    MissingField(&'static str),
    /// A field whose value does not parse (a number, list, direction,
    /// attribute or count).
    BadField(&'static str),
    /// Lists of one event that must be as long as each other (or as their
    /// count) are not.
    ListLength(&'static str),
    /// A line longer than [`crate::MAX_LINE`] bytes; it is skipped.
    TooLong,
    /// Reading the input failed (including a corrupt gzip stream); the
    /// parser stops.
    Io(io::ErrorKind),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "swiotlb-trace: line {}: ", self.line)?;
        match self.kind {
            ErrorKind::Header => {
                f.write_str("not a trace line (TASK-PID [CPU] TIMESTAMP: EVENT: ...)")
            }
            ErrorKind::Timestamp => f.write_str("bad timestamp"),
            ErrorKind::Device => f.write_str("no device name before the fields"),
            ErrorKind::MissingField(k) => write!(f, "missing field {k}="),
            ErrorKind::BadField(k) => write!(f, "bad value of {k}"),
            ErrorKind::ListLength(k) => write!(f, "list {k} does not match its count"),
            ErrorKind::TooLong => write!(f, "line longer than {} bytes", crate::MAX_LINE),
            ErrorKind::Io(e) => write!(f, "read error: {}", io::Error::from(e)),
        }
    }
}

impl std::error::Error for ParseError {}
