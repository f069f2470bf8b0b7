//! Tiresias: discretised two-dimensional least-attained-service (2D-LAS).
//!
//! From Gu et al., "Tiresias: A GPU Cluster Manager for Distributed Deep
//! Learning" (NSDI'19). Job durations are usually unknown, so Tiresias
//! ranks jobs by the service they have already received, counted in two
//! dimensions at once: GPU-seconds (time x gang size). A job's attained
//! service places it in one of a few queues, bounded by `thresholds`; a
//! lower queue always wins, and within a queue the older job (lower id)
//! wins. The policy is preemptive: whenever the highest-priority jobs that
//! fit the cluster are not the ones running, the lower ones are suspended
//! and the higher ones started. Discretising into queues (instead of
//! pure LAS) is what keeps jobs from being preempted over and over as
//! their services leapfrog each other.
//!
//! Because priorities change only when a running job crosses a threshold
//! (waiting jobs attain nothing), the policy asks for no periodic tick:
//! it returns a `wakeup` at the earliest crossing instead.
//!
//! Cost per decision: proportional to what changed, not to the cluster.
//! The policy keeps its own model of the running jobs (fed by events and by
//! its own actions; attained service grows at `gpus * fraction` per second,
//! so it is computed, not read), ordered by (queue, id), plus the waiting
//! jobs ordered the same way. A decision re-keys only the running jobs whose
//! queue changed (the earliest crossing is kept in an ordered set, so even
//! that check is one comparison when nothing crossed). When the best
//! waiting job ranks below every running one, nothing can be preempted and
//! the decision only fills free GPUs from the head of the waiting queue;
//! otherwise it walks running and waiting jobs merged in priority order,
//! stopping as soon as the cluster's capacity is used up. Either way, the
//! waiting jobs too big for what is left are never walked: the waiting
//! jobs are also indexed by gang size, so the next one that fits is found
//! by looking once per gang size, however deep the queue. The whole running
//! set is read from the host only when a GPU goes offline or comes back.
//!
//! The [`Tiresias`] type is public and implements [`Policy`], so a native
//! benchmark can drive exactly the code that runs in the component.
//!
//! Placement (the paper's consolidation): a gang goes on as few nodes as
//! possible. One that the host's performance model says is sensitive to
//! placement, running over several nodes below [`SKEW`] of its speed on
//! one (`view.throughput(job, kind, gpus, spread)`), waits for a single
//! node rather than start spread, as Tiresias consolidates skewed models;
//! without a model (or for a gang larger than any node) any gang may
//! spread.
//!
//! Config: `thresholds=3600,36000` (GPU-seconds, ascending; `n` values
//! give `n + 1` queues; an empty list gives one queue, i.e. FIFO with
//! preemption only by age).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use wsched_sdk::*;

/// Slack when comparing attained service with a threshold, so that a job
/// woken up exactly at its crossing is seen in its new queue.
const EPS: f64 = 1e-6;

/// How far ahead of `now` (seconds) a running job's predicted queue change
/// is checked, so that rounding in the prediction never delays a re-key.
/// A job within it whose queue has not changed yet is simply checked again.
const REKEY_SLACK: f64 = 1e-3;

/// A job waiting for GPUs (pending or suspended), as the policy keeps it.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    gpus: u32,
    state: JobState,
    attained: f64,
}

/// A running job, as the policy keeps it.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// GPUs held.
    gpus: u32,
    /// Share of each held GPU.
    fraction: f64,
    /// Attained GPU-seconds at `since`.
    attained: f64,
    /// When the job (re)started or was last observed.
    since: f64,
    /// Its queue, as of the last re-key.
    queue: u32,
    /// When its attained service reaches the next queue (with [`EPS`]): its key in `due`.
    due: Option<Time>,
    /// When it crosses its queue's threshold exactly: its key in `wake`.
    wake: Option<Time>,
}

impl Running {
    /// GPU-seconds gained per second.
    fn rate(&self) -> f64 {
        self.gpus as f64 * self.fraction
    }

    /// Attained GPU-seconds at `now`.
    fn attained_at(&self, now: f64) -> f64 {
        let rate = self.rate();
        if rate.is_nan() || rate <= 0.0 {
            return self.attained;
        }
        self.attained + rate * (now - self.since).max(0.0)
    }
}

/// An `f64` time, totally ordered, to key ordered sets.
#[derive(Debug, Clone, Copy)]
struct Time(f64);

impl PartialEq for Time {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Time {}

impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Time {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The Tiresias policy.
#[derive(Debug)]
pub struct Tiresias {
    /// Upper bounds (GPU-seconds) of every queue but the last, ascending.
    thresholds: Vec<f64>,
    /// Waiting jobs in priority order: (queue, id).
    waiting: BTreeMap<(u32, JobId), Waiting>,
    /// Queue of each waiting job, to find it in `waiting`.
    queue_of: IdMap<JobId, u32>,
    /// The keys of `waiting` by gang size (jobs asking for no GPU, which
    /// never fit, left out): the best waiting job that fits in `cap` GPUs
    /// is found by looking at one set per gang size up to `cap`, instead of
    /// walking every waiting job that does not fit.
    by_gang: BTreeMap<u32, BTreeSet<(u32, JobId)>>,
    /// Running jobs.
    running: IdMap<JobId, Running>,
    /// Running jobs in priority order, (queue, id), with the GPUs each holds.
    run_order: BTreeMap<(u32, JobId), u32>,
    /// Running jobs by the time their queue changes next, earliest first.
    due: BTreeSet<(Time, JobId)>,
    /// Running jobs by the time they cross their queue's threshold, earliest first.
    wake: BTreeSet<(Time, JobId)>,
    /// GPUs held by the running jobs, all together.
    running_gpus: u64,
    /// GPU to node, rebuilt when a GPU changes.
    topology: Option<Topology>,
    /// Online GPUs.
    capacity: u32,
    /// Free GPUs kept from events (see `FreeGpus`).
    free: FreeGpus,
    /// The cluster's GPU kind (the first GPU's), to ask the performance
    /// model about placement; rebuilt with the topology.
    kind: Option<String>,
    /// The most GPUs any node has.
    node_size: u32,
}

/// A gang running over several nodes at less than this fraction of its
/// one-node speed waits for a single node (see the module doc).
pub const SKEW: f64 = 0.9;

impl Tiresias {
    /// Whether job `id`'s gang of `gpus` must wait for one node: the
    /// model says spreading slows it below [`SKEW`], and a node can hold it.
    fn must_consolidate(&self, view: &impl View, id: JobId, gpus: u32) -> bool {
        if gpus < 2 || gpus > self.node_size {
            return false;
        }
        let Some(kind) = &self.kind else { return false };
        match (
            view.throughput(id, kind, gpus, false),
            view.throughput(id, kind, gpus, true),
        ) {
            // Only sane figures count (positive and finite).
            (Some(one), Some(spread)) if one.is_finite() && one > 0.0 && spread.is_finite() && spread >= 0.0 => {
                spread < SKEW * one
            }
            _ => false,
        }
    }

    /// The queue a job with `attained` GPU-seconds belongs in.
    fn queue(&self, attained: f64) -> u32 {
        self.thresholds.partition_point(|&t| attained >= t - EPS) as u32
    }

    /// Number of waiting (pending or suspended) jobs in the policy's model.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Drop a job from the waiting set.
    fn unwait(&mut self, id: JobId) {
        if let Some(q) = self.queue_of.remove(&id)
            && let Some(w) = self.waiting.remove(&(q, id))
            && let Some(set) = self.by_gang.get_mut(&w.gpus)
        {
            set.remove(&(q, id));
            if set.is_empty() {
                self.by_gang.remove(&w.gpus);
            }
        }
    }

    /// The first waiting job in priority order after `after` (from the
    /// start when `None`) whose gang fits in `cap` GPUs. The same job a walk
    /// of `waiting` from `after` would admit first, skipping those that do
    /// not fit, in time proportional to the gang sizes waiting.
    fn next_fit(&self, after: Option<(u32, JobId)>, cap: u32) -> Option<((u32, JobId), Waiting)> {
        use std::ops::Bound::{Excluded, Unbounded};
        if cap == 0 {
            return None;
        }
        let from = after.map_or(Unbounded, Excluded);
        // Most often one of the next few fits: look at them in order first,
        // which is cheaper than one look per gang size.
        let mut walk = self.waiting.range((from, Unbounded));
        for _ in 0..8 {
            let (&key, &w) = walk.next()?;
            if w.gpus > 0 && w.gpus <= cap {
                return Some((key, w));
            }
        }
        let key = self
            .by_gang
            .range(1..=cap)
            .filter_map(|(_, set)| set.range((from, Unbounded)).next().copied())
            .min()?;
        self.waiting.get(&key).map(|&w| (key, w))
    }

    /// Drop a job from the running model, returning what it held.
    fn unrun(&mut self, id: JobId) -> Option<Running> {
        let r = self.running.remove(&id)?;
        self.run_order.remove(&(r.queue, id));
        if let Some(t) = r.due {
            self.due.remove(&(t, id));
        }
        if let Some(t) = r.wake {
            self.wake.remove(&(t, id));
        }
        self.running_gpus = self.running_gpus.saturating_sub(u64::from(r.gpus));
        Some(r)
    }

    /// Drop a job from the model altogether.
    fn forget(&mut self, id: JobId) {
        self.unwait(id);
        self.unrun(id);
    }

    fn wait(&mut self, id: JobId, w: Waiting) {
        self.forget(id);
        let q = self.queue(w.attained);
        self.queue_of.insert(id, q);
        self.waiting.insert((q, id), w);
        if w.gpus > 0 {
            self.by_gang.entry(w.gpus).or_default().insert((q, id));
        }
    }

    /// Record a job as running on `gpus` GPUs (`fraction` of each), with
    /// `attained` GPU-seconds at time `since`.
    fn run(&mut self, id: JobId, gpus: u32, fraction: f64, attained: f64, since: f64) {
        self.forget(id);
        let mut r = Running {
            gpus,
            fraction,
            attained,
            since,
            queue: self.queue(attained),
            due: None,
            wake: None,
        };
        self.schedule(id, &mut r);
        self.run_order.insert((r.queue, id), gpus);
        self.running_gpus += u64::from(gpus);
        self.running.insert(id, r);
    }

    /// Set (and index) when a running job in `r.queue` changes queue and
    /// crosses the queue's threshold; never in the last queue or at no rate.
    fn schedule(&mut self, id: JobId, r: &mut Running) {
        r.due = None;
        r.wake = None;
        let Some(&threshold) = self.thresholds.get(r.queue as usize) else {
            return;
        };
        let rate = r.rate();
        if rate.is_nan() || rate <= 0.0 {
            return;
        }
        let due = Time(r.since + (threshold - EPS - r.attained) / rate);
        let wake = Time(r.since + (threshold - r.attained) / rate);
        self.due.insert((due, id));
        self.wake.insert((wake, id));
        r.due = Some(due);
        r.wake = Some(wake);
    }

    /// Move the running jobs whose attained service reached another queue
    /// by `now` to that queue.
    fn rekey(&mut self, now: f64) {
        let limit = Time(now + REKEY_SLACK);
        if self.due.first().is_none_or(|&(t, _)| t > limit) {
            return;
        }
        let ids: Vec<JobId> = self.due.range(..=(limit, JobId::MAX)).map(|&(_, id)| id).collect();
        for id in ids {
            let Some(mut r) = self.running.get(&id).copied() else {
                continue;
            };
            let queue = self.queue(r.attained_at(now));
            if queue == r.queue {
                continue; // within the slack, not there yet: look again next time
            }
            if let Some(t) = r.due {
                self.due.remove(&(t, id));
            }
            if let Some(t) = r.wake {
                self.wake.remove(&(t, id));
            }
            self.run_order.remove(&(r.queue, id));
            r.queue = queue;
            self.schedule(id, &mut r);
            self.run_order.insert((queue, id), r.gpus);
            self.running.insert(id, r);
        }
    }

    /// Bring the model in line with a job's record (idempotent); `now` is
    /// the time the record describes.
    fn note(&mut self, job: &JobInfo, now: f64) {
        match job.state {
            JobState::Pending | JobState::Suspended => self.wait(
                job.id,
                Waiting {
                    gpus: job.gpus_requested,
                    state: job.state,
                    attained: job.attained_gpu_seconds,
                },
            ),
            JobState::Running => self.run(
                job.id,
                job.placement.len() as u32,
                job.fraction,
                job.attained_gpu_seconds,
                now,
            ),
            JobState::Finished | JobState::Failed => self.forget(job.id),
        }
    }

    /// Rebuild the model of running and suspended jobs from the host (after
    /// a GPU change, which may suspend jobs without a per-job event).
    fn resync(&mut self, view: &impl View, now: f64) {
        self.running.clear();
        self.run_order.clear();
        self.due.clear();
        self.wake.clear();
        self.running_gpus = 0;
        for r in view.running() {
            self.run(r.id, r.gpus, r.fraction, r.attained_gpu_seconds, now);
        }
        for id in view.jobs(JobState::Suspended) {
            if !self.queue_of.contains_key(&id)
                && let Some(job) = view.job(id)
            {
                self.note(&job, now);
            }
        }
    }

    /// When a job in `queue` with `attained` service, gaining `rate`
    /// GPU-seconds per second, enters the next queue (None in the last).
    fn crossing(&self, now: f64, queue: u32, attained: f64, rate: f64) -> Option<f64> {
        let threshold = *self.thresholds.get(queue as usize)?;
        if rate.is_nan() || rate <= 0.0 {
            return None;
        }
        let t = now + (threshold - attained).max(0.0) / rate;
        Some(if t > now { t } else { now + 1e-6 })
    }

    /// When a running job crosses into its next queue, seen from `now`.
    fn crossing_of(&self, now: f64, id: JobId) -> Option<f64> {
        let r = self.running.get(&id)?;
        self.crossing(now, r.queue, r.attained_at(now), r.rate())
    }

    /// The earliest time a running job crosses into a lower-priority
    /// queue, when anything is waiting to take advantage.
    fn next_crossing(&self, now: f64) -> Option<f64> {
        if self.waiting.is_empty() {
            return None;
        }
        let &(_, id) = self.wake.first()?;
        self.crossing_of(now, id)
    }
}

fn parse_config(config: &str) -> Result<Vec<f64>, String> {
    let mut thresholds = vec![3600.0, 36000.0];
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("tiresias: `{pair}` is not key=value"));
        };
        match key.trim() {
            "thresholds" => {
                let value = value.trim();
                let mut list = Vec::new();
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let t: f64 = item
                        .parse()
                        .map_err(|_| format!("tiresias: thresholds: `{item}` is not a number"))?;
                    if !(t.is_finite() && t > 0.0) {
                        return Err(format!("tiresias: thresholds: `{item}` must be finite and > 0"));
                    }
                    if list.last().is_some_and(|&last| t <= last) {
                        return Err(format!(
                            "tiresias: thresholds must be strictly ascending, got `{value}`"
                        ));
                    }
                    list.push(t);
                }
                thresholds = list;
            }
            other => {
                return Err(format!("tiresias: unknown config key `{other}` (known: thresholds)"));
            }
        }
    }
    Ok(thresholds)
}

impl Policy for Tiresias {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let thresholds = parse_config(config)?;
        let policy = Tiresias {
            thresholds,
            waiting: BTreeMap::new(),
            queue_of: IdMap::default(),
            by_gang: BTreeMap::new(),
            running: IdMap::default(),
            run_order: BTreeMap::new(),
            due: BTreeSet::new(),
            wake: BTreeSet::new(),
            running_gpus: 0,
            topology: None,
            capacity: 0,
            free: FreeGpus::new(),
            kind: None,
            node_size: 0,
        };
        Ok((
            policy,
            PolicyInfo {
                name: "tiresias".into(),
                tick_interval: None,
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        let now = view.now();
        let mut resync = false;
        for event in &events {
            self.free.observe(event);
        }
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job, now),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::JobPreempted(id) => {
                    if let Some(job) = view.job(id) {
                        self.note(&job, now);
                    }
                }
                Event::GpuChanged(_) => {
                    // The topology and capacity changed; rebuild the model of
                    // running jobs from the host as a safety net (rare event).
                    self.topology = None;
                    resync = true;
                }
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("tiresias: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job, now),
                        None => self.forget(r.job),
                    }
                }
                Event::Tick => {}
            }
        }
        if self.topology.is_none() {
            let gpus = view.gpus();
            self.capacity = gpus.iter().filter(|g| g.online).count() as u32;
            self.kind = gpus.first().map(|g| g.kind.clone());
            let mut per_node: BTreeMap<u32, u32> = BTreeMap::new();
            for g in &gpus {
                *per_node.entry(g.node).or_default() += 1;
            }
            self.node_size = per_node.values().copied().max().unwrap_or(0);
            self.topology = Some(Topology::new(&gpus));
        }
        if resync {
            self.resync(view, now);
        }
        let mut actions = Vec::new();
        if self.waiting.is_empty() {
            return Decision { actions, wakeup: None };
        }
        self.rekey(now);

        // Walk every active job in priority order, running and waiting
        // merged, keeping those that fit until the capacity is used up.
        let mut cap = self.capacity;
        let mut admit: Vec<(JobId, Waiting)> = Vec::new();
        // Running jobs that keep their GPUs, and those that lose them, in
        // priority order; `None` when all keep them.
        let mut split: Option<(Vec<JobId>, Vec<JobId>)> = None;
        // Where the running jobs that all keep their GPUs without being
        // walked begin, when the walk stopped early.
        let mut kept_from: Option<(u32, JobId)> = None;
        let all_fit = self.running_gpus <= u64::from(cap);
        let all_ahead = match (self.run_order.last_key_value(), self.waiting.keys().next()) {
            (Some((worst_running, _)), Some(best_waiting)) => worst_running < best_waiting,
            _ => true,
        };
        // The last waiting job admitted: every waiting job before it was
        // admitted or did not fit (and never will in this decision, as the
        // capacity left only shrinks).
        let mut passed: Option<(u32, JobId)> = None;
        if all_fit && all_ahead {
            // Every running job comes first and fits: nothing can be
            // preempted, so only the capacity left over is handed out.
            cap -= self.running_gpus as u32;
        } else {
            let (mut kept, mut victims) = (Vec::new(), Vec::new());
            // GPUs held by the running jobs not walked yet.
            let mut unwalked = self.running_gpus;
            // The next waiting job that fits, found again only when it was
            // admitted or no longer fits (once none fits, none will: the
            // capacity left only shrinks).
            let mut fit = self.next_fit(passed, cap);
            let mut ri = self.run_order.iter().peekable();
            while cap > 0 {
                // Waiting jobs that do not fit are skipped without a
                // change, so the walk only meets the next one that fits.
                if fit.is_some_and(|(_, w)| w.gpus > cap) {
                    fit = self.next_fit(passed, cap);
                }
                if fit.is_none() && unwalked <= u64::from(cap) {
                    // Nothing waiting fits, and every running job not
                    // walked yet fits in what is left: they all keep their
                    // GPUs, and walking them one by one would change nothing.
                    kept_from = ri.peek().map(|&(&key, _)| key);
                    break;
                }
                let take_run = match (ri.peek(), &fit) {
                    (Some(&(&r, _)), Some((w, _))) => r < *w,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                if take_run {
                    if let Some((&(_, id), &gpus)) = ri.next() {
                        unwalked = unwalked.saturating_sub(u64::from(gpus));
                        if gpus <= cap {
                            kept.push(id);
                            cap -= gpus;
                        } else {
                            victims.push(id);
                        }
                    }
                } else if let Some((key, w)) = fit {
                    admit.push((key.1, w));
                    cap -= w.gpus;
                    passed = Some(key);
                    fit = self.next_fit(passed, cap);
                }
            }
            if kept_from.is_none() {
                victims.extend(ri.map(|(&(_, id), _)| id));
            }
            split = Some((kept, victims));
        }
        while cap > 0 {
            let Some((key, w)) = self.next_fit(passed, cap) else {
                break;
            };
            admit.push((key.1, w));
            cap -= w.gpus;
            passed = Some(key);
        }
        let victims = match split {
            Some((mut kept, victims)) if !victims.is_empty() => {
                if admit.is_empty() {
                    if let Some(from) = kept_from {
                        kept.extend(self.run_order.range(from..).map(|(&(_, id), _)| id));
                    }
                    // Nothing waiting can run: preempting would only waste
                    // work. Only the jobs that fit count for the wake-up.
                    let wakeup = kept
                        .iter()
                        .filter_map(|&id| self.crossing_of(now, id))
                        .min_by(f64::total_cmp);
                    return Decision { actions, wakeup };
                }
                victims
            }
            _ => Vec::new(),
        };
        if admit.is_empty() {
            // Nothing waiting can run, and every running job keeps its GPUs.
            return Decision {
                actions,
                wakeup: self.next_crossing(now),
            };
        }

        self.free.sync(view);
        for id in victims {
            actions.push(Action::Preempt(id));
            let Some(r) = self.unrun(id) else { continue };
            let mut gpus = r.gpus;
            let mut attained = r.attained_at(now);
            if let Some(job) = view.job(id) {
                gpus = job.gpus_requested;
                attained = job.attained_gpu_seconds;
                // Only an exclusive holder leaves its GPUs free behind it.
                let left = if r.fraction >= 1.0 - EPS {
                    &job.placement[..]
                } else {
                    &[]
                };
                self.free.vacate(id, left);
            }
            self.wait(
                id,
                Waiting {
                    gpus,
                    state: JobState::Suspended,
                    attained,
                },
            );
        }
        let mut started: Vec<(JobId, Waiting)> = Vec::new();
        for (id, w) in admit {
            // Best-fitting node, else the nodes with most free GPUs, as
            // `Topology::take_gang` would, from the pool kept from events;
            // a placement-sensitive gang only on one node.
            if w.gpus >= 2 && self.free.most_on_one_node() < w.gpus as usize && self.must_consolidate(view, id, w.gpus)
            {
                continue; // waits for a node to free up
            }
            let Some(gpus) = self.free.take_gang(id, w.gpus) else {
                continue; // not actually available (shared GPUs): try next time
            };
            let placement = Placement { job: id, gpus };
            actions.push(match w.state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            });
            started.push((id, w));
        }
        for (id, w) in started {
            self.run(id, w.gpus, 1.0, w.attained, now);
        }
        let wakeup = self.next_crossing(now);
        Decision { actions, wakeup }
    }
}

export_policy!(Tiresias);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    fn policy(config: &str) -> Tiresias {
        Tiresias::init(config).expect("valid config").0
    }

    fn starts(d: &Decision) -> Vec<(JobId, Vec<GpuId>)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(p) | Action::Resume(p) => Some((p.job, p.gpus.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_placement_sensitive_gang_waits_for_one_node() {
        // Two nodes of two GPUs, one GPU busy on each: two free GPUs, on
        // different nodes.
        let setup = |spread_rate: Option<f64>| {
            let mut view = FakeView::new(4, 2);
            let (a, b) = (view.add_job(1), view.add_job(1));
            view.place(a.id, &[0], 1.0);
            view.place(b.id, &[2], 1.0);
            let gang = view.add_job(2);
            if let Some(rate) = spread_rate {
                view.set_throughput(gang.id, "fake", 2, 1.0);
                view.model.throughputs.insert((gang.id, "fake".into(), 2, true), rate);
            }
            let events = vec![
                Event::JobArrived(view.job(a.id).unwrap()),
                Event::JobArrived(view.job(b.id).unwrap()),
                Event::JobArrived(gang.clone()),
            ];
            (view, events, gang.id)
        };
        // Half as fast spread: it waits.
        let (view, events, _) = setup(Some(0.5));
        let mut p = policy("");
        assert_eq!(starts(&p.decide(&view, events)), vec![]);
        // Barely slower spread, or no model: it starts over both nodes.
        for rate in [Some(0.95), None, Some(f64::NAN)] {
            let (view, events, gang) = setup(rate);
            let d = policy("").decide(&view, events);
            assert_eq!(starts(&d), vec![(gang, vec![1, 3])], "{rate:?}");
        }
        // Once a node frees up, the waiting gang gets it whole.
        let (mut view, events, gang) = setup(Some(0.5));
        let mut p = policy("");
        p.decide(&view, events);
        view.finish(1);
        let d = p.decide(&view, vec![Event::JobFinished(1)]);
        assert_eq!(starts(&d), vec![(gang, vec![2, 3])]);
    }

    #[test]
    fn preempts_job_past_threshold_for_new_arrival() {
        let mut view = FakeView::new(4, 4);
        let old = view.add_job(4);
        view.place(old.id, &[0, 1, 2, 3], 1.0);
        view.job_mut(old.id).attained_gpu_seconds = 4000.0; // queue 1
        let mut p = policy("");
        let d = p.decide(&view, vec![Event::JobArrived(view.job(old.id).unwrap())]);
        assert!(d.actions.is_empty(), "nothing waits: {:?}", d.actions);
        assert_eq!(d.wakeup, None);

        view.now = 100.0;
        let new = view.add_job(2);
        let d = p.decide(&view, vec![Event::JobArrived(new.clone())]);
        assert!(matches!(d.actions[0], Action::Preempt(id) if id == old.id));
        assert_eq!(starts(&d), vec![(new.id, vec![0, 1])]);
        // The newcomer reaches 3600 GPU-seconds on 2 GPUs after 1800 s.
        assert_eq!(d.wakeup, Some(100.0 + 1800.0));
        assert_eq!(p.waiting_len(), 1, "the victim waits, suspended");
    }

    #[test]
    fn keeps_job_below_threshold_and_wakes_at_crossing() {
        let mut view = FakeView::new(4, 4);
        let old = view.add_job(4);
        view.place(old.id, &[0, 1, 2, 3], 1.0);
        view.job_mut(old.id).attained_gpu_seconds = 1000.0; // queue 0, older
        let new = view.add_job(2);
        view.now = 50.0;
        let mut p = policy("");
        let d = p.decide(
            &view,
            vec![Event::JobArrived(view.job(old.id).unwrap()), Event::JobArrived(new)],
        );
        assert!(d.actions.is_empty(), "same queue, older job wins: {:?}", d.actions);
        // (3600 - 1000) / 4 GPUs = 650 s until the old job drops to queue 1.
        assert_eq!(d.wakeup, Some(50.0 + 650.0));

        // At the wake-up the old job has crossed: it yields to the newcomer.
        view.now = 700.0;
        view.job_mut(old.id).attained_gpu_seconds = 3600.0;
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(matches!(d.actions[0], Action::Preempt(id) if id == old.id));
        assert_eq!(starts(&d).len(), 1);
    }

    #[test]
    fn fills_idle_cluster_and_resumes_suspended_in_priority_order() {
        let mut view = FakeView::new(8, 4);
        let a = view.add_job(4);
        let b = view.add_job(4);
        let c = view.add_job(2);
        view.job_mut(a.id).state = JobState::Suspended;
        view.job_mut(a.id).attained_gpu_seconds = 50_000.0; // last queue
        let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
        let mut p = policy("");
        let d = p.decide(&view, events);
        // b (queue 0) and c (queue 0) first; a does not fit after them.
        assert_eq!(starts(&d), vec![(b.id, vec![0, 1, 2, 3]), (c.id, vec![4, 5])]);
        assert!(d.wakeup.is_some(), "a waits, so ask to be woken");
    }

    #[test]
    fn arrivals_are_idempotent_after_hot_swap() {
        let mut view = FakeView::new(2, 2);
        let a = view.add_job(2);
        let b = view.add_job(2);
        view.place(a.id, &[0, 1], 1.0);
        let a = view.job(a.id).unwrap();
        let mut p = policy("");
        let d = p.decide(
            &view,
            vec![
                Event::JobArrived(a.clone()),
                Event::JobArrived(b.clone()),
                Event::JobArrived(b),
            ],
        );
        assert!(d.actions.is_empty());
        assert_eq!(p.waiting_len(), 1);
    }

    #[test]
    fn config_keys_are_checked() {
        assert_eq!(policy("thresholds=10,20,30").thresholds, vec![10.0, 20.0, 30.0]);
        assert!(policy("thresholds=").thresholds.is_empty());
        for bad in [
            "bogus=1",
            "thresholds=20,10",
            "thresholds=x",
            "thresholds=-1",
            "thresholds",
        ] {
            let err = Tiresias::init(bad).expect_err(bad);
            assert!(err.starts_with("tiresias:"), "{err}");
        }
        assert!(Tiresias::init("bogus=1").err().unwrap().contains("bogus"));
    }

    /// A [`FakeView`] that refuses `running()`: decisions must work from the
    /// policy's own model, not from a copy of the running set.
    struct NoRunning(FakeView);

    impl View for NoRunning {
        fn now(&self) -> f64 {
            self.0.now()
        }
        fn stats(&self) -> ClusterStats {
            self.0.stats()
        }
        fn job(&self, id: JobId) -> Option<JobInfo> {
            self.0.job(id)
        }
        fn jobs(&self, state: JobState) -> Vec<JobId> {
            self.0.jobs(state)
        }
        fn running(&self) -> Vec<RunningJob> {
            panic!("running() read outside a GPU change")
        }
        fn gpus(&self) -> Vec<GpuInfo> {
            self.0.gpus()
        }
        fn gpu(&self, id: GpuId) -> Option<GpuInfo> {
            self.0.gpu(id)
        }
        fn free_gpus(&self) -> Vec<GpuId> {
            self.0.free_gpus()
        }
    }

    #[test]
    fn follows_its_own_starts_and_preempts_by_computed_service() {
        let mut view = NoRunning(FakeView::new(2, 2));
        let a = view.0.add_job(2);
        let mut p = policy("thresholds=100");
        let d = p.decide(&view, vec![Event::JobArrived(a.clone())]);
        assert_eq!(starts(&d), vec![(a.id, vec![0, 1])]);
        assert_eq!(d.wakeup, None, "nothing waits");
        view.0.place(a.id, &[0, 1], 1.0);

        // 60 s on 2 GPUs: 120 GPU-seconds, past the threshold of 100.
        view.0.now = 60.0;
        view.0.job_mut(a.id).attained_gpu_seconds = 120.0;
        let b = view.0.add_job(1);
        let d = p.decide(&view, vec![Event::JobArrived(b.clone())]);
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == a.id),
            "{:?}",
            d.actions
        );
        assert_eq!(starts(&d), vec![(b.id, vec![0])]);
        assert_eq!(d.wakeup, Some(60.0 + 100.0), "b reaches 100 GPU-seconds on 1 GPU");
        assert_eq!(p.waiting_len(), 1);
    }

    #[test]
    fn wakes_at_the_crossing_of_a_job_it_started() {
        let mut view = NoRunning(FakeView::new(2, 2));
        let a = view.0.add_job(2);
        let b = view.0.add_job(2);
        let mut p = policy("thresholds=100");
        let d = p.decide(&view, vec![Event::JobArrived(a.clone()), Event::JobArrived(b.clone())]);
        assert_eq!(starts(&d), vec![(a.id, vec![0, 1])]);
        assert_eq!(d.wakeup, Some(50.0), "a crosses 100 GPU-seconds on 2 GPUs at 50 s");
        view.0.place(a.id, &[0, 1], 1.0);

        // Before the crossing nothing changes, and the wake-up stays put.
        view.0.now = 20.0;
        view.0.job_mut(a.id).attained_gpu_seconds = 40.0;
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(d.wakeup, Some(50.0));

        view.0.now = 50.0;
        view.0.job_mut(a.id).attained_gpu_seconds = 100.0;
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == a.id),
            "{:?}",
            d.actions
        );
        assert_eq!(starts(&d), vec![(b.id, vec![0, 1])]);
        assert_eq!(d.wakeup, Some(100.0));
    }

    #[test]
    fn rejected_start_goes_back_to_waiting() {
        let mut view = NoRunning(FakeView::new(2, 2));
        let a = view.0.add_job(2);
        let mut p = policy("");
        let d = p.decide(&view, vec![Event::JobArrived(a.clone())]);
        assert_eq!(starts(&d), vec![(a.id, vec![0, 1])]);
        assert_eq!(p.waiting_len(), 0);

        // The host refused it: the job is still pending, so start it again.
        let rejected = Event::ActionRejected(Rejection {
            index: 0,
            job: a.id,
            reason: "test".into(),
        });
        let d = p.decide(&view, vec![rejected]);
        assert_eq!(starts(&d), vec![(a.id, vec![0, 1])]);
    }

    #[test]
    fn rejected_preempt_keeps_the_job_running() {
        let mut view = NoRunning(FakeView::new(2, 2));
        let a = view.0.add_job(2);
        view.0.place(a.id, &[0, 1], 1.0);
        view.0.job_mut(a.id).attained_gpu_seconds = 4000.0;
        let mut p = policy("");
        let a = view.0.job(a.id).unwrap();
        assert!(p.decide(&view, vec![Event::JobArrived(a.clone())]).actions.is_empty());
        let b = view.0.add_job(2);
        let d = p.decide(&view, vec![Event::JobArrived(b.clone())]);
        assert!(matches!(d.actions[0], Action::Preempt(id) if id == a.id));

        // Both refused (the view never changed): a runs, b waits, and b
        // outranks a, so the policy tries again.
        let reject = |job| {
            Event::ActionRejected(Rejection {
                index: 0,
                job,
                reason: "test".into(),
            })
        };
        let d = p.decide(&view, vec![reject(a.id), reject(b.id)]);
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == a.id),
            "{:?}",
            d.actions
        );
        assert_eq!(starts(&d), vec![(b.id, vec![0, 1])]);
        assert_eq!(p.waiting_len(), 1);
    }

    #[test]
    fn gpu_change_rebuilds_running_and_suspended_jobs() {
        let mut view = FakeView::new(4, 2);
        let a = view.add_job(2);
        let b = view.add_job(2);
        let c = view.add_job(2);
        view.place(a.id, &[0, 1], 1.0);
        view.place(b.id, &[2, 3], 1.0);
        let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
        let mut p = policy("");
        assert!(p.decide(&view, events).actions.is_empty(), "older jobs run");

        // GPU 0 goes away; the host suspends a without a per-job event.
        view.gpus[0].online = false;
        view.suspend(a.id);
        let d = p.decide(&view, vec![Event::GpuChanged(0)]);
        // 3 GPUs left: a (older, same queue) outranks b, which yields its
        // GPUs to it; c waits.
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == b.id),
            "{:?}",
            d.actions
        );
        assert!(matches!(&d.actions[1], Action::Resume(pl) if pl.job == a.id && pl.gpus == vec![2, 3]));
        assert_eq!(d.actions.len(), 2);
        assert_eq!(p.waiting_len(), 2);
        assert_eq!(d.wakeup, Some(1800.0), "a reaches 3600 GPU-seconds on 2 GPUs");

        // Applied by the host: nothing else fits on the one free GPU.
        view.suspend(b.id);
        view.place(a.id, &[2, 3], 1.0);
        view.now = 10.0;
        view.job_mut(a.id).attained_gpu_seconds = 20.0;
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(d.wakeup, Some(1800.0));
        assert_eq!(p.waiting_len(), 2, "b and {} wait", c.id);
    }
}

#[cfg(test)]
mod scale {
    use super::*;
    use wsched_sdk::testing::FakeView;

    /// 10,000 waiting jobs on 1,024 busy GPUs: a decision walks only up to
    /// the capacity, so it stays cheap. (Timing: `cargo test --release`.)
    #[test]
    fn full_cluster_with_10k_waiting() {
        let mut view = FakeView::new(1024, 8);
        for g in 0..1024 {
            let id = view.add_job(1).id;
            view.place(id, &[g], 1.0);
            view.job_mut(id).attained_gpu_seconds = 100.0;
        }
        for _ in 0..10_000 {
            view.add_job(1 + (view.jobs.len() % 4) as u32);
        }
        let mut p = Tiresias::init("").unwrap().0;
        let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
        let d = p.decide(&view, events);
        assert!(d.actions.is_empty(), "older running jobs in queue 0 keep their GPUs");
        let started = std::time::Instant::now();
        for _ in 0..100 {
            let d = p.decide(&view, vec![Event::Tick]);
            assert!(d.actions.is_empty() && d.wakeup.is_some());
        }
        eprintln!("tiresias: {:?} per decision (native)", started.elapsed() / 100);
    }
}

#[cfg(test)]
mod index {
    use super::*;
    use wsched_sdk::testing::Rng;

    /// What `next_fit` must answer: the first waiting job after `after`
    /// that fits in `cap`, found by walking them all.
    fn walked(p: &Tiresias, after: Option<(u32, JobId)>, cap: u32) -> Option<(u32, JobId)> {
        p.waiting
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| **k > a))
            .find(|(_, w)| w.gpus > 0 && w.gpus <= cap)
            .map(|(k, _)| *k)
    }

    #[test]
    fn next_fit_finds_what_a_walk_of_every_waiting_job_finds() {
        let mut rng = Rng::new(1);
        let mut p = Tiresias::init("thresholds=10,100").unwrap().0;
        for round in 0..200 {
            // Jobs come and go, in every queue, of gang sizes 0 to 64; every
            // other round mostly big ones, so that the next fitting job
            // often lies beyond the few looked at in order.
            let sizes: &[u32] = if round % 2 == 0 {
                &[0, 1, 1, 1, 2, 4, 8, 16, 64]
            } else {
                &[0, 2, 16, 64, 64, 64, 64, 64, 64]
            };
            for _ in 0..20 {
                let id = rng.below(500);
                if rng.below(4) == 0 {
                    p.forget(id);
                } else {
                    let gpus = sizes[rng.below(sizes.len() as u64) as usize];
                    let attained = rng.below(200) as f64;
                    let state = JobState::Suspended;
                    p.wait(id, Waiting { gpus, state, attained });
                }
            }
            let keys: Vec<(u32, JobId)> = p.waiting.keys().copied().collect();
            for _ in 0..20 {
                let after = if rng.below(3) > 0 { rng.pick(&keys) } else { None };
                let cap = rng.below(70) as u32;
                let got = p.next_fit(after, cap).map(|(k, _)| k);
                assert_eq!(got, walked(&p, after, cap), "round {round}: after {after:?}, cap {cap}");
            }
        }
    }
}
