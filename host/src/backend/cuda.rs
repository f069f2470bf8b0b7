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

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::{CUdevice_attribute, cudaError_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};

use super::device::{CHAINS, Device, DeviceError, DeviceInfo, FMA_A, FMA_B, Kernel, Lane, THREADS_PER_BLOCK};

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

/// Every visible GPU, opened and ready to run synthetic jobs.
pub fn discover() -> anyhow::Result<Vec<Arc<CudaDevice>>> {
    anyhow::ensure!(driver_present(), "no NVIDIA driver found (libcuda.so does not load)");
    anyhow::ensure!(
        nvrtc_present(),
        "NVRTC not found (libnvrtc.so does not load): synthetic jobs compile their kernel with it; \
         put the CUDA toolkit's lib64 directory on LD_LIBRARY_PATH"
    );
    let count = CudaContext::device_count().map_err(|e| anyhow::anyhow!("cannot count GPUs: {}", describe(e)))?;
    anyhow::ensure!(count > 0, "the NVIDIA driver sees no GPU");
    let ptx = cudarc::nvrtc::compile_ptx(kernel_source())
        .map_err(|e| anyhow::anyhow!("NVRTC cannot compile the synthetic kernel: {e:?}"))?;
    let ptx_src = ptx.to_src();
    (0..count as usize)
        .map(|ordinal| {
            CudaDevice::open(ordinal, &ptx_src)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("GPU {ordinal}: {e}"))
        })
        .collect()
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
    ptx: String,
    loaded: Mutex<Option<Loaded>>,
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
            ptx: ptx.to_string(),
            loaded: Mutex::new(Some(loaded)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Loaded>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_loaded<T>(&self, f: impl FnOnce(&Loaded) -> Result<T, DeviceError>) -> Result<T, DeviceError> {
        let loaded = self.lock();
        let Some(loaded) = loaded.as_ref() else {
            return Err(DeviceError {
                message: "the device's context could not be recreated after a fault".into(),
                sticky: true,
            });
        };
        f(loaded)
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
        self.with_loaded(|loaded| {
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
                state: slice,
                stream,
                words,
            }) as Box<dyn Lane>)
        })
    }

    fn check(&self) -> Result<(), DeviceError> {
        let mut probe = self.open(u64::from(THREADS_PER_BLOCK * CHAINS), None)?;
        probe.launch(Kernel { blocks: 1, rounds: 1 }, false)?;
        probe.wait()
    }

    fn reset(&self) -> Result<(), DeviceError> {
        let mut loaded = self.lock();
        // Dropping the last reference releases the primary context, which
        // destroys it; retaining it again makes a fresh one.
        *loaded = None;
        *loaded = Some(Loaded::new(self.info.ordinal as usize, &self.ptx).map_err(device_error)?);
        Ok(())
    }

    fn memory_free(&self) -> Option<u64> {
        self.with_loaded(|l| l.context.mem_get_info().map_err(device_error))
            .ok()
            .map(|(free, _)| free as u64)
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
    state: CudaSlice<f32>,
    stream: Arc<CudaStream>,
    words: u64,
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

    fn save(&mut self) -> Result<Vec<f32>, DeviceError> {
        let host = self.stream.clone_dtoh(&self.state).map_err(device_error)?;
        self.stream.synchronize().map_err(device_error)?;
        Ok(host)
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
