//! Each example policy, run as a Wasm component through the simulator,
//! showing the behaviour that defines it on a trace small enough to check
//! by hand.

mod common;
use common::*;
use wsched::cluster::RestartCost;
use wsched::sim::SimConfig;
use wsched::trace::TraceFormat;

#[test]
fn fifo_head_of_line_blocks_a_job_that_would_fit() {
    // 4 GPUs: A takes 3; B needs 2 and waits; C needs 1 and would fit now,
    // but strict FIFO keeps it behind B until A ends.
    let jobs = trace("0,100,3\n1,100,2\n2,10,1\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "fifo", "")), &jobs, &cluster(4, 4));
    assert_eq!(times(&r, 4), (100.0, 110.0));
    // SJF on the same trace backfills C at once.
    let r = run(&engine, Some(&choice(&engine, "sjf", "")), &jobs, &cluster(4, 4));
    assert_eq!(times(&r, 4), (2.0, 12.0));
}

#[test]
fn sjf_runs_the_shortest_waiting_job_first() {
    let jobs = trace("0,100,1\n1,50,1\n2,10,1\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "sjf", "")), &jobs, &cluster(1, 1));
    assert_eq!(
        times(&r, 2),
        (0.0, 100.0),
        "non-preemptive: the running job keeps its GPU"
    );
    assert_eq!(times(&r, 4), (100.0, 110.0), "shortest next");
    assert_eq!(times(&r, 3), (110.0, 160.0));
}

#[test]
fn tiresias_las_preempts_a_long_running_job_for_a_new_one() {
    // One GPU. A runs alone and passes the 3600 GPU-second threshold into
    // the second queue; B arrives at t=4000 in the first queue and preempts
    // it. A keeps its progress: 4000 s done, 6000 s left after B.
    let jobs = trace("0,10000,1\n4000,100,1\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "tiresias", "")), &jobs, &cluster(1, 1));
    assert_eq!(times(&r, 3), (4000.0, 4100.0));
    assert_eq!(times(&r, 2), (0.0, 10_100.0));
    assert_eq!(r.jobs[0].preemptions, 1);
    // Below the threshold a newcomer waits (same queue, FIFO within it) and
    // the policy asks to be woken exactly when A crosses it.
    let jobs = trace("0,10000,1\n1000,100,1\n");
    let r = run(&engine, Some(&choice(&engine, "tiresias", "")), &jobs, &cluster(1, 1));
    assert_eq!(times(&r, 3), (3600.0, 3700.0));
}

#[test]
fn gandiva_packs_a_waiting_job_and_migrates_to_unpack() {
    // 2 GPUs. A and B take one each; C arrives with no GPU free and is
    // packed onto A's GPU (both at half share) instead of waiting. When B
    // ends, one of the pair migrates to the freed GPU and both run whole.
    let jobs = trace("0,1000,1\n0,100,1\n0,1000,1\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "gandiva", "")), &jobs, &cluster(2, 2));
    assert_eq!(r.jobs[2].start, Some(0.0), "C starts at once, packed");
    assert_eq!(r.summary.migrations, 1);
    // A and C ran at half speed for 100 s (50 s of work each), then alone:
    // both finish at 100 + 950.
    assert_eq!(times(&r, 2).1, 1050.0);
    assert_eq!(times(&r, 4).1, 1050.0);
    assert_eq!(r.summary.actions_rejected, 0);
    // Without packing C waits for B.
    let r = run(
        &engine,
        Some(&choice(&engine, "gandiva", "pack=false")),
        &jobs,
        &cluster(2, 2),
    );
    assert_eq!(r.jobs[2].start, Some(100.0));
}

#[test]
fn gandiva_gives_a_shared_gpu_back_to_the_job_left_on_it() {
    // One GPU. A (1000 s) holds it; B (3000 s) arrives and is packed beside
    // it, both at half share. When A ends (at 2000 s, its 1000 s of work
    // done at half speed) B has done 1000 s of its 3000: alone, it gets the
    // whole GPU back and ends 2000 s later, not 4000 s later at half share.
    let jobs = trace("0,1000,1\n0,3000,1\n");
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "gandiva", "")), &jobs, &cluster(1, 1));
    assert_eq!(r.jobs[1].start, Some(0.0), "B is packed at once");
    assert_eq!(times(&r, 2).1, 2000.0);
    assert_eq!(times(&r, 3).1, 4000.0);
    assert_eq!(r.summary.actions_rejected, 0);
    assert!(
        (r.summary.utilisation - 1.0).abs() < 1e-9,
        "the GPU is used whole throughout: {}",
        r.summary.utilisation
    );
}

#[test]
fn gavel_shares_time_fairly_over_rounds() {
    // One GPU, two equal jobs: FIFO finishes one at 3600 and the other at
    // 7200; Gavel's rounds alternate them so both end near 7200 and each
    // is preempted along the way.
    let jobs = trace("0,3600,1\n0,3600,1\n");
    let engine = engine();
    let r = run(
        &engine,
        Some(&choice(&engine, "gavel", "round=360")),
        &jobs,
        &cluster(1, 1),
    );
    let (a, b) = (times(&r, 2).1, times(&r, 3).1);
    assert!((a - b).abs() <= 360.0, "finishes {a} and {b} should be within a round");
    assert!(a.max(b) == 7200.0);
    assert!(r.jobs.iter().all(|j| j.preemptions >= 1));
    // Both jobs are slowed about equally (Jain's index near 1), where FIFO
    // slows only the second (1/rho of 1 and 0.5: Jain 0.9).
    let fifo = run(&engine, Some(&choice(&engine, "fifo", "")), &jobs, &cluster(1, 1));
    assert!((fifo.summary.fairness.jain_index - 0.9).abs() < 1e-9);
    assert!(
        r.summary.fairness.jain_index > 0.99,
        "{}",
        r.summary.fairness.jain_index
    );
}

#[test]
fn themis_gives_each_lease_to_the_job_furthest_behind_its_fair_finish() {
    // One GPU. A (10,000 s) starts at once; B (1,000 s) arrives at 100 s.
    // FIFO makes B wait for all of A. Themis, at the first lease's end
    // (600 s), finds B further behind its fair finish than A (it has waited
    // 500 s of its 1,000 s x 2 ideal, A has 9,400 s to go of 20,000) and
    // hands it the GPU: B ends at 1,600 s, A is preempted once and ends
    // later than under FIFO but not much.
    let jobs = trace("0,10000,1\n100,1000,1\n");
    let engine = engine();
    let fifo = run(&engine, None, &jobs, &cluster(1, 1));
    assert_eq!(times(&fifo, 3).1, 11_000.0);
    let r = run(
        &engine,
        Some(&choice(&engine, "themis", "lease=600")),
        &jobs,
        &cluster(1, 1),
    );
    assert_eq!(times(&r, 3), (600.0, 1600.0), "B runs from the first lease's end");
    assert_eq!(
        times(&r, 2).1,
        11_000.0,
        "A finishes when it would have: the work is the same"
    );
    assert_eq!(r.summary.preemptions, 1);
    assert!(r.summary.jct.mean < fifo.summary.jct.mean);
    assert_eq!(r.summary.actions_rejected, 0);
}

#[test]
fn gandiva_fair_shares_gpus_between_tenants_not_jobs() {
    // Two GPUs. Alice submits four 1-GPU jobs of 3,600 s, Bob one, all at
    // once. FIFO runs Alice's first two, then her other two, and Bob last
    // (7,200 to 10,800). Per tenant, Bob's share is one GPU: he gets it at
    // once and keeps it to the end (0 to 3,600), while Alice's four jobs
    // take turns on the other, round by round, then share both. The work
    // is the same: Alice's last job ends at 9,000 (14,400 + 3,600 GPU-s on
    // 2 GPUs), no GPU idling while work waits.
    let jobs = wsched::trace::PhillyCsv
        .parse(
            "inline",
            "timestamp,duration,num_gpus,user\n0,3600,1,alice\n0,3600,1,alice\n0,3600,1,alice\n\
             0,3600,1,alice\n0,3600,1,bob\n",
        )
        .expect("trace")
        .jobs;
    let engine = engine();
    let fifo = run(&engine, Some(&choice(&engine, "fifo", "")), &jobs, &cluster(2, 2));
    assert_eq!(times(&fifo, 6), (7200.0, 10_800.0));
    let r = run(
        &engine,
        Some(&choice(&engine, "gandiva_fair", "quantum=600")),
        &jobs,
        &cluster(2, 2),
    );
    assert_eq!(times(&r, 6), (0.0, 3600.0), "Bob runs on his share from the start");
    assert_eq!(r.jobs.iter().find(|j| j.line == 6).unwrap().preemptions, 0);
    for line in 2..=5 {
        assert!(times(&r, line).1 <= 9000.0, "line {line}: {:?}", times(&r, line));
        assert!(r.jobs.iter().find(|j| j.line == line).unwrap().preemptions >= 1);
    }
    assert_eq!(r.summary.actions_rejected, 0);
    // Three tickets to Alice's one (Bob's default): her share is 1.5 GPUs,
    // his 0.5, so Bob runs only every other round and ends much later.
    let r = run(
        &engine,
        Some(&choice(&engine, "gandiva_fair", "tickets=alice:3")),
        &jobs,
        &cluster(2, 2),
    );
    assert!(times(&r, 6).1 >= 6000.0, "{:?}", times(&r, 6));
    assert_eq!(r.summary.completed, 5);
    assert_eq!(r.summary.actions_rejected, 0);
}

#[test]
fn a_preempted_job_pays_the_restart_cost_when_it_resumes() {
    // One GPU, tiresias with a 5 GPU-second threshold. A (100 s) runs from
    // 0; B (10 s) arrives at 10, ranks higher and takes the GPU; at 15 B
    // crosses the threshold too and the older A takes it back, running its
    // last 90 s; B's last 5 s follow. Free restarts: A ends at 105, B at
    // 110. With 30 s per restart each resume restores 30 s first: A ends at
    // 15 + 30 + 90 = 135, B at 135 + 30 + 5 = 170.
    let jobs = trace("0,100,1\n10,10,1\n");
    let engine = engine();
    let policy = choice(&engine, "tiresias", "thresholds=5");
    let free = run(&engine, Some(&policy), &jobs, &cluster(1, 1));
    assert_eq!((times(&free, 2).1, times(&free, 3).1), (105.0, 110.0));
    assert_eq!((free.summary.preemptions, free.summary.restart_seconds), (2, 0.0));
    let config = SimConfig {
        restart_cost: RestartCost::CHECKPOINT,
        ..cluster(1, 1)
    };
    let costly = run(&engine, Some(&policy), &jobs, &config);
    assert_eq!((times(&costly, 2).1, times(&costly, 3).1), (135.0, 170.0));
    assert_eq!((costly.summary.preemptions, costly.summary.restart_seconds), (2, 60.0));
    // Not a cost the model can be given.
    for bad in [f64::NAN, -1.0, f64::INFINITY, 1e300]
        .into_iter()
        .flat_map(|n| [RestartCost::Fixed(n), RestartCost::PerGib(n)])
    {
        let config = SimConfig {
            restart_cost: bad,
            ..cluster(1, 1)
        };
        assert!(
            wsched::sim::simulate(&engine, Some(&policy), &[], &jobs, &config).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn every_example_policy_replays_the_bundled_trace_cleanly() {
    let jobs = philly();
    let engine = engine();
    for (name, config) in [
        ("fifo", ""),
        ("sjf", ""),
        ("tiresias", ""),
        ("gandiva", ""),
        ("gavel", ""),
        ("themis", ""),
        ("gandiva_fair", ""),
    ] {
        let r = run(&engine, Some(&choice(&engine, name, config)), &jobs, &cluster(64, 8));
        let s = &r.summary;
        assert_eq!(s.completed, 16_091, "{name}");
        assert_eq!(
            (s.strikes, s.actions_rejected, s.ejections),
            (0, 0, 0),
            "{name}: {:?}",
            s.faults
        );
        assert_eq!(s.final_policy, name);
    }
}

/// A one-GPU cluster of `kind`.
fn one_gpu(kind: &str) -> SimConfig {
    SimConfig {
        cluster: wsched::topology::Topology::homogeneous(1, 1, kind, 16 << 30).expect("a cluster"),
        ..SimConfig::default()
    }
}

#[test]
fn sjf_orders_by_the_time_a_job_takes_on_the_gpus_it_would_get() {
    // Durations were measured on K80s; the cluster is one V100, where
    // `Fast` runs 10x faster and `Flat` 2x. After `Long` (100 s), `Fast`
    // (1000 s of K80 work, 100 s here) goes before `Flat` (500 s, 250 s
    // here): plain durations would have put `Flat` first.
    let table = wsched::speed::ThroughputTable::from_gavel_json(
        r#"{"v100": {"('Fast', 1)": {"null": 10}, "('Flat', 1)": {"null": 2}, "('Long', 1)": {"null": 1}},
            "k80": {"('Fast', 1)": {"null": 1}, "('Flat', 1)": {"null": 1}, "('Long', 1)": {"null": 1}}}"#,
    )
    .expect("table");
    let mut jobs = trace("0,100,1\n1,1000,1\n2,500,1\n");
    for (job, t) in jobs.iter_mut().zip([2, 0, 1]) {
        job.job_type = Some(t);
    }
    let config = SimConfig {
        speed: Some(wsched::sim::SpeedModel {
            table: std::sync::Arc::new(table),
            reference: "K80".into(),
            seed: 0,
        }),
        ..one_gpu("V100")
    };
    let engine = engine();
    let r = run(&engine, Some(&choice(&engine, "sjf", "")), &jobs, &config);
    assert_eq!(times(&r, 2), (0.0, 100.0));
    assert_eq!(times(&r, 3), (100.0, 200.0), "Fast: 100 s on a V100");
    assert_eq!(times(&r, 4), (200.0, 450.0), "Flat: 250 s on a V100");
    // Without the model the same jobs run as plain durations say.
    let plain = run(&engine, Some(&choice(&engine, "sjf", "")), &jobs, &one_gpu("V100"));
    assert_eq!(times(&plain, 4), (100.0, 600.0));
}

#[test]
fn gandiva_packing_gains_what_measured_sharing_says() {
    // One GPU: B arrives while A runs and is packed beside it. Time-sliced,
    // each runs at half speed; measured, each at the interference factor.
    let jobs = trace("0,100,1\n0,100,1\n");
    let engine = engine();
    let gandiva = choice(&engine, "gandiva", "");
    let sliced = run(&engine, Some(&gandiva), &jobs, &one_gpu("V100"));
    let measured = run(
        &engine,
        Some(&gandiva),
        &jobs,
        &SimConfig {
            colocation: wsched::cluster::Colocation::Measured {
                interference: Some(0.8),
            },
            ..one_gpu("V100")
        },
    );
    let ends = |r: &wsched::sim::SimResult| (times(r, 2).1, times(r, 3).1);
    assert_eq!(ends(&sliced), (200.0, 200.0), "two halves: no gain");
    // (Speeds are kept in f32: 0.8 is 0.800000012.)
    let (a, b) = ends(&measured);
    assert!(
        (a - 125.0).abs() < 1e-4 && (b - 125.0).abs() < 1e-4,
        "0.8 each: 1.6x together: {a}, {b}"
    );
    assert_eq!(sliced.summary.interference_seconds, 0.0);
    assert!((measured.summary.interference_seconds - 2.0 * 125.0 * 0.2).abs() < 1e-3);
    assert!((measured.summary.effective_throughput - 1.6).abs() < 1e-6);
}

#[test]
fn a_plugin_built_before_the_performance_accessors_still_loads_and_decides_alike() {
    // tests/fixtures/tiresias-before-performance-accessors.wasm is
    // plugins/tiresias built at commit 6926ebf, from the contract before
    // `throughput`, `co-located`, `job-type` and `remaining-work` were added
    // to `cluster-view` in place: it imports the interface without them.
    let engine = engine();
    let old = engine
        .load_file(&root().join("tests/fixtures/tiresias-before-performance-accessors.wasm"))
        .expect("an old plugin loads");
    assert!(
        old.imports().iter().any(|i| i.starts_with("wsched:policy/host@0.1.0")),
        "{:?}",
        old.imports()
    );
    let jobs = trace("0,10000,1\n4000,100,1\n10,500,2\n");
    let config = SimConfig {
        speed: Some(wsched::sim::SpeedModel {
            table: std::sync::Arc::new(
                wsched::speed::ThroughputTable::from_gavel_json(wsched::speed::GAVEL).expect("Gavel's table"),
            ),
            reference: "V100".into(),
            seed: 1,
        }),
        ..cluster(2, 2)
    };
    let old = run(
        &engine,
        Some(&wsched::sim::PolicyChoice {
            plugin: old,
            config: String::new(),
        }),
        &jobs,
        &config,
    );
    let new = run(&engine, Some(&choice(&engine, "tiresias", "")), &jobs, &config);
    assert_eq!(old.summary.completed, 3);
    assert_eq!(old.jobs, new.jobs, "the same schedule");
}

#[test]
fn in_rounds_arrivals_and_decisions_wait_for_the_round_end() {
    // Rounds of 100 s on one GPU: A (50 s) starts at 0 and ends at 50
    // exactly; B, arriving at 10, is admitted at 100 (the GPU idles from 50
    // to 100, as in Gavel's simulator) and ends at 130; C, arriving at 100,
    // waits behind it and is started at the next round end after B's.
    let jobs = trace("0,50,1\n10,30,1\n100,10,1\n");
    let engine = engine();
    let exact = run(&engine, None, &jobs, &cluster(1, 1));
    assert_eq!((times(&exact, 3), times(&exact, 4)), ((50.0, 80.0), (100.0, 110.0)));
    let config = SimConfig {
        rounds: Some(100.0),
        ..cluster(1, 1)
    };
    for policy in [None, Some(choice(&engine, "fifo", ""))] {
        let r = run(&engine, policy.as_ref(), &jobs, &config);
        assert_eq!(times(&r, 2), (0.0, 50.0));
        assert_eq!(times(&r, 3), (100.0, 130.0));
        assert_eq!(times(&r, 4), (200.0, 210.0));
        assert_eq!(r.summary.jct.mean, (50.0 + 120.0 + 110.0) / 3.0);
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 5e-324] {
        let config = SimConfig {
            rounds: Some(bad),
            ..cluster(1, 1)
        };
        assert!(
            wsched::sim::simulate(&engine, None, &[], &jobs, &config).is_err(),
            "{bad}"
        );
    }
}
