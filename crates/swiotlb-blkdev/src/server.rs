//! The process side: a socket, one connection, a clean stop.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{BlkBackend, SharedBackend};
use crate::device::{Device, Disk};
use crate::fault::Faults;
use crate::stats::Stats;
use crate::Error;

/// The serial number GET_ID returns unless told otherwise.
pub const DEFAULT_SERIAL: &str = "swiotlb-blkdev";

/// What to serve and how.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlkConfig {
    /// The unix socket to listen on; a stale file there is replaced.
    pub socket: PathBuf,
    /// The raw image: whole 512-byte sectors, a trailing partial one ignored.
    pub image: PathBuf,
    /// Refuse writes (VIRTIO_BLK_F_RO offered, T_OUT answered IOERR).
    pub readonly: bool,
    /// Where to write the counters as JSON when the device stops.
    pub stats: Option<PathBuf>,
    /// The GET_ID string (at most 20 bytes are returned).
    pub serial: String,
    /// The lies to tell; [`Faults::none`] for an honest device.
    pub faults: Faults,
}

impl BlkConfig {
    /// An honest, writable device for `image` on `socket`, no stats file.
    pub fn new(socket: impl Into<PathBuf>, image: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            image: image.into(),
            readonly: false,
            stats: None,
            serial: DEFAULT_SERIAL.to_owned(),
            faults: Faults::none(),
        }
    }

    /// Refuse writes.
    pub fn with_readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    /// Write the counters to `path` when the device stops.
    pub fn with_stats(mut self, path: impl Into<PathBuf>) -> Self {
        self.stats = Some(path.into());
        self
    }

    /// Return `serial` for GET_ID.
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }

    /// Tell these lies.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// Serve one frontend connection on `config.socket` and return when it
/// ends (the frontend hung up) or a [`Stopper`] stopped it; the counters as
/// they were at the end. `Server::bind` then [`Server::run`] in one call.
pub fn serve(config: BlkConfig) -> Result<Stats, Error> {
    Server::bind(config)?.run()
}

/// A device listening on its socket, not yet serving.
///
/// Binding first and serving second lets the caller take a [`Stopper`] (for
/// a signal handler or a test) before the serving thread blocks.
pub struct Server {
    config: BlkConfig,
    backend: SharedBackend,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    listener: Listener,
    stop: Stopper,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Open the image and create the socket. Once this returns, a frontend
    /// may connect (it waits in the listen backlog until [`run`](Self::run)).
    pub fn bind(config: BlkConfig) -> Result<Self, Error> {
        let disk = Disk::open(&config.image, config.readonly)?;
        let device = Device::new(disk, &config.serial, config.faults.clone());
        // No memory until the frontend's SET_MEM_TABLE / ADD_MEM_REG: the
        // device reaches only what it is given.
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = Arc::new(BlkBackend::new(device, mem.clone(), config.stats.clone()));
        let listener = Listener::new(&config.socket, true).map_err(|source| Error::Listen {
            path: config.socket.clone(),
            source,
        })?;
        let stop = Stopper {
            state: Arc::default(),
            socket: config.socket.clone(),
        };
        Ok(Self {
            config,
            backend,
            mem,
            listener,
            stop,
        })
    }

    /// A handle that ends [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.backend.device().stats()
    }

    /// Accept one frontend, serve it until it hangs up or the server is
    /// stopped, write the stats file if one was asked for, remove the
    /// socket, and return the counters.
    pub fn run(mut self) -> Result<Stats, Error> {
        let mut daemon = VhostUserDaemon::new(
            "swiotlb-blkdev".to_owned(),
            self.backend.clone(),
            self.mem.clone(),
        )
        .map_err(|e| Error::Daemon(e.to_string()))?;
        let served = self.serve_one(&mut daemon);
        // The vring threads wait on their exit events; without this they
        // would outlive a `serve` that returned.
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(daemon);
        let stats = self.stats();
        let written = match &self.config.stats {
            Some(path) => write_stats(path, &stats),
            None => Ok(()),
        };
        // Dropping the listener removes the socket file.
        drop(self.listener);
        served?;
        written?;
        Ok(stats)
    }

    fn serve_one(&mut self, daemon: &mut VhostUserDaemon<SharedBackend>) -> Result<(), Error> {
        daemon
            .start(&mut self.listener)
            .map_err(|e| Error::Daemon(e.to_string()))?;
        if let Some(handle) = daemon.shutdown_handle() {
            let mut state = self.stop.lock();
            if state.stopped {
                handle.shutdown();
            }
            state.connection = Some(handle);
        }
        let result = daemon.wait();
        self.stop.lock().connection = None;
        match result {
            Ok(()) => Ok(()),
            // A frontend that hangs up mid-message is a frontend that left
            // (vhost-user-backend's `serve` says the same).
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(_) if self.stop.lock().stopped => Ok(()),
            Err(e) => Err(Error::Daemon(e.to_string())),
        }
    }
}

#[derive(Default)]
struct StopState {
    stopped: bool,
    connection: Option<ShutdownHandle>,
}

/// Ends a [`Server::run`] from another thread: a signal handler's or a
/// test's. Stopping twice, or after the run ended, does nothing.
#[derive(Clone)]
pub struct Stopper {
    state: Arc<Mutex<StopState>>,
    socket: PathBuf,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Stopper {
    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stop the server: shut its connection down, or, when it is still
    /// waiting for one, wake it with a connection of our own that hangs up at
    /// once (vhost's listener blocks in accept(2) and has no other way out).
    pub fn stop(&self) {
        let mut state = self.lock();
        if state.stopped {
            return;
        }
        state.stopped = true;
        match &state.connection {
            Some(handle) => handle.shutdown(),
            None => drop(UnixStream::connect(&self.socket)),
        }
    }
}

/// Write `stats` to `path` as JSON, through a temporary file renamed into
/// place, so a reader never sees half a file.
pub(crate) fn write_stats(path: &Path, stats: &Stats) -> Result<(), Error> {
    let fail = |source| Error::Stats {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(stats).map_err(|e| fail(io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, json).map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}
