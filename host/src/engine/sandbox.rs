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

/// Longest log line kept from a plugin; longer ones are cut, so a plugin
/// cannot flood the host's log with one message.
const MAX_LOG_LINE: usize = 4096;

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
    fn as_duration(&self) -> Duration {
        Duration::from_secs_f64(self.get().max(0.0))
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
        self.as_duration().as_nanos() as u64
    }
}

/// Caps a plugin's linear memory and remembers when the cap was hit, so a
/// failed allocation that ends in a trap is reported as "memory cap".
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) limit: usize,
    pub(crate) hit: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real policy.
        Ok(desired <= 1_000_000)
    }
}

/// A plugin's store data.
pub(crate) struct PluginState {
    /// The cluster the plugin reads through `cluster-view`; moved in for
    /// the duration of a `decide` call and back out after it.
    pub(crate) cluster: Cluster,
    pub(crate) name: Arc<str>,
    pub(crate) clock: SharedClock,
    pub(crate) memory: MemoryCap,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub(crate) fn new(name: Arc<str>, memory_limit: usize) -> Self {
        let clock = SharedClock::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LogSink {
            plugin: name.clone(),
            stream: "stdout",
        })
        .stderr(LogSink {
            plugin: name.clone(),
            stream: "stderr",
        })
        .wall_clock(clock.clone())
        .monotonic_clock(clock.clone())
        .secure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(SEED.to_vec()))
        .insecure_random_seed(0x5eed);
        PluginState {
            cluster: Cluster::default(),
            name,
            clock,
            memory: MemoryCap {
                limit: memory_limit,
                hit: None,
            },
            wasi: wasi.build(),
            table: ResourceTable::new(),
        }
    }
}

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
        log_line(&self.name, level, truncate(&message));
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
    fn drop(&mut self, _: Resource<ViewToken>) -> wasmtime::Result<()> {
        // The view is host-owned and only ever lent; nothing to free.
        Ok(())
    }
}

fn truncate(message: &str) -> &str {
    if message.len() <= MAX_LOG_LINE {
        return message;
    }
    let mut end = MAX_LOG_LINE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn log_line(plugin: &str, level: Level, message: &str) {
    match level {
        Level::Error => tracing::error!(target: "wsched::plugin", plugin, "{message}"),
        Level::Warn => tracing::warn!(target: "wsched::plugin", plugin, "{message}"),
        Level::Info => tracing::info!(target: "wsched::plugin", plugin, "{message}"),
        Level::Debug => tracing::debug!(target: "wsched::plugin", plugin, "{message}"),
        Level::Trace => tracing::trace!(target: "wsched::plugin", plugin, "{message}"),
    }
}

/// A plugin's stdout or stderr: every write becomes host log lines
/// (stderr at warn, where Rust panics land; stdout at info).
#[derive(Clone)]
struct LogSink {
    plugin: Arc<str>,
    stream: &'static str,
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
        let text = String::from_utf8_lossy(buf);
        let level = if self.stream == "stderr" {
            Level::Warn
        } else {
            Level::Info
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            log_line(&self.plugin, level, truncate(line));
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
