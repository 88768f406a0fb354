//! The device the demo drives: qemu-storage-daemon or the builtin device,
//! each a process of its own started over a raw image in the demo's
//! temporary directory and stopped when the demo is done (SIGTERM, then
//! SIGKILL after a bounded wait), or the socket of a backend already
//! running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use swiotlb_vhost::device::{DeviceProcess, QemuStorageDaemon};

use super::image_path;
use crate::error::Error;

/// Which device `--device` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceChoice {
    Qemu,
    Builtin,
    /// The socket of a vhost-user-blk backend someone else runs.
    Socket(PathBuf),
}

impl DeviceChoice {
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "qemu" => Self::Qemu,
            "builtin" => Self::Builtin,
            path => Self::Socket(PathBuf::from(path)),
        }
    }

    /// The device as the report names it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Qemu => "qemu-storage-daemon".into(),
            Self::Builtin => "builtin".into(),
            Self::Socket(p) => p.display().to_string(),
        }
    }
}

/// A device ready on its socket; a process the demo started is stopped
/// when this is dropped.
pub(crate) enum RunningDevice {
    Qemu(QemuStorageDaemon),
    Builtin(DeviceProcess),
    Socket(PathBuf),
}

impl RunningDevice {
    /// Starts the chosen device over a fresh image of `size` bytes in
    /// `dir`, and waits up to `timeout` for its socket.
    pub(crate) fn start(
        choice: &DeviceChoice,
        dir: &Path,
        size: u64,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let fresh_image = || -> Result<PathBuf, Error> {
            let image = image_path(dir);
            let f = std::fs::File::create(&image)
                .and_then(|f| f.set_len(size).map(|()| f))
                .map_err(|e| Error::Demo(format!("the disk image {}: {e}", image.display())))?;
            drop(f);
            Ok(image)
        };
        Ok(match choice {
            DeviceChoice::Qemu => {
                let image = fresh_image()?;
                Self::Qemu(
                    QemuStorageDaemon::start(dir, &image, timeout)
                        .map_err(|e| Error::Demo(e.to_string()))?,
                )
            }
            DeviceChoice::Builtin => {
                let image = fresh_image()?;
                let socket = dir.join("builtin-blk.sock");
                let exe = std::env::current_exe()
                    .map_err(|e| Error::Demo(format!("this command's own path: {e}")))?;
                let mut cmd = Command::new(exe);
                cmd.arg("blkdev")
                    .arg("--socket")
                    .arg(&socket)
                    .arg("--image")
                    .arg(&image);
                Self::Builtin(
                    DeviceProcess::start(
                        "the builtin vhost-user-blk device",
                        None,
                        cmd,
                        &socket,
                        &dir.join("builtin-blk.log"),
                        timeout,
                    )
                    .map_err(|e| Error::Demo(e.to_string()))?,
                )
            }
            DeviceChoice::Socket(p) => {
                if !p.exists() {
                    return Err(Error::BadArgument {
                        arg: "--device",
                        why: format!(
                            "is neither `qemu`, `builtin` nor an existing socket: {} does not exist",
                            p.display()
                        ),
                    });
                }
                Self::Socket(p.clone())
            }
        })
    }

    pub(crate) fn socket(&self) -> &Path {
        match self {
            Self::Qemu(d) => d.socket(),
            Self::Builtin(d) => d.socket(),
            Self::Socket(p) => p,
        }
    }

    /// The end of the device process's output, if the demo started it
    /// and it said anything.
    pub(crate) fn log_tail(&self) -> Option<String> {
        let t = match self {
            Self::Qemu(d) => d.log_tail(),
            Self::Builtin(d) => d.log_tail(),
            Self::Socket(_) => return None,
        };
        (t != "(no output)").then_some(t)
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Self::Qemu(_) => "qemu-storage-daemon".into(),
            Self::Builtin(_) => "the builtin device".into(),
            Self::Socket(p) => p.display().to_string(),
        }
    }
}
