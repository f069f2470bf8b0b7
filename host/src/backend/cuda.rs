//! NVIDIA GPUs through the CUDA driver API (`cudarc`, loaded at run time).
//!
//! The host is built without a CUDA toolkit and runs on machines with no
//! driver: `libcuda` and `libnvrtc` are opened on first use. cudarc panics
//! when a library it needs is missing, so every entry point here checks
//! for it first and returns an error that says which library is missing.
//!
//! One [`CudaDevice`] per visible GPU owns the device's primary context
//! and the synthetic kernel, compiled once with NVRTC and loaded into the
//! context. Each job's [`Lane`] gets its own stream, so two jobs sharing a
//! GPU run side by side (Gandiva's packing) and a job's copies never wait
//! for another job's kernels.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, cudaError_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};

use super::device::{
    CHAINS, Device, DeviceError, DeviceInfo, FMA_A, FMA_B, HostState, Kernel, Lane, ReusePool, Saved, THREADS_PER_BLOCK,
};

/// The synthetic training step and the state initialiser (see
/// [`super::device`] for what they compute; the CPU reference must match).
fn kernel_source() -> String {
    format!(
        r#"
extern "C" __global__ void wsched_init(float* state, unsigned long long words) {{
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += stride) {{
        state[i] = 1.0f + (float)(i % 1024ull) / 1024.0f;
    }}
}}

extern "C" __global__ void wsched_step(float* state, unsigned int rounds, int fault) {{
    const unsigned long long threads = (unsigned long long)gridDim.x * blockDim.x;
    const unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    float x[{CHAINS}];
    #pragma unroll
    for (int c = 0; c < {CHAINS}; ++c) x[c] = state[c * threads + t];
    for (unsigned int r = 0; r < rounds; ++r) {{
        #pragma unroll
        for (int c = 0; c < {CHAINS}; ++c) x[c] = fmaf(x[c], {FMA_A:e}f, {FMA_B:e}f);
    }}
    #pragma unroll
    for (int c = 0; c < {CHAINS}; ++c) state[c * threads + t] = x[c];
    if (fault && t == 0) {{
        // An injected device fault: a write to an address nobody mapped.
        *((volatile float*)8) = x[0];
    }}
}}
"#
    )
}

/// NVML (the driver's management library: utilisation and memory as the
/// GPU counts them), opened once; none where it does not load.
fn nvml() -> Option<&'static nvml_wrapper::Nvml> {
    static NVML: std::sync::OnceLock<Option<nvml_wrapper::Nvml>> = std::sync::OnceLock::new();
    NVML.get_or_init(|| match nvml_wrapper::Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            tracing::info!(error = %e, "NVML does not load: GPU utilisation will not be measured");
            None
        }
    })
    .as_ref()
}

/// Whether the NVIDIA driver library can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (the run-time compiler) can be loaded here.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// How many GPUs the driver sees (an error says why none can be used:
/// no driver, no NVRTC, no GPU).
pub fn device_count() -> anyhow::Result<usize> {
    anyhow::ensure!(driver_present(), "no NVIDIA driver found (libcuda.so does not load)");
    anyhow::ensure!(
        nvrtc_present(),
        "NVRTC not found (libnvrtc.so does not load): synthetic jobs compile their kernel with it; \
         put the CUDA toolkit's lib64 directory on LD_LIBRARY_PATH"
    );
    let count = CudaContext::device_count().map_err(|e| anyhow::anyhow!("cannot count GPUs: {}", describe(e)))?;
    anyhow::ensure!(count > 0, "the NVIDIA driver sees no GPU");
    Ok(count as usize)
}

fn compile() -> anyhow::Result<String> {
    let ptx = cudarc::nvrtc::compile_ptx(kernel_source())
        .map_err(|e| anyhow::anyhow!("NVRTC cannot compile the synthetic kernel: {e:?}"))?;
    Ok(ptx.to_src())
}

/// Every visible GPU, opened in this process and ready to run synthetic
/// jobs. (The service opens each GPU in a worker process instead, see
/// [`super::worker`], so that a device fault costs only that process.)
pub fn discover() -> anyhow::Result<Vec<Arc<CudaDevice>>> {
    let count = device_count()?;
    let ptx = compile()?;
    (0..count)
        .map(|ordinal| {
            CudaDevice::open(ordinal, &ptx)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("GPU {ordinal}: {e}"))
        })
        .collect()
}

/// GPU `ordinal`, opened in this process.
pub fn open(ordinal: usize) -> anyhow::Result<CudaDevice> {
    let count = device_count()?;
    anyhow::ensure!(ordinal < count, "no GPU {ordinal}: the driver sees {count}");
    let ptx = compile()?;
    CudaDevice::open(ordinal, &ptx).map_err(|e| anyhow::anyhow!("GPU {ordinal}: {e}"))
}

/// The driver's name and description of an error, e.g.
/// "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered".
pub fn describe(error: DriverError) -> String {
    let name = error.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = error.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(name), Ok(text)) => format!("{name}: {text}"),
        _ => format!("{:?}", error.0),
    }
}

/// Errors after which the context is unusable until it is reset.
fn is_sticky(error: DriverError) -> bool {
    use cudaError_enum::*;
    matches!(
        error.0,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_LAUNCH_TIMEOUT
    )
}

fn device_error(error: DriverError) -> DeviceError {
    DeviceError {
        message: describe(error),
        sticky: is_sticky(error),
    }
}

/// A context with the synthetic kernel loaded.
struct Loaded {
    context: Arc<CudaContext>,
    init: CudaFunction,
    step: CudaFunction,
}

impl Loaded {
    fn new(ordinal: usize, ptx: &str) -> Result<Loaded, DriverError> {
        let context = CudaContext::new(ordinal)?;
        // Each lane's memory is used by its own stream alone: cudarc's
        // cross-stream event tracking would only add work to every launch.
        // SAFETY: no slice of this context is ever used from two streams.
        unsafe { context.disable_event_tracking() };
        let module = context.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        Ok(Loaded {
            init: module.load_function("wsched_init")?,
            step: module.load_function("wsched_step")?,
            context,
        })
    }
}

/// One NVIDIA GPU.
pub struct CudaDevice {
    info: DeviceInfo,
    loaded: Loaded,
    staging: Arc<StagingPool>,
}

/// Most host memory kept pinned for reuse per device, in bytes.
const STAGING_POOL_BYTES: usize = 16 << 30;

/// Pinned (page-locked) host buffers for jobs' saved state, kept for
/// reuse. A copy between the device and pinned memory runs at the bus's
/// full speed, several times faster than through ordinary memory, but
/// pinning a large buffer costs more than the copy: a time-sliced or
/// migrating job reuses the same buffers every time.
///
/// The buffers are ordinary allocations registered with the driver
/// (`cuMemHostRegister`), not driver allocations, so a saved state's memory
/// belongs to the host, not to the device's context.
struct StagingPool {
    free: ReusePool<Vec<f32>>,
}

impl StagingPool {
    fn new() -> Self {
        StagingPool {
            free: ReusePool::new(STAGING_POOL_BYTES, Vec::len),
        }
    }

    /// A buffer of exactly `len` words, pinned if it can be.
    fn take(&self, context: &CudaContext, len: usize) -> Vec<f32> {
        self.free.take(len).unwrap_or_else(|| {
            let mut buffer = vec![0.0f32; len];
            pin(context, &mut buffer);
            buffer
        })
    }

    /// Keep `buffer` for reuse, or let it go when the pool is full.
    fn give_back(&self, buffer: Vec<f32>) {
        if let Some(mut rejected) = self.free.give_back(buffer) {
            unpin(&mut rejected);
        }
    }
}

impl Drop for StagingPool {
    fn drop(&mut self) {
        for mut buffer in self.free.drain() {
            unpin(&mut buffer);
        }
    }
}

/// Page-lock `memory` for fast copies to and from `context`'s device (and,
/// being portable, any other); a failure only leaves copies slower.
fn pin(context: &CudaContext, memory: &mut [f32]) {
    let _ = context.bind_to_thread();
    // SAFETY: `memory` is one live allocation that the caller keeps in
    // place until `unpin` (a Vec never moves unless it grows).
    let rc = unsafe {
        cudarc::driver::sys::cuMemHostRegister_v2(
            memory.as_mut_ptr().cast(),
            std::mem::size_of_val(memory),
            cudarc::driver::sys::CU_MEMHOSTREGISTER_PORTABLE,
        )
    };
    if rc != cudaError_enum::CUDA_SUCCESS {
        tracing::debug!(error = %describe(DriverError(rc)), "cannot pin host memory; copies go through pageable memory");
    }
}

fn unpin(buffer: &mut [f32]) {
    // SAFETY: unregistering a range that may or may not be registered
    // (a context reset drops registrations) only returns an error.
    let _ = unsafe { cudarc::driver::sys::cuMemHostUnregister(buffer.as_mut_ptr().cast()) };
}

/// A saved state in a staging buffer; the buffer goes back to its pool.
struct Staged {
    buffer: Vec<f32>,
    pool: Arc<StagingPool>,
}

impl HostState for Staged {
    fn words(&self) -> &[f32] {
        &self.buffer
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("info", &self.info).finish()
    }
}

impl CudaDevice {
    fn open(ordinal: usize, ptx: &str) -> Result<CudaDevice, String> {
        let loaded = Loaded::new(ordinal, ptx).map_err(describe)?;
        let context = &loaded.context;
        let uuid = context.uuid().map_err(describe)?;
        let uuid = format_uuid(&uuid.bytes.map(|b| b as u8));
        let (major, minor) = context.compute_capability().map_err(describe)?;
        let multiprocessors = context
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(describe)?;
        let info = DeviceInfo {
            ordinal: ordinal as u32,
            name: context.name().map_err(describe)?,
            uuid,
            memory_total: context.total_mem().map_err(describe)? as u64,
            compute_capability: (major.max(0) as u32, minor.max(0) as u32),
            multiprocessors: multiprocessors.max(1) as u32,
        };
        Ok(CudaDevice {
            info,
            loaded,
            staging: Arc::new(StagingPool::new()),
        })
    }
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Device for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn backend_name(&self) -> &'static str {
        "cuda"
    }

    fn open(&self, words: u64, state: Option<&[f32]>) -> Result<Box<dyn Lane>, DeviceError> {
        if let Some(state) = state
            && state.len() as u64 != words
        {
            return Err(DeviceError::call(format!(
                "saved state has {} words, the job has {words}",
                state.len()
            )));
        }
        let loaded = &self.loaded;
        let stream = loaded.context.new_stream().map_err(device_error)?;
        let len = usize::try_from(words).map_err(|_| DeviceError::call("state too large"))?;
        let slice = match state {
            Some(state) => stream.clone_htod(state).map_err(device_error)?,
            None => {
                // SAFETY: every word is written by wsched_init below
                // before anything reads it.
                let mut slice = unsafe { stream.alloc::<f32>(len) }.map_err(device_error)?;
                let blocks = (words.div_ceil(u64::from(THREADS_PER_BLOCK))).clamp(1, 65_535) as u32;
                let mut launch = stream.launch_builder(&loaded.init);
                launch.arg(&mut slice).arg(&words);
                // SAFETY: the arguments match wsched_init's signature.
                unsafe { launch.launch(LaunchConfig::for_blocks(blocks)) }.map_err(device_error)?;
                slice
            }
        };
        stream.synchronize().map_err(device_error)?;
        Ok(Box::new(CudaLane {
            step: loaded.step.clone(),
            context: loaded.context.clone(),
            state: slice,
            stream,
            words,
            staging: self.staging.clone(),
        }) as Box<dyn Lane>)
    }

    fn check(&self) -> Result<(), DeviceError> {
        let mut probe = self.open(u64::from(THREADS_PER_BLOCK * CHAINS), None)?;
        probe.launch(Kernel { blocks: 1, rounds: 1 }, false)?;
        probe.wait()
    }

    fn reset(&self) -> Result<(), DeviceError> {
        // A sticky error stays with the process: on an H200 (driver 580)
        // neither releasing every reference nor cuDevicePrimaryCtxReset
        // cleared CUDA_ERROR_ILLEGAL_ADDRESS. Only a new process gets a
        // working GPU back, which is what `super::worker` does.
        Err(DeviceError {
            message: "a sticky CUDA error cannot be cleared inside the process that met it; \
                      run the GPU in a worker process (backend::worker) to recover from faults"
                .into(),
            sticky: true,
        })
    }

    fn measure(&self) -> Option<crate::wit::GpuMeasurement> {
        let nvml = nvml()?;
        let device = nvml.device_by_uuid(self.info.uuid.as_str()).ok()?;
        let utilisation = device.utilization_rates().ok()?;
        let memory = device.memory_info().ok()?;
        Some(crate::wit::GpuMeasurement {
            utilisation: f64::from(utilisation.gpu) / 100.0,
            memory_used: memory.used,
        })
    }

    fn pin(&self, memory: &mut [f32]) {
        pin(&self.loaded.context, memory);
    }

    fn unpin(&self, memory: &mut [f32]) {
        unpin(memory);
    }

    fn memory_free(&self) -> Option<u64> {
        self.loaded.context.mem_get_info().ok().map(|(free, _)| free as u64)
    }
}

trait ForBlocks {
    fn for_blocks(blocks: u32) -> LaunchConfig;
}

impl ForBlocks for LaunchConfig {
    fn for_blocks(blocks: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// A job's state on one GPU and its stream.
struct CudaLane {
    step: CudaFunction,
    context: Arc<CudaContext>,
    state: CudaSlice<f32>,
    stream: Arc<CudaStream>,
    words: u64,
    staging: Arc<StagingPool>,
}

impl Lane for CudaLane {
    fn launch(&mut self, kernel: Kernel, fault: bool) -> Result<(), DeviceError> {
        if kernel.working_set() > self.words {
            return Err(DeviceError::call(format!(
                "the kernel works on {} words, the job's state has {}",
                kernel.working_set(),
                self.words
            )));
        }
        let fault = i32::from(fault);
        let mut launch = self.stream.launch_builder(&self.step);
        launch.arg(&mut self.state).arg(&kernel.rounds).arg(&fault);
        // SAFETY: the arguments match wsched_step's signature, and the state
        // holds the working set (checked above).
        unsafe { launch.launch(LaunchConfig::for_blocks(kernel.blocks)) }.map_err(device_error)?;
        Ok(())
    }

    fn wait(&mut self) -> Result<(), DeviceError> {
        self.stream.synchronize().map_err(device_error)
    }

    fn save(&mut self) -> Result<Saved, DeviceError> {
        let mut staged = Staged {
            buffer: self.staging.take(&self.context, self.state.len()),
            pool: self.staging.clone(),
        };
        self.save_into(staged.buffer.as_mut_slice())?;
        Ok(Box::new(staged))
    }

    fn save_into(&mut self, out: &mut [f32]) -> Result<(), DeviceError> {
        if out.len() != self.state.len() {
            return Err(DeviceError::call("save_into: wrong length"));
        }
        self.stream.memcpy_dtoh(&self.state, out).map_err(device_error)?;
        self.stream.synchronize().map_err(device_error)
    }

    fn peek(&mut self, n: usize) -> Result<Vec<f32>, DeviceError> {
        let n = n.min(self.state.len());
        let host = self.stream.clone_dtoh(&self.state.slice(..n)).map_err(device_error)?;
        self.stream.synchronize().map_err(device_error)?;
        Ok(host)
    }

    fn bytes(&self) -> u64 {
        self.words * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_read_like_nvidia_smi() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&bytes), "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn the_kernel_uses_the_reference_constants() {
        let source = kernel_source();
        assert!(source.contains(&format!("{FMA_A:e}f")) && source.contains(&format!("{FMA_B:e}f")));
        // Whether the literal rounds to the same f32 as the constant.
        let printed: f32 = format!("{FMA_A:e}").parse().unwrap();
        assert_eq!(printed, FMA_A);
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if !driver_present() {
            let err = discover().unwrap_err().to_string();
            assert!(err.contains("no NVIDIA driver"), "{err}");
        }
    }
}
