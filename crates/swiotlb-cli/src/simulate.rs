//! `swiotlb simulate` (being written).

/// Arguments of `swiotlb simulate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `swiotlb simulate`.
pub fn run(_args: &Args) -> Result<(), String> {
    Err("not available yet".into())
}
