use super::*;
use wsched_sdk::testing::{FakeView, Rng, placed};

fn gavel(config: &str) -> Gavel {
    Gavel::init(config).unwrap().0
}

/// Carry out a decision on the fake view as the host would, checking
/// every placement: exactly the gang, on online GPUs nobody holds (after
/// the actions before it in the batch), all of one kind.
fn apply(view: &mut FakeView, d: &Decision) {
    for a in &d.actions {
        match a {
            Action::Preempt(id) => {
                assert_eq!(
                    view.job(*id).unwrap().state,
                    JobState::Running,
                    "preempt of a job not running"
                );
                view.suspend(*id);
            }
            Action::Start(p) | Action::Resume(p) => {
                check_placement(view, a, p);
                view.place(p.job, &p.gpus, 1.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn check_placement(view: &FakeView, a: &Action, p: &Placement) {
    let job = view.job(p.job).unwrap();
    let want = if matches!(a, Action::Start(_)) {
        JobState::Pending
    } else {
        JobState::Suspended
    };
    assert_eq!(job.state, want, "{a:?}");
    assert_eq!(p.gpus.len(), job.gpus_requested as usize, "{a:?}");
    let mut seen = p.gpus.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), p.gpus.len(), "a GPU twice: {a:?}");
    // Only a gang larger than every kind may spread over kinds.
    let widest = view
        .gpus
        .iter()
        .map(|g| view.gpus.iter().filter(|h| h.online && h.kind == g.kind).count())
        .max()
        .unwrap_or(0);
    for &g in &p.gpus {
        let gpu = &view.gpus[g as usize];
        assert!(
            gpu.online && gpu.residents.is_empty(),
            "{a:?} on busy or offline GPU {g}"
        );
        if p.gpus.len() <= widest {
            assert_eq!(
                gpu.kind, view.gpus[p.gpus[0] as usize].kind,
                "a gang over two kinds: {a:?}"
            );
        }
    }
}

/// The next round: advance the clock one round, tick, carry it out.
fn tick(p: &mut Gavel, view: &mut FakeView) -> Decision {
    view.now += p.round;
    let d = p.decide(view, vec![Event::Tick]);
    apply(view, &d);
    d
}

fn holders(view: &FakeView) -> Vec<JobId> {
    view.jobs(JobState::Running)
}

/// The kind a running job holds.
fn kind_held(view: &FakeView, id: JobId) -> Option<String> {
    let job = view.job(id)?;
    job.placement.first().map(|&g| view.gpus[g as usize].kind.clone())
}

#[test]
fn config_keys() {
    assert_eq!(Gavel::init("round=60").unwrap().1.tick_interval, Some(60.0));
    assert_eq!(Gavel::init("").unwrap().1.tick_interval, Some(360.0));
    assert_eq!(gavel("").mode, Mode::Aware);
    assert_eq!(gavel("round=5; mode=agnostic").mode, Mode::Agnostic);
    assert_eq!(gavel("mode=aware").mode, Mode::Aware);
    assert_eq!(gavel("").reset_every, 1920.0);
    assert_eq!(gavel("reset=0").reset_every, 0.0);
    for bad in [
        "round=0",
        "round=abc",
        "round=inf",
        "rounds=5",
        "mode=fast",
        "mode",
        "x=1",
        "reset=-1",
        "reset=nan",
        "fill=maybe",
    ] {
        let err = Gavel::init(bad).err().unwrap();
        assert!(err.starts_with("gavel:"), "{bad}: {err}");
    }
    assert!(
        Gavel::init("speed=1")
            .err()
            .unwrap()
            .contains("known: round, mode, reset, fill")
    );
}

#[test]
fn rotates_jobs_on_ticks() {
    // Three 1-GPU jobs on 2 GPUs of one kind: a share of 2/3 each.
    let mut view = FakeView::new(2, 2);
    let events = (0..3).map(|_| Event::JobArrived(view.add_job(1))).collect();
    let mut p = gavel("");
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    assert_eq!(holders(&view), vec![0, 1], "arrivals fill free GPUs, oldest first");
    let mut ran = [0u32; 3];
    for _ in 0..6 {
        tick(&mut p, &mut view);
        for id in holders(&view) {
            ran[id as usize] += 1;
        }
    }
    assert_eq!(ran, [4, 4, 4], "every job gets 2/3 of the rounds");
    for id in 0..3 {
        let x = p.allocation(id).unwrap();
        assert!((x[0].1 - 2.0 / 3.0).abs() < 1e-9, "{x:?}");
    }
    assert_eq!(p.last_solve().unwrap().0, lp::Method::Closed, "one kind: no solver");
}

#[test]
fn non_tick_calls_do_not_preempt() {
    let mut view = FakeView::new(1, 1);
    let a = view.add_job(1);
    let mut p = gavel("");
    let d = p.decide(&view, vec![Event::JobArrived(a.clone())]);
    apply(&mut view, &d);
    let b = view.add_job(1);
    let d = p.decide(&view, vec![Event::JobArrived(b)]);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // The first round closes: a ran in it, b did not; both share 1/2, so
    // b, with less time on the GPU, goes first.
    let d = tick(&mut p, &mut view);
    assert!(
        matches!(&d.actions[..], [Action::Preempt(0), Action::Start(pl)] if pl.job == 1),
        "{d:?}"
    );
    // A completion between ticks fills the GPU at once.
    view.finish(1);
    let d = p.decide(&view, vec![Event::JobFinished(1)]);
    assert!(matches!(&d.actions[..], [Action::Resume(pl)] if pl.job == 0), "{d:?}");
}

/// Two GPU kinds of one GPU each, "fast" and "slow". Jobs 0 and 1 (A) run
/// 10x faster on fast than on slow, jobs 2 and 3 (B) 1.2x. See
/// `lp::tests::heterogeneity_aware_puts_each_job_where_it_is_fastest`
/// for the allocation by hand: A 11/32 of fast and none of slow, B 5/32
/// of fast and 1/2 of slow.
fn two_kinds() -> FakeView {
    let mut view = FakeView::new(2, 1);
    view.set_kind(0..1, "fast");
    view.set_kind(1..2, "slow");
    for id in 0..4 {
        view.add_job(1);
        let fast = if id < 2 { 10.0 } else { 1.2 };
        view.set_throughput(id, "fast", 1, fast);
        view.set_throughput(id, "slow", 1, 1.0);
    }
    view
}

/// Run `rounds` rounds of the four jobs of [`two_kinds`]; returns each
/// job's mean rate per round (its throughput on the kind it held, 0 when
/// it held none) and rounds held per kind.
fn run_two_kinds(config: &str, rounds: usize) -> (Gavel, Vec<f64>, Vec<[u32; 2]>) {
    let mut view = two_kinds();
    let mut p = gavel(config);
    let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    let mut rate = [0.0; 4];
    let mut held = vec![[0u32; 2]; 4];
    for _ in 0..rounds {
        tick(&mut p, &mut view);
        for id in holders(&view) {
            let kind = kind_held(&view, id).unwrap();
            rate[id as usize] += view.model.throughputs[&(id, kind.clone(), 1, false)];
            held[id as usize][usize::from(kind == "slow")] += 1;
        }
    }
    (p, rate.iter().map(|r| r / rounds as f64).collect(), held)
}

#[test]
fn aware_puts_each_job_on_the_kind_it_gains_most_on() {
    let (p, rate, held) = run_two_kinds("", 64);
    let share = |id, kind: &str| {
        p.allocation(id)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == kind)
            .unwrap()
            .1
    };
    for a in 0..2 {
        assert!((share(a, "fast") - 11.0 / 32.0).abs() < 1e-6, "{:?}", p.allocation(a));
        assert!(share(a, "slow").abs() < 1e-6, "{:?}", p.allocation(a));
    }
    for b in 2..4 {
        assert!((share(b, "fast") - 5.0 / 32.0).abs() < 1e-6, "{:?}", p.allocation(b));
        assert!((share(b, "slow") - 0.5).abs() < 1e-6, "{:?}", p.allocation(b));
    }
    assert!(matches!(p.last_solve().unwrap().0, lp::Method::Lp { classes: 2 }));
    // Carried out over rounds: A mostly on fast, B mostly on slow, and
    // each at least its equal-share effective throughput (1/4 of each
    // GPU: 2.75 for A, 0.55 for B).
    for a in 0..2 {
        assert!(held[a][0] > held[a][1], "A: {held:?}");
        assert!(rate[a] >= 2.75, "A: {rate:?}");
    }
    for b in 2..4 {
        assert!(held[b][1] > held[b][0], "B: {held:?}");
        assert!(rate[b] >= 0.55, "B: {rate:?}");
    }
    // ...and better than the agnostic policy gives them.
    let (_, agnostic, _) = run_two_kinds("mode=agnostic", 64);
    let total = |r: &[f64]| r.iter().sum::<f64>();
    assert!(total(&rate) > total(&agnostic), "{rate:?} vs {agnostic:?}");
}

#[test]
fn agnostic_splits_time_equally() {
    let (p, _, held) = run_two_kinds("mode=agnostic", 64);
    for id in 0..4 {
        let x = p.allocation(id).unwrap();
        assert!(x.iter().all(|(_, v)| (v - 0.25).abs() < 1e-9), "{x:?}");
        let rounds: u32 = held[id as usize].iter().sum();
        assert_eq!(rounds, 32, "half the rounds each: {held:?}");
    }
    assert_eq!(p.last_solve().unwrap().0, lp::Method::Closed);
}

#[test]
fn gang_size_weighting() {
    // A 4-GPU and a 1-GPU job on 4 GPUs: x = 3/4 and 1 (see
    // lp::tests::gang_size_weighting). They cannot run together, so
    // rounds go to one or the other, in proportion to their shares: the
    // 1-GPU job runs whenever x / (time had) puts it first, 4 rounds for
    // every 3 of the 4-GPU job's.
    let mut view = FakeView::new(4, 4);
    let events = vec![Event::JobArrived(view.add_job(4)), Event::JobArrived(view.add_job(1))];
    let mut p = gavel("");
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    let mut ran = [0u32; 2];
    for _ in 0..20 {
        tick(&mut p, &mut view);
        for id in holders(&view) {
            ran[id as usize] += 1;
        }
    }
    assert!((p.allocation(0).unwrap()[0].1 - 0.75).abs() < 1e-9);
    assert!((p.allocation(1).unwrap()[0].1 - 1.0).abs() < 1e-9);
    assert_eq!(ran, [9, 11], "{ran:?}");
}

/// Random events on a random cluster of up to three kinds; returns the
/// actions each decision took.
fn random_run(seed: u64, config: &str, model: bool, takeovers: bool) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let gpus = 4 + rng.below(13) as u32;
    let mut view = FakeView::new(gpus, 1 + rng.below(4) as u32);
    let kinds = ["K80", "P100", "V100"];
    let n_kinds = 1 + rng.below(3) as u32;
    for g in 0..gpus {
        view.set_kind(g..g + 1, kinds[(g * n_kinds / gpus) as usize]);
    }
    let mut p = gavel(config);
    let mut log = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let hostile = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -1.0,
        1e300,
        5e-324,
        1e-300,
    ];
    for _step in 0..300 {
        for _ in 0..1 + rng.below(3) {
            match rng.below(20) {
                0..=6 => {
                    let size = [0, 1, 1, 1, 1, 2, 2, 3, 4, 5, 8, 99][rng.below(12) as usize];
                    let job = view.add_job(size);
                    for kind in kinds {
                        let rate = match rng.below(8) {
                            0 => continue,
                            1 => hostile[rng.below(hostile.len() as u64) as usize],
                            _ => 0.1 + rng.below(100) as f64 / 10.0,
                        };
                        if model {
                            view.set_throughput(job.id, kind, size, rate);
                        }
                    }
                    events.push(Event::JobArrived(job));
                }
                7..=9 => {
                    if let Some(id) = rng.pick(&view.jobs(JobState::Running)) {
                        view.finish(id);
                        events.push(Event::JobFinished(id));
                    }
                }
                10 => {
                    let mut live = view.jobs(JobState::Pending);
                    live.extend(view.jobs(JobState::Suspended));
                    live.extend(view.jobs(JobState::Running));
                    if let Some(id) = rng.pick(&live) {
                        events.push(view.fail(id, "test"));
                    }
                }
                11..=15 => {
                    view.now += p.round;
                    events.push(Event::Tick);
                }
                16 => {
                    if let Some(id) = rng.pick(&view.jobs(JobState::Running)) {
                        view.suspend(id);
                        events.push(Event::JobPreempted(id));
                    }
                }
                17 => {
                    let g = rng.below(gpus as u64) as GpuId;
                    events.extend(view.toggle_gpu(g));
                }
                18 if takeovers => {
                    // A takeover: a fresh instance, the state handed over,
                    // every live job announced.
                    let snap = p.snapshot().unwrap();
                    p = gavel(config);
                    p.restore(&snap).unwrap();
                    events.clear();
                    for j in &view.jobs {
                        if matches!(j.state, JobState::Pending | JobState::Running | JobState::Suspended) {
                            events.push(Event::JobArrived(j.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        let d = p.decide(&view, std::mem::take(&mut events));
        log.push(format!("{:?}", d.actions));
        events = apply_some(&mut view, &d, &mut rng);
        // Never more GPUs held than are online, never a GPU held twice.
        for gpu in &view.gpus {
            assert!(gpu.residents.len() <= 1, "seed {seed}: {gpu:?}");
        }
        for job in &p.jobs {
            assert!(
                job.1.x.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                "{job:?}"
            );
        }
    }
    log
}

/// Carry out a decision as the host would, refusing some actions at
/// random; returns the rejections to report. An action may be invalid
/// only because a preemption before it in the batch was refused (its GPUs
/// still held, or the job it moves still running): the host refuses it
/// too. Any other invalid action fails the test.
fn apply_some(view: &mut FakeView, d: &Decision, rng: &mut Rng) -> Vec<Event> {
    let mut rejected = Vec::new();
    let mut refused_preemption = false;
    for (index, a) in d.actions.iter().enumerate() {
        let job = match a {
            Action::Preempt(id) => *id,
            Action::Start(p) | Action::Resume(p) => p.job,
            other => panic!("unexpected {other:?}"),
        };
        let valid = match a {
            Action::Preempt(id) => view.job(*id).unwrap().state == JobState::Running,
            Action::Start(p) | Action::Resume(p) => {
                let want = if matches!(a, Action::Start(_)) {
                    JobState::Pending
                } else {
                    JobState::Suspended
                };
                view.job(p.job).unwrap().state == want
                    && p.gpus.iter().all(|&g| view.gpus[g as usize].residents.is_empty())
            }
            _ => unreachable!(),
        };
        assert!(valid || refused_preemption, "{a:?} invalid in {:?}", d.actions);
        if !valid || rng.below(25) == 0 {
            refused_preemption |= matches!(a, Action::Preempt(_));
            rejected.push(Event::ActionRejected(Rejection {
                index: index as u32,
                job,
                reason: "refused by the test".into(),
            }));
            continue;
        }
        match a {
            Action::Preempt(id) => view.suspend(*id),
            Action::Start(p) | Action::Resume(p) => {
                check_placement(view, a, p);
                view.place(p.job, &p.gpus, 1.0);
            }
            _ => unreachable!(),
        }
    }
    rejected
}

/// Never a placement on a busy or offline GPU, on two kinds (unless no
/// kind is large enough), or of the wrong size; never a GPU held twice; allocations always finite, through
/// arrivals, completions, failures, ticks, the host's preemptions, GPUs
/// going and coming, refused actions, takeovers and hostile throughputs.
#[test]
fn random_events_keep_the_invariants() {
    for seed in 1..=40u64 {
        random_run(seed, "", true, true);
        random_run(seed, "mode=agnostic", true, true);
    }
}

/// With no performance model the aware mode decides exactly as the
/// agnostic one.
#[test]
fn no_model_reduces_to_agnostic() {
    for seed in 1..=20u64 {
        assert_eq!(
            random_run(seed, "", false, false),
            random_run(seed, "mode=agnostic", false, false),
            "seed {seed}"
        );
        // With a model, the agnostic mode ignores it.
        assert_eq!(
            random_run(seed, "mode=agnostic", true, false),
            random_run(seed, "mode=agnostic", false, false),
            "seed {seed}"
        );
    }
}

/// Hostile figures for every kind: the policy neither panics nor loops,
/// and its allocation is finite.
#[test]
fn hostile_throughputs_are_ignored_or_clamped() {
    let hostile = [
        f64::NAN,
        f64::INFINITY,
        -f64::INFINITY,
        0.0,
        -3.0,
        1e300,
        5e-324,
        f64::MAX,
    ];
    for (i, &bad) in hostile.iter().enumerate() {
        let mut view = FakeView::new(6, 2);
        view.set_kind(0..2, "a");
        view.set_kind(2..4, "b");
        view.set_kind(4..6, "c");
        let mut events = Vec::new();
        for id in 0..8u64 {
            let job = view.add_job(1 + (id % 2) as u32);
            for (k, kind) in ["a", "b", "c"].iter().enumerate() {
                let rate = if (id as usize + k + i).is_multiple_of(3) {
                    bad
                } else {
                    1.0 + k as f64
                };
                view.set_throughput(job.id, kind, job.gpus_requested, rate);
            }
            events.push(Event::JobArrived(job));
        }
        let mut p = gavel("");
        let d = p.decide(&view, events);
        apply(&mut view, &d);
        for _ in 0..5 {
            tick(&mut p, &mut view);
        }
        for id in 0..8 {
            let x = p.allocation(id).unwrap();
            assert!(x.iter().all(|(_, v)| v.is_finite() && *v >= 0.0), "{bad}: {x:?}");
        }
        assert!(matches!(p.last_solve().unwrap().0, lp::Method::Lp { .. }), "{bad}");
    }
    // Every figure hostile: like no model at all.
    let mut view = FakeView::new(4, 2);
    view.set_kind(0..2, "a");
    view.set_kind(2..4, "b");
    let job = view.add_job(1);
    view.set_throughput(0, "a", 1, f64::NAN);
    view.set_throughput(0, "b", 1, 0.0);
    let mut p = gavel("");
    let d = p.decide(&view, vec![Event::JobArrived(job)]);
    apply(&mut view, &d);
    tick(&mut p, &mut view);
    assert_eq!(p.last_solve().unwrap().0, lp::Method::Closed);
}

/// Throughputs with a relative spread the solver could not take are
/// clamped to `MIN_RATIO` of the job's best kind; a missing or unusable
/// figure counts as the reference speed, 1.0.
#[test]
fn throughputs_are_relative_and_clamped() {
    let mut view = FakeView::new(4, 2);
    view.set_kind(0..2, "a");
    view.set_kind(2..4, "b");
    let job = view.add_job(3); // spread: 2 per node
    view.model.throughputs.insert((0, "a".into(), 3, true), 1e300);
    view.model.throughputs.insert((0, "b".into(), 3, true), 5e-324);
    let kinds = Kinds {
        names: vec!["a".into(), "b".into()],
        caps: vec![4, 4],
        per_node: vec![2, 2],
    };
    assert_eq!(read_throughputs(&view, job.id, 3, &kinds), vec![1.0, lp::MIN_RATIO]);
    assert_eq!(read_throughputs(&view, job.id, 0, &kinds), vec![1.0, 1.0], "no gang");
    view.model.throughputs.remove(&(0, "b".into(), 3, true));
    view.model.throughputs.insert((0, "a".into(), 3, true), 4.0);
    assert_eq!(
        read_throughputs(&view, job.id, 3, &kinds),
        vec![1.0, 0.25],
        "missing: 1.0"
    );
    view.model.throughputs.insert((0, "b".into(), 3, true), f64::NAN);
    assert_eq!(read_throughputs(&view, job.id, 3, &kinds), vec![1.0, 0.25], "NaN: 1.0");
    view.model.throughputs.insert((0, "a".into(), 3, true), 0.5);
    assert_eq!(read_throughputs(&view, job.id, 3, &kinds), vec![0.5, 1.0]);
}

#[test]
fn snapshot_round_trips_and_foreign_state_is_refused() {
    let mut view = two_kinds();
    let mut p = gavel("");
    let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    for _ in 0..5 {
        tick(&mut p, &mut view);
    }
    let snap = p.snapshot().unwrap();
    let mut q = gavel("");
    q.restore(&snap).unwrap();
    assert_eq!(
        q.snapshot().unwrap(),
        snap,
        "restored state is kept until the jobs are announced"
    );

    // After the takeover (every live job announced again) the two decide
    // alike: the allocation and counters came over, nothing is computed
    // again.
    let mut view_q = view.clone();
    let replay: Vec<Event> = view_q.jobs.iter().cloned().map(Event::JobArrived).collect();
    let d = q.decide(&view_q, replay);
    assert!(d.actions.is_empty(), "{d:?}");
    let solved = p.last_solve();
    for _ in 0..10 {
        let a = tick(&mut p, &mut view);
        let b = tick(&mut q, &mut view_q);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
    assert_eq!(q.last_solve(), None, "q never solved: it took p's allocation");
    assert_eq!(p.last_solve(), solved);
    assert_eq!(q.allocation(0), p.allocation(0));
    // Between ticks too: a completion fills the GPU alike.
    let done = holders(&view)[0];
    view.finish(done);
    view_q.finish(done);
    let a = p.decide(&view, vec![Event::JobFinished(done)]);
    let b = q.decide(&view_q, vec![Event::JobFinished(done)]);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(placed(&a).len(), 1, "{a:?}");

    // Whatever another policy, an older Gavel or a corrupt file hands
    // over is refused, leaving the state alone.
    let before = q.snapshot().unwrap();
    let mut other = Encoder::default();
    other.u64(u64::from_le_bytes(*b"FIFOsnap")).u64(1);
    let mut v1 = Encoder::default();
    v1.u64(MAGIC).u64(1).f64(360.0).u64(1).u64(0).u64(4).u64(2);
    let mut future = Encoder::default();
    future.u64(MAGIC).u64(VERSION + 1);
    let mut huge = Encoder::default();
    huge.u64(MAGIC)
        .u64(VERSION)
        .f64(360.0)
        .u64(0)
        .f64(0.0)
        .f64(0.0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(u64::MAX);
    assert!(
        q.restore(&huge.0).unwrap_err().contains("kinds in"),
        "refused before allocating"
    );
    for bad in [
        &b""[..],
        b"garbage!",
        &other.0,
        &v1.0,
        &future.0,
        &huge.0,
        &snap[..snap.len() - 3],
    ] {
        let err = q.restore(bad).unwrap_err();
        assert!(err.starts_with("gavel:"), "{err}");
    }
    assert!(q.restore(&v1.0).unwrap_err().contains("version 1"));
    assert_eq!(q.snapshot().unwrap(), before);

    // A snapshot from the other mode is taken, and the allocation is
    // computed again.
    let mut r = gavel("mode=agnostic");
    r.restore(&snap).unwrap();
    let replay: Vec<Event> = view.jobs.iter().cloned().map(Event::JobArrived).collect();
    r.decide(&view, replay);
    tick(&mut r, &mut view);
    assert_eq!(r.last_solve().unwrap().0, lp::Method::Closed);
}

/// A gang larger than every kind spreads over kinds rather than wait for
/// ever; it takes turns with the others.
#[test]
fn gangs_larger_than_any_kind_still_run() {
    let mut view = FakeView::new(6, 2);
    view.set_kind(0..3, "a");
    view.set_kind(3..6, "b");
    let big = view.add_job(5);
    let small = view.add_job(2);
    let mut p = gavel("");
    let d = p.decide(&view, vec![Event::JobArrived(big), Event::JobArrived(small)]);
    apply(&mut view, &d);
    assert_eq!(
        holders(&view),
        vec![1],
        "the small one fills a kind first, between ticks"
    );
    let mut ran = [0u32; 2];
    for _ in 0..10 {
        tick(&mut p, &mut view);
        for id in holders(&view) {
            ran[id as usize] += 1;
        }
    }
    assert!(ran[0] >= 4 && ran[1] >= 4, "{ran:?}");
    assert_eq!(p.allocation(0).unwrap(), vec![("a".into(), 0.0), ("b".into(), 0.0)]);
}

/// A GPU kind going away and coming back: shares follow.
#[test]
fn gpus_going_offline_change_the_allocation() {
    let mut view = two_kinds();
    let mut p = gavel("");
    let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    tick(&mut p, &mut view);
    let events = view.toggle_gpu(0);
    let d = p.decide(&view, events);
    apply(&mut view, &d);
    tick(&mut p, &mut view);
    let x = p.allocation(0).unwrap();
    assert_eq!(x[0], ("fast".to_string(), 0.0), "{x:?}");
    for id in holders(&view) {
        assert_eq!(kind_held(&view, id).as_deref(), Some("slow"));
    }
    let events = view.toggle_gpu(0);
    p.decide(&view, events);
    tick(&mut p, &mut view);
    assert!(p.allocation(0).unwrap()[0].1 > 0.3);
}

/// Solve times on this machine (printed; `--nocapture` shows them), held
/// to the host's per-call deadline (100 ms of CPU) in a release build.
fn time_solve(name: &str, caps: &[u32], rows: &[lp::Row]) -> lp::Method {
    let start = std::time::Instant::now();
    let mut method = lp::Method::Empty;
    let runs = 5;
    for _ in 0..runs {
        method = lp::allocate(caps, rows).method;
    }
    let each = start.elapsed() / runs;
    println!("{name}: {} jobs, {method:?}: {each:?} per solve", rows.len());
    assert!(cfg!(debug_assertions) || each.as_millis() < 100, "{name}: {each:?}");
    method
}

/// Gavel's workload: 26 job types, gangs of 1, 2, 4 and 8, 200 live jobs,
/// on 36 GPUs each of three kinds.
#[test]
fn solve_time_200_jobs_of_gavel_types() {
    let mut rng = Rng::new(3);
    let types: Vec<Vec<f64>> = (0..26)
        .map(|_| {
            vec![
                1.0,
                0.3 + rng.below(70) as f64 / 100.0,
                0.1 + rng.below(50) as f64 / 100.0,
            ]
        })
        .collect();
    let rows: Vec<lp::Row> = (0..200)
        .map(|_| lp::Row {
            gang: [1, 1, 1, 2, 4, 8][rng.below(6) as usize],
            tput: types[rng.below(26) as usize].clone(),
        })
        .collect();
    let method = time_solve("gavel types", &[36, 36, 36], &rows);
    assert!(matches!(method, lp::Method::Lp { .. }), "{method:?}");
}

/// The worst case: 200 jobs all different, and 127 different (just within
/// the bound).
#[test]
fn solve_time_200_distinct_jobs() {
    let mut rng = Rng::new(5);
    let row = |rng: &mut Rng| lp::Row {
        gang: [1, 1, 1, 2, 4, 8][rng.below(6) as usize],
        tput: vec![
            1.0,
            0.3 + rng.below(7000) as f64 / 10000.0,
            0.1 + rng.below(5000) as f64 / 10000.0,
        ],
    };
    let rows: Vec<lp::Row> = (0..200).map(|_| row(&mut rng)).collect();
    time_solve("200 distinct", &[36, 36, 36], &rows);
    let rows: Vec<lp::Row> = (0..127).map(|_| row(&mut rng)).collect();
    let method = time_solve("127 distinct", &[36, 36, 36], &rows);
    assert_eq!(method, lp::Method::Lp { classes: 127 });
}
