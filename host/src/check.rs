//! `wsched policy check`: tell a plugin author, before any cluster sees
//! the plugin, whether it keeps the contract.
//!
//! The plugin runs under the production limits through a fixed set of
//! scenarios that cover what real clusters throw at a policy: bursts of
//! arrivals, a full cluster, gangs bigger than the free GPUs, a GPU going
//! away, taking over jobs another policy started, and handing its state
//! over on a hot swap. A scenario passes when the plugin never faults,
//! every action it returns is valid, and no job is left stuck (so the host
//! never had to eject it). Failures name the offending action and why.

use crate::cluster::{Cluster, JobSpec};
use crate::engine::{Engine, Plugin};
use crate::scheduler::{ActivePolicy, Outcome, PolicyHost};
use crate::sim::{self, PolicyChoice, SimConfig};
use crate::trace::TraceJob;
use crate::wit::{Action, Event, JobState};

/// How one scenario went.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioReport {
    /// Short name.
    pub name: &'static str,
    /// What it exercises.
    pub what: &'static str,
    /// Problems found; empty when it passed.
    pub problems: Vec<String>,
    /// Policy calls made.
    pub calls: u64,
}

impl ScenarioReport {
    fn failed(name: &'static str, what: &'static str, problem: String) -> Self {
        ScenarioReport {
            name,
            what,
            problems: vec![problem],
            calls: 0,
        }
    }

    fn of_host(name: &'static str, what: &'static str, problems: Vec<String>, host: &PolicyHost) -> Self {
        ScenarioReport {
            name,
            what,
            problems,
            calls: host.stats().calls,
        }
    }

    /// Whether the plugin passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The whole check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The plugin's name as loaded.
    pub plugin: String,
    /// The policy's own name, from init.
    pub policy: String,
    /// Interfaces it exports (the world it implements, with version).
    pub exports: Vec<String>,
    /// Interfaces it imports.
    pub imports: Vec<String>,
    /// Component size in bytes.
    pub size: usize,
    /// Compile time (or cache load time) in milliseconds.
    pub compile_ms: f64,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Median time per decision call on a steady replay, microseconds.
    pub call_p50_us: f64,
    /// 99th percentile of the same, microseconds.
    pub call_p99_us: f64,
}

impl CheckReport {
    /// Whether every scenario passed.
    pub fn passed(&self) -> bool {
        self.scenarios.iter().all(ScenarioReport::passed)
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "plugin    {} (policy `{}`)", self.plugin, self.policy)?;
        writeln!(f, "exports   {}", self.exports.join(", "))?;
        writeln!(f, "imports   {}", self.imports.join(", "))?;
        let how = if self.from_cache {
            "loaded from the compile cache"
        } else {
            "compiled"
        };
        writeln!(f, "size      {} bytes, {how} in {:.1} ms", self.size, self.compile_ms)?;
        writeln!(
            f,
            "per call  p50 {:.1} µs, p99 {:.1} µs",
            self.call_p50_us, self.call_p99_us
        )?;
        writeln!(f)?;
        for s in &self.scenarios {
            let verdict = if s.passed() { "pass" } else { "FAIL" };
            writeln!(f, "{verdict}  {:<22} {} ({} calls)", s.name, s.what, s.calls)?;
            for p in &s.problems {
                writeln!(f, "        - {p}")?;
            }
        }
        let failed = self.scenarios.iter().filter(|s| !s.passed()).count();
        writeln!(f)?;
        if failed == 0 {
            writeln!(f, "{} passed, 0 failed", self.scenarios.len())
        } else {
            writeln!(f, "{} passed, {failed} failed", self.scenarios.len() - failed)
        }
    }
}

/// Run every scenario against `plugin` initialised with `config`.
/// Errors only when the plugin cannot be instantiated at all.
pub fn check(engine: &Engine, plugin: &Plugin, config: &str) -> anyhow::Result<CheckReport> {
    let probe = engine
        .instantiate(plugin, config, 0.0)
        .map_err(|e| anyhow::anyhow!("{}: {e}", plugin.name()))?;
    let policy = probe.info().name.clone();
    drop(probe);
    let choice = PolicyChoice {
        plugin: plugin.clone(),
        config: config.to_string(),
    };
    let mut scenarios = Vec::new();

    let replays: [(&'static str, &'static str, u32, u32, Vec<TraceJob>); 3] = [
        (
            "arrivals-and-finishes",
            "jobs of 1-4 GPUs arrive over time on 8 GPUs",
            8,
            4,
            steady_trace(),
        ),
        ("full-cluster", "40 jobs arrive at once on 4 GPUs", 4, 4, burst_trace()),
        (
            "big-gangs",
            "gangs larger than the free GPUs, on 8 GPUs in 2 nodes",
            8,
            4,
            gang_trace(),
        ),
    ];
    for (name, what, gpus, per_node, trace) in replays {
        let config = SimConfig::with_gpus(gpus, per_node)?;
        let mut problems = Vec::new();
        let mut observe = |t: f64, outcome: &Outcome| {
            for (action, r) in &outcome.rejected {
                problems.push(format!("t={t}: rejected {}: {}", describe(action), r.reason));
            }
        };
        let report = match sim::simulate_observed(engine, Some(&choice), &[], &trace, &config, &mut observe) {
            Ok(result) => {
                let s = &result.summary;
                problems.extend(s.faults.iter().cloned());
                if s.ejections > 0 {
                    problems.push("the plugin was ejected; the built-in FIFO finished its jobs".to_string());
                }
                if s.completed + s.refused_at_submission != s.jobs {
                    problems.push(format!("{} of {} jobs never finished", s.jobs - s.completed, s.jobs));
                }
                ScenarioReport {
                    name,
                    what,
                    problems,
                    calls: s.policy_calls,
                }
            }
            Err(e) => ScenarioReport::failed(name, what, format!("{e:#}")),
        };
        scenarios.push(report);
    }
    scenarios.push(gpu_goes_away(engine, plugin, config));
    scenarios.push(takeover(engine, plugin, config));
    scenarios.push(snapshot_round_trip(engine, plugin, config));

    // Per-call time from a longer replay: the steady mix, five times over.
    let long: Vec<TraceJob> = (0..5)
        .flat_map(|k| {
            steady_trace().into_iter().map(move |mut j| {
                j.submit += k as f64 * 2000.0;
                j
            })
        })
        .collect();
    let config8 = SimConfig::with_gpus(8, 4)?;
    let timing = sim::simulate(engine, Some(&choice), &[], &long, &config8)?.timing;
    Ok(CheckReport {
        plugin: plugin.name().to_string(),
        policy,
        exports: plugin.exports().to_vec(),
        imports: plugin.imports().to_vec(),
        size: plugin.size(),
        compile_ms: plugin.compile_time().as_secs_f64() * 1000.0,
        from_cache: plugin.from_cache(),
        scenarios,
        call_p50_us: timing.call_p50_us,
        call_p99_us: timing.call_p99_us,
    })
}

fn describe(action: &Action) -> String {
    match action {
        Action::Start(p) | Action::Resume(p) | Action::Migrate(p) | Action::Resize(p) => {
            format!("{}(job {}, gpus {:?})", action.kind(), p.job, p.gpus)
        }
        Action::Share(s) => format!("share(job {}, gpus {:?}, fraction {})", s.job, s.gpus, s.fraction),
        Action::Preempt(id) => format!("preempt(job {id})"),
        Action::SetPriority((id, w)) => format!("set-priority(job {id}, {w})"),
    }
}

fn job(line: usize, submit: f64, duration: f64, gpus: u32) -> TraceJob {
    TraceJob {
        line,
        submit,
        duration,
        gpus,
        tenant: format!("t{}", line % 3),
        share: None,
        job_type: None,
    }
}

/// A deterministic mix of gang sizes and durations over time.
fn steady_trace() -> Vec<TraceJob> {
    (0..60)
        .map(|i| {
            job(
                i + 2,
                (i * 37 % 400) as f64,
                (50 + i * 131 % 900) as f64,
                [1, 1, 2, 4][i % 4],
            )
        })
        .collect()
}

fn burst_trace() -> Vec<TraceJob> {
    (0..40)
        .map(|i| job(i + 2, 0.0, (20 + i * 53 % 300) as f64, [1, 2, 1, 4, 3][i % 5]))
        .collect()
}

fn gang_trace() -> Vec<TraceJob> {
    vec![
        job(2, 0.0, 1000.0, 6),
        job(3, 10.0, 200.0, 4),
        job(4, 20.0, 100.0, 8),
        job(5, 30.0, 50.0, 1),
        job(6, 40.0, 500.0, 3),
    ]
}

/// Problems a host-driven scenario ran into: faults, rejections, ejection.
fn host_problems(host: &PolicyHost, outcomes: &[Outcome]) -> Vec<String> {
    let mut problems: Vec<String> = host.stats().faults.clone();
    for o in outcomes {
        for (action, r) in &o.rejected {
            problems.push(format!("rejected {}: {}", describe(action), r.reason));
        }
    }
    if matches!(host.active(), ActivePolicy::Native(_)) {
        problems.push("the plugin was ejected".to_string());
    }
    problems
}

/// Run decisions, finishing every running job between them, until nothing
/// is live or `rounds` is reached.
fn drain(host: &mut PolicyHost, outcomes: &mut Vec<Outcome>, rounds: usize) {
    for _ in 0..rounds {
        if host.cluster().live_jobs() == 0 {
            return;
        }
        let t = host.cluster().now() + 100.0;
        host.advance(t);
        let running: Vec<u64> = host.cluster().running_ids().iter().copied().collect();
        for id in running {
            host.finish(id);
        }
        if !host.has_events() {
            host.tick();
        }
        outcomes.push(host.decide());
    }
}

fn gpu_goes_away(engine: &Engine, plugin: &Plugin, config: &str) -> ScenarioReport {
    let (name, what) = (
        "gpu-goes-away",
        "a GPU holding a job goes offline; nothing may land on it",
    );
    let mut outcomes = Vec::new();
    let instance = match engine.instantiate(plugin, config, 0.0) {
        Ok(i) => i,
        Err(e) => return ScenarioReport::failed(name, what, e.to_string()),
    };
    let mut host = PolicyHost::with_plugin(engine.clone(), Cluster::homogeneous(4, 2, "test", 16 << 30), instance);
    for _ in 0..6 {
        let _ = host.submit(JobSpec::new("t", 1, 100.0));
    }
    outcomes.push(host.decide());
    let victim_gpu = host
        .cluster()
        .gpus()
        .iter()
        .find(|g| !g.residents.is_empty())
        .map(|g| g.id)
        .unwrap_or(0);
    host.set_gpu_online(victim_gpu, false);
    outcomes.push(host.decide());
    drain(&mut host, &mut outcomes, 20);
    let mut problems = host_problems(&host, &outcomes);
    if host
        .cluster()
        .gpus()
        .get(victim_gpu as usize)
        .is_some_and(|g| !g.residents.is_empty())
    {
        problems.push(format!("a job was placed on offline gpu {victim_gpu}"));
    }
    let stuck = host.cluster().live_jobs();
    if stuck > 0 {
        problems.push(format!("{stuck} job(s) still waiting after 20 rounds with 3 GPUs free"));
    }
    ScenarioReport::of_host(name, what, problems, &host)
}

fn takeover(engine: &Engine, plugin: &Plugin, config: &str) -> ScenarioReport {
    let (name, what) = (
        "takeover",
        "take over running, suspended and waiting jobs from another policy",
    );
    let mut outcomes = Vec::new();
    let mut host = PolicyHost::new(engine.clone(), Cluster::homogeneous(4, 4, "test", 16 << 30));
    for gpus in [2, 1, 1, 2, 4] {
        let _ = host.submit(JobSpec::new("t", gpus, 300.0));
    }
    host.decide(); // the built-in FIFO starts some
    // Leave a job suspended, as a preempting policy would have.
    host.set_gpu_online(0, false);
    host.set_gpu_online(0, true);
    let next = match engine.instantiate(plugin, config, host.cluster().now()) {
        Ok(i) => i,
        Err(e) => return ScenarioReport::failed(name, what, e.to_string()),
    };
    let mut problems = Vec::new();
    if let Err(e) = host.swap(next) {
        problems.push(e.to_string());
    }
    outcomes.push(host.decide());
    drain(&mut host, &mut outcomes, 20);
    problems.extend(host_problems(&host, &outcomes));
    let waiting = host.cluster().ids_in(JobState::Pending).len() + host.cluster().ids_in(JobState::Suspended).len();
    if waiting > 0 {
        problems.push(format!("{waiting} job(s) never started after the takeover"));
    }
    ScenarioReport::of_host(name, what, problems, &host)
}

fn snapshot_round_trip(engine: &Engine, plugin: &Plugin, config: &str) -> ScenarioReport {
    let name = "snapshot-restore";
    let mut what = "hand its state to a fresh instance of itself on a hot swap";
    let fail = |p: String| ScenarioReport::failed(name, what, p);
    let mut problems = Vec::new();

    // The round trip itself: a snapshot taken with jobs known and some
    // service given must be accepted by a fresh instance of the same plugin.
    let (mut first, mut second) = match (
        engine.instantiate(plugin, config, 0.0),
        engine.instantiate(plugin, config, 0.0),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
    };
    let mut cluster = Cluster::homogeneous(2, 2, "test", 16 << 30);
    let ids: Vec<u64> = (0..4)
        .filter_map(|_| cluster.submit(JobSpec::new("t", 1, 500.0)).ok())
        .collect();
    let arrivals: Vec<Event> = ids
        .iter()
        .filter_map(|&id| cluster.job_info(id))
        .map(Event::JobArrived)
        .collect();
    let rounds = [arrivals, vec![Event::Tick]];
    for (i, events) in rounds.iter().enumerate() {
        match first.decide(&mut cluster, events) {
            Ok(decision) => {
                for action in &decision.actions {
                    if let Err(reason) = cluster.apply(action) {
                        problems.push(format!("rejected {}: {reason}", describe(action)));
                    }
                }
            }
            Err(fault) => problems.push(format!("call {}: {fault}", i + 1)),
        }
        cluster.advance(cluster.now() + 400.0);
    }
    match first.snapshot(cluster.now()) {
        Ok(Some(state)) => match second.restore(&state, cluster.now()) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => problems.push(format!("refused its own snapshot: {why}")),
            Err(fault) => problems.push(format!("faulted restoring its own snapshot: {fault}")),
        },
        Ok(None) => what = "hand state over on a hot swap (it keeps none)",
        Err(fault) => problems.push(format!("faulted taking a snapshot: {fault}")),
    }

    // And through the host: swap mid-run, then finish the work.
    let (a, b) = match (
        engine.instantiate(plugin, config, 0.0),
        engine.instantiate(plugin, config, 0.0),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e.to_string()),
    };
    let mut outcomes = Vec::new();
    let mut host = PolicyHost::with_plugin(engine.clone(), Cluster::homogeneous(2, 2, "test", 16 << 30), a);
    for _ in 0..4 {
        let _ = host.submit(JobSpec::new("t", 1, 500.0));
    }
    outcomes.push(host.decide());
    host.advance(400.0);
    host.tick();
    outcomes.push(host.decide());
    if let Err(e) = host.swap(b) {
        problems.push(e.to_string());
    }
    outcomes.push(host.decide());
    drain(&mut host, &mut outcomes, 20);
    problems.extend(host_problems(&host, &outcomes));
    if host.cluster().live_jobs() > 0 {
        problems.push(format!(
            "{} job(s) never finished after the swap",
            host.cluster().live_jobs()
        ));
    }
    ScenarioReport::of_host(name, what, problems, &host)
}
