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
//! Cost per decision: one `running()` read, a sort of the running set, and
//! a walk over the waiting jobs (kept in the policy's own ordered set, fed
//! by events) that stops as soon as the cluster's capacity is used up.
//!
//! The [`Tiresias`] type is public and implements [`Policy`], so a native
//! benchmark can drive exactly the code that runs in the component.
//!
//! Config: `thresholds=3600,36000` (GPU-seconds, ascending; `n` values
//! give `n + 1` queues; an empty list gives one queue, i.e. FIFO with
//! preemption only by age).

use std::collections::{BTreeMap, HashMap};
use wsched_sdk::*;

/// Slack when comparing attained service with a threshold, so that a job
/// woken up exactly at its crossing is seen in its new queue.
const EPS: f64 = 1e-6;

/// A job waiting for GPUs (pending or suspended), as the policy keeps it.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    gpus: u32,
    state: JobState,
    attained: f64,
}

/// The Tiresias policy.
#[derive(Debug)]
pub struct Tiresias {
    /// Upper bounds (GPU-seconds) of every queue but the last, ascending.
    thresholds: Vec<f64>,
    /// Waiting jobs in priority order: (queue, id).
    waiting: BTreeMap<(u32, JobId), Waiting>,
    /// Queue of each waiting job, to find it in `waiting`.
    queue_of: HashMap<JobId, u32>,
    /// GPU to node, rebuilt when a GPU changes.
    topology: Option<Topology>,
    /// Online GPUs.
    capacity: u32,
}

impl Tiresias {
    /// The queue a job with `attained` GPU-seconds belongs in.
    fn queue(&self, attained: f64) -> u32 {
        self.thresholds.partition_point(|&t| attained >= t - EPS) as u32
    }

    /// Number of waiting (pending or suspended) jobs in the policy's model.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    fn forget(&mut self, id: JobId) {
        if let Some(q) = self.queue_of.remove(&id) {
            self.waiting.remove(&(q, id));
        }
    }

    fn wait(&mut self, id: JobId, w: Waiting) {
        self.forget(id);
        let q = self.queue(w.attained);
        self.queue_of.insert(id, q);
        self.waiting.insert((q, id), w);
    }

    /// Bring the model in line with a job's record (idempotent).
    fn note(&mut self, job: &JobInfo) {
        match job.state {
            JobState::Pending | JobState::Suspended => self.wait(
                job.id,
                Waiting {
                    gpus: job.gpus_requested,
                    state: job.state,
                    attained: job.attained_gpu_seconds,
                },
            ),
            _ => self.forget(job.id),
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

/// Free GPUs grouped by node, for placing many gangs in one decision.
///
/// Chooses exactly what [`Topology::take_gang`] would (best-fitting node,
/// else the nodes with most free GPUs; lowest ids within a node), but in
/// time proportional to the number of nodes with free GPUs instead of the
/// number of free GPUs times nodes, which matters when a decision fills a
/// thousand GPUs.
struct FreePool {
    /// (node, free GPUs on it ascending), in node order.
    nodes: Vec<(u32, Vec<GpuId>)>,
    total: usize,
}

impl FreePool {
    fn new(topology: &Topology, free: &[GpuId]) -> Self {
        let mut sorted: Vec<(u32, GpuId)> = free.iter().map(|&g| (topology.node(g), g)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut nodes: Vec<(u32, Vec<GpuId>)> = Vec::new();
        for (n, g) in sorted.iter().copied() {
            match nodes.last_mut() {
                Some((last, gpus)) if *last == n => gpus.push(g),
                _ => nodes.push((n, vec![g])),
            }
        }
        FreePool {
            nodes,
            total: sorted.len(),
        }
    }

    fn take(&mut self, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || self.total < k {
            return None;
        }
        let best_fit = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].1.len() >= k)
            .min_by_key(|&i| (self.nodes[i].1.len(), self.nodes[i].0));
        let mut chosen = Vec::with_capacity(k);
        match best_fit {
            Some(i) => chosen.extend(self.nodes[i].1.drain(..k)),
            None => {
                let mut order: Vec<usize> = (0..self.nodes.len()).collect();
                order.sort_by_key(|&i| (std::cmp::Reverse(self.nodes[i].1.len()), self.nodes[i].0));
                for i in order {
                    let m = (k - chosen.len()).min(self.nodes[i].1.len());
                    chosen.extend(self.nodes[i].1.drain(..m));
                    if chosen.len() == k {
                        break;
                    }
                }
            }
        }
        self.total -= k;
        self.nodes.retain(|(_, gpus)| !gpus.is_empty());
        chosen.sort_unstable();
        Some(chosen)
    }
}

/// A running job as one decision sees it.
struct Run {
    queue: u32,
    id: JobId,
    gpus: u32,
    fraction: f64,
    attained: f64,
}

impl Policy for Tiresias {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let thresholds = parse_config(config)?;
        let policy = Tiresias {
            thresholds,
            waiting: BTreeMap::new(),
            queue_of: HashMap::new(),
            topology: None,
            capacity: 0,
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
        let mut resync_suspended = false;
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::GpuChanged(_) => {
                    // The topology or capacity changed, and the host may have
                    // suspended the jobs on that GPU without telling us per job.
                    self.topology = None;
                    resync_suspended = true;
                }
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("tiresias: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.forget(r.job),
                    }
                }
                Event::Tick => {}
            }
        }
        if self.topology.is_none() {
            let gpus = view.gpus();
            self.capacity = gpus.iter().filter(|g| g.online).count() as u32;
            self.topology = Some(Topology::new(&gpus));
        }
        if resync_suspended {
            for id in view.jobs(JobState::Suspended) {
                if !self.queue_of.contains_key(&id)
                    && let Some(job) = view.job(id)
                {
                    self.note(&job);
                }
            }
        }
        let mut actions = Vec::new();
        if self.waiting.is_empty() {
            return Decision { actions, wakeup: None };
        }
        let now = view.now();

        let mut run: Vec<Run> = view
            .running()
            .into_iter()
            .map(|r| Run {
                queue: self.queue(r.attained_gpu_seconds),
                id: r.id,
                gpus: r.gpus,
                fraction: r.fraction,
                attained: r.attained_gpu_seconds,
            })
            .collect();
        run.sort_unstable_by_key(|r| (r.queue, r.id));

        // Walk every active job in priority order, running and waiting
        // merged, keeping those that fit until the capacity is used up.
        let mut cap = self.capacity;
        let mut keep = vec![false; run.len()];
        let mut admit: Vec<(JobId, Waiting)> = Vec::new();
        let mut ri = 0;
        let mut wi = self.waiting.iter().peekable();
        while cap > 0 {
            let take_run = match (run.get(ri), wi.peek()) {
                (Some(r), Some(((q, id), _))) => (r.queue, r.id) < (*q, *id),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_run {
                let r = &run[ri];
                if r.gpus <= cap {
                    keep[ri] = true;
                    cap -= r.gpus;
                }
                ri += 1;
            } else if let Some((&(_, id), &w)) = wi.next()
                && w.gpus > 0
                && w.gpus <= cap
            {
                admit.push((id, w));
                cap -= w.gpus;
            }
        }
        if admit.is_empty() {
            // Nothing waiting can run: preempting would only waste work.
            return Decision {
                actions,
                wakeup: self.next_crossing(now, &run, &keep, &[]),
            };
        }

        let mut free = view.free_gpus();
        for (r, _) in run.iter().zip(&keep).filter(|(_, k)| !**k) {
            actions.push(Action::Preempt(r.id));
            let mut gpus = r.gpus;
            if let Some(job) = view.job(r.id) {
                gpus = job.gpus_requested;
                // Only an exclusive holder leaves its GPUs free behind it.
                if r.fraction >= 1.0 - EPS {
                    free.extend_from_slice(&job.placement);
                }
            }
            self.wait(
                r.id,
                Waiting {
                    gpus,
                    state: JobState::Suspended,
                    attained: r.attained,
                },
            );
        }
        let Some(topology) = self.topology.as_ref() else {
            return Decision { actions, wakeup: None };
        };
        let mut pool = FreePool::new(topology, &free);
        let mut started: Vec<(u32, f64, f64)> = Vec::new();
        for (id, w) in admit {
            let Some(gpus) = pool.take(w.gpus) else {
                continue; // not actually available (shared GPUs): try next time
            };
            let placement = Placement { job: id, gpus };
            actions.push(match w.state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            });
            self.forget(id);
            started.push((self.queue(w.attained), w.attained, w.gpus as f64));
        }
        let wakeup = self.next_crossing(now, &run, &keep, &started);
        Decision { actions, wakeup }
    }
}

impl Tiresias {
    /// The earliest time a job that keeps (or gets) GPUs crosses into a
    /// lower-priority queue, when anything is waiting to take advantage.
    fn next_crossing(&self, now: f64, run: &[Run], keep: &[bool], started: &[(u32, f64, f64)]) -> Option<f64> {
        if self.waiting.is_empty() {
            return None;
        }
        let kept = run
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .filter_map(|(r, _)| self.crossing(now, r.queue, r.attained, r.gpus as f64 * r.fraction));
        let new = started
            .iter()
            .filter_map(|&(q, a, rate)| self.crossing(now, q, a, rate));
        kept.chain(new).min_by(f64::total_cmp)
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

    #[test]
    fn free_pool_chooses_like_take_gang() {
        let view = FakeView::new(16, 4);
        let topo = Topology::new(&view.gpus);
        let free = vec![0, 1, 2, 4, 5, 8, 9, 10, 11, 13];
        let mut pool = FreePool::new(&topo, &free);
        let mut reference = free.clone();
        for k in [2, 1, 4, 3, 5, 1, 1] {
            assert_eq!(pool.take(k), topo.take_gang(&mut reference, k), "gang of {k}");
        }
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
