//! The demo's progress bar, on standard error: bytes moved of bytes to
//! move, with the rate. Hidden under `--json` and when standard error is
//! not a terminal (indicatif's own rule), so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Bar(ProgressBar);

impl Bar {
    /// A bar for `total` bytes; `quiet` hides it.
    pub(crate) fn new(total: u64, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>6} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message("write");
        Self(bar)
    }

    /// `n` more bytes done.
    pub(crate) fn add(&self, n: u64) {
        self.0.inc(n);
    }

    /// Names the phase shown beside the bar.
    pub(crate) fn phase(&self, name: &'static str) {
        self.0.set_message(name);
    }

    /// Clears the bar, leaving the terminal for the report.
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}
