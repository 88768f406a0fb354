//! The `swiotlb` command as a library: the binary (`src/main.rs`) calls
//! `main`. Nothing here is API for other crates, except the operations
//! script reader, exposed (hidden) as `script` so that the fuzz target
//! `script` (fuzz/) can read and run scripts as `swiotlb simulate --ops`
//! does.
#![forbid(unsafe_code)]
// Items are `pub(crate)` at most, except `main` and what `script`
// re-exports.
#![deny(unreachable_pub)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dt;
mod error;
mod explain;
mod plot;
mod plot_trace;
mod replay;
mod rng;
mod simulate;
mod units;

/// The operations script reader of `swiotlb simulate --ops` and the run of
/// a script on the simulator, for the fuzz target `script`; not a stable
/// API.
#[doc(hidden)]
pub mod script {
    pub use crate::simulate::{
        execute, parse, Line, MapEntry, Op, Placed, PolicyName, PoolArgs, Report, Script,
        ScriptError, ScriptProblem, ScriptReport, MAX_SIZE,
    };
    pub use crate::units::SizeError;
}

/// A software IO TLB: explain, simulate and measure bounce pools.
#[derive(Parser)]
#[command(name = "swiotlb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Real block I/O through a bounce pool: the unmodified virtio-drivers
    /// block driver writes and reads back patterned data, every byte
    /// checked, to a vhost-user-blk device that sees nothing but the pool.
    Demo(demo::Args),
    /// Parse a `swiotlb=` kernel parameter as Linux does and say what pool it gives.
    Explain(explain::Args),
    /// Replay a kernel's DMA trace (ftrace or trace-cmd text, plain or
    /// gzip) through the real allocator with Linux's policy: the pool's
    /// high-water mark, failures beside the kernel's, markers, devices.
    Replay(replay::ReplayArgs),
    /// The smallest `swiotlb=` with which a kernel's DMA trace replays
    /// without a failure, with a margin; what our fast policy and our
    /// growing tlb would need instead.
    Size(replay::SizeArgs),
    /// Run an operations script through the real engine and report placements,
    /// or a synthetic workload on a growing tlb (--profile burst|steady).
    Simulate(simulate::Args),
    /// Measure map+unmap against memcpy, both policies, in one run.
    Bench(bench::Args),
    /// List the DMA pools of a device tree blob and the devices that use them.
    Dt(dt::Args),
    /// Serve the builtin vhost-user-blk device on a socket: the device
    /// `demo --device builtin` starts as a process of its own.
    #[command(hide = true)]
    Blkdev(swiotlb_blkdev::BlkArgs),
}

/// Runs the command: parses the command line, runs the subcommand, and
/// prints its error, if any (exit status 2, as clap's own usage errors).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each thread maps in an area of its own, in turn: the benchmark's
    // parallel rows run one stream per area (as one CPU per area in
    // Linux), and the simulator's workers spread as they would on
    // different CPUs. The core alone starts every map at area 0. The
    // first hint installed is the one; nothing installed one before.
    swiotlb::set_cpu_hint(&swiotlb_host::ThreadHint);
    let r = match cli.command {
        Command::Demo(a) => demo::run(&a),
        Command::Explain(a) => explain::run(&a),
        Command::Replay(a) => replay::run_replay(&a),
        Command::Size(a) => replay::run_size(&a),
        Command::Simulate(a) => simulate::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Dt(a) => dt::run(&a),
        // The device process: its own messages and exit status.
        Command::Blkdev(a) => return swiotlb_blkdev::main_with_args(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Core errors already name swiotlb; do not say it twice.
            if e.names_swiotlb() {
                eprintln!("{e}");
            } else {
                eprintln!("swiotlb: {e}");
            }
            // As clap's own usage errors.
            ExitCode::from(2)
        }
    }
}
