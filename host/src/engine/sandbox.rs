//! What a plugin's store holds, and everything a plugin can reach.
//!
//! A plugin gets the `wsched:policy/host` imports and a WASI 0.2 context
//! with no capabilities: no preopened directories, no environment, no
//! arguments, sockets denied, stdin closed, stdout and stderr turned into
//! host log lines, clocks that read the host's (virtual) clock and
//! randomness from a fixed seed. WASI is linked at all only because
//! standard-library guests (Rust's std, Python, JavaScript runtimes) import
//! it whether or not they use it; linking it empty keeps the sandbox closed
//! while letting those guests load. With virtual clocks and seeded
//! randomness a plugin cannot make a simulation nondeterministic.

use super::deadline::CallBudget;
use super::log::PluginLog;
use crate::cluster::Cluster;
use crate::wit::{
    self, ClusterStats, GpuId, GpuInfo, GpuMeasurement, JobId, JobInfo, JobState, Level, RunningJob, ViewToken,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The host's clock as seen by a plugin: seconds as `f64` bits, shared with
/// the WASI clocks so that both read the same (virtual) time.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedClock(Arc<AtomicU64>);

impl SharedClock {
    pub(crate) fn set(&self, seconds: f64) {
        self.0.store(seconds.to_bits(), Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    /// The clock as a duration since zero. Never panics: a time the
    /// host would not reach (the scheduler refuses wake-ups past
    /// `bounds::MAX_TIME`) still saturates rather than failing.
    fn as_duration(&self) -> Duration {
        Duration::try_from_secs_f64(self.get().max(0.0)).unwrap_or(Duration::MAX)
    }
}

impl HostWallClock for SharedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.as_duration()
    }
}

impl HostMonotonicClock for SharedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        u64::try_from(self.as_duration().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Linear memories one plugin instance may have (all its core modules
/// together). Compilers give a policy one; a few more leave room for
/// adapters and multi-module languages.
pub const MAX_MEMORIES: usize = 8;
/// Tables one plugin instance may have.
pub const MAX_TABLES: usize = 64;
/// Core instances one plugin may be made of.
pub const MAX_INSTANCES: usize = 256;
/// Bytes a table element is counted as against the memory cap (a
/// reference, with room for the runtime's bookkeeping).
const TABLE_ELEMENT_BYTES: usize = 16;

/// Caps everything a plugin instance can grow: the sum of all its linear
/// memories and tables, not each one, so that declaring many memories
/// cannot multiply the cap. Remembers when the cap was hit, so a failed
/// allocation that ends in a trap is reported as "memory cap".
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) limit: usize,
    pub(crate) hit: Option<usize>,
    /// Bytes of memory and tables the instance holds now.
    used: usize,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            hit: None,
            used: 0,
        }
    }

    fn grow(&mut self, by: usize) -> bool {
        let total = self.used.saturating_add(by);
        if total > self.limit {
            self.hit = Some(total);
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryCap {
    // Called when a memory is created (from 0) and each time it grows.
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
}

/// A plugin's store data.
pub(crate) struct PluginState {
    /// The cluster the plugin reads through `cluster-view`; moved in for
    /// the duration of a `decide` call and back out after it.
    pub(crate) cluster: Cluster,
    pub(crate) clock: SharedClock,
    pub(crate) memory: MemoryCap,
    pub(crate) budget: CallBudget,
    pub(crate) log: PluginLog,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub(crate) fn new(name: Arc<str>, limits: &super::Limits) -> Self {
        let clock = SharedClock::default();
        let log = PluginLog::new(name);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogSink {
            log: log.clone(),
            level: Level::Info,
        })
        .stderr(LogSink {
            log: log.clone(),
            level: Level::Warn,
        })
        .wall_clock(clock.clone())
        .monotonic_clock(clock.clone())
        .secure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random_seed(0x5eed)
        // The host builds the bytes before copying them into the plugin's
        // memory: keep what one call can make the host hold small (WASI's
        // default is 64 MiB a call).
        .max_random_size(MAX_RANDOM_BYTES);
        PluginState {
            cluster: Cluster::default(),
            clock,
            memory: MemoryCap::new(limits.memory),
            budget: CallBudget::new(limits.deadline),
            log,
            wasi: wasi.build(),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_WASI_RESOURCES);
                table
            },
        }
    }

    /// The plugin's WASI resources.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Most WASI resources (streams, pollables...) a plugin instance may hold
/// at once. They live in host memory, outside the plugin's memory cap; a
/// policy needs a handful (stdio), and wasmtime's default is a million.
pub(crate) const MAX_WASI_RESOURCES: usize = 4096;

/// Most random bytes one WASI call may ask for.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Bytes that seeded "randomness" cycles through: fixed, so runs repeat.
const SEED: [u8; 16] = *b"wsched-fixed-rng";

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::wsched::policy::types::Host for PluginState {}

impl wit::wsched::policy::host::Host for PluginState {
    fn log_enabled(&mut self, level: Level) -> bool {
        match level {
            Level::Error => tracing::enabled!(target: "wsched::plugin", tracing::Level::ERROR),
            Level::Warn => tracing::enabled!(target: "wsched::plugin", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "wsched::plugin", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "wsched::plugin", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "wsched::plugin", tracing::Level::TRACE),
        }
    }

    fn log(&mut self, level: Level, message: String) {
        self.log.line(level, &message);
    }

    fn now(&mut self) -> f64 {
        self.clock.get()
    }
}

impl wit::wsched::policy::host::HostClusterView for PluginState {
    fn now(&mut self, _: Resource<ViewToken>) -> f64 {
        self.cluster.now()
    }
    fn stats(&mut self, _: Resource<ViewToken>) -> ClusterStats {
        self.cluster.stats()
    }
    fn job(&mut self, _: Resource<ViewToken>, id: JobId) -> Option<JobInfo> {
        self.cluster.job_info(id)
    }
    fn jobs(&mut self, _: Resource<ViewToken>, state: JobState) -> Vec<JobId> {
        self.cluster.ids_in(state)
    }
    fn running(&mut self, _: Resource<ViewToken>) -> Vec<RunningJob> {
        self.cluster.running_jobs()
    }
    fn gpus(&mut self, _: Resource<ViewToken>) -> Vec<GpuInfo> {
        (0..self.cluster.gpu_count())
            .filter_map(|id| self.cluster.gpu_info(id))
            .collect()
    }
    fn gpu(&mut self, _: Resource<ViewToken>, id: GpuId) -> Option<GpuInfo> {
        self.cluster.gpu_info(id)
    }
    fn free_gpus(&mut self, _: Resource<ViewToken>) -> Vec<GpuId> {
        self.cluster.free_gpu_ids()
    }
    fn measured(&mut self, _: Resource<ViewToken>, id: GpuId) -> Option<GpuMeasurement> {
        self.cluster.gpus().get(id as usize).and_then(|g| g.measured)
    }
    fn throughput(&mut self, _: Resource<ViewToken>, id: JobId, kind: String, gpus: u32, spread: bool) -> Option<f64> {
        self.cluster.expected_rate(id, &kind, gpus, spread)
    }
    fn co_located(
        &mut self,
        _: Resource<ViewToken>,
        a: JobId,
        b: JobId,
        kind: String,
        gpus: u32,
    ) -> Option<(f64, f64)> {
        self.cluster.co_located_rates(a, b, &kind, gpus)
    }
    fn job_type(&mut self, _: Resource<ViewToken>, id: JobId) -> Option<String> {
        self.cluster.job_type_name(id).map(str::to_string)
    }
    fn remaining_work(&mut self, _: Resource<ViewToken>, id: JobId) -> Option<f64> {
        self.cluster.remaining_work_now(id)
    }
    fn drop(&mut self, _: Resource<ViewToken>) -> wasmtime::Result<()> {
        // The view is host-owned and only ever lent; nothing to free.
        Ok(())
    }
}

/// A plugin's stdout or stderr: every write becomes host log lines
/// (stderr at warn, where Rust panics land; stdout at info), under the
/// plugin's log budget.
#[derive(Clone)]
struct LogSink {
    log: PluginLog,
    level: Level,
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        // Only as much as the budget could ever keep is looked at.
        let buf_len = buf.len();
        let shown = &buf[..buf_len.min(super::log::BYTES_PER_CALL)];
        let text = String::from_utf8_lossy(shown);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.log.line(self.level, line);
        }
        Poll::Ready(Ok(buf_len))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
