//! The `swiotlb` command: explain `swiotlb=` values, run operation scripts
//! and synthetic workloads through the real engine, and benchmark the
//! allocation policies. The command lives in the crate's library
//! (`src/lib.rs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    swiotlb_cli::main()
}

#[cfg(test)]
mod tests {
    /// The `[[bin]]` table of this crate's manifest, up to the next table.
    fn bin_table() -> Vec<&'static str> {
        include_str!("../Cargo.toml")
            .lines()
            .skip_while(|l| l.trim() != "[[bin]]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    /// The command and the library share the name `swiotlb`; `cargo doc`
    /// must keep the library's pages, so the command is not documented.
    #[test]
    fn the_command_leaves_the_swiotlb_docs_to_the_library() {
        let bin = bin_table();
        assert!(bin.contains(&"name = \"swiotlb\""), "{bin:?}");
        assert!(bin.contains(&"doc = false"), "{bin:?}");
    }

    #[test]
    fn readme_says_how_to_install_the_command() {
        let readme = include_str!("../../../README.md");
        assert!(readme.contains("cargo install --path crates/swiotlb-cli"));
    }
}
