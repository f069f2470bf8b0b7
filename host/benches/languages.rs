//! The same two policies (`fifo` and `las`) written in Rust, C, Python and
//! JavaScript, side by side: component size, compile time (cold and from
//! the compile cache), time per decision with 1,000 jobs waiting, and the
//! wall time to replay the bundled trace.
//!
//! Run with `cargo bench -p wsched --bench languages` after
//! `scripts/build-plugins.sh --all`. Prints one table. Every port gives the
//! same schedule as its Rust original (`tests/languages.rs`), so the
//! columns differ only by what the language's runtime costs.

use std::path::{Path, PathBuf};

use wsched::cluster::{Cluster, JobSpec};
use wsched::engine::{CompileCache, Engine, Limits};
use wsched::scheduler::PolicyHost;
use wsched::sim::{self, PolicyChoice, SimConfig};

const LANGUAGES: [(&str, &str); 4] = [("Rust", ""), ("C", "c-"), ("Python", "py-"), ("JavaScript", "js-")];
const GPUS: u32 = 64;
const PENDING: usize = 1_000;
const DECISIONS: usize = 200;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = std::env::var_os("WSCHED_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/plugins"));
    let trace = wsched::trace::read(&root.join("examples/traces/philly-11cb48.csv"))?;
    let engine = Engine::new(Limits::default())?;
    let cache_dir = tempfile::tempdir()?;
    let cached = Engine::with_cache(Limits::default(), Some(CompileCache::new(cache_dir.path())))?;

    println!(
        "Per language: component size, compile time, one decision with {PENDING} jobs waiting on {GPUS} busy GPUs \
         ({DECISIONS} decisions), replay of the bundled trace ({} jobs, {GPUS} GPUs)",
        trace.len()
    );
    println!(
        "{:<11} {:<6} | {:>9} | {:>10} {:>10} | {:>10} {:>10} | {:>9} {:>8}",
        "language", "policy", "size", "compile", "cached", "decide p50", "decide p99", "replay", "vs Rust"
    );
    println!("{}", "-".repeat(106));
    for policy in ["fifo", "las"] {
        let mut rust_replay = None;
        for (language, prefix) in LANGUAGES {
            let path = plugins.join(format!("{prefix}{policy}.wasm"));
            anyhow::ensure!(
                path.exists(),
                "{} is missing: run scripts/build-plugins.sh --all",
                path.display()
            );
            let plugin = engine.load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let compile_ms = plugin.compile_time().as_secs_f64() * 1e3;
            cached.load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?; // fills the cache
            let from_cache = cached.load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(from_cache.from_cache(), "{}: not served from the cache", path.display());
            let cached_ms = from_cache.compile_time().as_secs_f64() * 1e3;

            let (p50, p99) = decisions(&engine, &plugin)?;
            let choice = PolicyChoice {
                plugin,
                config: String::new(),
            };
            let config = SimConfig::with_gpus(GPUS, 8)?;
            let result = sim::simulate(&engine, Some(&choice), &[], &trace, &config)?;
            let replay = result.timing.wall_seconds;
            let ratio = replay / *rust_replay.get_or_insert(replay);
            println!(
                "{language:<11} {policy:<6} | {:>9} | {:>7.1} ms {:>7.2} ms | {:>7.1} µs {:>7.1} µs | {:>7.2} s {:>7.1}x",
                size(&path)?,
                compile_ms,
                cached_ms,
                p50,
                p99,
                replay,
                ratio
            );
        }
    }
    Ok(())
}

/// Fill the cluster with one-GPU jobs, queue `PENDING` more, then time
/// `DECISIONS` steady-state decisions: the oldest running job finishes, a
/// new one arrives, and the policy starts one on the freed GPU.
fn decisions(engine: &Engine, plugin: &wsched::engine::Plugin) -> anyhow::Result<(f64, f64)> {
    let instance = engine
        .instantiate(plugin, "", 0.0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut host = PolicyHost::with_plugin(
        engine.clone(),
        Cluster::homogeneous(GPUS, 8, "H100", 80 << 30),
        instance,
    );
    for _ in 0..GPUS as usize + PENDING {
        host.submit(JobSpec::new("bench", 1, 1e9)).map_err(anyhow::Error::msg)?;
    }
    host.decide();
    anyhow::ensure!(
        host.cluster().running_ids().len() == GPUS as usize,
        "cluster not filled"
    );
    let warm_up = 20;
    let mut nanos = Vec::with_capacity(DECISIONS);
    for i in 0..DECISIONS + warm_up {
        let oldest = *host
            .cluster()
            .running_ids()
            .iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("nothing running"))?;
        host.finish(oldest);
        host.submit(JobSpec::new("bench", 1, 1e9)).map_err(anyhow::Error::msg)?;
        let outcome = host.decide();
        anyhow::ensure!(outcome.applied.len() == 1, "expected one start per decision");
        if i >= warm_up {
            nanos.extend(host.stats().call_times.last());
        }
    }
    anyhow::ensure!(
        host.stats().strikes == 0,
        "the plugin faulted: {:?}",
        host.stats().faults
    );
    nanos.sort_unstable();
    let at = |q: f64| nanos[((q * nanos.len() as f64).ceil() as usize).clamp(1, nanos.len()) - 1] as f64 / 1e3;
    Ok((at(0.5), at(0.99)))
}

fn size(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::metadata(path)?.len() as f64;
    Ok(if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.0} kB", bytes / 1e3)
    })
}
