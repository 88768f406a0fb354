//! Devices to drive, each a process of its own owned by a guard that
//! stops it: qemu-storage-daemon exporting a raw image, or any program
//! that serves a vhost-user socket (the builtin device of `swiotlb-blkdev`).

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

/// Why a device process did not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceError {
    /// The program is not installed.
    NotInstalled {
        /// The device, as messages name it.
        device: String,
        /// The program looked for.
        program: PathBuf,
        /// The package that installs it, if known.
        package: Option<&'static str>,
    },
    /// Preparing or spawning failed.
    Spawn {
        /// The device.
        device: String,
        /// The program.
        program: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The process exited before its socket appeared.
    Exited {
        /// The device.
        device: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its output.
        log: String,
    },
    /// The socket did not appear in time.
    Timeout {
        /// The device.
        device: String,
        /// The socket awaited.
        socket: PathBuf,
        /// How long.
        waited: Duration,
        /// The end of the process's output.
        log: String,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled {
                device,
                program,
                package,
            } => {
                write!(f, "{device}: {} not found", program.display())?;
                if let Some(p) = package {
                    write!(f, ": install the package {p} (apt-get install {p})")?;
                }
                Ok(())
            }
            Self::Spawn {
                device,
                program,
                source,
            } => write!(f, "{device}: cannot start {}: {source}", program.display()),
            Self::Exited {
                device,
                status,
                log,
            } => write!(
                f,
                "{device} exited ({status}) before its vhost-user socket appeared: {log}"
            ),
            Self::Timeout {
                device,
                socket,
                waited,
                log,
            } => write!(
                f,
                "{device}: vhost-user socket {} did not appear within {waited:?}: {log}",
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

/// A device process serving a vhost-user socket. Dropping it sends
/// SIGTERM, waits up to 5 s, then sends SIGKILL, so a failing test cannot
/// leave a device behind.
#[derive(Debug)]
pub struct DeviceProcess {
    device: String,
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

impl DeviceProcess {
    /// Runs `cmd`, its output going to `log`, and waits up to `timeout`
    /// for it to create the unix socket `socket`. `device` names it in
    /// messages; `package`, if given, is what installs the program.
    ///
    /// # Errors
    /// [`DeviceError::NotInstalled`] if the program is missing;
    /// [`DeviceError::Exited`] or [`DeviceError::Timeout`] with the
    /// process's output if it did not come up.
    pub fn start(
        device: &str,
        package: Option<&'static str>,
        mut cmd: Command,
        socket: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, DeviceError> {
        let program = PathBuf::from(cmd.get_program());
        let spawn_err = |source| DeviceError::Spawn {
            device: device.into(),
            program: program.clone(),
            source,
        };
        // A socket file left by a device that was killed would pass for
        // this one's before it even started.
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(spawn_err(e)),
            _ => {}
        }
        let out = File::create(log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    DeviceError::NotInstalled {
                        device: device.into(),
                        program: program.clone(),
                        package,
                    }
                } else {
                    spawn_err(e)
                }
            })?;
        // INVARIANT: from here the guard owns the child, so every early
        // return below stops it.
        let mut me = Self {
            device: device.into(),
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let start = Instant::now();
        loop {
            if let Some(child) = me.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    me.child = None;
                    return Err(DeviceError::Exited {
                        device: me.device.clone(),
                        status,
                        log: tail(&me.log),
                    });
                }
            }
            // The socket file appears at bind(2), just before listen(2);
            // the transport's own connect retries a refusal in between. No
            // probe connection: a device may serve one frontend only.
            if std::fs::symlink_metadata(&me.socket)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                return Ok(me);
            }
            if start.elapsed() >= timeout {
                return Err(DeviceError::Timeout {
                    device: me.device.clone(),
                    socket: me.socket.clone(),
                    waited: start.elapsed(),
                    log: tail(&me.log),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The device, as messages name it.
    pub fn name(&self) -> &str {
        &self.device
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The end of the process's output.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Kills the process at once (SIGKILL) and reaps it: a device dying
    /// mid-way.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process: SIGTERM, up to `grace` for it to exit, then
    /// SIGKILL. Returns its exit status, or `None` if it had to be
    /// killed or was already gone.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_child(&child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok() {
            let deadline = Instant::now().checked_add(grace);
            while deadline.is_none_or(|d| Instant::now() < d) {
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

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        self.stop(TERM_GRACE);
    }
}

/// A running qemu-storage-daemon exporting one raw image as a
/// vhost-user-blk device on a unix socket: a [`DeviceProcess`] (its
/// methods through `Deref`), stopped when dropped.
#[derive(Debug)]
pub struct QemuStorageDaemon(DeviceProcess);

impl std::ops::Deref for QemuStorageDaemon {
    type Target = DeviceProcess;
    fn deref(&self) -> &DeviceProcess {
        &self.0
    }
}

impl std::ops::DerefMut for QemuStorageDaemon {
    fn deref_mut(&mut self) -> &mut DeviceProcess {
        &mut self.0
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
        DeviceProcess::start(
            QSD_PROGRAM,
            Some("qemu-utils"),
            Self::command(image, &socket),
            &socket,
            &log,
            timeout,
        )
        .map(Self)
    }
}
