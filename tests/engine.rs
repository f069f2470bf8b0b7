//! Fault isolation with real misbehaving plugins: each fault is named,
//! counted as a strike, never loses a job, and after three strikes the
//! built-in FIFO takes over. Also: what the loader refuses, and why.

mod common;
use common::*;
use std::time::Duration;
use wsched::cluster::{Cluster, JobSpec};
use wsched::engine::{Fault, Limits, LoadError};
use wsched::scheduler::{ActivePolicy, PolicyHost};

/// Ten one-GPU jobs arriving a second apart on 4 GPUs.
fn small_trace() -> Vec<wsched::trace::TraceJob> {
    trace(&(0..10).map(|i| format!("{i},100,1\n")).collect::<String>())
}

fn assert_recovered(r: &wsched::sim::SimResult, expected_fault: &str) {
    let s = &r.summary;
    assert_eq!(s.completed, 10, "no job is lost: {:?}", s.faults);
    assert_eq!(s.strikes, 3, "{:?}", s.faults);
    assert_eq!(s.ejections, 1);
    assert_eq!(s.final_policy, "builtin-fifo");
    assert!(
        s.faults.iter().all(|f| f.contains(expected_fault)),
        "faults {:?} should name `{expected_fault}`",
        s.faults
    );
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let engine = engine_with(Limits {
        deadline: Duration::from_millis(20),
        ..Limits::default()
    });
    let started = std::time::Instant::now();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=loop")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_recovered(&r, "deadline exceeded: the call used more than 20 ms of CPU time");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn memory_bomb_hits_the_cap() {
    let engine = engine_with(Limits {
        memory: 32 << 20,
        // Growing to the cap takes real time (the kernel zeroes the pages);
        // on a loaded machine it can outlast 100 ms, and the deadline would
        // fire first. This test is about the cap.
        deadline: std::time::Duration::from_secs(10),
        ..Limits::default()
    });
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=oom")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_recovered(&r, "memory cap hit");
    assert!(
        r.summary.faults[0].contains("the cap is 32 MiB"),
        "{:?}",
        r.summary.faults
    );
}

#[test]
fn trap_is_a_strike() {
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=trap")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_recovered(&r, "trap:");
}

#[test]
fn a_fault_mid_run_is_retried_on_a_fresh_instance() {
    // Good for 3 calls, then traps. Each fault replaces the instance (which
    // is good again for 3 calls) and retries the same decision point, so
    // every job is still scheduled exactly as FIFO would.
    let engine = engine();
    let jobs = small_trace();
    let fifo = run(&engine, None, &jobs, &cluster(4, 4));
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=trap;after=3")),
        &jobs,
        &cluster(4, 4),
    );
    assert_eq!(r.summary.completed, 10);
    assert!(r.summary.strikes >= 1);
    for (a, b) in fifo.jobs.iter().zip(&r.jobs) {
        assert_eq!((a.start, a.finish), (b.start, b.finish), "line {}", a.line);
    }
}

#[test]
fn invalid_actions_are_rejected_with_reasons_and_valid_ones_apply() {
    let engine = engine();
    let plugin = load(&engine, "hostile");
    let instance = engine.instantiate(&plugin, "mode=invalid", 0.0).unwrap();
    let mut host = PolicyHost::with_plugin(engine.clone(), Cluster::homogeneous(4, 4, "test", 16 << 30), instance);
    let running = host.submit(JobSpec::new("u", 1, 100.0)).unwrap();
    host.decide(); // the FIFO part starts it
    let rejected_before = host.stats().actions_rejected;
    host.submit(JobSpec::new("u", 2, 100.0)).unwrap();
    host.submit(JobSpec::new("u", 1, 100.0)).unwrap();
    let outcome = host.decide();
    let reasons: Vec<&str> = outcome.rejected.iter().map(|(_, r)| r.reason.as_str()).collect();
    let expect = [
        "unknown job 18446744073709551615",
        "was given 1005 GPUs, the cluster has 4",
        &format!("job {running} is running, not pending"),
        "partial gang: job 1 needs 2 GPUs together, was given 1",
        &format!("gpu 0 is held by job {running}"),
    ];
    for e in expect {
        assert!(
            reasons.iter().any(|r| r.contains(e)),
            "no rejection contains `{e}`: {reasons:#?}"
        );
    }
    assert_eq!(
        outcome.applied.len(),
        2,
        "the valid FIFO starts in the same batch apply"
    );
    assert_eq!(host.cluster().running_ids().len(), 3);
    assert!(host.stats().faults.iter().any(|f| f.contains("invalid output")));
    assert_eq!(
        host.stats().actions_rejected - rejected_before,
        outcome.rejected.len() as u64
    );
}

#[test]
fn repeated_invalid_output_ejects_and_fifo_finishes_the_work() {
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=invalid")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_recovered(&r, "invalid output");
    assert!(r.summary.actions_rejected > 0);
}

#[test]
fn nan_wakeup_is_invalid_output() {
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=bad-wakeup")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_recovered(&r, "wakeup must be a finite time");
}

#[test]
fn a_policy_that_leaves_jobs_waiting_forever_is_ejected_as_a_stall() {
    // `idle` answers every call with nothing: jobs would wait forever on idle
    // GPUs. Like sched_ext's watchdog, the simulator ejects it and the
    // built-in FIFO runs the jobs.
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=idle")),
        &small_trace(),
        &cluster(4, 4),
    );
    let s = &r.summary;
    assert_eq!(
        (s.completed, s.ejections, s.final_policy.as_str()),
        (10, 1, "builtin-fifo")
    );
    assert!(s.faults[0].contains("stall: 10 job(s) waiting"), "{:?}", s.faults);
}

#[test]
fn ejecting_hands_waiting_and_suspended_jobs_to_the_fallback() {
    let engine = engine();
    let instance = engine.instantiate(&load(&engine, "tiresias"), "", 0.0).unwrap();
    let mut host = PolicyHost::with_plugin(engine.clone(), Cluster::homogeneous(1, 1, "t", 1 << 30), instance);
    let first = host.submit(JobSpec::new("u", 1, 10_000.0)).unwrap();
    host.decide();
    host.advance(4000.0);
    host.tick();
    host.decide();
    let second = host.submit(JobSpec::new("u", 1, 100.0)).unwrap();
    host.decide(); // LAS: the newcomer preempts the job past the threshold
    assert_eq!(host.cluster().job(first).map(|j| j.preemptions), Some(1));
    host.eject(Fault::Stall("test".into()));
    assert!(matches!(host.active(), ActivePolicy::Native(_)));
    host.finish(second);
    host.decide();
    assert!(
        host.cluster().running_ids().contains(&first),
        "the fallback resumes the suspended job"
    );
}

#[test]
fn plugins_get_no_files_environment_network_or_real_clock() {
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=escape")),
        &small_trace(),
        &cluster(4, 4),
    );
    assert_eq!(r.summary.strikes, 0, "{:?}", r.summary.faults);
    assert_eq!(r.summary.completed, 10);
}

#[test]
fn init_errors_and_init_hangs_refuse_the_load() {
    let engine = engine();
    let plugin = load(&engine, "hostile");
    match engine.instantiate(&plugin, "mode=init-fail", 0.0) {
        Err(LoadError::InitRefused(msg)) => assert_eq!(msg, "hostile: init refused on purpose"),
        other => panic!("expected InitRefused, got {other:?}"),
    }
    match engine.instantiate(&plugin, "mode=loop-init", 0.0) {
        Err(LoadError::InitFault(Fault::Deadline(_))) => {}
        other => panic!("expected a deadline fault, got {other:?}"),
    }
    let err = engine
        .instantiate(&load(&engine, "tiresias"), "thresholds=10,5", 0.0)
        .unwrap_err();
    assert!(err.to_string().contains("thresholds"), "{err}");
}

#[test]
fn loader_names_what_is_wrong() {
    let engine = engine();
    let err = |bytes: &[u8]| engine.load_bytes("p", bytes).unwrap_err().to_string();
    assert!(err(b"hello").contains("not a WebAssembly component"));
    assert!(err(b"(module)").contains("not a valid component") || err(b"(module)").contains("core"));
    assert!(err(&wat_bytes("(module)")).contains("is a core WebAssembly module, not a component"));
    let other_world = err(b"(component)");
    assert!(
        other_world.contains("does not export `wsched:policy/policy@0.1.0`"),
        "{other_world}"
    );
    let forbidden = err(br#"(component (import "evil:net/socket" (instance)))"#);
    assert!(
        forbidden.contains("imports `evil:net/socket`, which policies may not use"),
        "{forbidden}"
    );
    let old = err(br#"(component (import "wsched:policy/host@0.0.9" (instance)))"#);
    assert!(old.contains("rebuild the plugin against wit/policy.wit"), "{old}");
    let missing = engine
        .load_file(std::path::Path::new("/nonexistent/p.wasm"))
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("/nonexistent/p.wasm:"), "{missing}");
    let small = engine_with(Limits {
        max_plugin_size: 1000,
        ..Limits::default()
    });
    assert!(
        small
            .load_file(&plugin_path("fifo"))
            .unwrap_err()
            .to_string()
            .contains("over the limit of 1000")
    );
}

/// Binary encoding of a tiny core module (wasmtime parses text too, but a
/// real file is binary).
fn wat_bytes(text: &str) -> Vec<u8> {
    assert_eq!(text, "(module)");
    b"\0asm\x01\0\0\0".to_vec()
}

#[test]
fn the_next_policy_is_prepared_on_another_thread_while_decisions_go_on() {
    let engine = engine();
    let fifo = engine.instantiate(&load(&engine, "fifo"), "", 0.0).unwrap();
    let mut host = PolicyHost::with_plugin(engine.clone(), Cluster::homogeneous(2, 2, "t", 1 << 30), fifo);
    let (plugin, worker_engine) = (load(&engine, "tiresias"), engine.clone());
    let preparing = std::thread::spawn(move || worker_engine.instantiate(&plugin, "", 0.0));
    // Decisions continue on this thread meanwhile.
    for _ in 0..3 {
        host.submit(JobSpec::new("u", 1, 100.0)).unwrap();
        host.decide();
    }
    let next = preparing.join().unwrap().unwrap();
    let report = host.swap(next).unwrap();
    assert_eq!((report.from.as_str(), report.to.as_str()), ("fifo", "tiresias"));
    // The new policy is told about every live job at its first call.
    host.advance(100.0);
    for id in [0, 1] {
        host.finish(id);
    }
    host.decide();
    assert_eq!(
        host.cluster().running_ids().iter().copied().collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn compiled_plugins_are_cached_on_disk_and_a_bad_entry_is_recompiled() {
    use wsched::engine::CompileCache;
    let dir = tempfile::tempdir().unwrap();
    let cached_engine = || engine_with_cache(dir.path());
    let first = load(&cached_engine(), "tiresias");
    assert!(!first.from_cache());
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&entries[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let engine = cached_engine();
    let second = load(&engine, "tiresias");
    assert!(second.from_cache());
    let r = run(
        &engine,
        Some(&wsched::sim::PolicyChoice {
            plugin: second,
            config: String::new(),
        }),
        &trace("0,10,1\n"),
        &cluster(1, 1),
    );
    assert_eq!(r.summary.completed, 1);
    // A truncated entry is ignored and replaced.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let third = load(&cached_engine(), "tiresias");
    assert!(!third.from_cache());
    assert!(load(&cached_engine(), "tiresias").from_cache());
    // Refused plugins are never cached.
    assert!(cached_engine().load_bytes("p", b"(component)").is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let _ = CompileCache::default_dir();
}
