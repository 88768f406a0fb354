//! The command's one error type: a variant per kind of failure, each with
//! the context its message needs. `main` prints the message and exits with
//! status 2.

use std::fmt;
use std::io;
use std::num::ParseIntError;
use std::path::PathBuf;

use swiotlb::dt::DtError;
use swiotlb::provider::ProviderError;

use crate::simulate::ScriptProblem;

/// Why a subcommand failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// An option whose value cannot be used, alone, with the others or on
    /// this machine: which option, and why (the message reads
    /// "`arg` `why`", so `why` goes on from the option's name).
    BadArgument { arg: &'static str, why: String },
    /// An option's value that must be a power of two from 1 to `max`.
    NotPowerOfTwo { value: u32, max: u32 },
    /// An option's value that is not a number.
    NotANumber(ParseIntError),
    /// `explain --strict`: Linux changes or ignores part of the value; the
    /// changes in words, each naming the byte it starts at.
    Strict { value: String, changes: Vec<String> },
    /// A file that could not be read.
    Read { path: PathBuf, source: io::Error },
    /// Standard input that could not be read: what was being read from it.
    ReadStdin {
        what: &'static str,
        source: io::Error,
    },
    /// The report could not be written to standard output.
    WriteReport(io::Error),
    /// A picture (`--plot`) that could not be drawn or written: the file,
    /// and why.
    Plot { path: PathBuf, source: io::Error },
    /// A report could not be written as JSON.
    Json(serde_json::Error),
    /// A device tree blob that is not a well-formed one, or whose pools are
    /// wrong: the core's message, which names the byte or the node (the
    /// core's error borrows from the blob; this one outlives it). `context`
    /// says what the blob was, when it is not the user's.
    DeviceTree {
        context: &'static str,
        message: String,
    },
    /// An operations script that is wrong, or that the engine could not
    /// run: the script (a path or `<stdin>`) and the line (0 when the
    /// problem is about no line).
    Script {
        script: String,
        line: usize,
        problem: ScriptProblem,
    },
    /// The engine refused something: what the command was doing (empty
    /// when the core's message says it all), and the core's error.
    Core {
        context: String,
        error: swiotlb::Error,
    },
    /// The memory provider of a growing tlb failed: what the command was
    /// doing (empty when the core's message says it all), and its error.
    Provider {
        context: String,
        error: ProviderError,
    },
    /// A profile's mappings whose bytes did not come back intact.
    DataErrors { mappings: u64 },
    /// The device tree blob the benchmark builds could not be built.
    BuildBlob(vm_fdt::Error),
    /// The benchmark found its own set-up not as it must be (a pool that
    /// never filled, a tlb that did not grow, a thread that panicked): a
    /// fault of the command, not of its input.
    Bench(String),
    /// `replay` / `size`: a trace or kernel log that could not be read, or
    /// a replay that could not run: the file and the reason.
    Trace { path: PathBuf, message: String },
    /// `demo`: the device, the transport, the driver or the data failed;
    /// the message says which and names the device.
    Demo(String),
}

impl Error {
    /// A core error in `context` ("cannot build the first pool").
    pub(crate) fn core(context: impl Into<String>, error: swiotlb::Error) -> Error {
        Error::Core {
            context: context.into(),
            error,
        }
    }

    /// A provider error in `context` ("cannot build the first pool").
    pub(crate) fn provider(context: impl Into<String>, error: ProviderError) -> Error {
        Error::Provider {
            context: context.into(),
            error,
        }
    }

    /// A device tree error of the core, its message kept.
    pub(crate) fn device_tree(context: &'static str, error: &DtError<'_>) -> Error {
        Error::DeviceTree {
            context,
            message: error.to_string(),
        }
    }

    /// Whether the message starts with the core's own `swiotlb` prefix,
    /// so that `main` does not say it twice.
    pub(crate) fn names_swiotlb(&self) -> bool {
        match self {
            Error::Core { context, .. } | Error::Provider { context, .. } => context.is_empty(),
            Error::DeviceTree { context, .. } => context.is_empty(),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadArgument { arg, why } => write!(f, "{arg} {why}"),
            Error::NotPowerOfTwo { value, max } => {
                write!(f, "{value} is not a power of two from 1 to {max}")
            }
            Error::NotANumber(e) => e.fmt(f),
            Error::Strict { value, changes } => {
                // A whole command line is shown as it is; a lone value
                // with its key.
                let whole = value.split_ascii_whitespace().nth(1).is_some()
                    || value.starts_with("swiotlb.");
                if whole {
                    write!(
                        f,
                        "--strict: Linux changes or ignores part of the command line `{}`:",
                        value.escape_debug()
                    )?;
                } else {
                    write!(
                        f,
                        "--strict: Linux changes or ignores part of swiotlb={}:",
                        value.escape_debug()
                    )?;
                }
                for line in changes {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            Error::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            Error::ReadStdin { what, source } => {
                write!(f, "cannot read {what} from standard input: {source}")
            }
            Error::WriteReport(e) => write!(f, "cannot write the report: {e}"),
            Error::Plot { path, source } => {
                write!(f, "cannot write the plot {}: {source}", path.display())
            }
            Error::Json(e) => write!(f, "cannot write JSON: {e}"),
            Error::DeviceTree { context, message } => with_context(f, context, message),
            Error::Script {
                script,
                line: 0,
                problem,
            } => write!(f, "{script}: {problem}"),
            Error::Script {
                script,
                line,
                problem,
            } => write!(f, "{script} line {line}: {problem}"),
            Error::Core { context, error } => with_context(f, context, error),
            Error::Provider { context, error } => with_context(f, context, error),
            Error::DataErrors { mappings } => write!(
                f,
                "{mappings} mappings did not give their bytes back intact after the unmap"
            ),
            Error::BuildBlob(e) => write!(f, "dt: cannot build a blob: {e}"),
            Error::Bench(why) => f.write_str(why),
            Error::Demo(why) => write!(f, "demo: {why}"),
            Error::Trace { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

/// `context: what`, or `what` alone when there is no context.
fn with_context(f: &mut fmt::Formatter<'_>, context: &str, what: &dyn fmt::Display) -> fmt::Result {
    if context.is_empty() {
        write!(f, "{what}")
    } else {
        write!(f, "{context}: {what}")
    }
}

// Every message already holds the message of the error under it (as the
// command has always printed them), so `source` stays `None`: a reader that
// walks the chain would print it twice.
impl std::error::Error for Error {}

impl From<swiotlb::Error> for Error {
    fn from(error: swiotlb::Error) -> Error {
        Error::core("", error)
    }
}

impl From<ProviderError> for Error {
    fn from(error: ProviderError) -> Error {
        Error::provider("", error)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole command line is named as one, a lone value with its key.
    #[test]
    fn strict_names_a_command_line_as_one() {
        let line = Error::Strict {
            value: "console=ttyS0 swiotlb.region=4M@0x1000".into(),
            changes: vec!["x".into()],
        };
        assert!(line
            .to_string()
            .starts_with("--strict: Linux changes or ignores part of the command line `console=ttyS0 swiotlb.region=4M@0x1000`:"));
        let value = Error::Strict {
            value: "65536,x".into(),
            changes: vec!["x".into()],
        };
        assert!(value
            .to_string()
            .starts_with("--strict: Linux changes or ignores part of swiotlb=65536,x:"));
    }

    /// `main` adds `swiotlb: ` unless the message is the core's own.
    #[test]
    fn only_the_cores_own_messages_name_swiotlb() {
        let full = swiotlb::Error::PoolFull {
            requested: 2,
            free: 1,
            largest_run: 1,
        };
        let bare = Error::from(full);
        assert!(bare.names_swiotlb());
        assert!(bare.to_string().starts_with("swiotlb buffer is full"));
        let framed = Error::core("fast pool, 64 bytes", full);
        assert!(!framed.names_swiotlb());
        assert!(framed
            .to_string()
            .starts_with("fast pool, 64 bytes: swiotlb buffer is full"));
        let script = Error::Script {
            script: "swiotlb.ops".into(),
            line: 3,
            problem: ScriptProblem::Syntax("unmap takes one ID: unmap ID".into()),
        };
        assert!(!script.names_swiotlb());
        assert_eq!(
            script.to_string(),
            "swiotlb.ops line 3: unmap takes one ID: unmap ID"
        );
    }

    #[test]
    fn messages_name_the_argument_and_the_path() {
        let e = Error::BadArgument {
            arg: "--cpus",
            why: "must be at least 1".into(),
        };
        assert_eq!(e.to_string(), "--cpus must be at least 1");
        let e = Error::Read {
            path: "/nonexistent/a.dtb".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(e
            .to_string()
            .starts_with("cannot read /nonexistent/a.dtb: "));
        let e = Error::Strict {
            value: "1000".into(),
            changes: vec!["one".into(), "two".into()],
        };
        assert_eq!(
            e.to_string(),
            "--strict: Linux changes or ignores part of swiotlb=1000:\n  one\n  two"
        );
    }
}
