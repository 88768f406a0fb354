//! ftrace and `trace-cmd report` text into the trace parser, plain or (when
//! the input starts with the gzip magic) through its gzip path: see
//! `swiotlb_fuzz::trace` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swiotlb_trace::Format;

fuzz_target!(|data: &[u8]| {
    swiotlb_fuzz::trace::check(data, Format::Trace);
});
