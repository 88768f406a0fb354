//! What the fuzz targets share: the checks of the trace parsers (both
//! formats), models of what Linux does with command-line values, and
//! device trees built from descriptions with the pools each must give.

pub mod dt;
pub mod linux;
pub mod trace;
