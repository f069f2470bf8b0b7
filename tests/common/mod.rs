//! Shared helpers for the integration tests: locating the example plugins
//! (built by `scripts/build-plugins.sh`) and running small simulations.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;
use std::time::Duration;
use wsched::engine::{Engine, Limits, Plugin};
use wsched::sim::{self, PolicyChoice, ScheduledSwap, SimConfig, SimResult};
use wsched::trace::{PhillyCsv, TraceFormat, TraceJob};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of an example plugin component, e.g. `plugin_path("tiresias")`.
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("WSCHED_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        path.display()
    );
    path
}

/// An engine with the default limits but a short deadline, so tests of
/// runaway plugins finish quickly.
pub fn engine() -> Engine {
    engine_with(Limits {
        deadline: Duration::from_millis(50),
        ..Limits::default()
    })
}

/// An engine with the given limits.
pub fn engine_with(limits: Limits) -> Engine {
    Engine::new(limits).expect("engine")
}

/// An engine with default limits that caches compiled plugins in `dir`.
pub fn engine_with_cache(dir: &std::path::Path) -> Engine {
    Engine::with_cache(Limits::default(), Some(wsched::engine::CompileCache::new(dir))).expect("engine")
}

/// Compile an example plugin.
pub fn load(engine: &Engine, name: &str) -> Plugin {
    engine
        .load_file(&plugin_path(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A policy choice for `simulate`.
pub fn choice(engine: &Engine, name: &str, config: &str) -> PolicyChoice {
    PolicyChoice {
        plugin: load(engine, name),
        config: config.to_string(),
    }
}

/// Parse an inline trace: header `timestamp,duration,num_gpus`.
pub fn trace(rows: &str) -> Vec<TraceJob> {
    PhillyCsv
        .parse("inline", &format!("timestamp,duration,num_gpus\n{rows}"))
        .expect("trace")
        .jobs
}

/// The bundled Philly trace.
pub fn philly() -> Vec<TraceJob> {
    wsched::trace::read(&root().join("examples/traces/philly-11cb48.csv")).expect("bundled trace")
}

/// A cluster of `gpus` GPUs, `per_node` to a node.
pub fn cluster(gpus: u32, per_node: u32) -> SimConfig {
    SimConfig::with_gpus(gpus, per_node).expect("a cluster within bounds")
}

/// Replay `jobs` through `policy` (None = built-in FIFO).
pub fn run(engine: &Engine, policy: Option<&PolicyChoice>, jobs: &[TraceJob], config: &SimConfig) -> SimResult {
    sim::simulate(engine, policy, &[], jobs, config).expect("simulate")
}

/// Replay with scheduled hot swaps.
pub fn run_with_swaps(
    engine: &Engine,
    policy: Option<&PolicyChoice>,
    swaps: &[ScheduledSwap],
    jobs: &[TraceJob],
    config: &SimConfig,
) -> SimResult {
    sim::simulate(engine, policy, swaps, jobs, config).expect("simulate")
}

/// (start, finish) of the job on trace line `line`.
pub fn times(result: &SimResult, line: usize) -> (f64, f64) {
    let j = result
        .jobs
        .iter()
        .find(|j| j.line == line)
        .unwrap_or_else(|| panic!("no job on line {line}"));
    (j.start.expect("started"), j.finish.expect("finished"))
}

/// Poll `done` every 10 ms until it holds; fail the test after 20 s,
/// naming `what` was awaited (for tests of real processes).
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
