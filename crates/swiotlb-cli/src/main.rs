//! The `swiotlb` command.
#![forbid(unsafe_code)]
fn main() {}
