//! Streaming parsers of Linux DMA traces: ftrace text (`trace`,
//! `trace_pipe`), `trace-cmd report` output and the kernel log, plain or
//! gzip, into typed records that a replay of swiotlb can consume.
//!
//! The events are the `dma` trace events of Linux 6.12 on (`dma_map_page`,
//! `dma_map_sg`, `dma_sync_*`, `dma_alloc`, ...) in both of their printed
//! forms (6.12.0's and the later one, also backported to 6.12 stable),
//! `swiotlb_bounced` (all kernels), and `tracing_mark_write` markers; the
//! log messages are the boot pool's size and area count and "swiotlb
//! buffer is full".
//!
//! # Usage
//!
//! ```
//! use swiotlb_trace::{EventKind, Parser, Record};
//!
//! let trace = "\
//! ## tracer: nop
//!             fio-2211    [003] ..... 1301.000100: dma_map_page: 0000:00:04.0 dir=TO_DEVICE dma_addr=fbe00000 size=4096 phys_addr=1234000 attrs=
//!             fio-2211    [003] ..... 1301.000200: dma_unmap_page: 0000:00:04.0 dir=TO_DEVICE dma_addr=fbe00000 size=4096 attrs=
//!             fio-2211    [003] ..... 1301.000300: sched_switch: prev_comm=fio
//! ";
//! let mut parser = Parser::new(trace.as_bytes());
//! let mut mapped = 0;
//! for record in &mut parser {
//!     if let Record::Event(e) = record? {
//!         if let EventKind::Map(m) = e.kind {
//!             assert_eq!(e.device.unwrap(), "0000:00:04.0");
//!             assert_eq!(e.timestamp_ns, 1_301_000_100_000);
//!             mapped += m.size;
//!         }
//!     }
//! }
//! assert_eq!(mapped, 4096);
//! assert_eq!(parser.counts().unknown, 1);
//! # Ok::<(), swiotlb_trace::ParseError>(())
//! ```
//!
//! # Design
//!
//! A [`Parser`] holds one line at a time (at most [`MAX_LINE`] bytes) and
//! parses it in place, from bytes, without allocating: a record's device
//! name and GFP flags are shared strings allocated once per distinct
//! name, and only the lists of scatterlist events and marker text become
//! vectors and strings of their own. A malformed line is an error with its
//! line number and the parser goes on; an I/O error ends it.
//!
//! # Safety and correctness
//!
//! No unsafe code (`#![forbid(unsafe_code)]`). No input panics the
//! parser: every index is checked, every number parse is checked for
//! overflow, and a property test feeds it random bytes and mutations of
//! valid lines.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod addr;
mod dmesg;
mod error;
mod event;
mod field;
mod ftrace;
mod intern;
mod parser;
pub mod replay;

pub use addr::{DmaAddr, PhysAddr};
pub use error::{ErrorKind, ParseError};
pub use event::{
    Alloc, AllocKind, Attrs, Bounced, Device, Direction, Event, EventKind, Free, FreeKind, Gfp,
    KernelMessage, Lost, Map, MapSg, MapSgErr, Message, Record, SgCount, Sync, SyncSg, SyncTo,
    Target, Unmap, UnmapSg,
};
pub use parser::{Counts, Format, Parser, MAX_LINE};
