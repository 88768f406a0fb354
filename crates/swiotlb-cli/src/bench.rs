//! `swiotlb bench` (being written).

/// Arguments of `swiotlb bench`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `swiotlb bench`.
pub fn run(_args: &Args) -> Result<(), String> {
    Err("not available yet".into())
}
