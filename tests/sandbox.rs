//! The plugin sandbox against hostile plugins (`plugins/hostile`, and
//! components written here in WAT): no plugin may hang, crash, flood or
//! outgrow the host, in `sim` or in `serve`.
//!
//! Each case was once a way to break the host: a WASI sleep that escaped
//! the deadline, a far wake-up that panicked the WASI clock, wake-ups,
//! shares and ticks that stopped the simulated clock, memories that
//! multiplied the memory cap, log floods, a snapshot that vetoed its
//! replacement, and a deadline in wall-clock time that struck plugins for
//! the machine being busy.

mod common;

use common::server::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wsched::engine::{Fault, Limits, LoadError};
use wsched::proto;
use wsched::sim::{ScheduledSwap, SimResult};
use wsched::trace::TraceJob;

fn jobs() -> Vec<TraceJob> {
    trace("0,10,1\n1,20,2\n2,5,1\n3,30,1\n5,10,2\n8,4,1\n")
}

fn all_finished(result: &SimResult) -> bool {
    result.jobs.iter().all(|j| j.finish.is_some())
}

/// A hostile run: every job must finish and the replay must end quickly.
fn replay(config: &str) -> SimResult {
    let engine = engine();
    let started = Instant::now();
    let result = run(
        &engine,
        Some(&choice(&engine, "hostile", config)),
        &jobs(),
        &cluster(4, 4),
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{config}: the replay took {:?}",
        started.elapsed()
    );
    assert!(all_finished(&result), "{config}: jobs left unfinished");
    result
}

#[test]
fn a_wasi_sleep_is_over_at_once_and_never_holds_the_host() {
    for config in ["mode=sleep", "mode=sleep-forever"] {
        let started = Instant::now();
        let result = replay(config);
        // A sleep of 5 s per call used to hold every call (and init) that long.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{config}: {:?}",
            started.elapsed()
        );
        assert!(
            result.summary.faults.is_empty(),
            "{config}: {:?}",
            result.summary.faults
        );
        assert!(result.summary.policy_calls > 3);
    }
}

#[test]
fn sleeping_in_snapshot_restore_and_init_cannot_hold_a_swap() {
    let engine = engine();
    let swap = ScheduledSwap {
        at: 2.0,
        policy: choice(&engine, "hostile", "mode=sleep-forever"),
    };
    let started = Instant::now();
    let result = run_with_swaps(
        &engine,
        Some(&choice(&engine, "hostile", "mode=sleep-forever;snapshot-bytes=64")),
        &[swap],
        &jobs(),
        &cluster(4, 4),
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(all_finished(&result));
    assert_eq!(result.summary.swaps, 1, "{:?}", result.summary.swap_log);
    assert!(
        result.summary.swap_log[0].contains("state handed over: true"),
        "{:?}",
        result.summary.swap_log
    );
}

#[test]
fn a_policy_waiting_for_the_clock_to_move_is_struck_for_cpu_time_and_ejected() {
    let result = replay("mode=clock-wait");
    assert_eq!(result.summary.ejections, 1);
    assert!(
        result.summary.faults.iter().all(|f| f.contains("deadline exceeded")),
        "{:?}",
        result.summary.faults
    );
}

#[test]
fn a_far_wakeup_is_refused_and_the_wasi_clocks_stay_readable() {
    let result = replay("mode=far-wakeup");
    assert!(
        result
            .summary
            .faults
            .iter()
            .any(|f| f.contains("wakeup must be a finite time")),
        "{:?}",
        result.summary.faults
    );
    assert_eq!(result.summary.ejections, 1);
}

#[test]
fn busy_wakeups_and_tiny_shares_cannot_stop_the_clock() {
    let busy = replay("mode=busy-wakeup");
    assert_eq!(busy.summary.ejections, 1);
    assert!(
        busy.summary.faults.iter().any(|f| f.contains("stall")),
        "{:?}",
        busy.summary.faults
    );
    let tiny = replay("mode=tiny-share");
    assert_eq!(tiny.summary.ejections, 1);
    assert!(
        tiny.summary.faults.iter().any(|f| f.contains("share")),
        "{:?}",
        tiny.summary.faults
    );
}

#[test]
fn ticks_below_a_millisecond_are_refused_at_init() {
    let engine = engine();
    let plugin = load(&engine, "hostile");
    for tick in ["5e-324", "1e-300", "0.0009", "0", "-1", "NaN", "inf"] {
        match engine.instantiate(&plugin, &format!("tick={tick}"), 0.0) {
            Err(LoadError::InitFault(Fault::InvalidOutput(msg))) => {
                assert!(msg.contains("tick-interval"), "{tick}: {msg}")
            }
            other => panic!("tick={tick}: {other:?}"),
        }
    }
    let ok = engine.instantiate(&plugin, "tick=0.001", 0.0).expect("1 ms is allowed");
    assert_eq!(ok.info().tick_interval, Some(0.001));
}

/// A component whose exports have the policy's names but not its types,
/// made of `copies` instances of a core module with one memory of `pages`
/// 64 KiB pages each.
fn many_memories(copies: usize, pages: u32) -> String {
    let instances: String = (0..copies)
        .map(|i| format!("  (core instance $i{i} (instantiate $m))\n"))
        .collect();
    format!(
        r#"(component
  (core module $m (memory (export "mem") {pages}) (func (export "f")))
{instances}  (func $f (canon lift (core func $i0 "f")))
  (instance $p
    (export "init" (func $f)) (export "decide" (func $f))
    (export "snapshot" (func $f)) (export "restore" (func $f)))
  (export "wsched:policy/policy@0.1.0" (instance $p)))"#
    )
}

#[test]
fn the_memory_cap_covers_all_memories_together_and_their_number_is_bounded() {
    let engine = engine(); // 256 MiB cap
    // Nine memories of 64 MiB: each under the cap, together over it.
    match engine.load_bytes("bomb", many_memories(9, 1024).as_bytes()) {
        Err(LoadError::InitFault(Fault::MemoryCap { limit, wanted })) => {
            assert_eq!(limit, 256 << 20);
            assert!(wanted > limit, "{wanted}");
        }
        other => panic!("{other:?}"),
    }
    // More memories than a plugin may have, however small.
    let many = wsched::engine::MAX_MEMORIES + 1;
    match engine.load_bytes("many", many_memories(many, 1).as_bytes()) {
        Err(LoadError::InitFault(Fault::Trap(msg))) => assert!(msg.contains("memor"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Under both limits, the wrong export types are what stops it, at load
    // (not at the first swap).
    match engine.load_bytes("typed", many_memories(3, 16).as_bytes()) {
        Err(LoadError::Invalid(msg)) => assert!(msg.contains("exports do not match"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_memory_bomb_is_capped_with_one_instance_alive_at_a_time() {
    let engine = engine_with(Limits {
        deadline: Duration::from_secs(2),
        memory: 64 << 20,
        ..Limits::default()
    });
    let result = run(
        &engine,
        Some(&choice(&engine, "hostile", "mode=oom")),
        &jobs(),
        &cluster(4, 4),
    );
    assert!(all_finished(&result));
    assert_eq!(result.summary.ejections, 1);
    assert!(
        result.summary.faults.iter().all(|f| f.contains("memory cap hit")),
        "{:?}",
        result.summary.faults
    );
}

#[test]
fn a_trap_names_its_code_and_function() {
    let result = replay("mode=trap");
    let fault = &result.summary.faults[0];
    assert!(fault.contains("unreachable"), "{fault}");
    // The functions, by name where the component kept its names (the
    // example plugins are stripped, so by index).
    assert!(fault.contains(" in `") || fault.contains(" in function #"), "{fault}");
}

#[test]
fn the_outgoing_policy_cannot_veto_its_replacement() {
    let engine = engine();
    let cases = [
        // The next policy overruns its deadline restoring the state.
        (
            "mode=ok;snapshot-bytes=4000000",
            "mode=slow-restore",
            "afresh without it",
        ),
        // A snapshot over the 16 MiB limit.
        ("mode=ok;snapshot-bytes=20000000", "mode=ok", "could not give its state"),
        // The old policy overruns its deadline taking the snapshot.
        ("mode=slow-snapshot", "mode=ok", "could not give its state"),
    ];
    for (from, to, note) in cases {
        let swap = ScheduledSwap {
            at: 2.0,
            policy: choice(&engine, "hostile", to),
        };
        let result = run_with_swaps(
            &engine,
            Some(&choice(&engine, "hostile", from)),
            &[swap],
            &jobs(),
            &cluster(4, 4),
        );
        assert!(all_finished(&result));
        assert_eq!(result.summary.swaps, 1, "{from} -> {to}: {:?}", result.summary.swap_log);
        let log = &result.summary.swap_log[0];
        assert!(
            log.contains("state handed over: false") && log.contains(note),
            "{from} -> {to}: {log}"
        );
    }
}

fn wsched(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run wsched")
}

#[test]
fn log_floods_long_names_and_huge_errors_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace_path = dir.path().join("t.csv");
    std::fs::write(
        &trace_path,
        "timestamp,duration,num_gpus\n0,10,1\n1,20,2\n2,5,1\n3,30,1\n",
    )
    .expect("trace");
    let hostile = plugin_path("hostile");
    let out = dir.path().join("out");
    let o = wsched(&[
        "sim",
        "--trace",
        trace_path.to_str().unwrap(),
        "--gpus",
        "4",
        "-q",
        "--policy",
        hostile.to_str().unwrap(),
        "--config",
        "mode=log-flood;name-bytes=262144",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Each call logs over 20 MiB and 2,000 lines; what reaches the log is
    // bounded by the budget, with the name cut to 64 bytes in every line.
    assert!(o.stderr.len() < 4 << 20, "{} bytes of log", o.stderr.len());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains(&"n".repeat(100)), "the long name reached the log");
    assert!(log.contains("lines dropped"), "the drops are reported");
    let summary = std::fs::read_to_string(out.join("summary.json")).expect("summary");
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("json");
    assert!(
        summary["plugin_log_lines_dropped"].as_u64().unwrap_or(0) > 1000,
        "{summary}"
    );
    assert!(!summary.to_string().contains(&"n".repeat(100)));

    // A 16 MiB init error is cut before it is printed.
    let o = wsched(&[
        "sim",
        "--trace",
        trace_path.to_str().unwrap(),
        "--gpus",
        "4",
        "-q",
        "--policy",
        hostile.to_str().unwrap(),
        "--config",
        "mode=init-fail;error-bytes=16777216",
    ]);
    assert!(!o.status.success());
    assert!(o.stderr.len() < 16 << 10, "{} bytes of error", o.stderr.len());
    assert!(String::from_utf8_lossy(&o.stderr).contains("eeee"));
}

/// Run `f` on a thread at a low priority (nice 10), pinned to one core
/// that a busy thread shares with it: it runs in short slices with waits
/// of some tens of milliseconds between them, so its calls are often
/// descheduled in mid-call, though each uses little CPU.
fn on_a_starved_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    fn pin_to_first_core() {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..1)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                pin_to_first_core();
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            })
        })
        .collect();
    let worker = std::thread::spawn(move || {
        pin_to_first_core();
        // SAFETY: plain system calls on this thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        }
        f()
    });
    let out = worker.join();
    done.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    out.expect("worker")
}

#[test]
fn a_plugin_descheduled_by_a_busy_machine_is_not_struck() {
    let engine = engine_with(Limits {
        deadline: Duration::from_millis(10),
        ..Limits::default()
    });
    let policy = choice(&engine, "hostile", "work=1000000");
    let result = on_a_starved_thread(move || {
        // Each call spends about a millisecond of CPU (a tenth of its
        // deadline); the wall clock of a starved thread passes the
        // deadline in many of them.
        let rows: String = (0..200).map(|i| format!("{},{},1\n", i, 5 + i % 7)).collect();
        run(&engine, Some(&policy), &trace(&rows), &cluster(8, 8))
    });
    assert!(all_finished(&result));
    assert_eq!(result.summary.strikes, 0, "{:?}", result.summary.faults);
}

async fn health(server: &Server) -> i32 {
    HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Swap to hostile with `config`; the answer must come within 10 s.
async fn swap(server: &Server, config: &str) -> proto::SwapPolicyResponse {
    let mut policies = server.policies().await;
    let request = server.authed(proto::SwapPolicyRequest {
        name: "hostile".into(),
        config: config.into(),
    });
    tokio::time::timeout(Duration::from_secs(10), policies.swap_policy(request))
        .await
        .unwrap_or_else(|_| panic!("swap to {config} hung"))
        .unwrap_or_else(|e| panic!("swap to {config}: {e}"))
        .into_inner()
}

/// Submit `n` short jobs and wait until every one finished.
async fn jobs_finish(server: &Server, n: usize, seconds: f64) {
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(server.submit(&mut jobs, synthetic("h", 1, seconds)).await);
    }
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(30)).await;
    assert!(ended.iter().all(|j| state(j) == proto::JobState::Finished), "{ended:?}");
}

/// Sum of the metric lines that start with `prefix` and contain every one of `labels`.
fn metric(page: &str, prefix: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    kib >> 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_answering_and_telling_the_truth_through_hostile_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "2", "--stall-timeout", "1"],
    );
    server.load("hostile").await;
    let serving = ServingStatus::Serving as i32;

    // Sleeping in init, decide and (on the next swap) snapshot: at once.
    swap(&server, "mode=sleep-forever;snapshot-bytes=16").await;
    jobs_finish(&server, 3, 0.05).await;

    // The next policy overruns restoring the state: it starts afresh.
    let answer = swap(&server, "mode=slow-restore").await;
    assert!(!answer.state_handed_over);
    assert!(answer.note.contains("afresh"), "{answer:?}");
    jobs_finish(&server, 2, 0.05).await;

    // A 1 ms tick: timer calls are capped at 100 a second.
    let before = metric(
        &server.scrape(),
        "wsched_plugin_execution_duration_seconds_count",
        &["tick"],
    );
    swap(&server, "mode=ok;tick=0.001").await;
    let started = Instant::now();
    jobs_finish(&server, 1, 1.5).await;
    let ticks = metric(
        &server.scrape(),
        "wsched_plugin_execution_duration_seconds_count",
        &["tick"],
    ) - before;
    let most = 100.0 * started.elapsed().as_secs_f64() + 20.0;
    assert!(
        ticks > 10.0 && ticks <= most,
        "{ticks} tick calls in {:?}",
        started.elapsed()
    );

    // A log flood with a 256 KiB name: bounded, dropped and counted.
    let log_before = std::fs::metadata(server.state.with_extension("log")).map_or(0, |m| m.len());
    swap(&server, "mode=log-flood;name-bytes=262144").await;
    jobs_finish(&server, 3, 0.05).await;
    let grown = std::fs::metadata(server.state.with_extension("log")).map_or(0, |m| m.len()) - log_before;
    assert!(grown < 4 << 20, "the log grew {grown} bytes");
    assert!(metric(&server.scrape(), "wsched_plugin_log_lines_dropped_total", &[]) > 1000.0);

    // A far wake-up, then a memory bomb: struck, ejected, and the jobs
    // still finish under the built-in FIFO; memory stays near one cap.
    for config in ["mode=far-wakeup", "mode=oom"] {
        swap(&server, config).await;
        jobs_finish(&server, 3, 0.05).await;
        let mut policies = server.policies().await;
        let list = policies
            .list_policies(proto::ListPoliciesRequest {})
            .await
            .expect("list")
            .into_inner();
        assert_eq!(list.active, "builtin-fifo", "{config} was not ejected");
        assert_eq!(health(&server).await, serving);
    }
    let peak = peak_rss_mib(server.child.id());
    eprintln!("server peak RSS after the memory bomb: {peak} MiB (cap 256 MiB)");
    assert!(peak < 256 + 200, "peak RSS {peak} MiB");

    // A component of many memories is refused at load; nothing changes.
    let mut policies = server.policies().await;
    let refused = policies
        .load_policy(server.authed(proto::LoadPolicyRequest {
            name: "bomb".into(),
            source: Some(proto::load_policy_request::Source::Wasm(
                wat::parse_str(many_memories(9, 1024)).expect("valid WAT"),
            )),
        }))
        .await
        .expect_err("refused");
    assert!(refused.message().contains("memory cap"), "{refused:?}");
    // Right names, wrong types: refused at load, not at the first swap.
    let refused = policies
        .load_policy(server.authed(proto::LoadPolicyRequest {
            name: "mistyped".into(),
            source: Some(proto::load_policy_request::Source::Wasm(
                wat::parse_str(many_memories(1, 1)).expect("valid WAT"),
            )),
        }))
        .await
        .expect_err("refused");
    assert!(refused.message().contains("exports do not match"), "{refused:?}");
    jobs_finish(&server, 1, 0.05).await;
    assert_eq!(health(&server).await, serving);
}
