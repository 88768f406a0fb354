//! The `swiotlb` command: explain `swiotlb=` values, run operation scripts
//! and synthetic workloads through the real engine, and benchmark the
//! allocation policies.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod dt;
mod explain;
mod simulate;
mod units;

/// A software IO TLB: explain, simulate and measure bounce pools.
#[derive(Parser)]
#[command(name = "swiotlb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse a `swiotlb=` kernel parameter as Linux does and say what pool it gives.
    Explain(explain::Args),
    /// Run an operations script through the real engine and report placements,
    /// or a synthetic workload on a growing tlb (--profile burst|steady).
    Simulate(simulate::Args),
    /// Measure map+unmap against memcpy, both policies, in one run.
    Bench(bench::Args),
    /// List the DMA pools of a device tree blob and the devices that use them.
    Dt(dt::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Explain(a) => explain::run(&a),
        Command::Simulate(a) => simulate::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Dt(a) => dt::run(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Core errors already name swiotlb; do not say it twice.
            if e.starts_with("swiotlb") {
                eprintln!("{e}");
            } else {
                eprintln!("swiotlb: {e}");
            }
            ExitCode::from(2)
        }
    }
}
