//! A vhost-user-blk device to drive: qemu-storage-daemon exporting a raw
//! image, owned by a guard that stops it.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The daemon's program, as Debian's `qemu-utils` installs it.
pub const QSD_PROGRAM: &str = "qemu-storage-daemon";

/// How long `Drop` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceError {
    /// The program is not installed.
    NotInstalled {
        /// The program looked for.
        program: PathBuf,
    },
    /// Preparing or spawning failed.
    Spawn {
        /// The program.
        program: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The daemon exited before its socket appeared.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its output.
        log: String,
    },
    /// The socket did not appear in time.
    Timeout {
        /// The socket awaited.
        socket: PathBuf,
        /// How long.
        waited: Duration,
        /// The end of the daemon's output.
        log: String,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled { program } => write!(
                f,
                "qemu-storage-daemon: {} not found: install the package qemu-utils (apt-get install qemu-utils)",
                program.display()
            ),
            Self::Spawn { program, source } => write!(
                f,
                "qemu-storage-daemon: cannot start {}: {source}",
                program.display()
            ),
            Self::Exited { status, log } => write!(
                f,
                "qemu-storage-daemon exited ({status}) before its vhost-user socket appeared: {log}"
            ),
            Self::Timeout {
                socket,
                waited,
                log,
            } => write!(
                f,
                "qemu-storage-daemon: vhost-user socket {} did not appear within {waited:?}: {log}",
                socket.display()
            ),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A running qemu-storage-daemon exporting one raw image as a
/// vhost-user-blk device on a unix socket. Dropping it sends SIGTERM,
/// waits up to 5 s, then sends SIGKILL, so a failing test cannot leave a
/// daemon behind.
#[derive(Debug)]
pub struct QemuStorageDaemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// QEMU's option syntax doubles a comma inside a value.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    let t = text[start..].trim();
    if t.is_empty() {
        "(no output)".into()
    } else {
        t.to_owned()
    }
}

impl QemuStorageDaemon {
    /// The command line that exports `image` (raw, writable) as
    /// vhost-user-blk on `socket`.
    pub fn command(image: &Path, socket: &Path) -> Command {
        let mut cmd = Command::new(QSD_PROGRAM);
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                qemu_escape(image)
            ))
            .arg("--blockdev")
            .arg("driver=raw,node-name=disk0,file=file0")
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
                qemu_escape(socket)
            ));
        cmd
    }

    /// Starts the daemon exporting `image`, its socket (`vhost-user-blk.sock`)
    /// and log (`qemu-storage-daemon.log`) in `dir`, and waits up to
    /// `timeout` for the socket to appear.
    ///
    /// # Errors
    /// [`DeviceError::NotInstalled`] (install qemu-utils) if the program
    /// is missing; [`DeviceError::Exited`] or [`DeviceError::Timeout`]
    /// with the daemon's output if it did not come up.
    pub fn start(dir: &Path, image: &Path, timeout: Duration) -> Result<Self, DeviceError> {
        let socket = dir.join("vhost-user-blk.sock");
        let log = dir.join("qemu-storage-daemon.log");
        let spawn_err = |source| DeviceError::Spawn {
            program: QSD_PROGRAM.into(),
            source,
        };
        let out = File::create(&log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = Self::command(image, &socket)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    DeviceError::NotInstalled {
                        program: QSD_PROGRAM.into(),
                    }
                } else {
                    spawn_err(e)
                }
            })?;
        // INVARIANT: from here the guard owns the child, so every early
        // return below stops it.
        let mut me = Self {
            child: Some(child),
            socket,
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(child) = me.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    me.child = None;
                    return Err(DeviceError::Exited {
                        status,
                        log: tail(&me.log),
                    });
                }
            }
            // The socket file appears at bind(2), just before listen(2);
            // the transport's own connect retries a refusal in between. No
            // probe connection: the daemon serves one frontend at a time.
            if std::fs::symlink_metadata(&me.socket)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                return Ok(me);
            }
            if start.elapsed() >= timeout {
                return Err(DeviceError::Timeout {
                    socket: me.socket.clone(),
                    waited: start.elapsed(),
                    log: tail(&me.log),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The end of the daemon's output.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Kills the daemon at once (SIGKILL) and reaps it: a device dying
    /// mid-way.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon: SIGTERM, up to `grace` for it to exit, then
    /// SIGKILL. Returns its exit status, or `None` if it had to be
    /// killed or was already gone.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_child(&child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(status)) => return Some(status),
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for QemuStorageDaemon {
    fn drop(&mut self) {
        self.stop(TERM_GRACE);
    }
}
