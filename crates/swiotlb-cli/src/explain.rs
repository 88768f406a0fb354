//! `swiotlb explain` (being written).

/// Arguments of `swiotlb explain`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `swiotlb explain`.
pub fn run(_args: &Args) -> Result<(), String> {
    Err("not available yet".into())
}
