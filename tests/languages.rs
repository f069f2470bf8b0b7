//! The same policies in four languages: the C, Python and JavaScript
//! ports of `fifo` and `las` (`plugins/c`, `plugins/python`, `plugins/js`)
//! must give exactly what the Rust originals give on the bundled trace,
//! job for job, and every example plugin must pass `wsched policy check`.
//!
//! Exact equality is the point: a port that drifts by one float rounding
//! or one tie broken the other way changes some job's start time, so a
//! researcher could not tell a policy's effect from a language's.

mod common;

use std::time::Duration;
use wsched::check;
use wsched::engine::{CompileCache, Engine, Limits};
use wsched::sim::SimResult;

const POLICIES: [&str; 2] = ["fifo", "las"];

/// The production limits, but a 2 s deadline: the deadline is wall-clock,
/// and the Python and JavaScript plugins (tens of µs per call, a few ms at
/// worst) share two cores with the rest of the test suite here; this test
/// is about equal schedules, the benchmark is about speed. Compiled plugins
/// are cached under `target/` because the managed runtimes' components
/// (12-18 MB) take half a minute each to compile.
fn engine() -> Engine {
    let limits = Limits {
        deadline: Duration::from_secs(2),
        ..Limits::default()
    };
    let cache = CompileCache::new(common::root().join("target/test-compile-cache"));
    Engine::with_cache(limits, Some(cache)).expect("engine")
}

fn replay(engine: &Engine, plugin: &str) -> SimResult {
    let policy = common::choice(engine, plugin, "");
    common::run(engine, Some(&policy), &common::philly(), &common::cluster(64, 8))
}

/// Replay the bundled trace through `{prefix}-{policy}` and the Rust
/// `{policy}`; the summaries and every job's record must be identical.
fn port_matches_rust(prefix: &str) {
    let engine = engine();
    for policy in POLICIES {
        let reference = replay(&engine, policy);
        let port_name = format!("{prefix}-{policy}");
        let port = replay(&engine, &port_name);
        assert_eq!(port.summary.faults, Vec::<String>::new(), "{port_name} faulted");
        assert_eq!(
            serde_json::to_string_pretty(&port.summary).expect("json"),
            serde_json::to_string_pretty(&reference.summary).expect("json"),
            "{port_name}: summary differs from the Rust {policy}"
        );
        assert_eq!(port.jobs.len(), reference.jobs.len());
        if let Some((ours, theirs)) = port.jobs.iter().zip(&reference.jobs).find(|(a, b)| a != b) {
            panic!(
                "{port_name}: job on trace line {} differs:\n  port: {ours:?}\n  rust: {theirs:?}",
                ours.line
            );
        }
    }
}

#[test]
fn c_ports_match_rust() {
    port_matches_rust("c");
}

#[test]
fn python_ports_match_rust() {
    port_matches_rust("py");
}

#[test]
fn javascript_ports_match_rust() {
    port_matches_rust("js");
}

#[test]
fn every_example_plugin_passes_policy_check() {
    let engine = engine();
    let mut examples: Vec<String> = [
        "fifo",
        "sjf",
        "tiresias",
        "gandiva",
        "gavel",
        "las",
        "themis",
        "gandiva_fair",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for prefix in ["c", "py", "js"] {
        examples.extend(POLICIES.iter().map(|p| format!("{prefix}-{p}")));
    }
    let mut failures = Vec::new();
    for name in &examples {
        let plugin = common::load(&engine, name);
        let report = check::check(&engine, &plugin, "").unwrap_or_else(|e| panic!("{name}: {e:#}"));
        if !report.passed() {
            failures.push(format!("{name}:\n{report}"));
        }
    }
    assert!(failures.is_empty(), "policy check failed:\n{}", failures.join("\n"));
}
