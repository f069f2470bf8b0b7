//! What a synthetic training job needs from a GPU, and a reference device
//! that does the same arithmetic on the CPU.
//!
//! The synthetic backend ([`super::synthetic`]) is the orchestration: a
//! thread per job, iteration boundaries, suspension, migration, memory.
//! Below it sit the few things only a driver can do (allocate a job's
//! state, run one iteration on a stream, copy the state out and back,
//! check that the device still works), behind [`Device`] and [`Lane`].
//! [`super::cuda::CudaDevice`] does them on NVIDIA GPUs; [`CpuDevice`]
//! does them on the CPU with the same kernel arithmetic, so that machines
//! with no GPU (CI among them) test every part above the driver, and so
//! that a GPU's results can be checked word for word against the CPU's.
//!
//! # The synthetic kernel
//!
//! A job's state is `words` 32-bit floats on each GPU of its gang (data
//! parallel: every GPU holds a replica and they stay identical). Word `i`
//! starts as [`initial_word`]`(i)`. One iteration launches `blocks` blocks
//! of [`THREADS_PER_BLOCK`] threads; thread `t` of `T` owns the
//! [`CHAINS`] words `c * T + t` and applies `x = fma(x, A, B)` to each of
//! them `rounds` times (independent chains, so the arithmetic units stay
//! busy). Words beyond the working set are the job's footprint: held,
//! saved and moved with it, not touched per iteration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Threads in one block of the synthetic kernel.
pub const THREADS_PER_BLOCK: u32 = 1024;
/// Independent multiply-add chains per thread.
pub const CHAINS: u32 = 8;
/// The kernel's multiplier: below one, so that values stay bounded.
pub const FMA_A: f32 = 0.999_999_9;
/// The kernel's addend.
pub const FMA_B: f32 = 1.0e-7;

/// A job's state word `i` before its first iteration.
pub fn initial_word(i: u64) -> f32 {
    1.0 + (i % 1024) as f32 / 1024.0
}

/// What the CPU computes for word `x` after `rounds` rounds: the reference
/// a GPU's results are checked against.
pub fn reference_rounds(mut x: f32, rounds: u64) -> f32 {
    for _ in 0..rounds {
        x = x.mul_add(FMA_A, FMA_B);
    }
    x
}

/// One device as discovered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    /// Ordinal in the driver's numbering (what `CUDA_VISIBLE_DEVICES` names).
    pub ordinal: u32,
    /// Model name, e.g. "NVIDIA H200".
    pub name: String,
    /// Stable identifier ("GPU-…" for NVIDIA GPUs).
    pub uuid: String,
    /// Device memory in bytes.
    pub memory_total: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors: how many blocks run side by side.
    pub multiprocessors: u32,
}

/// A failure on a device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceError {
    /// What the driver said, e.g. "CUDA_ERROR_ILLEGAL_ADDRESS, an illegal
    /// memory access was encountered".
    pub message: String,
    /// Whether the device's context is lost with it (every job on the
    /// device is affected), rather than only the call (out of memory).
    pub sticky: bool,
}

impl DeviceError {
    /// An error that affects only the call that got it.
    pub fn call(message: impl Into<String>) -> Self {
        DeviceError {
            message: message.into(),
            sticky: false,
        }
    }
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A job's state copied out of a device, in host memory (plain or pinned,
/// as the device likes it for the copy back).
pub trait HostState: Send {
    /// The state's words.
    fn words(&self) -> &[f32];
}

impl HostState for Vec<f32> {
    fn words(&self) -> &[f32] {
        self
    }
}

/// What [`Lane::save`] returns.
pub type Saved = Box<dyn HostState>;

/// Host buffers for saved states, kept for reuse by exact length up to a
/// budget in bytes. Pinning a buffer (or mapping one into a worker) costs
/// more than a copy through it, and a job that is suspended again and
/// again, or moves, needs a buffer of the same length every time.
pub(crate) struct ReusePool<T> {
    free: Mutex<Vec<T>>,
    budget_bytes: usize,
    words: fn(&T) -> usize,
}

impl<T> ReusePool<T> {
    /// An empty pool keeping at most `budget_bytes`; `words` measures a buffer.
    pub(crate) fn new(budget_bytes: usize, words: fn(&T) -> usize) -> Self {
        ReusePool {
            free: Mutex::new(Vec::new()),
            budget_bytes,
            words,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept buffer of exactly `words`, if there is one.
    pub(crate) fn take(&self, words: usize) -> Option<T> {
        let mut free = self.lock();
        let i = free.iter().position(|b| (self.words)(b) == words)?;
        Some(free.swap_remove(i))
    }

    /// Keep `buffer`; it comes back when the pool is full, for the caller
    /// to let go of.
    pub(crate) fn give_back(&self, buffer: T) -> Option<T> {
        let mut free = self.lock();
        let held: usize = free.iter().map(|b| (self.words)(b) * 4).sum();
        if held + (self.words)(&buffer) * 4 <= self.budget_bytes {
            free.push(buffer);
            None
        } else {
            Some(buffer)
        }
    }

    /// Every kept buffer, emptying the pool.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        std::mem::take(self.free.get_mut().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One iteration's launch on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// Blocks per launch: how much of the device a launch occupies.
    pub blocks: u32,
    /// Multiply-add rounds per chain.
    pub rounds: u32,
}

impl Kernel {
    /// The launch for a job that uses `share` of a device with
    /// `multiprocessors` and does `flops` floating-point operations per
    /// iteration on it: one block per multiprocessor it may use.
    pub fn sized(multiprocessors: u32, share: f64, flops: f64) -> Kernel {
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 1.0 };
        let blocks = ((f64::from(multiprocessors.max(1)) * share).ceil() as u32).max(1);
        let per_round = f64::from(blocks) * f64::from(THREADS_PER_BLOCK) * f64::from(CHAINS) * 2.0;
        let rounds = (flops / per_round).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        Kernel { blocks, rounds }
    }

    /// Words of state the launch works on.
    pub fn working_set(&self) -> u64 {
        u64::from(self.blocks) * u64::from(THREADS_PER_BLOCK) * u64::from(CHAINS)
    }

    /// Floating-point operations per launch.
    pub fn flops(&self) -> f64 {
        self.working_set() as f64 * f64::from(self.rounds) * 2.0
    }
}

/// A GPU, as far as synthetic jobs need one.
pub trait Device: Send + Sync + std::fmt::Debug {
    /// What it is.
    fn info(&self) -> &DeviceInfo;

    /// The backend's name for devices of this kind ("cuda", "cpu-devices").
    fn backend_name(&self) -> &'static str;

    /// Allocate `words` of job state on its own stream, set to `state` when
    /// given (a job resumed or moved here), else to the initial state.
    fn open(&self, words: u64, state: Option<&[f32]>) -> Result<Box<dyn Lane>, DeviceError>;

    /// Run a small probe to the end: does the device still work?
    fn check(&self) -> Result<(), DeviceError>;

    /// Start over with a fresh context after a sticky fault. Lanes opened
    /// before are dead: drop them first.
    fn reset(&self) -> Result<(), DeviceError>;

    /// Free device memory as the driver reports it, when it can tell.
    fn memory_free(&self) -> Option<u64> {
        None
    }

    /// What the device's own counters say now, when it can tell.
    fn measure(&self) -> Option<crate::wit::GpuMeasurement> {
        None
    }

    /// Page-lock host memory that state will be copied to and from, so the
    /// copies run at full speed. Nothing by default.
    fn pin(&self, _memory: &mut [f32]) {}

    /// Undo [`Device::pin`].
    fn unpin(&self, _memory: &mut [f32]) {}
}

/// One job's state on one device, and the stream its iterations run on.
pub trait Lane: Send {
    /// Queue one iteration. `fault` makes it fault on the device on
    /// purpose (tests of the fault path).
    fn launch(&mut self, kernel: Kernel, fault: bool) -> Result<(), DeviceError>;

    /// Wait for everything queued.
    fn wait(&mut self) -> Result<(), DeviceError>;

    /// Copy the whole state into host memory.
    fn save(&mut self) -> Result<Saved, DeviceError>;

    /// Copy the whole state into `out` (exactly as long as the state).
    fn save_into(&mut self, out: &mut [f32]) -> Result<(), DeviceError>;

    /// The first `n` words of state, for checks.
    fn peek(&mut self, n: usize) -> Result<Vec<f32>, DeviceError>;

    /// Device memory the lane holds, in bytes.
    fn bytes(&self) -> u64;
}

/// A device that runs the synthetic kernel on the CPU, on the calling
/// thread, with the same arithmetic as the GPU kernel. It models what the
/// orchestration must cope with: limited memory and sticky faults that
/// take every lane on the device with them until [`Device::reset`].
#[derive(Debug)]
pub struct CpuDevice {
    info: DeviceInfo,
    shared: Arc<CpuShared>,
}

/// What the device's lanes share with it.
#[derive(Debug, Default)]
struct CpuShared {
    used: AtomicU64,
    /// Nanoseconds spent running kernels, and when they were last measured.
    busy_nanos: AtomicU64,
    sampled: Mutex<Option<(std::time::Instant, u64)>>,
    /// A sticky fault poisons the device; a reset starts a new generation,
    /// and lanes of an older one stay dead.
    state: Mutex<CpuState>,
}

#[derive(Debug, Default)]
struct CpuState {
    generation: u64,
    poisoned: bool,
}

impl CpuDevice {
    /// A CPU device numbered `ordinal` with `memory` bytes and
    /// `multiprocessors` (they size the kernel, as on a GPU).
    pub fn new(ordinal: u32, memory: u64, multiprocessors: u32) -> Self {
        CpuDevice {
            info: DeviceInfo {
                ordinal,
                name: "cpu".into(),
                uuid: format!("CPU-{ordinal}"),
                memory_total: memory,
                compute_capability: (0, 0),
                multiprocessors,
            },
            shared: Arc::default(),
        }
    }
}

impl CpuShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, CpuState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alive(&self, generation: u64) -> Result<(), DeviceError> {
        let state = self.lock();
        if state.poisoned || state.generation != generation {
            return Err(DeviceError {
                message: "device context lost after an earlier fault".into(),
                sticky: true,
            });
        }
        Ok(())
    }
}

impl Device for CpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn backend_name(&self) -> &'static str {
        "cpu-devices"
    }

    fn open(&self, words: u64, state: Option<&[f32]>) -> Result<Box<dyn Lane>, DeviceError> {
        let shared = &self.shared;
        let generation = shared.lock().generation;
        shared.alive(generation)?;
        let bytes = words * 4;
        let mut used = shared.used.load(Ordering::SeqCst);
        loop {
            if used + bytes > self.info.memory_total {
                return Err(DeviceError::call(format!(
                    "out of memory: {bytes} bytes asked, {} free",
                    self.info.memory_total - used
                )));
            }
            match shared
                .used
                .compare_exchange(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        let data = match state {
            Some(state) if state.len() as u64 != words => {
                return Err(DeviceError::call(format!(
                    "saved state has {} words, the job has {words}",
                    state.len()
                )));
            }
            Some(state) => state.to_vec(),
            None => (0..words).map(initial_word).collect(),
        };
        Ok(Box::new(CpuLane {
            data,
            generation,
            device: shared.clone(),
        }))
    }

    fn check(&self) -> Result<(), DeviceError> {
        let generation = self.shared.lock().generation;
        self.shared.alive(generation)
    }

    fn reset(&self) -> Result<(), DeviceError> {
        let mut state = self.shared.lock();
        state.generation += 1;
        state.poisoned = false;
        drop(state);
        self.shared.used.store(0, Ordering::SeqCst);
        Ok(())
    }

    fn memory_free(&self) -> Option<u64> {
        Some(
            self.info
                .memory_total
                .saturating_sub(self.shared.used.load(Ordering::SeqCst)),
        )
    }

    /// Busy share since the last sample (the time spent in kernels), and
    /// the memory its lanes hold: what NVML would say of a GPU.
    fn measure(&self) -> Option<crate::wit::GpuMeasurement> {
        let now = std::time::Instant::now();
        let busy = self.shared.busy_nanos.load(Ordering::SeqCst);
        let mut sampled = self.shared.sampled.lock().unwrap_or_else(|e| e.into_inner());
        let utilisation = match *sampled {
            Some((at, was)) => {
                let elapsed = now.duration_since(at).as_nanos().max(1) as f64;
                (busy.saturating_sub(was) as f64 / elapsed).clamp(0.0, 1.0)
            }
            None => 0.0,
        };
        *sampled = Some((now, busy));
        Some(crate::wit::GpuMeasurement {
            utilisation,
            memory_used: self.shared.used.load(Ordering::SeqCst),
        })
    }
}

/// A job's state in host memory standing in for device memory.
struct CpuLane {
    data: Vec<f32>,
    generation: u64,
    device: Arc<CpuShared>,
}

impl Lane for CpuLane {
    fn launch(&mut self, kernel: Kernel, fault: bool) -> Result<(), DeviceError> {
        self.device.alive(self.generation)?;
        if fault {
            self.device.lock().poisoned = true;
            return Err(DeviceError {
                message: "illegal memory access (injected fault)".into(),
                sticky: true,
            });
        }
        let started = std::time::Instant::now();
        let n = (kernel.working_set() as usize).min(self.data.len());
        for x in &mut self.data[..n] {
            let mut v = *x;
            for _ in 0..kernel.rounds {
                v = v.mul_add(FMA_A, FMA_B);
            }
            *x = v;
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.device.busy_nanos.fetch_add(took, Ordering::SeqCst);
        Ok(())
    }

    fn wait(&mut self) -> Result<(), DeviceError> {
        self.device.alive(self.generation)
    }

    fn save(&mut self) -> Result<Saved, DeviceError> {
        self.device.alive(self.generation)?;
        Ok(Box::new(self.data.clone()))
    }

    fn save_into(&mut self, out: &mut [f32]) -> Result<(), DeviceError> {
        self.device.alive(self.generation)?;
        if out.len() != self.data.len() {
            return Err(DeviceError::call("save_into: wrong length"));
        }
        out.copy_from_slice(&self.data);
        Ok(())
    }

    fn peek(&mut self, n: usize) -> Result<Vec<f32>, DeviceError> {
        self.device.alive(self.generation)?;
        Ok(self.data[..n.min(self.data.len())].to_vec())
    }

    fn bytes(&self) -> u64 {
        self.data.len() as u64 * 4
    }
}

impl Drop for CpuLane {
    fn drop(&mut self) {
        let device = &self.device;
        if device.lock().generation == self.generation {
            device.used.fetch_sub(self.bytes(), Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_reuse_by_length_within_their_budget() {
        let mut pool = ReusePool::new(64, Vec::<f32>::len);
        assert!(pool.give_back(vec![0.0; 8]).is_none());
        assert!(pool.give_back(vec![0.0; 4]).is_none());
        assert_eq!(
            pool.give_back(vec![0.0; 8]).map(|b| b.len()),
            Some(8),
            "over the 64-byte budget"
        );
        assert_eq!(pool.take(4).map(|b| b.len()), Some(4));
        assert!(pool.take(4).is_none());
        assert_eq!(pool.drain().len(), 1);
    }

    #[test]
    fn kernel_size_follows_share_and_work() {
        let full = Kernel::sized(132, 1.0, 1e12);
        assert_eq!(full.blocks, 132);
        let half = Kernel::sized(132, 0.4, 1e12);
        assert_eq!(half.blocks, 53);
        assert!((full.flops() / 1e12 - 1.0).abs() < 0.01);
        assert_eq!(Kernel::sized(4, 0.0, 0.0), Kernel { blocks: 1, rounds: 1 });
    }

    #[test]
    fn cpu_lanes_compute_the_reference_and_account_memory() {
        let device = CpuDevice::new(0, 1 << 20, 1);
        let kernel = Kernel::sized(1, 1.0, 1e6);
        let mut lane = device.open(kernel.working_set() + 10, None).unwrap();
        lane.launch(kernel, false).unwrap();
        lane.launch(kernel, false).unwrap();
        let words = lane.peek(3).unwrap();
        for (i, w) in words.iter().enumerate() {
            assert_eq!(
                *w,
                reference_rounds(initial_word(i as u64), 2 * u64::from(kernel.rounds))
            );
        }
        assert_eq!(device.memory_free(), Some((1 << 20) - lane.bytes()));
        let too_big = device.open(1 << 20, None).err().unwrap();
        assert!(too_big.message.contains("out of memory") && !too_big.sticky);
        drop(lane);
        assert_eq!(device.memory_free(), Some(1 << 20));
    }

    #[test]
    fn a_fault_poisons_every_lane_until_reset() {
        let device = CpuDevice::new(0, 1 << 20, 1);
        let kernel = Kernel::sized(1, 1.0, 1e5);
        let mut a = device.open(kernel.working_set(), None).unwrap();
        let mut b = device.open(kernel.working_set(), None).unwrap();
        assert!(a.launch(kernel, true).unwrap_err().sticky);
        assert!(b.launch(kernel, false).is_err());
        assert!(device.check().is_err());
        drop((a, b));
        device.reset().unwrap();
        device.check().unwrap();
        assert_eq!(device.memory_free(), Some(1 << 20));
        device
            .open(kernel.working_set(), None)
            .unwrap()
            .launch(kernel, false)
            .unwrap();
    }
}
