//! The simulator's semantics against hand-computed results, determinism,
//! the published FIFO figures for the bundled trace, and hot swaps during
//! a replay.

mod common;
use common::*;
use wsched::sim::ScheduledSwap;

#[test]
fn strict_fifo_matches_hand_computed_schedule() {
    // 3 GPUs. A takes 2; B (2 GPUs, same instant, later row) cannot fit and
    // blocks C (1 GPU) although C would fit: strict FIFO. At t=100 A's
    // completion frees GPUs before D's arrival at the same instant is seen,
    // so B, C and then nothing else (D needs 3) start at 100.
    let jobs = trace("0,100,2\n0,50,2\n10,10,1\n100,5,3\n0,1,4\n");
    let engine = engine();
    for policy in [None, Some(choice(&engine, "fifo", ""))] {
        let r = run(&engine, policy.as_ref(), &jobs, &cluster(3, 3));
        assert_eq!(times(&r, 2), (0.0, 100.0), "A");
        assert_eq!(times(&r, 3), (100.0, 150.0), "B starts when A frees its GPUs");
        assert_eq!(times(&r, 4), (100.0, 110.0), "C waits behind B");
        assert_eq!(times(&r, 5), (150.0, 155.0), "D needs all 3 GPUs");
        let s = &r.summary;
        assert_eq!(s.refused_at_submission, 1, "a 4-GPU job on 3 GPUs is refused");
        assert_eq!(s.completed, 4);
        assert_eq!(s.jct.mean, (100.0 + 150.0 + 100.0 + 55.0) / 4.0);
        assert_eq!(s.makespan, 155.0);
        assert_eq!(s.queueing_delay.max, 100.0);
        // Allocated GPU-seconds: 2*100 + 2*50 + 1*10 + 3*5 = 325 over 3*155.
        assert!((s.utilisation - 325.0 / 465.0).abs() < 1e-12, "{}", s.utilisation);
        assert_eq!(s.strikes, 0);
    }
}

#[test]
fn completions_free_gpus_before_arrivals_at_the_same_instant() {
    let jobs = trace("0,100,2\n100,10,2\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "fifo", "")), &jobs, &cluster(2, 2));
    assert_eq!(times(&r, 3), (100.0, 110.0));
    // One call at t=0, one at t=100 (finish + arrival together), one at 110.
    assert_eq!(r.summary.policy_calls, 3);
}

#[test]
fn bundled_trace_fifo_matches_published_reference() {
    // shared/traces/README.md: strict FIFO on 64 fungible GPUs gives mean
    // JCT 9151.7 s and makespan 7,668,079 s.
    let jobs = philly();
    assert_eq!(jobs.len(), 16_091);
    let engine = engine();
    for policy in [None, Some(choice(&engine, "fifo", ""))] {
        let r = run(&engine, policy.as_ref(), &jobs, &cluster(64, 8));
        assert_eq!(r.summary.completed, 16_091);
        assert!(
            (r.summary.jct.mean - 9151.7).abs() < 0.05,
            "mean JCT {}",
            r.summary.jct.mean
        );
        assert_eq!(r.summary.makespan, 7_668_079.0);
    }
}

#[test]
fn replays_are_bit_for_bit_deterministic() {
    let jobs: Vec<_> = philly().into_iter().take(3000).collect();
    let engine = engine();
    let policy = choice(&engine, "tiresias", "");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        let r = run(&engine, Some(&policy), &jobs, &cluster(32, 8));
        assert!(r.summary.preemptions > 0, "the test should exercise preemption");
        wsched::sim::write_outputs(dir.path(), &r).unwrap();
    }
    for file in ["summary.json", "jobs.csv", "plot.svg"] {
        let a = std::fs::read(dirs[0].path().join(file)).unwrap();
        let b = std::fs::read(dirs[1].path().join(file)).unwrap();
        assert!(a == b, "{file} differs between two identical runs");
    }
}

#[test]
fn hot_swap_mid_replay_loses_and_duplicates_nothing() {
    let jobs: Vec<_> = philly().into_iter().take(2000).collect();
    let engine = engine();
    let fifo = choice(&engine, "fifo", "");
    let swaps = [
        ScheduledSwap {
            at: 200_000.0,
            policy: choice(&engine, "tiresias", ""),
        },
        ScheduledSwap {
            at: 400_000.0,
            policy: choice(&engine, "gavel", ""),
        },
        ScheduledSwap {
            at: 600_000.0,
            policy: choice(&engine, "gavel", "round=600"),
        },
    ];
    let r = run_with_swaps(&engine, Some(&fifo), &swaps, &jobs, &cluster(16, 8));
    let s = &r.summary;
    assert_eq!(s.swaps, 3, "{:?}", s.swap_log);
    assert_eq!(s.final_policy, "gavel");
    assert!(s.swap_log[2].contains("state handed over: true"), "{:?}", s.swap_log);
    assert_eq!(
        s.completed,
        jobs.len() - s.refused_at_submission,
        "every accepted job finishes"
    );
    assert!(r.jobs.iter().all(|j| j.state == "finished" || j.state == "refused"));
    assert_eq!((s.strikes, s.actions_rejected, s.ejections), (0, 0, 0));
    assert!(s.preemptions > 0, "tiresias and gavel preempt after the swap");
}

#[test]
fn swap_to_a_plugin_that_fails_init_keeps_the_old_one() {
    let jobs = trace("0,100,1\n10,100,1\n500,10,1\n");
    let engine = engine();
    let fifo = choice(&engine, "fifo", "");
    let swaps = [
        ScheduledSwap {
            at: 50.0,
            policy: choice(&engine, "hostile", "mode=init-fail"),
        },
        ScheduledSwap {
            at: 60.0,
            policy: choice(&engine, "tiresias", "thresholds=oops"),
        },
    ];
    let r = run_with_swaps(&engine, Some(&fifo), &swaps, &jobs, &cluster(1, 1));
    let s = &r.summary;
    assert_eq!((s.swaps, s.final_policy.as_str(), s.completed), (0, "fifo", 3));
    assert!(s.swap_log[0].contains("init refused on purpose"), "{:?}", s.swap_log);
    assert!(s.swap_log[1].contains("thresholds"), "{:?}", s.swap_log);
    assert_eq!(times(&r, 3), (100.0, 200.0));
}

#[test]
fn a_gpu_outage_suspends_its_job_which_keeps_its_progress() {
    use wsched::sim::GpuOutage;
    let engine = engine();
    let jobs = trace("0,100,1\n");
    for policy in ["fifo", "tiresias", "sjf", "gandiva", "gavel"] {
        let choice = choice(&engine, policy, "");
        // Two GPUs: at t=50 GPU 0 fails and the job moves on to GPU 1 at once.
        let mut config = cluster(2, 2);
        config.outages = vec![GpuOutage {
            gpu: 0,
            from: 50.0,
            until: None,
        }];
        let r = run(&engine, Some(&choice), &jobs, &config);
        assert_eq!(times(&r, 2), (0.0, 100.0), "{policy}: nothing lost but the move");
        assert_eq!(
            (r.jobs[0].preemptions, r.summary.strikes, r.summary.actions_rejected),
            (1, 0, 0),
            "{policy}"
        );
        // One GPU, down from 50 to 80: the job waits and resumes where it was.
        let mut config = cluster(1, 1);
        config.outages = vec![GpuOutage {
            gpu: 0,
            from: 50.0,
            until: Some(80.0),
        }];
        let r = run(&engine, Some(&choice), &jobs, &config);
        assert_eq!(times(&r, 2).1, 130.0, "{policy}");
        assert_eq!(r.summary.ejections, 0, "{policy}: {:?}", r.summary.faults);
    }
    // Gone for good on a 1-GPU cluster: the job is reported unfinished.
    let mut config = cluster(1, 1);
    config.outages = vec![GpuOutage {
        gpu: 0,
        from: 50.0,
        until: None,
    }];
    let r = run(&engine, Some(&choice(&engine, "fifo", "")), &jobs, &config);
    assert_eq!((r.summary.completed, r.jobs[0].state.as_str()), (0, "suspended"));
    assert_eq!(
        r.summary.ejections, 0,
        "waiting for GPUs that are gone is not the policy's fault"
    );
    let mut config = cluster(1, 1);
    config.outages = vec![GpuOutage {
        gpu: 5,
        from: 1.0,
        until: None,
    }];
    let err = wsched::sim::simulate(&engine, None, &[], &jobs, &config).unwrap_err();
    assert!(
        err.to_string().contains("outage of gpu 5: the cluster has 1 GPUs"),
        "{err}"
    );
}

#[test]
fn ticks_stop_while_the_cluster_is_empty_and_restart_with_the_next_job() {
    // The simulator runs the service's decision loop: a tick every round
    // while jobs are live, none while the cluster is empty, and no burst of
    // missed ticks when work comes back after an idle spell.
    let engine = engine();
    let jobs = trace("0,10,1\n1000,10,1\n");
    let result = run(
        &engine,
        Some(&choice(&engine, "gavel", "round=60")),
        &jobs,
        &cluster(4, 4),
    );
    assert_eq!(result.summary.completed, 2);
    // An arrival and an ending for each job; no tick comes due while one runs.
    assert_eq!(result.summary.policy_calls, 4);
}
