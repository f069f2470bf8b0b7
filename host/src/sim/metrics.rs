//! The numbers the field's papers report, computed from a finished replay.
//!
//! Definitions (so results can be compared with published ones):
//! - JCT: finish minus submit. Queueing delay: first start minus submit.
//! - Makespan: last finish minus first submission.
//! - Utilisation: time-average over the makespan of the GPU share
//!   allocated to jobs, over the GPU count (a GPU shared 0.5 + 0.5 is fully
//!   allocated).
//! - Finish-time fairness rho (Themis): JCT over the time the job would take
//!   alone on its own gang (its trace duration); 1 is ideal. Reported as
//!   max, mean, and the share of jobs with rho > 2. Jobs of zero duration
//!   are left out of rho.
//! - Jain's index over per-job 1/rho: 1 when every job is slowed equally.
//!
//! Everything in [`Summary`] and [`JobRecord`] is a pure function of the
//! inputs, so two replays give identical files; wall-clock measurements
//! live apart, in [`Timing`].

use crate::scheduler::{PolicyHost, SwapReport};
use crate::sim::SimConfig;
use crate::trace::TraceJob;
use serde::Serialize;
use std::time::Duration;

/// Order statistics of a sample.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Distribution {
    /// Arithmetic mean.
    pub mean: f64,
    /// 50th percentile (nearest rank).
    pub median: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Distribution {
    /// Statistics of `values` (all zero when empty).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Distribution::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Distribution {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            median: rank(0.5),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Finish-time fairness.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Fairness {
    /// Largest rho.
    pub rho_max: f64,
    /// Mean rho.
    pub rho_mean: f64,
    /// Share of jobs with rho > 2.
    pub rho_over_2: f64,
    /// Jain's index over 1/rho.
    pub jain_index: f64,
}

/// Deterministic results of a replay.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Policy active at the start.
    pub policy: String,
    /// Policy active at the end (differs after a swap or an ejection).
    pub final_policy: String,
    /// GPUs in the cluster.
    pub gpus: u32,
    /// What the cluster is made of ("36 V100 + 36 P100 + 36 K80 on 27 nodes").
    pub cluster: String,
    /// How job speed is modelled: "linear" (the same on every kind, linear
    /// in GPUs), or measured throughputs and how many jobs got a type.
    pub speed_model: String,
    /// Jobs in the trace.
    pub jobs: usize,
    /// Jobs that finished.
    pub completed: usize,
    /// Jobs refused at submission (more GPUs than the cluster has).
    pub refused_at_submission: usize,
    /// Job completion time, seconds.
    pub jct: Distribution,
    /// Queueing delay (submit to first start), seconds.
    pub queueing_delay: Distribution,
    /// Last finish minus first submission, seconds.
    pub makespan: f64,
    /// Allocated GPU share over time, 0..1.
    pub utilisation: f64,
    /// Preemptions over all jobs.
    pub preemptions: u64,
    /// Migrations over all jobs.
    pub migrations: u64,
    /// Seconds jobs held GPUs restoring their state after restarts
    /// (`--restart-cost`), over all jobs.
    pub restart_seconds: f64,
    /// What a restart costs (`--restart-cost`).
    pub restart_cost: String,
    /// How jobs sharing a GPU progress (`--colocation`).
    pub colocation: String,
    /// Seconds of work (on each job's full gang, at its reference) lost to
    /// gangs spread over nodes, over all jobs.
    pub spread_seconds: f64,
    /// Seconds of work lost to interference between jobs sharing GPUs
    /// (against each alone there), over all jobs.
    pub interference_seconds: f64,
    /// Work done per GPU-second held: reference GPU-seconds of the jobs'
    /// progress over the GPU-seconds (times share) they held. 1 with a
    /// linear model and no restarts; above 1 when packing or faster GPUs
    /// gain, below when slower kinds, spread gangs, interference or
    /// restarts cost.
    pub effective_throughput: f64,
    /// Finish-time fairness.
    pub fairness: Fairness,
    /// Policy calls made.
    pub policy_calls: u64,
    /// Actions applied.
    pub actions_applied: u64,
    /// Actions rejected by validation.
    pub actions_rejected: u64,
    /// Faults counted against plugins.
    pub strikes: u64,
    /// Plugins ejected.
    pub ejections: u64,
    /// Hot swaps done.
    pub swaps: u64,
    /// Each fault, in order.
    pub faults: Vec<String>,
    /// Plugin log lines dropped over the log budget (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub plugin_log_lines_dropped: u64,
    /// Each scheduled swap: time and outcome.
    pub swap_log: Vec<String>,
}

/// Wall-clock measurements of a replay (vary from run to run).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timing {
    /// Policy calls timed.
    pub calls: u64,
    /// Median time per policy call, microseconds.
    pub call_p50_us: f64,
    /// 99th percentile time per policy call, microseconds.
    pub call_p99_us: f64,
    /// Mean time per policy call, microseconds.
    pub call_mean_us: f64,
    /// Whole replay, seconds.
    pub wall_seconds: f64,
}

/// One job's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobRecord {
    /// Host job id (absent when refused).
    pub id: Option<u64>,
    /// Line in the trace file.
    pub line: usize,
    /// Tenant.
    pub tenant: String,
    /// Gang size.
    pub gpus: u32,
    /// Submission, seconds after the first.
    pub submit: f64,
    /// Trace duration.
    pub duration: f64,
    /// First start, when it started.
    pub start: Option<f64>,
    /// Finish, when it finished.
    pub finish: Option<f64>,
    /// Final state: finished, refused, or the state it was left in.
    pub state: String,
    /// Times preempted.
    pub preemptions: u32,
    /// Times migrated.
    pub migrations: u32,
}

/// Everything a replay produced.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Deterministic results.
    pub summary: Summary,
    /// Wall-clock measurements.
    pub timing: Timing,
    /// Per-job outcomes, in trace order.
    pub jobs: Vec<JobRecord>,
    /// (time, allocated GPU share) at every change.
    pub utilisation: Vec<(f64, f64)>,
}

pub(super) struct Inputs<'a> {
    pub host: &'a PolicyHost,
    pub trace: &'a [TraceJob],
    pub trace_of: &'a [usize],
    pub refused: &'a [usize],
    pub origin: f64,
    pub utilisation: Vec<(f64, f64)>,
    pub initial_policy: String,
    pub swaps: Vec<(f64, Result<SwapReport, String>)>,
    pub config: &'a SimConfig,
    pub wall: Duration,
}

pub(super) fn collect(input: Inputs<'_>) -> SimResult {
    let cluster = input.host.cluster();
    let mut jobs: Vec<JobRecord> = input
        .trace
        .iter()
        .map(|t| JobRecord {
            id: None,
            line: t.line,
            tenant: t.tenant.clone(),
            gpus: t.gpus,
            submit: t.submit - input.origin,
            duration: t.duration,
            start: None,
            finish: None,
            state: "refused".to_string(),
            preemptions: 0,
            migrations: 0,
        })
        .collect();
    let mut restart_seconds = 0.0;
    let (mut work_done, mut gpu_seconds_held) = (0.0, 0.0);
    for (id, &i) in input.trace_of.iter().enumerate() {
        if let Some(job) = cluster.job(id as u64) {
            let at = job.end_time.unwrap_or(cluster.now());
            restart_seconds += job.restart_seconds_at(at);
            work_done += job.progress_at(at) * f64::from(job.spec.gpus);
            gpu_seconds_held += job.attained_gpu_seconds_at(at);
            let r = &mut jobs[i];
            r.id = Some(id as u64);
            r.start = job.first_start;
            r.finish = job.end_time;
            r.state = job.state.name().to_string();
            r.preemptions = job.preemptions;
            r.migrations = job.migrations;
        }
    }
    let finished: Vec<&JobRecord> = jobs.iter().filter(|j| j.state == "finished").collect();
    let jct = |j: &JobRecord| j.finish.unwrap_or(j.submit) - j.submit;
    let rhos: Vec<f64> = finished
        .iter()
        .filter(|j| j.duration > 0.0)
        .map(|j| jct(j) / j.duration)
        .collect();
    let makespan = finished.iter().filter_map(|j| j.finish).fold(0.0, f64::max);
    let stats = input.host.stats();
    let losses = cluster.model_losses();

    let allocated: f64 = input
        .utilisation
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * w[0].1)
        .sum::<f64>()
        + input
            .utilisation
            .last()
            .map(|&(t, s)| (makespan - t).max(0.0) * s)
            .unwrap_or(0.0);
    let capacity = f64::from(input.config.cluster.gpus()) * makespan;

    let summary = Summary {
        policy: input.initial_policy,
        final_policy: input.host.active().name().to_string(),
        gpus: input.config.cluster.gpus(),
        cluster: input.config.cluster.describe(),
        speed_model: match &input.config.speed {
            None => "linear".to_string(),
            Some(model) => {
                let typed = cluster.jobs().filter(|j| j.spec.job_type.is_some()).count();
                format!(
                    "measured throughputs ({} job types), reference {}, {typed} jobs typed",
                    model.table.types().len(),
                    model.reference
                )
            }
        },
        jobs: jobs.len(),
        completed: finished.len(),
        refused_at_submission: input.refused.len(),
        jct: Distribution::of(finished.iter().map(|j| jct(j)).collect()),
        queueing_delay: Distribution::of(finished.iter().filter_map(|j| j.start.map(|s| s - j.submit)).collect()),
        makespan,
        utilisation: if capacity > 0.0 { allocated / capacity } else { 0.0 },
        preemptions: jobs.iter().map(|j| j.preemptions as u64).sum(),
        restart_seconds,
        restart_cost: match cluster.restart_cost() {
            crate::cluster::RestartCost::Fixed(0.0) => "free".to_string(),
            crate::cluster::RestartCost::Fixed(s) => format!("{s} s"),
            crate::cluster::RestartCost::PerGib(s) => format!("{} ms per GiB of device memory", s * 1e3),
        },
        colocation: match cluster.colocation() {
            crate::cluster::Colocation::TimeSlice => "time-sliced".to_string(),
            crate::cluster::Colocation::Measured { interference: None } => {
                "measured pairs, else the table's mean interference".to_string()
            }
            crate::cluster::Colocation::Measured { interference: Some(f) } => {
                format!("measured pairs, else interference {f}")
            }
        },
        spread_seconds: losses.spread_work,
        interference_seconds: losses.interference_work,
        effective_throughput: if gpu_seconds_held > 0.0 {
            work_done / gpu_seconds_held
        } else {
            0.0
        },
        migrations: jobs.iter().map(|j| j.migrations as u64).sum(),
        fairness: fairness(&rhos),
        policy_calls: stats.calls,
        actions_applied: stats.actions_applied,
        actions_rejected: stats.actions_rejected,
        strikes: stats.strikes,
        ejections: stats.ejections,
        swaps: stats.swaps,
        faults: stats.faults.clone(),
        plugin_log_lines_dropped: stats.log_lines_dropped,
        swap_log: input
            .swaps
            .iter()
            .map(|(t, r)| match r {
                Ok(r) => match &r.note {
                    Some(note) => format!(
                        "t={t}: {} -> {} (state handed over: {}; {note})",
                        r.from, r.to, r.state_handed_over
                    ),
                    None => format!(
                        "t={t}: {} -> {} (state handed over: {})",
                        r.from, r.to, r.state_handed_over
                    ),
                },
                Err(why) => format!("t={t}: refused: {why}"),
            })
            .collect(),
    };
    let times = &stats.call_times;
    let timing = Timing {
        calls: times.count(),
        call_p50_us: times.quantile(0.5) / 1000.0,
        call_p99_us: times.quantile(0.99) / 1000.0,
        call_mean_us: times.mean() / 1000.0,
        wall_seconds: input.wall.as_secs_f64(),
    };
    SimResult {
        summary,
        timing,
        jobs,
        utilisation: input.utilisation,
    }
}

fn fairness(rhos: &[f64]) -> Fairness {
    if rhos.is_empty() {
        return Fairness::default();
    }
    let n = rhos.len() as f64;
    let inv: Vec<f64> = rhos.iter().map(|r| 1.0 / r.max(f64::MIN_POSITIVE)).collect();
    let (sum, sum_sq) = inv.iter().fold((0.0, 0.0), |(s, q), x| (s + x, q + x * x));
    Fairness {
        rho_max: rhos.iter().copied().fold(0.0, f64::max),
        rho_mean: rhos.iter().sum::<f64>() / n,
        rho_over_2: rhos.iter().filter(|&&r| r > 2.0).count() as f64 / n,
        jain_index: if sum_sq > 0.0 { sum * sum / (n * sum_sq) } else { 1.0 },
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = Distribution::of((1..=100).map(f64::from).collect());
        assert_eq!((d.mean, d.median, d.p95, d.p99, d.max), (50.5, 50.0, 95.0, 99.0, 100.0));
        assert_eq!(Distribution::of(vec![]), Distribution::default());
    }

    #[test]
    fn jain_is_one_when_equal() {
        let f = fairness(&[2.0, 2.0, 2.0]);
        assert!((f.jain_index - 1.0).abs() < 1e-12);
        assert_eq!((f.rho_max, f.rho_over_2), (2.0, 0.0));
    }
}
