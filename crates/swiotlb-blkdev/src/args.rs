//! The command line, as a `clap::Args` the `swiotlb` command can flatten.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::fault::{Faults, OutsideAddr};
use crate::server::{BlkConfig, Server, DEFAULT_SERIAL};

/// Arguments of the `swiotlb-blkdev` process.
///
/// The fault flags are hidden from `--help`: they exist for tests that need
/// a device that lies.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlkArgs {
    /// The vhost-user socket to listen on (a stale file there is replaced)
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The raw disk image, in 512-byte sectors
    #[arg(long, value_name = "PATH")]
    pub image: PathBuf,
    /// Offer a read-only device and refuse writes
    #[arg(long)]
    pub readonly: bool,
    /// Write the request counters as JSON to PATH when the device stops
    #[arg(long, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// The string GET_ID returns (at most 20 bytes)
    #[arg(long, value_name = "STRING", default_value = DEFAULT_SERIAL)]
    pub serial: String,
    /// Fault: write BYTES of 0xA5 past the end of every returned buffer
    #[arg(long, value_name = "BYTES", default_value_t = 0, hide = true)]
    pub fault_overrun: u32,
    /// Fault: overwrite a read's buffers with 0xA5 after completing it
    #[arg(long, hide = true)]
    pub fault_rewrite: bool,
    /// Fault: how long after the completion the rewrite comes
    #[arg(long, value_name = "MS", default_value_t = 0, hide = true)]
    pub fault_rewrite_delay_ms: u64,
    /// Fault: add N (may be negative) to every used length
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        hide = true
    )]
    pub fault_used_len_delta: i64,
    /// Fault: flip the bits of the first byte of every read
    #[arg(long, hide = true)]
    pub fault_corrupt_reads: bool,
    /// Fault: answer N requests, then never answer again
    #[arg(long, value_name = "N", hide = true)]
    pub fault_hang_after: Option<u64>,
    /// Fault: answer N requests, then exit with status 3 on the next
    #[arg(long, value_name = "N", hide = true)]
    pub fault_die_after: Option<u64>,
    /// Fault: the data of the next reads and writes, one per address, at
    /// these guest addresses ('end': just past the end of the buffer's
    /// region), used unchecked
    #[arg(long, value_name = "ADDR", value_delimiter = ',', hide = true)]
    pub fault_outside_addr: Vec<OutsideAddr>,
}

impl BlkArgs {
    /// The faults these flags ask for.
    pub fn faults(&self) -> Faults {
        let mut f = Faults::none()
            .with_overrun(self.fault_overrun)
            .with_used_len_delta(self.fault_used_len_delta);
        if self.fault_rewrite {
            f = f.with_rewrite(Duration::from_millis(self.fault_rewrite_delay_ms));
        }
        if self.fault_corrupt_reads {
            f = f.with_corrupt_reads();
        }
        if let Some(n) = self.fault_hang_after {
            f = f.with_hang_after(n);
        }
        if let Some(n) = self.fault_die_after {
            f = f.with_die_after(n);
        }
        if !self.fault_outside_addr.is_empty() {
            f = f.with_outside(self.fault_outside_addr.iter().copied());
        }
        f
    }

    /// The configuration these flags describe.
    pub fn config(&self) -> BlkConfig {
        let mut c = BlkConfig::new(&self.socket, &self.image)
            .with_serial(&self.serial)
            .with_faults(self.faults());
        if self.readonly {
            c = c.with_readonly();
        }
        if let Some(path) = &self.stats {
            c = c.with_stats(path);
        }
        c
    }
}

/// Run the device process: bind, stop on SIGTERM, SIGINT or SIGHUP, serve one
/// connection. Errors go to stderr; stdout stays silent. The exit status is
/// 0 after a clean stop or a frontend that hung up, 1 on an error (and
/// [`crate::DIED_EXIT_CODE`] for the die fault).
///
/// Installs the process's signal handler: call it once per process.
pub fn main_with_args(args: &BlkArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &BlkArgs) -> Result<(), crate::Error> {
    let server = Server::bind(args.config())?;
    let stopper = server.stopper();
    ctrlc::set_handler(move || stopper.stop()).map_err(|e| crate::Error::Signal(e.to_string()))?;
    server.run().map(drop)
}
