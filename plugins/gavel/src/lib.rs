//! Gavel: heterogeneity-aware max-min fairness over scheduling rounds.
//!
//! From Narayanan et al., "Heterogeneity-Aware Cluster Scheduling Policies
//! for Deep Learning Workloads" (OSDI'20), as its code does it
//! (github.com/stanford-futuredata/gavel, commit c4fa400; paths below are
//! under `scheduler/`). Gavel computes, from every job's throughput on
//! every GPU kind, the fraction of time each job should run on each kind,
//! by a linear program solved here, inside the plugin, with the pure-Rust
//! `microlp`; then, round by round, it gives each kind's GPUs to the jobs
//! furthest behind their share of that kind.
//!
//! # The program (`mode=aware`, the default)
//!
//! `policies/max_min_fairness.py:35-81` (`MaxMinFairnessPolicyWithPerf`),
//! with `policies/policy.py:19-24,56-63` and `policies/proportional.py:13-40`.
//! For the live jobs `j` (pending, running, suspended) and the kinds `k`:
//!
//! ```text
//! maximise   min_j  (1 / w_j) * s_j * sum_k T[j][k] x[j][k] / P_j
//! subject to x[j][k] >= 0
//!            sum_k x[j][k]        <= 1      for every job j
//!            sum_j s_j x[j][k]    <= N_k    for every kind k
//! where      s_j = the job's gang size (Gavel's scale factor),
//!            w_j = 1 (Gavel's priority weight; jobs here have none),
//!            T[j][k] = view.throughput(j, kind k, s_j, spread): the job's
//!                      rate on s_j GPUs of kind k (spread over nodes when
//!                      s_j exceeds the most GPUs of kind k on one node),
//!            N_k = online GPUs of kind k, N = sum_k N_k,
//!            P_j = sum_k T[j][k] N_k / N, its throughput under Gavel's
//!                  equal share (proportional.py gives every job x[k] =
//!                  N_k / m, then scales each row to sum 1: N_k / N).
//! ```
//!
//! `x[j][k]` is the fraction of time job `j` should run on kind `k`. The
//! program is solved over classes of identical jobs (same gang, same
//! throughputs): it is symmetric in them, so an optimum gives them equal
//! shares and one set of variables stands for all of them, which keeps it
//! small (a trace has a few dozen job types, not thousands).
//!
//! Gavel takes whatever optimum its solver returns, and the optimum is
//! seldom unique: where a job's share is capped at 1 the minimum stops
//! rising and other jobs' shares are free within a range (a 4-GPU and a
//! 1-GPU job on 4 GPUs: any `x_4 in [1/4, 3/4]` with `x_1 = 1`; ECOS, an
//! interior-point solver, returns the middle, 0.4995). Here a
//! second stage chooses: every job keeps at least the optimum `t*`
//! (within 1e-6 of it) and the sum over jobs of the same objective terms is
//! maximised, so no capacity that some job could use is left out of the
//! allocation (`x_4 = 3/4` above).
//!
//! `mode=agnostic` is Gavel's `MaxMinFairnessPolicy`
//! (`max_min_fairness.py:10-32`): the same program with every throughput
//! set to 1.0, so time is shared equally, weighted by gang size. A job the
//! view has no figure for (`None` on every kind: no performance model, no
//! job type) has throughput 1.0 everywhere, so with no model at all the
//! aware mode is the agnostic one, decision for decision.
//!
//! Where the optimum is known without a solver it is not called: on one
//! kind (there `T / P_j = 1` for every job) and whenever every throughput
//! is 1.0 and every job fits every kind, the program reduces to sharing one
//! pool of `N` GPUs and water-filling gives an optimum of both stages:
//! `x_j = min(1, L / s_j)` with `sum_j min(s_j, L) = N`, spread over kinds
//! as `x[j][k] = x_j N_k / N`.
//!
//! # What bounds the solve
//!
//! The host gives a call 100 ms of CPU. The program has one variable per
//! class and kind a job fits, plus `t`; at most [`lp::MAX_LP_VARS`] (384).
//! Beyond that, throughputs are rounded to a log grid of 1%, 5%, 25%, then
//! 100% steps, which merges classes, and past the coarsest the solve is
//! skipped for equal shares (water-filling over the whole cluster, each
//! job's share spread over the kinds it fits), as it is if the solver
//! fails. Measured for one allocation (both stages; release build, one
//! core of the development machine), natively and in Wasm (wasmtime 50,
//! Cranelift):
//!
//! | live jobs on 36 + 36 + 36 GPUs                  | native | Wasm  |
//! | ----------------------------------------------- | ------ | ----- |
//! | 200 of Gavel's kind: 26 types x gangs 1-8, 81 classes | 5 ms | 8 ms |
//! | 200 all different, coarsened to 107 classes     | 7 ms   | 11 ms |
//! | 127 all different (the bound: 382 variables)    | 14 ms  | 22 ms |
//!
//! Over more kinds the bound leaves fewer classes (8 kinds x 47: 2.5 ms);
//! 2,000 all-different jobs fall back in 3-6 ms. The tests `solve_time_*`
//! print the native times (`--nocapture`) and fail past the host's 100 ms.
//!
//! Throughputs from the view are sanitised before use: a figure that is
//! missing, not finite or not positive counts as 1.0, the job's speed on
//! its reference (the host runs a job at that speed where its table has no
//! figure: it answers none for Gavel's zeros, the pairs that do not fit in
//! memory); a job's figures are then divided by its best one and raised to
//! at least [`lp::MIN_RATIO`] (1e-3). The program only uses ratios across
//! kinds, so dividing by the best changes nothing else. On inputs without
//! missing figures (Gavel's `simulation_throughputs.json`, job types
//! without zeros, 5 to 150 jobs on 8 to 36 GPUs of 3 kinds) the optimum
//! `t*` agrees with Gavel's own code solved by ECOS to 6 digits (see the
//! test `lp::tests::agrees_with_gavels_own_solver`).
//!
//! # Rounds (`scheduler.py`)
//!
//! A tick every `round` seconds (Gavel's `time_per_iteration`, 360 s):
//!
//! 1. The round that ended is closed: each running job's time on the kind
//!    it holds grows by the seconds it ran in it (Gavel's
//!    `_job_time_so_far`, `scheduler.py:3070-3077`), and so does the kind's
//!    total (`_worker_time_so_far`).
//! 2. When the set of live jobs or the GPUs changed since the allocation
//!    was computed, the program is solved again (as Gavel's allocation
//!    thread does on a real cluster, `scheduler.py:2157-2195`). When the
//!    allocation changed and `reset` seconds (1920, Gavel's
//!    `minimum_time_between_allocation_resets`) have passed since the last
//!    reset, the time counters are reset (`_reset_time_run_so_far`,
//!    `scheduler.py:2265-2311`, called from `scheduler.py:2358-2390`): each
//!    job's deficit on each kind grows by the time it should have had
//!    (its share under the allocation now in force times the time since
//!    the last reset) less the time it had, and every job's time restarts
//!    at `round / 2`, as a new job's does (`scheduler.py:501`).
//! 3. Priorities (`_update_priorities`, `scheduler.py:2358-2463`): on each
//!    kind, `x[j][k] / (time[j][k] / time[k])`, the share the job should
//!    have over the share it had; 0 where `x[j][k]` is 0.
//! 4. The kinds are walked in order, each kind's jobs in descending
//!    priority, then deficit, then allocation, then ascending id
//!    (`_schedule_jobs_on_workers_helper`, `scheduler.py:766-856`); a job
//!    is picked for that kind if it was not picked for another and its
//!    gang fits in what is left of the kind's GPUs, whatever its priority
//!    (a job with no share of a kind still uses GPUs nobody with a share
//!    wants).
//! 5. Picked jobs already running on their kind keep their GPUs; running
//!    jobs not picked, or picked for another kind, are preempted; the
//!    others start or resume on free GPUs of their kind, larger gangs
//!    first, each gang on one node where one fits it
//!    (`FreeGpus::choose_gang`: best fit, else fewest nodes)
//!    (`_schedule_jobs_on_workers`, `scheduler.py:858-957`).
//!
//! Between ticks, arrivals and completions only fill free GPUs, walking
//! the kinds in the same order, each kind's waiting jobs in the order of
//! the last tick (new arrivals after them, oldest first); nothing is
//! preempted.
//!
//! # Differences from Gavel
//!
//! - Admission between rounds: Gavel starts nothing until the next round
//!   (and, in its simulator, a new job waits for the next reset, at most
//!   every 1920 s, to have an allocation at all: `scheduler.py:2358-2390`);
//!   here free GPUs are filled at once, and the allocation is solved again
//!   at the first tick after any arrival or completion, as Gavel's
//!   allocation thread does on a real cluster.
//! - A gang larger than every kind (but not than the cluster), which Gavel
//!   never meets, would wait for ever on one kind: it gets no share in the
//!   program and spreads over kinds (most free first) instead, claiming
//!   GPUs before the others in a round after one it did not run in, and
//!   taking what the others leave otherwise; between ticks it starts when
//!   enough GPUs are free in all.
//! - Time is counted per round from the view (`running-job.since`), not
//!   from per-iteration callbacks; a job started between ticks counts the
//!   part of the round it ran.
//! - Kind order: Gavel walks "v100", "p100", "k80" (fastest first) in the
//!   heterogeneity-aware policies and shuffles them in the others
//!   (`scheduler.py:871-881`). Kinds here have arbitrary names: they are
//!   walked fastest first by the sum of the live jobs' relative
//!   throughputs; kinds of equal speed (all of them in the agnostic mode)
//!   take turns being first, one round each, instead of a random shuffle.
//! - The stage-2 choice among optima, the sanitised throughputs and the
//!   bounds above; priority weights are all 1; no space sharing (Gavel's
//!   `_packing` variants), so `co-located` is not read.
//! - Priority is computed as `x * time[k] / time[j][k]`, the same number
//!   as Gavel's `x / (time[j][k] / time[k])` (and `x * 1e9` where no time
//!   is counted on the kind yet), without dividing by a fraction.
//!
//! `snapshot`/`restore` carry the allocation, the time counters and the
//! deficits over a hot swap (format version 2; a version-1 snapshot, from
//! the earlier round-counting Gavel, is refused: the host then keeps this
//! policy, which rebuilds from the jobs it is told about).
//!
//! Config: `round=360;mode=aware;reset=1920;fill=true`: seconds per round
//! (> 0), `aware` or `agnostic`, the least seconds between resets of the
//! time counters (>= 0; 0 resets them whenever the allocation changes),
//! and whether stage 2 fills what Gavel's optimum leaves idle (`false`:
//! stage 1's optimum as the simplex finds it, for comparing with Gavel).

use std::collections::{BTreeMap, BTreeSet};
use wsched_sdk::*;

pub mod lp;
mod pools;
mod queue;

use pools::{Kinds, Pools};
use queue::Queue;

/// Snapshot header: "GAVEL" and a format version.
const MAGIC: u64 = u64::from_le_bytes(*b"GAVELsnp");
const VERSION: u64 = 2;

/// Queue keys of jobs that arrived since the last tick start here, past
/// every rank, in order of arrival.
const ARRIVAL_KEYS: u64 = 1 << 62;

/// Which of Gavel's max-min fairness policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `max_min_fairness_perf`: over effective throughputs.
    Aware,
    /// `max_min_fairness`: every throughput taken as 1.
    Agnostic,
}

/// What the policy keeps about one live job.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    gang: u32,
    state: JobState,
    /// Throughput on each kind relative to its best kind; read from the
    /// view when the allocation is next computed.
    tput: Option<Vec<f64>>,
    /// Whether the allocation in force was computed with this job live.
    in_alloc: bool,
    /// Its share of time on each kind (`x[j][k]`).
    x: Vec<f64>,
    /// Seconds on each kind since the last reset, from `round / 2`.
    time: Vec<f64>,
    /// Seconds it fell behind its share on each kind at past resets.
    deficit: Vec<f64>,
    /// Its queue key on each kind.
    keys: Vec<u64>,
}

impl Job {
    fn new(gang: u32, kinds: usize, half: f64, key: u64) -> Job {
        Job {
            gang,
            state: JobState::Pending,
            tput: None,
            in_alloc: false,
            x: vec![0.0; kinds],
            time: vec![half; kinds],
            deficit: vec![0.0; kinds],
            keys: vec![key; kinds],
        }
    }

    fn waiting(&self) -> bool {
        matches!(self.state, JobState::Pending | JobState::Suspended)
    }
}

/// The Gavel policy.
#[derive(Debug)]
pub struct Gavel {
    round: f64,
    mode: Mode,
    /// Whether the allocation fills what Gavel's optimum leaves idle (see
    /// [`lp::allocate_with`]).
    fill: bool,
    jobs: BTreeMap<JobId, Job>,
    /// Kinds and free GPUs per kind.
    pools: Pools,
    /// Each kind's waiting jobs, in priority order.
    queues: Vec<Queue>,
    /// Live jobs whose gang is larger than every kind but not than the
    /// cluster: they can only run spread over kinds.
    wide: BTreeSet<JobId>,
    /// Seconds between resets of the time counters, at least.
    reset_every: f64,
    /// Kinds in the order rounds walk them.
    order: Vec<usize>,
    /// Each kind's speed for that order: the sum of the live jobs'
    /// relative throughputs on it when the allocation was computed.
    speed: Vec<f64>,
    /// Ticks so far (rotates the order of kinds of equal speed).
    ticks: u64,
    /// Whether the allocation must be computed again: a job it was
    /// computed with left, or the GPUs changed.
    dirty: bool,
    /// Whether the allocation was computed since the counters were reset.
    changed: bool,
    /// Seconds of all jobs on each kind since the last reset (Gavel's
    /// `_worker_time_so_far`).
    worker_time: Vec<f64>,
    last_reset: Option<f64>,
    last_tick: Option<f64>,
    arrivals: u64,
    /// Jobs from a snapshot, taken over as the host announces them again;
    /// dropped after the first decision.
    saved: Option<BTreeMap<JobId, Job>>,
    /// How the last allocation was found, and its objective.
    last: Option<(lp::Method, f64)>,
}

/// The policy's settings, from its config string.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    round: f64,
    mode: Mode,
    reset: f64,
    fill: bool,
}

fn parse_config(config: &str) -> Result<Config, String> {
    let (mut round, mut mode, mut reset, mut fill) = (360.0, Mode::Aware, 1920.0, true);
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("gavel: `{pair}` is not key=value"));
        };
        let value = value.trim();
        match key.trim() {
            "round" => {
                round = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| format!("gavel: round: `{value}` is not a number of seconds > 0"))?;
            }
            "reset" => {
                reset = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r >= 0.0)
                    .ok_or_else(|| format!("gavel: reset: `{value}` is not a number of seconds >= 0"))?;
            }
            "fill" => {
                fill = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("gavel: fill: `{value}` is not `true` or `false`")),
                };
            }
            "mode" => {
                mode = match value {
                    "aware" => Mode::Aware,
                    "agnostic" => Mode::Agnostic,
                    _ => return Err(format!("gavel: mode: `{value}` is not `aware` or `agnostic`")),
                };
            }
            other => {
                return Err(format!(
                    "gavel: unknown config key `{other}` (known: round, mode, reset, fill)"
                ));
            }
        }
    }
    Ok(Config {
        round,
        mode,
        reset,
        fill,
    })
}

/// Job `id`'s throughputs on each kind, relative to its best kind (see the
/// crate documentation): a missing or unusable figure counts as 1.0, the
/// job's reference speed, as the host runs a job where its table has no
/// figure; all 1.0 when the view has none.
fn read_throughputs(view: &impl View, id: JobId, gang: u32, kinds: &Kinds) -> Vec<f64> {
    let n = kinds.len();
    if gang == 0 {
        return vec![1.0; n];
    }
    let raw: Vec<f64> = (0..n)
        .map(|k| {
            view.throughput(id, &kinds.names[k], gang, gang > kinds.per_node[k])
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(1.0)
        })
        .collect();
    let best = raw.iter().copied().fold(0.0, f64::max);
    raw.iter().map(|v| (v / best).clamp(lp::MIN_RATIO, 1.0)).collect()
}

/// `v`, indexed by the kinds `from`, re-indexed by the kinds `to` (by
/// name), with `fill` for kinds that are new.
fn remap<T: Clone>(v: &[T], from: &[String], to: &[String], fill: T) -> Vec<T> {
    to.iter()
        .map(|name| {
            from.iter()
                .position(|n| n == name)
                .and_then(|i| v.get(i).cloned())
                .unwrap_or_else(|| fill.clone())
        })
        .collect()
}

impl Gavel {
    fn half(&self) -> f64 {
        self.round / 2.0
    }

    fn kinds(&self) -> &Kinds {
        &self.pools.kinds
    }

    fn note(&mut self, job: &JobInfo) {
        match job.state {
            JobState::Pending | JobState::Running | JobState::Suspended => {
                self.set(job.id, job.gpus_requested, job.state);
            }
            _ => self.forget(job.id),
        }
    }

    /// Record a live job's gang size and state, queueing it if it waits.
    fn set(&mut self, id: JobId, gang: u32, state: JobState) {
        if !self.jobs.contains_key(&id) {
            let saved = self.saved.as_mut().and_then(|s| s.remove(&id));
            let job = match saved {
                Some(job) if job.gang == gang => job,
                _ => {
                    self.arrivals += 1;
                    Job::new(gang, self.kinds().len(), self.half(), ARRIVAL_KEYS + self.arrivals)
                }
            };
            self.jobs.insert(id, job);
        }
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.gang != gang {
            job.gang = gang;
            job.tput = None;
            job.in_alloc = false;
        }
        job.state = state;
        self.requeue(id);
    }

    fn forget(&mut self, id: JobId) {
        if let Some(job) = self.jobs.remove(&id)
            && job.in_alloc
        {
            self.dirty = true;
        }
        for q in &mut self.queues {
            q.remove(id);
        }
        self.wide.remove(&id);
    }

    /// Put a job in the queues of the kinds its gang fits if it waits, take
    /// it out of them if not.
    fn requeue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else { return };
        let caps = &self.pools.kinds.caps;
        let widest = caps.iter().copied().max().unwrap_or(0);
        let total: u64 = caps.iter().map(|&c| u64::from(c)).sum();
        if job.gang > widest && u64::from(job.gang) <= total {
            self.wide.insert(id);
        } else {
            self.wide.remove(&id);
        }
        for (k, q) in self.queues.iter_mut().enumerate() {
            let fits = job.gang >= 1 && job.gang <= self.pools.kinds.caps.get(k).copied().unwrap_or(0);
            if job.waiting() && fits {
                q.insert(id, job.gang, job.keys.get(k).copied().unwrap_or(ARRIVAL_KEYS));
            } else {
                q.remove(id);
            }
        }
    }

    fn requeue_all(&mut self) {
        self.queues = (0..self.kinds().len()).map(|_| Queue::default()).collect();
        self.wide.clear();
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.requeue(id);
        }
    }

    /// Read the GPUs if need be, and follow a change of the kinds.
    fn sync(&mut self, view: &impl View) {
        let Some(old) = self.pools.sync(view) else { return };
        let new = self.pools.kinds.clone();
        if old.names != new.names {
            let half = self.half();
            for job in self.jobs.values_mut() {
                job.x = remap(&job.x, &old.names, &new.names, 0.0);
                job.time = remap(&job.time, &old.names, &new.names, half);
                job.deficit = remap(&job.deficit, &old.names, &new.names, 0.0);
                job.keys = remap(&job.keys, &old.names, &new.names, ARRIVAL_KEYS);
            }
            self.worker_time = remap(&self.worker_time, &old.names, &new.names, 0.0);
            self.speed = remap(&self.speed, &old.names, &new.names, 0.0);
        }
        if old.names != new.names || old.per_node != new.per_node {
            for job in self.jobs.values_mut() {
                job.tput = None;
            }
        }
        self.order_kinds();
        self.dirty = true;
        self.requeue_all();
    }

    /// Order the kinds: fastest first; among kinds of equal speed (every
    /// kind, without throughputs), a different one first each round, as
    /// Gavel shuffles them in its throughput-agnostic policies.
    fn order_kinds(&mut self) {
        let n = self.kinds().len();
        self.speed.resize(n, 0.0);
        let turn = (self.ticks % n.max(1) as u64) as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            self.speed[b]
                .total_cmp(&self.speed[a])
                .then(((a + n - turn) % n).cmp(&((b + n - turn) % n)))
        });
        self.order = order;
    }

    /// Gavel's `_reset_time_run_so_far`: fold the time counters into the
    /// deficits under the allocation in force, and restart them.
    fn reset(&mut self, now: f64) {
        let elapsed = self
            .last_reset
            .map(|t| now - t)
            .filter(|e| e.is_finite() && *e > 0.0)
            .unwrap_or(0.0);
        let half = self.half();
        for job in self.jobs.values_mut() {
            for k in 0..job.time.len() {
                let d = job.deficit[k] + job.x[k] * elapsed - (job.time[k] - half);
                job.deficit[k] = if d.is_finite() { d } else { 0.0 };
                job.time[k] = half;
            }
        }
        self.worker_time = vec![half * self.jobs.len() as f64; self.kinds().len()];
        if now.is_finite() {
            self.last_reset = Some(now);
        }
    }

    /// Solve the program for the live jobs, and rate the kinds' speeds.
    fn recompute(&mut self, view: &impl View) {
        let kinds = self.pools.kinds.clone();
        let n = kinds.len();
        if self.mode == Mode::Aware {
            for (&id, job) in &mut self.jobs {
                if job.tput.as_ref().is_none_or(|t| t.len() != n) {
                    job.tput = Some(read_throughputs(view, id, job.gang, &kinds));
                }
            }
        }
        let rows: Vec<lp::Row> = self
            .jobs
            .values()
            .map(|job| lp::Row {
                gang: job.gang,
                tput: match (&job.tput, self.mode) {
                    (Some(t), Mode::Aware) => t.clone(),
                    _ => vec![1.0; n],
                },
            })
            .collect();
        let alloc = lp::allocate_with(&kinds.caps, &rows, self.fill);
        let mut speed = vec![0.0; n];
        for row in &rows {
            for (s, t) in speed.iter_mut().zip(&row.tput) {
                *s += t;
            }
        }
        for (job, x) in self.jobs.values_mut().zip(alloc.x) {
            job.x = x;
            job.in_alloc = true;
        }
        self.speed = speed;
        self.dirty = false;
        self.changed = true;
        self.last = Some((alloc.method, alloc.objective));
        log(
            Level::Debug,
            &format!(
                "gavel: allocation for {} jobs on {} kinds: {:?}, min normalised throughput {:.4}",
                rows.len(),
                n,
                alloc.method,
                alloc.objective
            ),
        );
    }

    /// Each kind's live jobs that fit it, in Gavel's order: descending
    /// priority, deficit and allocation, then ascending id.
    fn ranked(&self) -> Vec<Vec<JobId>> {
        let caps = &self.kinds().caps;
        (0..caps.len())
            .map(|k| {
                let mut entries: Vec<(f64, f64, f64, JobId)> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.gang >= 1 && j.gang <= caps[k])
                    .map(|(&id, j)| {
                        let x = j.x[k];
                        let priority = if x <= 0.0 {
                            0.0
                        } else if self.worker_time[k] <= 0.0 || j.time[k] <= 0.0 {
                            x * 1e9
                        } else {
                            x * self.worker_time[k] / j.time[k]
                        };
                        let clean = |v: f64| if v.is_finite() { v } else { 0.0 };
                        (clean(priority), clean(j.deficit[k]), x, id)
                    })
                    .collect();
                entries.sort_by(|a, b| {
                    b.0.total_cmp(&a.0)
                        .then(b.1.total_cmp(&a.1))
                        .then(b.2.total_cmp(&a.2))
                        .then(a.3.cmp(&b.3))
                });
                entries.into_iter().map(|e| e.3).collect()
            })
            .collect()
    }

    /// Each job's share of time on each kind, by kind name (for tests and
    /// tools); `None` for a job not in the allocation in force.
    pub fn allocation(&self, id: JobId) -> Option<Vec<(String, f64)>> {
        let job = self.jobs.get(&id).filter(|j| j.in_alloc)?;
        Some(self.kinds().names.iter().cloned().zip(job.x.iter().copied()).collect())
    }

    /// How the last allocation was found and its objective (the least
    /// normalised effective throughput).
    pub fn last_solve(&self) -> Option<(lp::Method, f64)> {
        self.last
    }

    /// A tick: close the round that ended, compute the allocation again if
    /// the jobs or GPUs changed, pick the next round's jobs kind by kind,
    /// preempt the others and place the picked ones.
    fn tick(&mut self, view: &impl View, actions: &mut Vec<Action>) {
        let now = view.now();
        let running = view.running();
        for job in self.jobs.values_mut() {
            if job.state == JobState::Running {
                job.state = JobState::Suspended;
            }
        }
        // Who runs, and on which kind (None: not known).
        let mut on: BTreeMap<JobId, Option<usize>> = BTreeMap::new();
        let mut unsure = false;
        for r in &running {
            if !self.jobs.contains_key(&r.id) {
                match view.job(r.id) {
                    Some(info) => self.note(&info),
                    None => continue,
                }
            }
            let Some(job) = self.jobs.get_mut(&r.id) else { continue };
            job.state = JobState::Running;
            let kind = match self.pools.kind_of_job(r.id) {
                Some(k) => Some(k),
                None => view.job(r.id).and_then(|info| {
                    self.pools.note_held(r.id, &info.placement, info.fraction);
                    info.placement.first().and_then(|&g| self.pools.kind_of(g))
                }),
            };
            unsure |= r.fraction < 1.0;
            on.insert(r.id, kind);
        }
        // Close the round: time on the kind each running job holds.
        let start = self.last_tick.unwrap_or(now - self.round);
        for r in &running {
            let (Some(&Some(k)), Some(job)) = (on.get(&r.id), self.jobs.get_mut(&r.id)) else {
                continue;
            };
            let since = if r.since.is_finite() { r.since.max(start) } else { start };
            let ran = now - since;
            if ran.is_finite() && ran > 0.0 {
                job.time[k] += ran;
                self.worker_time[k] += ran;
            }
        }
        // As Gavel on a real cluster: the allocation follows every change
        // of the jobs, the counters are reset (into the deficits) when it
        // changed and `reset` seconds have passed since the last reset.
        if self.dirty || self.jobs.values().any(|j| !j.in_alloc) {
            self.recompute(view);
        }
        let due = self.last_reset.is_none_or(|t| now - t >= self.reset_every);
        if self.changed && due {
            self.reset(now);
            self.changed = false;
        }
        self.ticks += 1;
        self.order_kinds();

        // Pick the round's jobs, kind by kind. A gang larger than every
        // kind (but not than the cluster) spreads over kinds: it claims
        // GPUs before the others in a round after one it did not run in,
        // and takes what is left after them otherwise.
        let ranked = self.ranked();
        let mut left = self.kinds().caps.clone();
        let mut picked: BTreeMap<JobId, usize> = BTreeMap::new();
        let spanning = self.spanning();
        let mut plans: BTreeMap<JobId, Vec<(usize, u32)>> = BTreeMap::new();
        for &id in spanning.iter().filter(|id| !on.contains_key(id)) {
            if let Some(plan) = Pools::spread(&mut left, self.jobs[&id].gang) {
                plans.insert(id, plan);
            }
        }
        for &k in &self.order {
            for &id in &ranked[k] {
                if left[k] == 0 {
                    break;
                }
                let gang = self.jobs[&id].gang;
                if picked.contains_key(&id) || gang > left[k] {
                    continue;
                }
                left[k] -= gang;
                picked.insert(id, k);
            }
        }
        for &id in spanning.iter().filter(|id| on.contains_key(id)) {
            // Running: it keeps what it holds if that is left.
            let holds = self.pools.held_counts(id);
            let kept = match holds {
                Some(holds) if holds.iter().zip(&left).all(|(h, l)| h <= l) => {
                    left.iter_mut().zip(&holds).for_each(|(l, h)| *l -= h);
                    true
                }
                _ => false,
            };
            if kept {
                plans.insert(id, Vec::new());
            }
        }
        // Preempt the running jobs not picked, or picked for another kind.
        for (&id, &kind) in &on {
            let keep = match (picked.get(&id), plans.get(&id)) {
                (Some(&k), _) => kind.is_none_or(|held| held == k),
                (None, Some(plan)) => plan.is_empty(),
                (None, None) => false,
            };
            match keep {
                true => {}
                false => {
                    actions.push(Action::Preempt(id));
                    unsure |= !self.pools.vacate(id);
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.state = JobState::Suspended;
                    }
                }
            }
        }
        // Place the others: each kind's, larger gangs first, then by rank.
        for &k in &self.order {
            let mut new: Vec<(u32, usize, JobId)> = ranked[k]
                .iter()
                .enumerate()
                .filter(|&(_, id)| picked.get(id) == Some(&k) && self.jobs[id].waiting())
                .map(|(rank, &id)| (self.jobs[&id].gang, rank, id))
                .collect();
            new.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (gang, _, id) in new {
                let Some(gpus) = self.pools.take(k, id, gang) else {
                    continue;
                };
                let job = self.jobs.get_mut(&id).expect("picked jobs are live");
                actions.push(start_or_resume(id, job.state, gpus));
                job.state = JobState::Running;
            }
        }
        for (id, plan) in plans.into_iter().filter(|(_, plan)| !plan.is_empty()) {
            let Some(gpus) = self.pools.take_spread(id, &plan) else {
                continue;
            };
            let job = self.jobs.get_mut(&id).expect("picked jobs are live");
            actions.push(start_or_resume(id, job.state, gpus));
            job.state = JobState::Running;
        }
        // Between ticks, waiting jobs queue in this round's order.
        for (k, ids) in ranked.iter().enumerate() {
            for (rank, id) in ids.iter().enumerate() {
                if let Some(job) = self.jobs.get_mut(id) {
                    job.keys[k] = rank as u64;
                }
            }
        }
        self.requeue_all();
        if unsure {
            self.pools.invalidate();
        }
        if now.is_finite() {
            self.last_tick = Some(now);
        }
    }

    /// Between ticks: fill free GPUs, kind by kind in the round's order,
    /// with each kind's waiting jobs in queue order, preempting nothing. A
    /// job whose gang does not fit is skipped; a kind is done when no
    /// waiting gang fits in what is left of it.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        for i in 0..self.order.len() {
            let k = self.order[i];
            while self.pools.free(k) > 0 {
                let Some((id, gang)) = self.queues.get(k).and_then(|q| q.first_fitting(self.pools.free(k))) else {
                    break;
                };
                let Some(gpus) = self.pools.take(k, id, gang) else {
                    break;
                };
                let state = self.jobs.get(&id).map_or(JobState::Pending, |j| j.state);
                actions.push(start_or_resume(id, state, gpus));
                self.set(id, gang, JobState::Running);
            }
        }
        for id in self.spanning() {
            let Some(job) = self.jobs.get(&id).filter(|j| j.waiting()) else {
                continue;
            };
            let (gang, state) = (job.gang, job.state);
            let Some(plan) = Pools::spread(&mut self.pools.free_counts(), gang) else {
                continue;
            };
            if let Some(gpus) = self.pools.take_spread(id, &plan) {
                actions.push(start_or_resume(id, state, gpus));
                self.set(id, gang, JobState::Running);
            }
        }
    }

    /// Live jobs whose gang is larger than every kind but not than the
    /// cluster, oldest first: they can only run spread over kinds.
    fn spanning(&self) -> Vec<JobId> {
        self.wide.iter().copied().collect()
    }
}

fn start_or_resume(job: JobId, state: JobState, gpus: Vec<GpuId>) -> Action {
    let placement = Placement { job, gpus };
    if state == JobState::Suspended {
        Action::Resume(placement)
    } else {
        Action::Start(placement)
    }
}

impl Policy for Gavel {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let Config {
            round,
            mode,
            reset,
            fill,
        } = parse_config(config)?;
        let policy = Gavel {
            round,
            mode,
            fill,
            reset_every: reset,
            jobs: BTreeMap::new(),
            pools: Pools::default(),
            queues: Vec::new(),
            wide: BTreeSet::new(),
            order: Vec::new(),
            speed: Vec::new(),
            ticks: 0,
            dirty: true,
            changed: false,
            worker_time: Vec::new(),
            last_reset: None,
            last_tick: None,
            arrivals: 0,
            saved: None,
            last: None,
        };
        Ok((
            policy,
            PolicyInfo {
                name: "gavel".into(),
                tick_interval: Some(round),
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        for event in &events {
            self.pools.observe(event);
        }
        let mut tick = false;
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::Tick => tick = true,
                Event::JobPreempted(id) => match view.job(id) {
                    Some(job) => self.note(&job),
                    None => self.forget(id),
                },
                Event::GpuChanged(_) => {}
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gavel: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.forget(r.job),
                    }
                }
            }
        }
        // Jobs of a snapshot that the host did not announce again are gone.
        if let Some(saved) = self.saved.take()
            && saved.values().any(|j| j.in_alloc)
        {
            self.dirty = true;
        }
        self.sync(view);
        let mut actions = Vec::new();
        if tick {
            self.tick(view, &mut actions);
        } else {
            self.fill(&mut actions);
        }
        Decision { actions, wakeup: None }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut e = Encoder::default();
        let kinds = self.kinds();
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        e.u64(MAGIC)
            .u64(VERSION)
            .f64(self.round)
            .u64(self.mode as u64)
            .f64(opt(self.last_reset))
            .f64(opt(self.last_tick))
            .u64(self.arrivals)
            .u64(u64::from(self.dirty))
            .u64(u64::from(self.changed))
            .u64(self.ticks)
            .u64(kinds.len() as u64);
        for k in 0..kinds.len() {
            e.bytes(kinds.names[k].as_bytes())
                .u64(u64::from(kinds.caps[k]))
                .u64(u64::from(kinds.per_node[k]))
                .f64(self.worker_time.get(k).copied().unwrap_or(0.0))
                .f64(self.speed.get(k).copied().unwrap_or(0.0));
        }
        let mut all: BTreeMap<JobId, &Job> = self.saved.iter().flatten().map(|(&id, j)| (id, j)).collect();
        all.extend(self.jobs.iter().map(|(&id, j)| (id, j)));
        e.u64(all.len() as u64);
        for (id, job) in all {
            e.u64(id).u64(u64::from(job.gang)).u64(u64::from(job.in_alloc));
            for k in 0..kinds.len() {
                e.f64(job.x[k]).f64(job.time[k]).f64(job.deficit[k]).u64(job.keys[k]);
            }
        }
        Some(e.0)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let saved = decode(state, self.half()).map_err(|e| format!("gavel: {e}"))?;
        // The host announces every live job again after a takeover: the
        // saved jobs wait for that in `saved`.
        self.jobs.clear();
        self.queues = (0..saved.kinds.len()).map(|_| Queue::default()).collect();
        self.pools = Pools::default();
        self.pools.kinds = saved.kinds;
        self.worker_time = saved.worker_time;
        self.speed = saved.speed;
        self.ticks = saved.ticks;
        self.changed = saved.changed;
        self.order_kinds();
        self.last_reset = saved.last_reset;
        self.last_tick = saved.last_tick;
        self.arrivals = saved.arrivals;
        self.dirty = saved.dirty || saved.mode != self.mode as u64;
        self.saved = Some(saved.jobs);
        Ok(())
    }
}

/// What a snapshot holds.
struct Saved {
    mode: u64,
    last_reset: Option<f64>,
    last_tick: Option<f64>,
    arrivals: u64,
    dirty: bool,
    changed: bool,
    ticks: u64,
    kinds: Kinds,
    worker_time: Vec<f64>,
    speed: Vec<f64>,
    jobs: BTreeMap<JobId, Job>,
}

/// Read a snapshot made by [`Gavel::snapshot`], checking it whole.
fn decode(state: &[u8], half: f64) -> Result<Saved, String> {
    let mut d = Decoder(state);
    if d.u64().ok() != Some(MAGIC) {
        return Err("not a gavel snapshot (bad magic)".into());
    }
    let version = d.u64()?;
    if version != VERSION {
        return Err(format!("snapshot version {version}, expected {VERSION}"));
    }
    let _round = d.f64()?;
    let mode = d.u64()?;
    let time = |v: f64| v.is_finite().then_some(v);
    let last_reset = time(d.f64()?);
    let last_tick = time(d.f64()?);
    let arrivals = d.u64()?;
    let dirty = d.u64()? != 0;
    let changed = d.u64()? != 0;
    let ticks = d.u64()?;
    let n = d.u64()?;
    // Each kind takes at least 40 bytes, each job 24 plus 32 per kind:
    // refuse counts the bytes cannot hold before allocating for them.
    if n > (d.0.len() / 40) as u64 {
        return Err(format!("{n} kinds in {} bytes", d.0.len()));
    }
    let n = n as usize;
    let mut kinds = Kinds::default();
    let mut worker_time = Vec::with_capacity(n);
    let mut speed = Vec::with_capacity(n);
    for _ in 0..n {
        let name = String::from_utf8(d.bytes()?.to_vec()).map_err(|_| "kind name is not UTF-8")?;
        if kinds.names.last().is_some_and(|last| *last >= name) {
            return Err("kind names not sorted".into());
        }
        kinds.names.push(name);
        kinds.caps.push(u32::try_from(d.u64()?).map_err(|_| "bad capacity")?);
        kinds
            .per_node
            .push(u32::try_from(d.u64()?).map_err(|_| "bad per-node count")?);
        worker_time.push(d.f64()?);
        speed.push(d.f64()?);
    }
    let count = d.u64()?;
    if count > (d.0.len() / (24 + 32 * n)) as u64 {
        return Err(format!("{count} jobs in {} bytes", d.0.len()));
    }
    let mut jobs = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for _ in 0..count {
        let id = d.u64()?;
        let gang = u32::try_from(d.u64()?).map_err(|_| "bad gang size")?;
        let mut job = Job::new(gang, n, half, ARRIVAL_KEYS);
        job.in_alloc = d.u64()? != 0;
        for k in 0..n {
            let clean = |v: f64| if v.is_finite() { v } else { 0.0 };
            job.x[k] = clean(d.f64()?).clamp(0.0, 1.0);
            job.time[k] = clean(d.f64()?);
            job.deficit[k] = clean(d.f64()?);
            job.keys[k] = d.u64()?;
        }
        if !ids.insert(id) {
            return Err(format!("job {id} twice"));
        }
        jobs.insert(id, job);
    }
    if !d.is_empty() {
        return Err("trailing bytes after snapshot".into());
    }
    Ok(Saved {
        mode,
        last_reset,
        last_tick,
        arrivals,
        dirty,
        changed,
        ticks,
        kinds,
        worker_time: worker_time
            .into_iter()
            .map(|v| if v.is_finite() { v } else { 0.0 })
            .collect(),
        speed: speed.into_iter().map(|v| if v.is_finite() { v } else { 0.0 }).collect(),
        jobs,
    })
}

export_policy!(Gavel);

#[cfg(test)]
mod tests;
