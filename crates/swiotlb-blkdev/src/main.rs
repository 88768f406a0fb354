//! `swiotlb-blkdev`: a vhost-user-blk device process over a raw image.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use swiotlb_blkdev::BlkArgs;

/// A vhost-user-blk device backend serving one frontend over a unix socket.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-blkdev", version)]
struct Cli {
    #[command(flatten)]
    args: BlkArgs,
}

fn main() -> ExitCode {
    swiotlb_blkdev::main_with_args(&Cli::parse().args)
}
