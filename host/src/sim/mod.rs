//! Trace replay on a discrete-event clock.
//!
//! The simulator is the service's decision loop ([`DecisionLoop`]: the same
//! phases, ticks, wake-ups, watchdog, strikes and swaps) on a virtual clock,
//! with the cluster model as its backend ([`EmulatedBackend`]), so a policy
//! sees the same history in both. Time jumps from one event to the next (an
//! arrival, a completion, a tick, a wake-up the policy asked for, a
//! scheduled hot swap), so a three-month trace replays in about a second
//! and the result depends only on the inputs.
//!
//! Rules, chosen to match how the papers' simulators count:
//! - jobs arrive in submission order, ties in file order; a job asking for
//!   more GPUs than the cluster has is refused at submission and counted;
//! - at one instant, completions free GPUs before arrivals are seen, and
//!   the policy gets everything that happened at that instant in one call
//!   (again while its own answer raises events, such as rejections, up to
//!   a bound);
//! - a policy that asks for a tick gets one every interval while jobs are
//!   live, none while the cluster is empty (the first comes an interval
//!   after work returns);
//! - a job progresses at (GPUs held x share) / GPUs asked for, so alone on
//!   its full gang it finishes after exactly its trace duration, and a
//!   preempted job keeps its progress;
//! - if the policy leaves jobs waiting with nothing running and no way to
//!   be called again, that is a stall: the plugin is ejected (as sched_ext's
//!   watchdog does) and the built-in FIFO finishes the work. So it is when
//!   it lets 1,000 decisions in a row pass with nothing running while a
//!   waiting job fits, or spends 100,000 calls of its own ticks and
//!   wake-ups changing nothing (the scheduler's watchdog, shared with the
//!   service).

mod metrics;
mod report;
mod sweep;

pub use metrics::{Distribution, Fairness, JobRecord, SimResult, Summary, Timing};
pub use report::{Comparison, Table, labels, write_comparison, write_outputs};
pub use sweep::{LOAD_SCALE_RANGE, SweepRun, SweepTable, parallel_map, scale_load, workers, write_sweep};

use crate::backend::emulated::EmulatedBackend;
use crate::cluster::{Cluster, JobSpec};
use crate::decision::DecisionLoop;
use crate::engine::{Engine, Fault, Plugin};
use crate::scheduler::{ActivePolicy, Outcome, PolicyHost, StallRule};
use crate::topology::{Topology, TopologyError};
use crate::trace::TraceJob;
use std::time::Instant;

/// The cluster and options of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The cluster: its nodes and their GPUs (64 V100s of 16 GiB, 8 to
    /// a node, by default).
    pub cluster: Topology,
    /// Tell policies each job's trace duration as `expected-duration`
    /// (an oracle, as SJF-style baselines in the papers assume).
    pub reveal_durations: bool,
    /// Told how many more trace jobs are done (finished or refused) as the
    /// replay goes, for a progress display; none by default.
    pub progress: Option<ProgressHook>,
    /// GPUs that go offline during the replay (failures, maintenance).
    pub outages: Vec<GpuOutage>,
    /// What a restart (a resume, a migration, a resize) costs a job before
    /// it progresses again; free by default (see
    /// [`crate::cluster::RestartCost`]).
    pub restart_cost: crate::cluster::RestartCost,
    /// How jobs sharing a GPU progress (see
    /// [`crate::cluster::Colocation`]): time-sliced by default.
    pub colocation: crate::cluster::Colocation,
    /// Speed of a gang spread over nodes where the table has no slower
    /// figure (see [`crate::cluster::Cluster::set_spread_penalty`]).
    pub spread_penalty: Option<f64>,
    /// Round-based replay, as Gavel's simulator does it: arrivals are
    /// admitted, and the policy decides, only at multiples of this many
    /// seconds after the first submission; jobs still end at their exact
    /// times, so GPUs they free idle until the round ends. None (the
    /// default): event-exact. For comparing with round-based simulators.
    pub rounds: Option<f64>,
    /// Measured throughputs: each job gets a type (see
    /// [`crate::speed::ThroughputTable::pick_type`]) and runs at its type's
    /// speed on the GPUs it holds. None: every job runs at the same speed
    /// on every kind, linear in GPUs.
    pub speed: Option<SpeedModel>,
}

/// A throughput table and how jobs are typed from it.
#[derive(Debug, Clone)]
pub struct SpeedModel {
    /// The table.
    pub table: std::sync::Arc<crate::speed::ThroughputTable>,
    /// The GPU kind trace durations were measured on (with each job's
    /// requested gang): there jobs run as without a table.
    pub reference: String,
    /// Seeds the types jobs are given.
    pub seed: u64,
}

/// A callback told, as a replay goes, how many more of its trace's jobs are
/// done (finished or refused at submission). The command line draws its
/// progress bar with it; the library draws nothing.
#[derive(Clone)]
pub struct ProgressHook(pub std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// A GPU offline from `from` until `until` (for good when `None`), in
/// seconds after the first submission. Its jobs are suspended, keeping
/// their progress, and the policy hears `job-preempted` and `gpu-changed`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOutage {
    /// The GPU.
    pub gpu: u32,
    /// When it goes offline.
    pub from: f64,
    /// When it comes back, if it does.
    pub until: Option<f64>,
}

/// The GPU kind of `--gpus N` shorthand clusters.
pub const DEFAULT_GPU_KIND: &str = "V100";

/// The memory of each GPU of `--gpus N` shorthand clusters.
pub const DEFAULT_GPU_MEMORY: u64 = 16 << 30;

impl SimConfig {
    /// The default options on `gpus` GPUs of the default kind, `per_node`
    /// to a node (what `--gpus N --gpus-per-node K` means).
    pub fn with_gpus(gpus: u32, per_node: u32) -> Result<SimConfig, TopologyError> {
        Ok(SimConfig {
            cluster: Topology::homogeneous(gpus, per_node, DEFAULT_GPU_KIND, DEFAULT_GPU_MEMORY)?,
            ..SimConfig::default()
        })
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cluster: Topology::homogeneous(64, 8, DEFAULT_GPU_KIND, DEFAULT_GPU_MEMORY)
                .expect("the default cluster is within bounds"),
            reveal_durations: true,
            progress: None,
            outages: Vec::new(),
            restart_cost: crate::cluster::RestartCost::default(),
            colocation: crate::cluster::Colocation::default(),
            spread_penalty: None,
            rounds: None,
            speed: None,
        }
    }
}

/// A policy to run: a compiled plugin and its configuration string.
#[derive(Debug, Clone)]
pub struct PolicyChoice {
    /// The compiled plugin.
    pub plugin: Plugin,
    /// Its configuration string.
    pub config: String,
}

/// A hot swap to perform during the replay.
#[derive(Debug, Clone)]
pub struct ScheduledSwap {
    /// Seconds after the first submission.
    pub at: f64,
    /// The policy to switch to.
    pub policy: PolicyChoice,
}

/// Replay `trace` through `policy` (the built-in FIFO when `None`).
/// Fails only when the initial policy cannot be loaded.
pub fn simulate(
    engine: &Engine,
    policy: Option<&PolicyChoice>,
    swaps: &[ScheduledSwap],
    trace: &[TraceJob],
    config: &SimConfig,
) -> anyhow::Result<SimResult> {
    simulate_observed(engine, policy, swaps, trace, config, &mut |_, _| {})
}

/// [`simulate`], calling `observe(time, outcome)` after every decision
/// (the conformance check uses it to report each rejected action).
pub fn simulate_observed(
    engine: &Engine,
    policy: Option<&PolicyChoice>,
    swaps: &[ScheduledSwap],
    trace: &[TraceJob],
    config: &SimConfig,
    observe: &mut dyn FnMut(f64, &Outcome),
) -> anyhow::Result<SimResult> {
    let started = Instant::now();
    // GPU state changes, in time order: (time, gpu, online).
    let mut gpu_changes: Vec<(f64, u32, bool)> = Vec::new();
    for o in &config.outages {
        let gpus = config.cluster.gpus();
        if o.gpu >= gpus {
            anyhow::bail!("outage of gpu {}: the cluster has {gpus} GPUs (ids 0..{gpus})", o.gpu);
        }
        gpu_changes.push((o.from, o.gpu, false));
        gpu_changes.extend(o.until.map(|u| (u, o.gpu, true)));
    }
    gpu_changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut next_change = 0;
    let mut cluster = Cluster::new(config.cluster.gpu_specs());
    if let Some(model) = &config.speed
        && !cluster.set_speed_model(model.table.clone(), &model.reference)
    {
        anyhow::bail!(
            "the throughput table has no GPU kind {} to measure trace durations on",
            crate::bounds::shown(&model.reference)
        );
    }
    if !cluster.set_restart_model(config.restart_cost) {
        anyhow::bail!(
            "restart cost: must be a number from 0 to {:e}, got {:?}",
            crate::bounds::MAX_JOB_SECONDS,
            config.restart_cost
        );
    }
    if !cluster.set_spread_penalty(config.spread_penalty) {
        anyhow::bail!("spread penalty: must be in [0.01, 1], got {:?}", config.spread_penalty);
    }
    if !cluster.set_colocation(config.colocation) {
        anyhow::bail!("interference: must be in [0.01, 1], got {:?}", config.colocation);
    }
    let mut host = match policy {
        Some(p) => {
            let instance = engine
                .instantiate(&p.plugin, &p.config, 0.0)
                .map_err(|e| anyhow::anyhow!("policy {}: {e}", p.plugin.name()))?;
            PolicyHost::with_plugin(engine.clone(), cluster, instance)
        }
        None => PolicyHost::new(engine.clone(), cluster),
    };
    host.set_stall_rule(StallRule::SIMULATION);
    if let Some(r) = config.rounds
        && !(r.is_finite() && (1e-3..=crate::bounds::MAX_JOB_SECONDS).contains(&r))
    {
        anyhow::bail!(
            "rounds: must be seconds from 0.001 to {:e}, got {r}",
            crate::bounds::MAX_JOB_SECONDS
        );
    }
    // The round boundary at or after `t` (always computed as `k * round`,
    // so that a time is a boundary exactly when it equals its own).
    let boundary = |t: f64| match config.rounds {
        Some(r) => (t / r - 1e-9).ceil().max(0.0) * r,
        None => t,
    };
    // A boundary the loop must visit to decide: something happened since
    // the last decision, between boundaries.
    let mut decision_due: Option<f64> = None;
    let initial_policy = host.active().name().to_string();
    // The one decision loop (the service's), on the virtual clock with the
    // model as its backend; a simulated second costs nothing, so timer
    // calls are not spaced out.
    let mut rt = DecisionLoop::new(host, EmulatedBackend);
    rt.set_timer_gap(0.0);

    // Submission order: by time, ties in file order (a stable sort keeps it).
    let mut order: Vec<usize> = (0..trace.len()).collect();
    order.sort_by(|&a, &b| trace[a].submit.total_cmp(&trace[b].submit));
    let origin = order.first().map(|&i| trace[i].submit).unwrap_or(0.0);

    let done = |n: u64| {
        if let Some(hook) = &config.progress
            && n > 0
        {
            (hook.0)(n);
        }
    };
    let mut next_arrival = 0;
    // Job types measured for each gang size on the reference kind, found
    // once per size rather than once per job.
    let mut type_candidates: std::collections::HashMap<u32, Vec<u16>> = std::collections::HashMap::new();
    let mut next_swap = 0;
    let mut trace_of: Vec<usize> = Vec::with_capacity(trace.len()); // job id -> trace index
    let mut refused = Vec::new();
    let mut utilisation = vec![(0.0, 0.0)];
    let mut swap_log = Vec::new();

    loop {
        let now = rt.host().cluster().now();
        let arrival = order.get(next_arrival).map(|&i| boundary(trace[i].submit - origin));
        let swap = swaps.get(next_swap).map(|s| s.at.max(now));
        let change = gpu_changes.get(next_change).map(|c| c.0.max(now));
        // Completions, the policy's wake-up and its tick (in rounds: the
        // completions at their times, timers at the round they fall in).
        let due = match config.rounds {
            None => rt.next_due(),
            Some(_) => [
                rt.host().cluster().next_completion(),
                rt.next_due().map(|d| boundary(d.max(now))),
                decision_due,
            ]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp),
        };
        let Some(t) = [arrival, due, swap, change]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
        else {
            let waiting = rt.host().cluster().live_jobs();
            if waiting == 0 {
                break;
            }
            if !matches!(rt.host().active(), ActivePolicy::Native(_)) && rt.host().cluster().idles_with_work() {
                // Nothing will ever call the policy again, yet work waits.
                rt.host_mut().eject(Fault::Stall(format!(
                    "{waiting} job(s) waiting at t={now}s with no job running, nothing left to arrive and no wake-up asked"
                )));
                let mut step = rt.begin(now);
                rt.decide(&mut step);
                for outcome in &step.outcomes {
                    observe(now, outcome);
                }
                if rt.host().cluster().next_completion().is_some() {
                    continue;
                }
            }
            // Not even the built-in FIFO can place them (GPUs went offline
            // for good): report them as unfinished rather than spin.
            tracing::warn!(
                at = now,
                waiting,
                "jobs left unfinished: not enough GPUs online to run them"
            );
            break;
        };

        // Completions first: they free GPUs for this instant's arrivals.
        let mut step = rt.begin(t);
        done(step.ended.len() as u64);

        while let Some(&i) = order.get(next_arrival) {
            let job = &trace[i];
            if boundary(job.submit - origin) > t {
                break;
            }
            next_arrival += 1;
            let mut spec = JobSpec::new(job.tenant.clone(), job.gpus, job.duration);
            spec.share_requested = job.share;
            if let Some(model) = &config.speed
                && job.job_type.is_none()
            {
                let candidates = type_candidates
                    .entry(job.gpus)
                    .or_insert_with(|| model.table.types_on(&model.reference, job.gpus));
                spec.job_type = crate::speed::ThroughputTable::pick_type(candidates, model.seed, job.line);
            } else {
                // A trace that names its types (Gavel's), resolved in the table.
                spec.job_type = job.job_type;
            }
            if !config.reveal_durations {
                spec.expected_duration = None;
            }
            match rt.submit(spec) {
                Ok(id) => {
                    debug_assert_eq!(id as usize, trace_of.len());
                    trace_of.push(i);
                }
                Err(reason) => {
                    tracing::debug!(line = job.line, %reason, "job refused at submission");
                    refused.push(i);
                    done(1);
                }
            }
        }

        while let Some(&(at, gpu, online)) = gpu_changes.get(next_change) {
            if at > t {
                break;
            }
            next_change += 1;
            let suspended = rt.set_gpu_online(gpu, online);
            tracing::debug!(at = t, gpu, online, ?suspended, "gpu state change");
        }

        while let Some(s) = swaps.get(next_swap) {
            if s.at > t {
                break;
            }
            next_swap += 1;
            let outcome = rt
                .host()
                .prepare(&s.policy.plugin, &s.policy.config)
                .map_err(|e| e.to_string())
                .and_then(|next| rt.host_mut().swap(next).map_err(|e| e.to_string()));
            match &outcome {
                Ok(r) => tracing::info!(at = t, from = %r.from, to = %r.to, "hot swap"),
                Err(why) => tracing::warn!(at = t, %why, "hot swap refused; the current policy stays"),
            }
            swap_log.push((t, outcome));
        }

        // In rounds, what happened between boundaries waits for the next.
        if config.rounds.is_some() && boundary(t) != t {
            decision_due = Some(boundary(t));
            let share = rt.host().cluster().allocated_share();
            if utilisation.last().is_some_and(|&(_, s)| s != share) {
                utilisation.push((t, share));
            }
            continue;
        }
        decision_due = None;
        // A due tick or wake-up, the decision (again while events keep
        // coming), the watchdog: the service's own code.
        rt.decide(&mut step);
        for outcome in &step.outcomes {
            observe(t, outcome);
        }
        let share = rt.host().cluster().allocated_share();
        if utilisation.last().is_some_and(|&(_, s)| s != share) {
            utilisation.push((t, share));
        }
    }

    let wall = started.elapsed();
    Ok(metrics::collect(metrics::Inputs {
        host: rt.host(),
        trace,
        trace_of: &trace_of,
        refused: &refused,
        origin,
        utilisation,
        initial_policy,
        swaps: swap_log,
        config,
        wall,
    }))
}
