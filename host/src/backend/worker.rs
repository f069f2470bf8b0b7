//! GPU worker processes: each device lives in a child process of its own.
//!
//! A kernel that faults (an illegal address, a trap) leaves a sticky error
//! in its CUDA context that nothing in the same process can clear: on an
//! H200 with driver 580, neither dropping every reference to the context
//! nor `cuDevicePrimaryCtxReset` brought it back. A new process does. So
//! the host keeps each device in a `wsched device-worker` process, and
//! after a fault it ends that worker and starts a fresh one: the GPU is
//! checked and back in the pool, and other GPUs never noticed.
//!
//! [`WorkerDevice`] is a [`Device`] whose calls go to the worker over a
//! Unix socket, as JSON lines. Every lane has a connection of its own and
//! the worker serves each connection on its own thread, so one lane
//! waiting for its kernel never holds up another. Job state never crosses
//! the socket: it moves through shared-memory files (`/dev/shm`) that the
//! host creates and keeps, and that the worker maps, pins and copies to
//! and from the device. A saved state therefore survives its worker.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::device::{Device, DeviceError, DeviceInfo, HostState, Kernel, Lane, ReusePool, Saved};

/// How long a new worker gets to open its device and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Most shared memory a worker keeps mapped (and pinned) for reuse.
const WORKER_MAPPED_BYTES: u64 = 16 << 30;

/// Most saved-state buffers the host keeps for reuse, in bytes.
const POOL_BYTES: usize = 16 << 30;

/// What a worker process runs.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerKind {
    /// NVIDIA GPU `ordinal`.
    Cuda {
        /// The device's CUDA ordinal.
        ordinal: u32,
    },
    /// A CPU stand-in (see [`super::device::CpuDevice`]).
    Cpu {
        /// Which stand-in, as an ordinal would name a GPU.
        ordinal: u32,
        /// Its "device memory", in bytes.
        memory: u64,
        /// Its "multiprocessors" (parallel lanes).
        multiprocessors: u32,
    },
}

impl WorkerKind {
    /// The `wsched device-worker` arguments that open this device.
    pub fn args(&self) -> Vec<String> {
        match self {
            WorkerKind::Cuda { ordinal } => vec!["--cuda".into(), ordinal.to_string()],
            WorkerKind::Cpu {
                ordinal,
                memory,
                multiprocessors,
            } => vec![
                "--cpu".into(),
                ordinal.to_string(),
                "--memory".into(),
                memory.to_string(),
                "--multiprocessors".into(),
                multiprocessors.to_string(),
            ],
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Info,
    Check,
    MemoryFree,
    Measure,
    Open {
        words: u64,
        state: Option<PathBuf>,
    },
    Launch {
        lane: u64,
        blocks: u32,
        rounds: u32,
        fault: bool,
    },
    Wait {
        lane: u64,
    },
    Save {
        lane: u64,
        path: PathBuf,
    },
    Peek {
        lane: u64,
        n: usize,
    },
    Close {
        lane: u64,
    },
}

type Reply = Result<serde_json::Value, DeviceError>;

/// One connection to a worker.
struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

fn gone(why: impl std::fmt::Display) -> DeviceError {
    DeviceError {
        message: format!("the GPU worker process is gone ({why})"),
        sticky: true,
    }
}

impl Connection {
    fn open(socket: &Path) -> std::io::Result<Connection> {
        let writer = UnixStream::connect(socket)?;
        Ok(Connection {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        })
    }

    fn call<T: for<'de> Deserialize<'de>>(&mut self, request: &Request) -> Result<T, DeviceError> {
        let mut line = serde_json::to_string(request).map_err(|e| DeviceError::call(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(gone)?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => return Err(gone("it closed the connection")),
            Ok(_) => {}
            Err(e) => return Err(gone(e)),
        }
        let reply: Reply = serde_json::from_str(&answer).map_err(|e| gone(format!("unreadable reply: {e}")))?;
        serde_json::from_value(reply?).map_err(|e| gone(format!("unexpected reply: {e}")))
    }
}

/// A running worker process.
struct WorkerProcess {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    control: Connection,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A device served by a worker process (restarted after a sticky fault).
pub struct WorkerDevice {
    info: DeviceInfo,
    program: PathBuf,
    kind: WorkerKind,
    worker: Mutex<WorkerProcess>,
    pool: Arc<StatePool>,
}

impl std::fmt::Debug for WorkerDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDevice")
            .field("info", &self.info)
            .field("kind", &self.kind)
            .finish()
    }
}

static WORKERS_STARTED: AtomicU64 = AtomicU64::new(0);

fn start(program: &Path, kind: &WorkerKind) -> anyhow::Result<WorkerProcess> {
    let n = WORKERS_STARTED.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wsched-worker-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socket = dir.join("sock");
    let mut command = Command::new(program);
    command
        .arg("device-worker")
        .arg("--socket")
        .arg(&socket)
        .args(kind.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // The worker must not outlive the host (nor hold a GPU for nobody).
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start the GPU worker {}", program.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let control = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the GPU worker for {kind:?} exited at start ({status}); its error is in the log above");
        }
        match Connection::open(&socket) {
            Ok(connection) => break connection,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                anyhow::bail!("the GPU worker for {kind:?} did not start listening: {e}");
            }
        }
    };
    Ok(WorkerProcess {
        child,
        dir,
        socket,
        control,
    })
}

impl WorkerDevice {
    /// Start a worker running `program device-worker` for `kind`, sharing
    /// `pool` for saved states with the other devices of the backend.
    pub fn start(program: &Path, kind: WorkerKind, pool: Arc<StatePool>) -> anyhow::Result<WorkerDevice> {
        let mut worker = start(program, &kind)?;
        let info: DeviceInfo = worker
            .control
            .call(&Request::Info)
            .map_err(|e| anyhow::anyhow!("GPU worker for {kind:?}: {e}"))?;
        Ok(WorkerDevice {
            info,
            program: program.to_path_buf(),
            kind,
            worker: Mutex::new(worker),
            pool,
        })
    }

    fn lock(&self) -> MutexGuard<'_, WorkerProcess> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker for every GPU the driver sees, each running `program`.
pub fn discover_cuda(program: &Path) -> anyhow::Result<Vec<Arc<WorkerDevice>>> {
    let count = super::cuda::device_count()?;
    let pool = Arc::new(StatePool::new()?);
    (0..count as u32)
        .map(|ordinal| WorkerDevice::start(program, WorkerKind::Cuda { ordinal }, pool.clone()).map(Arc::new))
        .collect()
}

/// `count` CPU stand-ins, each in a worker running `program`.
pub fn cpu_workers(program: &Path, count: u32, memory: u64) -> anyhow::Result<Vec<Arc<WorkerDevice>>> {
    let pool = Arc::new(StatePool::new()?);
    (0..count)
        .map(|ordinal| {
            let kind = WorkerKind::Cpu {
                ordinal,
                memory,
                multiprocessors: 2,
            };
            WorkerDevice::start(program, kind, pool.clone()).map(Arc::new)
        })
        .collect()
}

impl Device for WorkerDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn backend_name(&self) -> &'static str {
        match self.kind {
            WorkerKind::Cuda { .. } => "cuda",
            WorkerKind::Cpu { .. } => "cpu-devices",
        }
    }

    fn open(&self, words: u64, state: Option<&[f32]>) -> Result<Box<dyn Lane>, DeviceError> {
        // The worker reads a saved state from its shared-memory file; a
        // state that is not in one is copied into one first.
        let (path, _copy) = match state {
            None => (None, None),
            Some(state) => match self.pool.path_of(state) {
                Some(path) => (Some(path), None),
                None => {
                    let mut copy = self
                        .pool
                        .take(state.len())
                        .map_err(|e| DeviceError::call(e.to_string()))?;
                    copy.words_mut().copy_from_slice(state);
                    (Some(copy.path.clone()), Some(copy))
                }
            },
        };
        let socket = self.lock().socket.clone();
        let mut connection = Connection::open(&socket).map_err(gone)?;
        let lane: u64 = connection.call(&Request::Open { words, state: path })?;
        Ok(Box::new(WorkerLane {
            connection,
            lane,
            words,
            pool: self.pool.clone(),
        }))
    }

    fn check(&self) -> Result<(), DeviceError> {
        self.lock().control.call::<()>(&Request::Check)
    }

    fn reset(&self) -> Result<(), DeviceError> {
        let mut worker = self.lock();
        tracing::info!(device = self.info.ordinal, "starting a fresh GPU worker process");
        let fresh = start(&self.program, &self.kind).map_err(|e| DeviceError {
            message: format!("cannot restart the GPU worker: {e:#}"),
            sticky: true,
        })?;
        *worker = fresh; // the old worker is killed as it drops
        Ok(())
    }

    fn memory_free(&self) -> Option<u64> {
        self.lock().control.call(&Request::MemoryFree).ok().flatten()
    }

    fn measure(&self) -> Option<crate::wit::GpuMeasurement> {
        let (utilisation, memory_used): (f64, u64) = self.lock().control.call(&Request::Measure).ok().flatten()?;
        Some(crate::wit::GpuMeasurement {
            utilisation,
            memory_used,
        })
    }
}

/// A lane in a worker, over its own connection.
struct WorkerLane {
    connection: Connection,
    lane: u64,
    words: u64,
    pool: Arc<StatePool>,
}

impl Lane for WorkerLane {
    fn launch(&mut self, kernel: Kernel, fault: bool) -> Result<(), DeviceError> {
        self.connection.call(&Request::Launch {
            lane: self.lane,
            blocks: kernel.blocks,
            rounds: kernel.rounds,
            fault,
        })
    }

    fn wait(&mut self) -> Result<(), DeviceError> {
        self.connection.call(&Request::Wait { lane: self.lane })
    }

    fn save(&mut self) -> Result<Saved, DeviceError> {
        let words = usize::try_from(self.words).map_err(|_| DeviceError::call("state too large"))?;
        let buffer = self.pool.take(words).map_err(|e| DeviceError::call(e.to_string()))?;
        self.connection.call::<()>(&Request::Save {
            lane: self.lane,
            path: buffer.path.clone(),
        })?;
        Ok(Box::new(buffer))
    }

    fn save_into(&mut self, out: &mut [f32]) -> Result<(), DeviceError> {
        let saved = self.save()?;
        if out.len() != saved.words().len() {
            return Err(DeviceError::call("save_into: wrong length"));
        }
        out.copy_from_slice(saved.words());
        Ok(())
    }

    fn peek(&mut self, n: usize) -> Result<Vec<f32>, DeviceError> {
        self.connection.call(&Request::Peek { lane: self.lane, n })
    }

    fn bytes(&self) -> u64 {
        self.words * 4
    }
}

impl Drop for WorkerLane {
    fn drop(&mut self) {
        let _ = self.connection.call::<()>(&Request::Close { lane: self.lane });
    }
}

/// Shared-memory files that hold saved states, kept for reuse: the worker
/// maps and pins a file once, and a job suspended again and again (or
/// moving) reuses the same one.
pub struct StatePool {
    dir: PathBuf,
    next: AtomicU64,
    free: ReusePool<SharedBuffer>,
    /// Where each buffer handed out lives, by address: a saved state given
    /// back to [`Device::open`] is found by its slice.
    live: Mutex<HashMap<usize, PathBuf>>,
}

impl StatePool {
    /// A pool in `/dev/shm` (or the temporary directory without it).
    pub fn new() -> anyhow::Result<StatePool> {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "wsched-{}-{}",
            std::process::id(),
            POOLS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(StatePool {
            dir,
            next: AtomicU64::new(0),
            free: ReusePool::new(POOL_BYTES, |b| b.len),
            live: Mutex::new(HashMap::new()),
        })
    }

    fn take(self: &Arc<Self>, words: usize) -> std::io::Result<PooledState> {
        let buffer = match self.free.take(words) {
            Some(buffer) => buffer,
            None => {
                let path = self
                    .dir
                    .join(format!("state-{}", self.next.fetch_add(1, Ordering::SeqCst)));
                SharedBuffer::create(path, words)?
            }
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(buffer.ptr as usize, buffer.path.clone());
        Ok(PooledState {
            path: buffer.path.clone(),
            buffer: Some(buffer),
            pool: self.clone(),
        })
    }

    fn path_of(&self, state: &[f32]) -> Option<PathBuf> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(state.as_ptr() as usize))
            .cloned()
    }

    fn give_back(&self, buffer: SharedBuffer) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(buffer.ptr as usize));
        // A buffer the pool does not keep is unmapped and removed as it drops.
        drop(self.free.give_back(buffer));
    }
}

static POOLS: AtomicU64 = AtomicU64::new(0);

impl Drop for StatePool {
    fn drop(&mut self) {
        self.free.drain();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shared-memory file mapped into this process.
struct SharedBuffer {
    path: PathBuf,
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone.
unsafe impl Send for SharedBuffer {}

impl SharedBuffer {
    fn create(path: PathBuf, len: usize) -> std::io::Result<SharedBuffer> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len((len * 4) as u64)?;
        let ptr = map(&file, len)?;
        Ok(SharedBuffer { path, ptr, len })
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        unmap(self.ptr, self.len);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn map(file: &std::fs::File, len: usize) -> std::io::Result<*mut f32> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(std::ptr::NonNull::<f32>::dangling().as_ptr());
    }
    // SAFETY: a fresh shared mapping of a file we hold open; the kernel
    // picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len * 4,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

fn unmap(ptr: *mut f32, len: usize) {
    if len > 0 {
        // SAFETY: `ptr` came from `map` with this length and is unmapped once.
        unsafe { libc::munmap(ptr.cast(), len * 4) };
    }
}

/// A saved state in a pooled shared-memory buffer.
struct PooledState {
    path: PathBuf,
    buffer: Option<SharedBuffer>,
    pool: Arc<StatePool>,
}

impl PooledState {
    fn words_mut(&mut self) -> &mut [f32] {
        match &mut self.buffer {
            // SAFETY: the mapping holds `len` floats and lives as long as the buffer.
            Some(b) if b.len > 0 => unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) },
            _ => &mut [],
        }
    }
}

impl HostState for PooledState {
    fn words(&self) -> &[f32] {
        match &self.buffer {
            // SAFETY: as in `words_mut`.
            Some(b) if b.len > 0 => unsafe { std::slice::from_raw_parts(b.ptr, b.len) },
            _ => &[],
        }
    }
}

impl Drop for PooledState {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.give_back(buffer);
        }
    }
}

/// The worker's side: what `wsched device-worker` runs.
pub mod serve {
    use super::*;

    /// A shared-memory file the worker has mapped and pinned.
    struct Mapping {
        ptr: *mut f32,
        len: usize,
    }

    // SAFETY: plain memory, used under the worker's locks.
    unsafe impl Send for Mapping {}

    /// A lane, used by one connection at a time.
    type SharedLane = Arc<Mutex<Box<dyn Lane>>>;

    struct State {
        device: Box<dyn Device>,
        lanes: Mutex<HashMap<u64, SharedLane>>,
        next_lane: AtomicU64,
        /// Mapped files, oldest first (unmapped beyond a budget).
        mappings: Mutex<VecDeque<(PathBuf, Mapping)>>,
    }

    impl State {
        fn lane(&self, id: u64) -> Result<SharedLane, DeviceError> {
            self.lanes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned()
                .ok_or_else(|| DeviceError::call(format!("no lane {id}")))
        }

        /// Run `f` on the file at `path` mapped (and pinned) here.
        fn with_mapping<T>(
            &self,
            path: &Path,
            f: impl FnOnce(&mut [f32]) -> Result<T, DeviceError>,
        ) -> Result<T, DeviceError> {
            let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
            let position = mappings.iter().position(|(p, _)| p == path);
            let index = match position {
                Some(i) => i,
                None => {
                    let file = std::fs::File::options()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map_err(|e| DeviceError::call(format!("cannot open {}: {e}", path.display())))?;
                    let bytes = file.metadata().map_err(|e| DeviceError::call(e.to_string()))?.len();
                    let len = (bytes / 4) as usize;
                    let ptr = map(&file, len).map_err(|e| DeviceError::call(e.to_string()))?;
                    let mapping = Mapping { ptr, len };
                    // SAFETY: the mapping holds `len` floats.
                    self.device.pin(unsafe { std::slice::from_raw_parts_mut(ptr, len) });
                    mappings.push_back((path.to_path_buf(), mapping));
                    // Stay within budget: let the oldest go (not the new one).
                    while mappings.iter().map(|(_, m)| m.len as u64 * 4).sum::<u64>() > WORKER_MAPPED_BYTES
                        && mappings.len() > 1
                    {
                        if let Some((_, old)) = mappings.pop_front() {
                            // SAFETY: as above, for the old mapping.
                            self.device
                                .unpin(unsafe { std::slice::from_raw_parts_mut(old.ptr, old.len) });
                            unmap(old.ptr, old.len);
                        }
                    }
                    mappings.len() - 1
                }
            };
            let mapping = &mappings[index].1;
            let words = if mapping.len == 0 {
                &mut [][..]
            } else {
                // SAFETY: the mapping holds `len` floats; the lock keeps it alive.
                unsafe { std::slice::from_raw_parts_mut(mapping.ptr, mapping.len) }
            };
            f(words)
        }

        fn handle(&self, request: Request) -> Reply {
            let json = |v: serde_json::Value| Ok(v);
            match request {
                Request::Info => json(serde_json::to_value(self.device.info()).unwrap_or_default()),
                Request::Check => self.device.check().map(|()| serde_json::Value::Null),
                Request::MemoryFree => json(serde_json::json!(self.device.memory_free())),
                Request::Measure => json(serde_json::json!(
                    self.device.measure().map(|m| (m.utilisation, m.memory_used))
                )),
                Request::Open { words, state } => {
                    let lane = match state {
                        None => self.device.open(words, None)?,
                        Some(path) => self.with_mapping(&path, |state| self.device.open(words, Some(state)))?,
                    };
                    let id = self.next_lane.fetch_add(1, Ordering::SeqCst);
                    self.lanes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, Arc::new(Mutex::new(lane)));
                    json(serde_json::json!(id))
                }
                Request::Launch {
                    lane,
                    blocks,
                    rounds,
                    fault,
                } => {
                    let lane = self.lane(lane)?;
                    let mut lane = lane.lock().unwrap_or_else(|e| e.into_inner());
                    lane.launch(Kernel { blocks, rounds }, fault)
                        .map(|()| serde_json::Value::Null)
                }
                Request::Wait { lane } => {
                    let lane = self.lane(lane)?;
                    let mut lane = lane.lock().unwrap_or_else(|e| e.into_inner());
                    lane.wait().map(|()| serde_json::Value::Null)
                }
                Request::Save { lane, path } => {
                    let lane = self.lane(lane)?;
                    let mut lane = lane.lock().unwrap_or_else(|e| e.into_inner());
                    self.with_mapping(&path, |out| lane.save_into(out))
                        .map(|()| serde_json::Value::Null)
                }
                Request::Peek { lane, n } => {
                    let lane = self.lane(lane)?;
                    let mut lane = lane.lock().unwrap_or_else(|e| e.into_inner());
                    json(serde_json::json!(lane.peek(n)?))
                }
                Request::Close { lane } => {
                    self.lanes.lock().unwrap_or_else(|e| e.into_inner()).remove(&lane);
                    json(serde_json::Value::Null)
                }
            }
        }
    }

    fn connection(state: &State, stream: UnixStream) {
        let Ok(reader) = stream.try_clone() else { return };
        let mut writer = stream;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let reply: Reply = match serde_json::from_str::<Request>(&line) {
                Ok(request) => state.handle(request),
                Err(e) => Err(DeviceError::call(format!("unreadable request: {e}"))),
            };
            let mut text = serde_json::to_string(&reply)
                .unwrap_or_else(|_| "{\"Err\":{\"message\":\"reply\",\"sticky\":false}}".into());
            text.push('\n');
            if writer.write_all(text.as_bytes()).is_err() {
                break;
            }
        }
    }

    /// Open the device and serve the host on `socket` until killed.
    pub fn run(socket: &Path, kind: &WorkerKind) -> anyhow::Result<()> {
        let device: Box<dyn Device> = match *kind {
            WorkerKind::Cuda { ordinal } => Box::new(crate::backend::cuda::open(ordinal as usize)?),
            WorkerKind::Cpu {
                ordinal,
                memory,
                multiprocessors,
            } => Box::new(crate::backend::device::CpuDevice::new(ordinal, memory, multiprocessors)),
        };
        let listener = UnixListener::bind(socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
        let state: &'static State = Box::leak(Box::new(State {
            device,
            lanes: Mutex::new(HashMap::new()),
            next_lane: AtomicU64::new(0),
            mappings: Mutex::new(VecDeque::new()),
        }));
        for stream in listener.incoming() {
            let stream = stream.context("accept")?;
            std::thread::Builder::new()
                .name("wsched-device-conn".into())
                .spawn(move || connection(state, stream))
                .context("cannot start a connection thread")?;
        }
        Ok(())
    }
}
