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
//! Every call into a plugin is bounded: an epoch deadline (a background
//! thread ticks the engine's epoch every millisecond) stops a plugin that
//! runs too long, and a resource limiter stops one that grows its memory
//! past the cap. Both come back as a [`Fault`] that names the limit, never
//! as a hang or a host crash.

mod cache;
mod sandbox;

pub use cache::CompileCache;

use crate::cluster::Cluster;
use crate::wit::{self, Decision, Event, PolicyInfo, ViewToken};
use sandbox::PluginState;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Store, Trap};

/// How often the epoch ticks; deadlines are whole multiples of it.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits every plugin call runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest a single call (init, decide, snapshot, restore) may run.
    pub deadline: Duration,
    /// Largest linear memory a plugin may grow to, in bytes.
    pub memory: usize,
    /// Faults tolerated before the plugin is ejected.
    pub max_strikes: u32,
    /// Most actions one decision may return.
    pub max_actions: usize,
    /// Largest plugin file accepted, in bytes.
    pub max_plugin_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory: 256 << 20,
            max_strikes: 3,
            max_actions: 100_000,
            max_plugin_size: 64 << 20,
        }
    }
}

/// Why a plugin call did not return a usable answer. Each is a strike.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The call ran past the deadline.
    Deadline(Duration),
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
            Fault::Deadline(d) => write!(f, "deadline exceeded: the call ran longer than {} ms", d.as_millis()),
            Fault::MemoryCap { limit, wanted } => write!(
                f,
                "memory cap hit: tried to grow memory to {} MiB, the cap is {} MiB",
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
        let limits = &self.inner.limits;
        let mut store = Store::new(
            &self.inner.engine,
            PluginState::new(plugin.inner.name.as_str().into(), limits.memory),
        );
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        store.data().clock.set(now);
        let deadline = limits.deadline;
        store.set_epoch_deadline(deadline_ticks(deadline));
        let bindings = match plugin.inner.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return Err(LoadError::InitFault(classify(&mut store, deadline, e))),
        };
        store.set_epoch_deadline(deadline_ticks(deadline));
        let info = match bindings.wsched_policy_policy().call_init(&mut store, config) {
            Ok(Ok(info)) => info,
            Ok(Err(msg)) => return Err(LoadError::InitRefused(msg)),
            Err(e) => return Err(LoadError::InitFault(classify(&mut store, deadline, e))),
        };
        if let Some(t) = info.tick_interval
            && let Err(why) = crate::bounds::check_tick(t)
        {
            return Err(LoadError::InitFault(Fault::InvalidOutput(format!(
                "tick-interval {why}"
            ))));
        }
        let name: Arc<str> = if info.name.trim().is_empty() {
            plugin.inner.name.as_str().into()
        } else {
            info.name.as_str().into()
        };
        store.data_mut().name = name;
        Ok(PluginInstance {
            plugin: plugin.clone(),
            config: config.to_string(),
            store,
            bindings,
            info,
            deadline,
        })
    }
}

fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
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
fn classify(store: &mut Store<PluginState>, deadline: Duration, error: wasmtime::Error) -> Fault {
    let memory = &mut store.data_mut().memory;
    if let Some(wanted) = memory.hit.take() {
        return Fault::MemoryCap {
            limit: memory.limit,
            wanted,
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Fault::Deadline(deadline);
    }
    let detail = format!("{error:#}");
    Fault::Trap(detail.lines().next().unwrap_or("unknown").to_string())
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
    deadline: Duration,
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

    fn arm(&mut self, now: f64) {
        self.store.data().clock.set(now);
        self.store.data_mut().memory.hit = None;
        self.store.set_epoch_deadline(deadline_ticks(self.deadline));
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
        result.map_err(|e| classify(&mut self.store, self.deadline, e))
    }

    /// The plugin's state for a hot swap, if it keeps any.
    pub fn snapshot(&mut self, now: f64) -> Result<Option<Vec<u8>>, Fault> {
        self.arm(now);
        self.bindings
            .wsched_policy_policy()
            .call_snapshot(&mut self.store)
            .map_err(|e| classify(&mut self.store, self.deadline, e))
    }

    /// Hand state from a previous policy to this one. The inner result is
    /// the plugin's own answer (it may refuse state it does not recognise).
    pub fn restore(&mut self, state: &[u8], now: f64) -> Result<Result<(), String>, Fault> {
        self.arm(now);
        self.bindings
            .wsched_policy_policy()
            .call_restore(&mut self.store, state)
            .map_err(|e| classify(&mut self.store, self.deadline, e))
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
