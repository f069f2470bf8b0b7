//! The Wasm side of the host: compiling, checking, sandboxing and calling
//! policy plugins.
//!
//! A plugin is compiled once into a [`Plugin`] (a checked component plus a
//! pre-linked `InstancePre`), and instantiated any number of times into a
//! [`PluginInstance`], each with its own store, memory cap and deadline.
//! Instances are cheap to make, which is what lets the scheduler throw away
//! an instance that trapped and start a fresh one, and prepare the next
//! policy of a hot swap while the current one keeps deciding.
//!
//! Every call into a plugin is bounded, and each bound comes back as a
//! [`Fault`] that names it, never as a hang or a host crash:
//! - time: a deadline in CPU time under a wall-clock ceiling (see
//!   `deadline.rs`), and no import that can make the host wait (see
//!   `nowait.rs`);
//! - memory: one cap on the sum of every memory and table the plugin owns,
//!   and a bound on how many it may declare (see `sandbox.rs`);
//! - words: a log budget and bounded names and texts (see `log.rs`);
//! - answers: actions per decision, snapshot size, and what `scheduler.rs`
//!   and `bounds.rs` check.

mod cache;
mod deadline;
mod log;
mod nowait;
mod sandbox;

pub use cache::CompileCache;
pub use deadline::WALL_CEILING_FACTOR;
pub use log::{
    BYTES_PER_CALL as LOG_BYTES_PER_CALL, BYTES_PER_SECOND as LOG_BYTES_PER_SECOND,
    LINES_PER_CALL as LOG_LINES_PER_CALL, LINES_PER_SECOND as LOG_LINES_PER_SECOND, MAX_LINE as MAX_LOG_LINE, MAX_NAME,
    MAX_TEXT, bounded,
};
pub use sandbox::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES};

use crate::cluster::Cluster;
use crate::wit::{self, Decision, Event, PolicyInfo, ViewToken};
use sandbox::PluginState;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Store, Trap, UpdateDeadline};

use deadline::{EPOCH_TICK, Overrun};

/// Limits every plugin call runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// CPU time a single call (init, decide, snapshot, restore) may use;
    /// [`WALL_CEILING_FACTOR`] times it in wall-clock time stops it in any case.
    pub deadline: Duration,
    /// Bytes all of a plugin's memories and tables together may grow to.
    pub memory: usize,
    /// Faults tolerated before the plugin is ejected.
    pub max_strikes: u32,
    /// Most actions one decision may return.
    pub max_actions: usize,
    /// Largest plugin file accepted, in bytes.
    pub max_plugin_size: usize,
    /// Largest snapshot handed from one policy to the next, in bytes.
    pub max_snapshot: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory: 256 << 20,
            max_strikes: 3,
            max_actions: 100_000,
            max_plugin_size: 64 << 20,
            max_snapshot: 16 << 20,
        }
    }
}

/// Why a plugin call did not return a usable answer. Each is a strike.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The call used more CPU time than its deadline.
    Deadline(Duration),
    /// The call took [`WALL_CEILING_FACTOR`] times its deadline in
    /// wall-clock time, whatever it was doing.
    WallClock(Duration),
    /// The plugin tried to grow its memory past the cap.
    MemoryCap {
        /// The cap in bytes.
        limit: usize,
        /// The size it asked for.
        wanted: usize,
    },
    /// The plugin trapped (panic, unreachable, out-of-bounds access...).
    Trap(String),
    /// The plugin answered, but the answer breaks the contract.
    InvalidOutput(String),
    /// The plugin left work waiting on idle GPUs with no way to be woken.
    Stall(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Deadline(d) => write!(
                f,
                "deadline exceeded: the call used more than {} ms of CPU time",
                d.as_millis()
            ),
            Fault::WallClock(d) => write!(
                f,
                "deadline exceeded: the call took more than {} ms of wall-clock time",
                d.as_millis()
            ),
            Fault::MemoryCap { limit, wanted } => write!(
                f,
                "memory cap hit: its memories and tables would reach {} MiB, the cap is {} MiB",
                wanted >> 20,
                limit >> 20
            ),
            Fault::Trap(msg) => write!(f, "trap: {msg}"),
            Fault::InvalidOutput(msg) => write!(f, "invalid output: {msg}"),
            Fault::Stall(msg) => write!(f, "stall: {msg}"),
        }
    }
}

/// Why a plugin could not be loaded or instantiated.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadError {
    /// The bytes are not a usable component (wrong format, wrong world,
    /// forbidden imports...).
    Invalid(String),
    /// `init` ran but faulted.
    InitFault(Fault),
    /// `init` refused the configuration.
    InitRefused(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Invalid(msg) => f.write_str(msg),
            LoadError::InitFault(fault) => write!(f, "init failed: {fault}"),
            LoadError::InitRefused(msg) => write!(f, "init refused the configuration: {msg}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Compiles and runs plugins. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: wasmtime::Engine,
    cache: Option<CompileCache>,
    linker: Linker<PluginState>,
    limits: Limits,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// An engine whose plugins run under `limits`, compiling every plugin
    /// it loads.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        Engine::with_cache(limits, None)
    }

    /// An engine that keeps compiled plugins in `cache`, so loading the
    /// same component again skips compilation.
    pub fn with_cache(limits: Limits, cache: Option<CompileCache>) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // For `perf`: WSCHED_PERFMAP=1 writes /tmp/perf-PID.map naming the
        // plugins' compiled functions. Off by default (it costs a file write
        // per compile).
        if std::env::var_os("WSCHED_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        nowait::link(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        wit::Scheduler::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(&mut linker, |state| {
            state
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;

        // The ticker holds only a weak handle, so it ends with the engine.
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop_flag = stop.clone();
        std::thread::Builder::new().name("wsched-epoch".into()).spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                engine,
                cache,
                linker,
                limits,
                stop_ticker: stop,
            }),
        })
    }

    /// The limits plugins run under.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Read and compile a plugin file. Errors name the file.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let shown = path.display();
        let bytes = crate::files::read_regular_file(path, self.inner.limits.max_plugin_size)
            .map_err(|e| LoadError::Invalid(format!("{shown}: {e}")))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load_bytes(&name, &bytes).map_err(|e| match e {
            LoadError::Invalid(msg) => LoadError::Invalid(format!("{shown}: {msg}")),
            other => other,
        })
    }

    /// Check and compile a plugin from its bytes (a component, binary or
    /// text). `name` labels it in logs until `init` gives its own.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let limits = &self.inner.limits;
        if bytes.len() > limits.max_plugin_size {
            return Err(LoadError::Invalid(format!(
                "{} bytes is larger than the {} byte limit for plugins",
                bytes.len(),
                limits.max_plugin_size
            )));
        }
        check_header(bytes).map_err(LoadError::Invalid)?;
        let started = Instant::now();
        let engine = &self.inner.engine;
        let cached = self.inner.cache.as_ref().and_then(|c| c.get(engine, bytes));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => Component::new(engine, bytes)
                .map_err(|e| LoadError::Invalid(format!("not a valid component: {e:#}")))?,
        };
        let compile_time = started.elapsed();
        self.check_imports(&component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Invalid(format!("cannot link: {e:#}")))?;
        let pre = wit::SchedulerPre::new(pre).map_err(|_| LoadError::Invalid(self.missing_export(&component)))?;
        self.check_exports(name, &pre)?;
        // Cache only what passed every check: nothing refused is kept.
        if !from_cache && let Some(cache) = &self.inner.cache {
            cache.put(engine, bytes, &component);
        }
        let ty = component.component_type();
        let imports = ty.imports(&self.inner.engine).map(|(n, _)| n.to_string()).collect();
        let exports = ty.exports(&self.inner.engine).map(|(n, _)| n.to_string()).collect();
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                name: name.into(),
                pre,
                size: bytes.len(),
                compile_time,
                from_cache,
                imports,
                exports,
            }),
        })
    }

    fn check_imports(&self, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        for (import, _) in ty.imports(&self.inner.engine) {
            if import == wit::HOST_IMPORT || import == wit::TYPES_IMPORT {
                continue;
            }
            if import.starts_with("wsched:policy/") {
                return Err(LoadError::Invalid(format!(
                    "imports `{import}`, but this host provides wsched:policy@0.1.0: rebuild the plugin against wit/policy.wit"
                )));
            }
            if import.starts_with("wasi:") && import.contains("@0.2.") {
                continue;
            }
            return Err(LoadError::Invalid(format!(
                "imports `{import}`, which policies may not use: a policy gets only `{}` and WASI 0.2 (with no capabilities)",
                wit::HOST_IMPORT
            )));
        }
        Ok(())
    }

    /// Type-check the exports: the names are there, but only making an
    /// instance compares their types with the contract's. No export is
    /// called; the instance runs under the usual limits and is dropped.
    fn check_exports(&self, name: &str, pre: &wit::SchedulerPre<PluginState>) -> Result<(), LoadError> {
        let mut store = self.new_store(name);
        let instance = match pre.instance_pre().instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return Err(LoadError::InitFault(classify(&mut store, e))),
        };
        wit::SchedulerIndices::new(pre.instance_pre())
            .and_then(|indices| indices.load(&mut store, &instance))
            .map(drop)
            .map_err(|e| {
                LoadError::Invalid(bounded(
                    &format!(
                        "its exports do not match wit/policy.wit ({e:#}); build it against wit/policy.wit, world `scheduler`"
                    ),
                    MAX_TEXT,
                ))
            })
    }

    /// A store for one plugin instance, with every limit set.
    fn new_store(&self, name: &str) -> Store<PluginState> {
        let limits = &self.inner.limits;
        let mut store = Store::new(&self.inner.engine, PluginState::new(name.into(), limits));
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut cx| match cx.data_mut().budget.on_deadline() {
            Some(ticks) => Ok(UpdateDeadline::Continue(ticks)),
            None => Err(Trap::Interrupt.into()),
        });
        let ticks = store.data_mut().budget.arm();
        store.set_epoch_deadline(ticks);
        store
    }

    fn missing_export(&self, component: &Component) -> String {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.inner.engine)
            .map(|(name, _)| format!("`{name}`"))
            .collect();
        let found = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        format!(
            "is not a wsched policy: it does not export `{}` (it exports {found}); build it against wit/policy.wit, world `scheduler`",
            wit::POLICY_EXPORT
        )
    }

    /// Make a fresh instance of `plugin` and call its `init` with `config`,
    /// at clock time `now`. Safe to call off the decision path (another
    /// thread), which is how hot swaps avoid stalling decisions.
    pub fn instantiate(&self, plugin: &Plugin, config: &str, now: f64) -> Result<PluginInstance, LoadError> {
        let mut store = self.new_store(&plugin.inner.name);
        store.data().clock.set(now);
        let bindings = match plugin.inner.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return Err(LoadError::InitFault(classify(&mut store, e))),
        };
        let ticks = store.data_mut().budget.arm();
        store.set_epoch_deadline(ticks);
        store.data().log.start_call();
        let result = bindings.wsched_policy_policy().call_init(&mut store, config);
        store.data().log.end_call();
        let mut info = match result {
            Ok(Ok(info)) => info,
            Ok(Err(msg)) => return Err(LoadError::InitRefused(bounded(&msg, MAX_TEXT))),
            Err(e) => return Err(LoadError::InitFault(classify(&mut store, e))),
        };
        if let Some(t) = info.tick_interval
            && let Err(why) = crate::bounds::check_tick(t)
        {
            return Err(LoadError::InitFault(Fault::InvalidOutput(format!(
                "tick-interval {why}"
            ))));
        }
        info.name = log::plugin_name(&info.name, &plugin.inner.name);
        store.data().log.set_name(info.name.as_str().into());
        Ok(PluginInstance {
            plugin: plugin.clone(),
            config: config.to_string(),
            store,
            bindings,
            info,
            max_snapshot: self.inner.limits.max_snapshot,
            log_dropped_counted: 0,
        })
    }
}

/// Tell a core module or a stray file from a component before compiling,
/// so the error says what the file is rather than a parser's complaint.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(b"\0asm") {
        if bytes.len() < 8 {
            return Err("truncated WebAssembly header".to_string());
        }
        let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
        if layer == 0 {
            return Err("is a core WebAssembly module, not a component: build it for `wasm32-wasip2` or wrap it with `wasm-tools component new`".to_string());
        }
        return Ok(());
    }
    let text = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if text == Some(&b'(') {
        return Ok(()); // WebAssembly text; the compiler says if it is wrong
    }
    Err("is not a WebAssembly component (no `\\0asm` header)".to_string())
}

/// Turn a failed call into the fault that caused it.
fn classify(store: &mut Store<PluginState>, error: wasmtime::Error) -> Fault {
    let state = store.data_mut();
    if let Some(wanted) = state.memory.hit.take() {
        return Fault::MemoryCap {
            limit: state.memory.limit,
            wanted,
        };
    }
    let deadline = state.budget.deadline();
    match state.budget.overrun.take() {
        Some(Overrun::Cpu) => return Fault::Deadline(deadline),
        Some(Overrun::Wall) => return Fault::WallClock(deadline),
        None => {}
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Fault::Deadline(deadline);
    }
    Fault::Trap(bounded(&describe_trap(&error), MAX_TEXT))
}

/// What went wrong and where: the trap's code (or the host's message) and
/// the innermost Wasm functions of the backtrace.
fn describe_trap(error: &wasmtime::Error) -> String {
    let what = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        // Not a Wasm trap: an import refused (a host error), whose message
        // is the first of the chain's that is not the backtrace.
        None => error
            .chain()
            .map(|e| e.to_string())
            .find(|m| !m.starts_with("error while executing at wasm backtrace"))
            .unwrap_or_else(|| "unknown error".to_string()),
    };
    let frames: Vec<String> = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .take(3)
                .map(|f| match f.func_name() {
                    Some(name) => format!("`{name}`"),
                    None => format!("function #{}", f.func_index()),
                })
                .collect()
        })
        .unwrap_or_default();
    if frames.is_empty() {
        what
    } else {
        format!("{what} in {}", frames.join(" < "))
    }
}

/// A compiled, checked plugin. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    name: String,
    pre: wit::SchedulerPre<PluginState>,
    size: usize,
    compile_time: Duration,
    from_cache: bool,
    imports: Vec<String>,
    exports: Vec<String>,
}

impl Plugin {
    /// The name it was loaded under (its file stem).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }
    /// How long compiling it took (or loading it, when it came from the cache).
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }
    /// Whether it was loaded from the compile cache instead of compiled.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }
    /// The interfaces it imports (`wsched:policy/host@0.1.0`, WASI...).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }
    /// The interfaces it exports (`wsched:policy/policy@0.1.0`).
    pub fn exports(&self) -> &[String] {
        &self.inner.exports
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .field("size", &self.inner.size)
            .finish()
    }
}

/// A live, initialised plugin with its own store.
pub struct PluginInstance {
    plugin: Plugin,
    config: String,
    store: Store<PluginState>,
    bindings: wit::Scheduler,
    info: PolicyInfo,
    max_snapshot: usize,
    /// Dropped log lines already counted by `take_log_lines_dropped`.
    log_dropped_counted: u64,
}

impl PluginInstance {
    /// What the plugin said about itself at `init`.
    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// The compiled plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The configuration string it was initialised with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Log lines this instance dropped over its budget since the last
    /// time this was asked.
    pub fn take_log_lines_dropped(&mut self) -> u64 {
        let total = self.store.data().log.dropped();
        let new = total.saturating_sub(self.log_dropped_counted);
        self.log_dropped_counted = total;
        new
    }

    fn arm(&mut self, now: f64) {
        let state = self.store.data_mut();
        state.clock.set(now);
        state.memory.hit = None;
        state.log.start_call();
        let ticks = state.budget.arm();
        self.store.set_epoch_deadline(ticks);
    }

    /// After a call: the log's dropped lines are reported, and a failure
    /// is turned into its fault.
    fn finish<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, Fault> {
        self.store.data().log.end_call();
        result.map_err(|e| classify(&mut self.store, e))
    }

    /// Ask for a decision. The cluster is lent to the plugin's store for
    /// the call (the view reads it) and always given back, fault or not.
    pub fn decide(&mut self, cluster: &mut Cluster, events: &[Event]) -> Result<Decision, Fault> {
        self.arm(cluster.now());
        std::mem::swap(&mut self.store.data_mut().cluster, cluster);
        let result = self.bindings.wsched_policy_policy().call_decide(
            &mut self.store,
            Resource::<ViewToken>::new_borrow(0),
            events,
        );
        std::mem::swap(&mut self.store.data_mut().cluster, cluster);
        self.finish(result)
    }

    /// The plugin's state for a hot swap, if it keeps any. A snapshot
    /// over [`Limits::max_snapshot`] is a fault.
    pub fn snapshot(&mut self, now: f64) -> Result<Option<Vec<u8>>, Fault> {
        self.arm(now);
        let result = self.bindings.wsched_policy_policy().call_snapshot(&mut self.store);
        let state = self.finish(result)?;
        if let Some(s) = &state
            && s.len() > self.max_snapshot
        {
            return Err(Fault::InvalidOutput(format!(
                "a snapshot of {} bytes, the limit is {} bytes",
                s.len(),
                self.max_snapshot
            )));
        }
        Ok(state)
    }

    /// Hand state from a previous policy to this one. The inner result is
    /// the plugin's own answer (it may refuse state it does not recognise).
    pub fn restore(&mut self, state: &[u8], now: f64) -> Result<Result<(), String>, Fault> {
        self.arm(now);
        let result = self
            .bindings
            .wsched_policy_policy()
            .call_restore(&mut self.store, state);
        Ok(self.finish(result)?.map_err(|why| bounded(&why, MAX_TEXT)))
    }
}

impl fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin)
            .field("info", &self.info)
            .finish()
    }
}
