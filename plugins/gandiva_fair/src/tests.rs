//! The behaviours that define the policy, one decision at a time on a
//! [`FakeView`], carried out as the host would.

use super::*;
use std::collections::BTreeMap;
use wsched_sdk::testing::{FakeView, Rng};

const QUANTUM: f64 = 600.0;

fn policy(config: &str) -> GandivaFair {
    GandivaFair::init(config).expect("valid config").0
}

/// Submit a pending job of `tenant` asking for `gpus`; the event the policy hears.
fn submit(view: &mut FakeView, tenant: &str, gpus: u32) -> Event {
    let id = view.add_job(gpus).id;
    view.job_mut(id).tenant = tenant.into();
    Event::JobArrived(view.job(id).unwrap())
}

/// Carry out a decision as the host would, failing the test on any action
/// the host would refuse: a gang not whole, a GPU busy, offline or unknown.
fn apply(view: &mut FakeView, d: &Decision) {
    for a in &d.actions {
        if let Err(why) = check(view, a) {
            panic!("{why}: {a:?} in {:?}", d.actions);
        }
        carry_out(view, a);
    }
}

/// Whether the host would accept `action` now.
fn check(view: &FakeView, action: &Action) -> Result<(), String> {
    match action {
        Action::Preempt(id) => match view.job(*id) {
            Some(job) if job.state == JobState::Running => Ok(()),
            _ => Err(format!("job {id} is not running")),
        },
        Action::Start(p) | Action::Resume(p) => {
            let job = view.job(p.job).ok_or("unknown job")?;
            let want = if matches!(action, Action::Start(_)) {
                JobState::Pending
            } else {
                JobState::Suspended
            };
            if job.state != want {
                return Err(format!("job {} is {:?}", p.job, job.state));
            }
            if p.gpus.len() as u32 != job.gpus_requested {
                return Err(format!(
                    "a partial gang: {} GPUs of {}",
                    p.gpus.len(),
                    job.gpus_requested
                ));
            }
            let mut seen = BTreeSet::new();
            for &g in &p.gpus {
                let gpu = view.gpus.get(g as usize).ok_or(format!("no GPU {g}"))?;
                if !gpu.online || !gpu.residents.is_empty() || !seen.insert(g) {
                    return Err(format!("GPU {g} is not free"));
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected action {other:?}")),
    }
}

fn carry_out(view: &mut FakeView, action: &Action) {
    match action {
        Action::Preempt(id) => view.suspend(*id),
        Action::Start(p) | Action::Resume(p) => view.place(p.job, &p.gpus, 1.0),
        _ => unreachable!(),
    }
}

/// Let `dt` seconds pass: running jobs gain service.
fn advance(view: &mut FakeView, dt: f64) {
    view.now += dt;
    for j in &mut view.jobs {
        if j.state == JobState::Running {
            j.attained_gpu_seconds += j.placement.len() as f64 * dt;
            j.attained_seconds += dt;
        }
    }
}

/// GPUs each tenant holds now.
fn holdings(view: &FakeView) -> BTreeMap<String, usize> {
    let mut held = BTreeMap::new();
    for j in view.jobs.iter().filter(|j| j.state == JobState::Running) {
        *held.entry(j.tenant.clone()).or_default() += j.placement.len();
    }
    held
}

/// Submit `arrivals`, then run `rounds` rounds; GPU-rounds per tenant (what
/// each held through each round, summed).
fn run(p: &mut GandivaFair, view: &mut FakeView, arrivals: Vec<Event>, rounds: usize) -> BTreeMap<String, usize> {
    let d = p.decide(view, arrivals);
    apply(view, &d);
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..rounds {
        for (tenant, gpus) in holdings(view) {
            *total.entry(tenant).or_default() += gpus;
        }
        advance(view, QUANTUM);
        let d = p.decide(view, vec![Event::Tick]);
        apply(view, &d);
    }
    total
}

#[test]
fn equal_tickets_split_gpu_time_between_tenants_not_jobs() {
    // 4 GPUs; alice has 8 one-GPU jobs, bob 2. Per job, alice would get
    // 80% of the cluster; per tenant each gets half, round after round.
    let mut view = FakeView::new(4, 4);
    let mut arrivals: Vec<Event> = (0..8).map(|_| submit(&mut view, "alice", 1)).collect();
    arrivals.extend((0..2).map(|_| submit(&mut view, "bob", 1)));
    let mut p = policy("");
    let got = run(&mut p, &mut view, arrivals, 20);
    assert_eq!(got["alice"], 40, "{got:?}");
    assert_eq!(got["bob"], 40, "{got:?}");
    // Alice's jobs take turns on her two GPUs: every one has run.
    for j in view.jobs.iter().filter(|j| j.tenant == "alice") {
        assert!(j.attained_gpu_seconds >= 2.0 * QUANTUM, "job {} starved", j.id);
    }
    // The accounts agree: each received what it was entitled to.
    for tenant in ["alice", "bob"] {
        let (received, entitled) = p.totals(tenant).unwrap();
        assert!(
            (received - entitled).abs() < 1e-6 * entitled,
            "{tenant}: {received} vs {entitled}"
        );
        assert!((received - 2.0 * 20.0 * QUANTUM).abs() < 1e-6, "{tenant}: {received}");
    }
}

#[test]
fn tickets_two_to_one_give_two_thirds_and_one_third() {
    let mut view = FakeView::new(4, 2);
    let mut arrivals: Vec<Event> = (0..8).map(|_| submit(&mut view, "alice", 1)).collect();
    arrivals.extend((0..8).map(|_| submit(&mut view, "bob", 1)));
    let mut p = policy("tickets=alice:2,bob:1;quantum=600");
    let got = run(&mut p, &mut view, arrivals, 30);
    // 120 GPU-rounds: 80 and 40, within the lag of one round.
    assert!(got["alice"].abs_diff(80) <= 2, "{got:?}");
    assert!(got["bob"].abs_diff(40) <= 2, "{got:?}");
    assert_eq!(got["alice"] + got["bob"], 120, "no GPU idles while work waits");
}

#[test]
fn stride_evens_out_shares_that_gangs_cannot_split() {
    // 3 GPUs, two equal tenants: 1.5 GPUs each, which no round can give.
    // The tenant served 2 in one round is served 1 in the next.
    let mut view = FakeView::new(3, 3);
    let mut arrivals: Vec<Event> = (0..4).map(|_| submit(&mut view, "alice", 1)).collect();
    arrivals.extend((0..4).map(|_| submit(&mut view, "bob", 1)));
    let mut p = policy("");
    let got = run(&mut p, &mut view, arrivals, 20);
    assert!(got["alice"].abs_diff(30) <= 1, "{got:?}");
    assert!(got["bob"].abs_diff(30) <= 1, "{got:?}");
}

#[test]
fn a_tenant_below_its_share_gets_its_demand_and_the_rest_goes_to_the_other() {
    let mut view = FakeView::new(4, 4);
    let mut arrivals = vec![submit(&mut view, "alice", 1)];
    arrivals.extend((0..8).map(|_| submit(&mut view, "bob", 1)));
    let mut p = policy("");
    let d = p.decide(&view, arrivals);
    apply(&mut view, &d);
    for round in 0..10 {
        let held = holdings(&view);
        assert_eq!((held["alice"], held["bob"]), (1, 3), "round {round}");
        advance(&mut view, QUANTUM);
        let d = p.decide(&view, vec![Event::Tick]);
        apply(&mut view, &d);
    }
    assert!((p.share("alice", "fake").unwrap() - 1.0).abs() < 1e-9);
    assert!((p.share("bob", "fake").unwrap() - 3.0).abs() < 1e-9);
}

#[test]
fn a_gang_gets_all_its_gpus_or_none_and_its_share_over_rounds() {
    // Alice's one job needs all 4 GPUs; bob has four 1-GPU jobs. Her share
    // is 2 GPUs, which her gang cannot take in one round: she gets the
    // whole cluster every other round, bob the rounds between. `apply`
    // fails the test on any partial gang.
    let mut view = FakeView::new(4, 2);
    let arrivals = vec![
        submit(&mut view, "alice", 4),
        submit(&mut view, "bob", 1),
        submit(&mut view, "bob", 1),
        submit(&mut view, "bob", 1),
        submit(&mut view, "bob", 1),
    ];
    let mut p = policy("");
    let got = run(&mut p, &mut view, arrivals, 20);
    assert_eq!((got["alice"], got["bob"]), (40, 40), "{got:?}");

    // A 3-GPU gang beside 1-GPU jobs: it never runs on fewer than 3.
    let mut view = FakeView::new(4, 4);
    let mut arrivals = vec![submit(&mut view, "alice", 3)];
    arrivals.extend((0..4).map(|_| submit(&mut view, "bob", 1)));
    let mut p = policy("");
    let got = run(&mut p, &mut view, arrivals, 20);
    assert!(got["alice"] >= 20 && got["alice"].is_multiple_of(3), "{got:?}");
}

#[test]
fn between_rounds_free_gpus_go_to_the_tenant_furthest_behind_without_preempting() {
    let mut view = FakeView::new(4, 4);
    let mut arrivals: Vec<Event> = (0..4).map(|_| submit(&mut view, "alice", 1)).collect();
    let mut p = policy("");
    let d = p.decide(&view, std::mem::take(&mut arrivals));
    apply(&mut view, &d);
    assert_eq!(holdings(&view)["alice"], 4, "alone, alice takes everything");
    // Bob arrives mid-round: nothing is free, nothing is preempted.
    view.now = 100.0;
    let bob: Vec<Event> = (0..4).map(|_| submit(&mut view, "bob", 1)).collect();
    let d = p.decide(&view, bob);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // One of alice's jobs ends: bob, far below his share, gets the GPU.
    view.now = 200.0;
    view.finish(0);
    let d = p.decide(&view, vec![Event::JobFinished(0)]);
    apply(&mut view, &d);
    assert_eq!(placed_tenants(&view, &d), vec!["bob".to_string()]);
    // At the round's end bob gets his share and is paid back his lag:
    // from 100 s to 600 s he was owed 2 GPUs and held 0, then 1; alice
    // held 2, then 1, more than hers. Their credits are +-1 round of one
    // GPU, so this round bob gets 3 GPUs and alice 1.
    view.now = 600.0;
    let d = p.decide(&view, vec![Event::Tick]);
    apply(&mut view, &d);
    let held = holdings(&view);
    assert_eq!((held["alice"], held["bob"]), (1, 3), "{held:?}");
    view.now = 1200.0;
    let d = p.decide(&view, vec![Event::Tick]);
    apply(&mut view, &d);
    let held = holdings(&view);
    assert_eq!((held["alice"], held["bob"]), (2, 2), "then even: {held:?}");
}

fn placed_tenants(view: &FakeView, d: &Decision) -> Vec<String> {
    wsched_sdk::testing::placed(d)
        .into_iter()
        .map(|id| view.job(id).unwrap().tenant)
        .collect()
}

/// 2 fast and 2 slow GPUs; alice's jobs run 5x faster on the fast ones,
/// bob's 1.2x (with rates, when `rates`).
fn two_kinds(rates: bool) -> (FakeView, Vec<Event>) {
    let mut view = FakeView::new(4, 2);
    view.set_kind(0..2, "fast");
    view.set_kind(2..4, "slow");
    let mut arrivals = Vec::new();
    for (tenant, speedup) in [("alice", 5.0), ("bob", 1.2)] {
        for _ in 0..4 {
            let event = submit(&mut view, tenant, 1);
            if rates {
                let id = view.jobs.len() as JobId - 1;
                view.set_throughput(id, "fast", 1, speedup);
                view.set_throughput(id, "slow", 1, 1.0);
            }
            arrivals.push(event);
        }
    }
    (view, arrivals)
}

/// Per tenant, mean over `rounds` rounds of (fast GPUs held, slow GPUs
/// held, rate: the sum of its running jobs' rates from the view).
fn trading_run(config: &str, rates: bool, rounds: usize) -> (GandivaFair, BTreeMap<String, (f64, f64, f64)>) {
    let (mut view, arrivals) = two_kinds(rates);
    let mut p = policy(config);
    let d = p.decide(&view, arrivals);
    apply(&mut view, &d);
    let mut sums: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for _ in 0..rounds {
        advance(&mut view, QUANTUM);
        let d = p.decide(&view, vec![Event::Tick]);
        apply(&mut view, &d);
        for j in view.jobs.iter().filter(|j| j.state == JobState::Running) {
            let kind = view.gpus[j.placement[0] as usize].kind.clone();
            let rate = view.throughput(j.id, &kind, 1, false).unwrap_or(1.0);
            let s = sums.entry(j.tenant.clone()).or_default();
            if kind == "fast" {
                s.0 += 1.0;
            } else {
                s.1 += 1.0;
            }
            s.2 += rate;
        }
    }
    let n = rounds as f64;
    let means = sums
        .into_iter()
        .map(|(t, (fast, slow, rate))| (t, (fast / n, slow / n, rate / n)))
        .collect();
    (p, means)
}

#[test]
fn tenants_trade_fast_gpus_for_slow_ones_and_both_gain() {
    let (p, traded) = trading_run("", true, 60);
    // Entitlements: alice buys fast GPUs with her slow ones, at 3.1 slow
    // per fast (midway between 5 and 1.2).
    let alice_fast = p.share("alice", "fast").unwrap();
    let bob_slow = p.share("bob", "slow").unwrap();
    assert!(alice_fast > 1.2, "alice's fast share {alice_fast}");
    assert!(bob_slow > 1.9, "bob's slow share {bob_slow}");
    assert!(p.share("alice", "slow").unwrap() < 0.1);
    // What they hold, on average over rounds.
    let (a, b) = (traded["alice"], traded["bob"]);
    assert!(a.0 > 1.1, "alice holds {} fast GPUs on average", a.0);
    assert!(b.1 > 1.5, "bob holds {} slow GPUs on average", b.1);
    // Without trading, each holds one GPU of each kind: alice runs at
    // 5 + 1 = 6, bob at 1.2 + 1 = 2.2. Trading leaves neither worse off.
    let (_, plain) = trading_run("trade=false", true, 60);
    assert!((plain["alice"].2 - 6.0).abs() < 1e-9, "{plain:?}");
    assert!((plain["bob"].2 - 2.2).abs() < 1e-9, "{plain:?}");
    assert!(a.2 >= 6.0, "alice's rate {} with trading", a.2);
    assert!(b.2 >= 2.2, "bob's rate {} with trading", b.2);
    assert!(a.2 + b.2 > 8.2 + 0.5, "the cluster does more work: {} + {}", a.2, b.2);
}

#[test]
fn nothing_is_traded_without_throughputs() {
    let (p, got) = trading_run("", false, 20);
    for tenant in ["alice", "bob"] {
        for kind in ["fast", "slow"] {
            let share = p.share(tenant, kind).unwrap();
            assert!((share - 1.0).abs() < 1e-9, "{tenant} on {kind}: {share}");
        }
        assert_eq!((got[tenant].0, got[tenant].1), (1.0, 1.0), "{got:?}");
    }
}

#[test]
fn hostile_configs_are_refused_and_none_panics() {
    for good in [
        "",
        ";;",
        "tickets=alice:2,bob:1;quantum=600",
        " tickets = alice : 2 , bob:0.5 ; trade = false ",
        "quantum=0.001",
        "tickets=team:a:3",
    ] {
        assert!(GandivaFair::init(good).is_ok(), "{good}");
    }
    let (p, info) = GandivaFair::init("tickets=alice:2;quantum=60").unwrap();
    assert_eq!(info.tick_interval, Some(60.0));
    assert_eq!(p.config.tickets["alice"], 2.0);
    let long = format!(
        "tickets={}",
        (0..3000).map(|i| format!("t{i}:1")).collect::<Vec<_>>().join(",")
    );
    for bad in [
        "quantum=0",
        "quantum=-1",
        "quantum=NaN",
        "quantum=inf",
        "quantum=1e400",
        "quantum=1e300",
        "quantum=",
        "quantum",
        "quantum=1;quantum=2",
        "tickets=alice:0",
        "tickets=alice:-1",
        "tickets=alice:NaN",
        "tickets=alice:inf",
        "tickets=alice:1e7",
        "tickets=alice:1e-320",
        "tickets=alice",
        "tickets=:1",
        "tickets=alice:1,alice:2",
        "tickets=al\u{1}ice:1",
        "trade=yes",
        "speed=2",
        "=",
        &long,
        &"x".repeat(1 << 20),
    ] {
        let err = GandivaFair::init(bad)
            .err()
            .unwrap_or_else(|| panic!("accepted {bad:.40}"));
        assert!(err.starts_with("gandiva_fair:"), "{err}");
        assert!(err.len() < 400, "a short message even for a long config: {err}");
    }
    // Whatever bytes come, an answer, never a panic.
    let mut rng = Rng::new(7);
    let alphabet: Vec<char> = "tickets=quantum;trade:,alice 0123456789.-eEinfNa\u{0}\u{e9}"
        .chars()
        .collect();
    for _ in 0..5000 {
        let len = rng.below(40) as usize;
        let config: String = (0..len).map(|_| rng.pick(&alphabet).unwrap()).collect();
        let _ = GandivaFair::init(&config);
    }
}

#[test]
fn snapshot_round_trips_and_garbage_is_refused() {
    let mut view = FakeView::new(3, 3);
    let mut arrivals: Vec<Event> = (0..4).map(|_| submit(&mut view, "alice", 1)).collect();
    arrivals.extend((0..4).map(|_| submit(&mut view, "bob", 2)));
    let mut p = policy("tickets=alice:2");
    run(&mut p, &mut view, arrivals, 5);
    // The accounts are as of the last decision: hand them over then.
    advance(&mut view, 100.0);
    p.decide(&view, Vec::new());
    let snap = p.snapshot().unwrap();

    // A takeover: a fresh instance, the accounts handed over, every live
    // job announced again. It decides what the old one would have.
    let mut q = policy("tickets=alice:2");
    q.restore(&snap).unwrap();
    let replay: Vec<Event> = view
        .jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Pending | JobState::Running | JobState::Suspended))
        .map(|j| Event::JobArrived(j.clone()))
        .collect();
    q.decide(&view, replay);
    advance(&mut view, 500.0);
    let (dp, dq) = (p.decide(&view, vec![Event::Tick]), q.decide(&view, vec![Event::Tick]));
    assert_eq!(format!("{:?}", dp.actions), format!("{:?}", dq.actions));
    assert_eq!(p.totals("alice"), q.totals("alice"));

    let mut fresh = policy("");
    fresh.restore(&snap).unwrap();
    assert_eq!(
        fresh.snapshot().unwrap(),
        snap,
        "restore then snapshot gives the same bytes"
    );

    // Garbage, another policy's state, a later version, a cut or padded
    // snapshot, lying counts, non-finite credits: refused, state untouched.
    let mut other = Encoder::default();
    other.u64(u64::from_le_bytes(*b"GAVELsnp")).u64(1);
    let mut future = Encoder::default();
    future.u64(MAGIC).u64(VERSION + 1);
    let mut lying = Encoder::default();
    lying.u64(MAGIC).u64(VERSION).f64(600.0).u64(u64::MAX);
    let mut nan = Encoder::default();
    nan.u64(MAGIC).u64(VERSION).f64(600.0).u64(1).bytes(b"fake").u64(1);
    nan.bytes(b"alice").f64(1.0).f64(1.0).f64(f64::NAN);
    let mut bad_utf8 = Encoder::default();
    bad_utf8
        .u64(MAGIC)
        .u64(VERSION)
        .f64(600.0)
        .u64(1)
        .bytes(&[0xff, 0xfe])
        .u64(0);
    let mut padded = snap.clone();
    padded.push(0);
    let cases: Vec<&[u8]> = vec![
        b"",
        b"garbage!",
        &other.0,
        &future.0,
        &lying.0,
        &nan.0,
        &bad_utf8.0,
        &snap[..snap.len() - 3],
        &padded,
    ];
    let before = fresh.snapshot().unwrap();
    for bad in cases {
        let err = fresh.restore(bad).unwrap_err();
        assert!(err.starts_with("gandiva_fair:"), "{err}");
    }
    assert_eq!(fresh.snapshot().unwrap(), before);
    // Random corruption: an answer, never a panic.
    let mut rng = Rng::new(3);
    for _ in 0..3000 {
        let mut bytes = snap.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] = rng.below(256) as u8;
        }
        bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize);
        let _ = policy("").restore(&bytes);
    }
}

/// Carry out a decision, refusing some actions at random (`refuse` in
/// 1/n, 0: none) and every one the host would refuse; returns the
/// rejections. In a batch where nothing was refused before, an invalid
/// action is the policy's fault and fails the test.
fn apply_some(view: &mut FakeView, d: &Decision, rng: &mut Rng, refuse: u64) -> Vec<Event> {
    let mut rejected = Vec::new();
    for (index, a) in d.actions.iter().enumerate() {
        let job = match a {
            Action::Preempt(id) => *id,
            Action::Start(p) | Action::Resume(p) => p.job,
            other => panic!("unexpected {other:?}"),
        };
        let valid = check(view, a);
        if let Err(why) = &valid
            && rejected.is_empty()
        {
            panic!("{why}: {a:?} in {:?}", d.actions);
        }
        if valid.is_err() || (refuse > 0 && rng.below(refuse) == 0) {
            rejected.push(Event::ActionRejected(Rejection {
                index: index as u32,
                job,
                reason: "refused by the test".into(),
            }));
            continue;
        }
        carry_out(view, a);
    }
    rejected
}

/// After a decision nothing was refused in, no waiting job fits the free
/// GPUs: on one kind, or over several for a gang larger than every kind.
fn assert_work_conserving(view: &FakeView, context: &str) {
    let mut cap: BTreeMap<&str, u32> = BTreeMap::new();
    let mut free: BTreeMap<&str, u32> = BTreeMap::new();
    for g in view.gpus.iter().filter(|g| g.online) {
        *cap.entry(&g.kind).or_default() += 1;
        if g.residents.is_empty() {
            *free.entry(&g.kind).or_default() += 1;
        }
    }
    let most = cap.values().copied().max().unwrap_or(0);
    let free_total: u32 = free.values().sum();
    for j in &view.jobs {
        if !matches!(j.state, JobState::Pending | JobState::Suspended) || j.gpus_requested == 0 {
            continue;
        }
        let fits = if j.gpus_requested <= most {
            free.values().any(|&f| f >= j.gpus_requested)
        } else {
            j.gpus_requested <= free_total
        };
        assert!(
            !fits,
            "{context}: job {} ({} GPUs) waits beside {free:?} free",
            j.id, j.gpus_requested
        );
    }
}

/// Random arrivals (several tenants, gangs of 1 to 8), completions,
/// failures, ticks, the host's own preemptions, GPUs going and coming and
/// takeovers, on clusters of one to three kinds with and without rates:
/// every action is valid, no GPU is ever given twice, and no waiting job
/// is left beside free GPUs it fits.
#[test]
fn random_events_never_double_book_a_gpu_or_idle_one_that_work_could_use() {
    for seed in 1..=120u64 {
        let mut rng = Rng::new(seed);
        let refuse = if seed % 2 == 0 { 0 } else { 15 };
        let gpus = 2 + rng.below(15) as u32;
        let mut view = FakeView::new(gpus, 1 + rng.below(4) as u32);
        let kinds = ["a", "b", "c"];
        let n_kinds = 1 + rng.below(3) as u32;
        for g in 0..gpus {
            view.set_kind(g..g + 1, kinds[(g * n_kinds / gpus) as usize]);
        }
        let config = ["", "tickets=t0:3,t1:1;quantum=300", "trade=false"][rng.below(3) as usize];
        let mut p = policy(config);
        let mut events: Vec<Event> = Vec::new();
        for step in 0..400 {
            for _ in 0..1 + rng.below(3) {
                match rng.below(20) {
                    0..=6 => {
                        let tenant = format!("t{}", rng.below(4));
                        let size = [1, 1, 1, 2, 2, 3, 4, 8][rng.below(8) as usize];
                        events.push(submit(&mut view, &tenant, size));
                        let id = view.jobs.len() as JobId - 1;
                        if rng.below(3) > 0 {
                            for kind in kinds {
                                let rate = 0.5 + rng.below(40) as f64 / 8.0;
                                view.set_throughput(id, kind, size, rate);
                            }
                        }
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
                        advance(&mut view, 1.0 + rng.below(600) as f64);
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
                    18 => {
                        let snap = p.snapshot().unwrap();
                        p = policy(config);
                        p.restore(&snap).unwrap();
                        events.clear();
                        for j in &view.jobs {
                            if matches!(j.state, JobState::Pending | JobState::Running | JobState::Suspended) {
                                events.push(Event::JobArrived(j.clone()));
                            }
                        }
                    }
                    _ => advance(&mut view, rng.below(100) as f64),
                }
            }
            let d = p.decide(&view, std::mem::take(&mut events));
            events = apply_some(&mut view, &d, &mut rng, refuse);
            for g in &view.gpus {
                assert!(g.residents.len() <= 1, "seed {seed}, step {step}: GPU {} shared", g.id);
            }
            if events.is_empty() {
                assert_work_conserving(&view, &format!("seed {seed}, step {step}"));
            }
        }
    }
}
