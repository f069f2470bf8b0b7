//! Gavel-style max-min fairness over scheduling rounds.
//!
//! From Narayanan et al., "Heterogeneity-Aware Cluster Scheduling Policies
//! for Deep Learning Workloads" (OSDI'20). Gavel computes an ideal share of
//! time for every job and then, round by round, gives GPUs to the jobs
//! furthest behind their share. Here (on one GPU type) the share is the
//! max-min fair one: water-filling over gang sizes, every active job gets
//! the same time share `s`, capped at 1, with `sum(s * gpus) <= GPUs`.
//! A job's priority is `s / (rounds received / rounds active)`, so a job
//! that got fewer rounds than its share rises until it is picked. That
//! round-based rotation, driven by policy-private counters the host does
//! not know, is what defines the policy; `snapshot`/`restore` carry the
//! counters over a hot swap so fairness survives an upgrade.
//!
//! On each tick (one per round) jobs are picked in descending priority
//! (ties: lower id) while their gang fits; running jobs not picked are
//! preempted. Between ticks, arrivals and completions only fill free GPUs
//! in priority order, without preempting.
//!
//! Config: `round=360` (seconds per round, > 0).

use std::collections::BTreeMap;
use wsched_sdk::*;

/// Snapshot header: "GAVEL" and a format version.
const MAGIC: u64 = u64::from_le_bytes(*b"GAVELsnp");
const VERSION: u64 = 1;

/// Rounds a job has been active (live) and has held GPUs in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    received: u64,
    active: u64,
}

/// The Gavel policy.
#[derive(Debug)]
pub struct Gavel {
    round: f64,
    /// Live jobs: gang size and state as last known.
    jobs: BTreeMap<JobId, (u32, JobState)>,
    /// Per-job round counters (policy-private; snapshotted).
    counters: BTreeMap<JobId, Counters>,
    topology: Option<Topology>,
    capacity: u32,
}

fn parse_config(config: &str) -> Result<f64, String> {
    let mut round = 360.0;
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("gavel: `{pair}` is not key=value"));
        };
        match key.trim() {
            "round" => {
                let value = value.trim();
                round = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| format!("gavel: round: `{value}` is not a number of seconds > 0"))?;
            }
            other => {
                return Err(format!("gavel: unknown config key `{other}` (known: round)"));
            }
        }
    }
    Ok(round)
}

impl Gavel {
    fn note(&mut self, job: &JobInfo) {
        match job.state {
            JobState::Pending | JobState::Running | JobState::Suspended => {
                self.jobs.insert(job.id, (job.gpus_requested, job.state));
            }
            _ => self.forget(job.id),
        }
    }

    fn forget(&mut self, id: JobId) {
        self.jobs.remove(&id);
        self.counters.remove(&id);
    }

    /// The max-min fair time share of every job that can ever fit.
    fn fair_share(&self) -> f64 {
        let demand: u64 = self
            .jobs
            .values()
            .filter(|(g, _)| *g > 0 && *g <= self.capacity)
            .map(|(g, _)| *g as u64)
            .sum();
        if demand == 0 {
            1.0
        } else {
            (self.capacity as f64 / demand as f64).min(1.0)
        }
    }

    /// Jobs in descending priority (ties: lower id).
    fn by_priority(&self) -> Vec<JobId> {
        let share = self.fair_share();
        let mut order: Vec<(f64, JobId)> = self
            .jobs
            .keys()
            .map(|&id| {
                let c = self.counters.get(&id).copied().unwrap_or_default();
                let ratio = if c.active == 0 {
                    0.0
                } else {
                    c.received as f64 / c.active as f64
                };
                (share / ratio.max(1e-3), id)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, id)| id).collect()
    }

    /// Rounds received and active of a job (for tests and tools).
    pub fn counters(&self, id: JobId) -> Option<(u64, u64)> {
        self.counters.get(&id).map(|c| (c.received, c.active))
    }
}

impl Policy for Gavel {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let round = parse_config(config)?;
        let policy = Gavel {
            round,
            jobs: BTreeMap::new(),
            counters: BTreeMap::new(),
            topology: None,
            capacity: 0,
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
        let mut tick = false;
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::Tick => tick = true,
                Event::JobPreempted(id) => {
                    if let Some(job) = view.job(id) {
                        self.note(&job);
                    }
                }
                Event::GpuChanged(_) => self.topology = None,
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gavel: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.forget(r.job),
                    }
                }
            }
        }
        if self.topology.is_none() {
            let gpus = view.gpus();
            self.capacity = gpus.iter().filter(|g| g.online).count() as u32;
            self.topology = Some(Topology::new(&gpus));
        }
        // The true states: who runs now.
        let running = view.running();
        for state in self.jobs.values_mut() {
            if state.1 == JobState::Running {
                state.1 = JobState::Suspended;
            }
        }
        let mut running_gpus: BTreeMap<JobId, (u32, f64)> = BTreeMap::new();
        for r in &running {
            running_gpus.insert(r.id, (r.gpus, r.fraction));
            self.jobs.entry(r.id).or_insert((r.gpus, JobState::Running)).1 = JobState::Running;
        }

        if tick {
            // Close the round that just ended before choosing the next one:
            // every live job was active in it, and the jobs holding GPUs at
            // its end ran in it (however they got their GPUs: at a tick or
            // between ticks), so no job's service goes uncounted.
            for &id in self.jobs.keys() {
                self.counters.entry(id).or_default().active += 1;
            }
            for id in running_gpus.keys() {
                self.counters.entry(*id).or_default().received += 1;
            }
        }

        let mut actions = Vec::new();
        let order = self.by_priority();
        let mut free = view.free_gpus();
        let mut picked: Vec<JobId> = Vec::new();
        if tick {
            // Pick the round's jobs, then preempt the others to make room.
            let mut cap = self.capacity;
            let mut chosen = std::collections::BTreeSet::new();
            for &id in &order {
                let gpus = match running_gpus.get(&id) {
                    Some(&(held, _)) => held,
                    None => self.jobs.get(&id).map_or(0, |j| j.0),
                };
                if gpus > 0 && gpus <= cap {
                    cap -= gpus;
                    chosen.insert(id);
                }
            }
            for r in &running {
                if !chosen.contains(&r.id) {
                    actions.push(Action::Preempt(r.id));
                    if let Some(job) = view.job(r.id)
                        && r.fraction >= 1.0 - 1e-9
                    {
                        free.extend_from_slice(&job.placement);
                    }
                    if let Some(j) = self.jobs.get_mut(&r.id) {
                        j.1 = JobState::Suspended;
                    }
                }
            }
            free.sort_unstable();
            picked = order.iter().copied().filter(|id| chosen.contains(id)).collect();
        }
        let Some(topology) = self.topology.as_ref() else {
            return Decision { actions, wakeup: None };
        };
        let candidates: Vec<JobId> = if tick { picked } else { order };
        for id in candidates {
            if free.is_empty() {
                break;
            }
            let Some(&(gpus, state)) = self.jobs.get(&id) else {
                continue;
            };
            if !matches!(state, JobState::Pending | JobState::Suspended) {
                continue;
            }
            let Some(placement) = topology.take_gang(&mut free, gpus) else {
                continue;
            };
            let placement = Placement {
                job: id,
                gpus: placement,
            };
            actions.push(if state == JobState::Suspended {
                Action::Resume(placement)
            } else {
                Action::Start(placement)
            });
            if let Some(j) = self.jobs.get_mut(&id) {
                j.1 = JobState::Running;
            }
        }
        Decision { actions, wakeup: None }
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let mut e = Encoder::default();
        e.u64(MAGIC)
            .u64(VERSION)
            .f64(self.round)
            .u64(self.counters.len() as u64);
        for (&id, c) in &self.counters {
            e.u64(id).u64(c.received).u64(c.active);
        }
        Some(e.0)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.counters = decode(state).map_err(|e| format!("gavel: {e}"))?;
        Ok(())
    }
}

/// Read the counters from a snapshot made by [`Gavel::snapshot`].
fn decode(state: &[u8]) -> Result<BTreeMap<JobId, Counters>, String> {
    {
        let mut d = Decoder(state);
        if d.u64().ok() != Some(MAGIC) {
            return Err("not a gavel snapshot (bad magic)".into());
        }
        let version = d.u64()?;
        if version != VERSION {
            return Err(format!("snapshot version {version}, expected {VERSION}"));
        }
        let _round = d.f64()?;
        let n = d.u64()?;
        let mut counters = BTreeMap::new();
        for _ in 0..n {
            let id = d.u64()?;
            let received = d.u64()?;
            let active = d.u64()?;
            counters.insert(id, Counters { received, active });
        }
        if !d.is_empty() {
            return Err("trailing bytes after snapshot".into());
        }
        Ok(counters)
    }
}

export_policy!(Gavel);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    fn gavel() -> Gavel {
        Gavel::init("").unwrap().0
    }

    /// Apply starts/resumes/preempts to the fake view, as the host would.
    fn apply(view: &mut FakeView, d: &Decision) {
        for a in &d.actions {
            match a {
                Action::Preempt(id) => view.suspend(*id),
                Action::Start(p) | Action::Resume(p) => view.place(p.job, &p.gpus, 1.0),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn holders(view: &FakeView) -> Vec<JobId> {
        view.jobs(JobState::Running)
    }

    #[test]
    fn rotates_jobs_on_ticks() {
        // Three 1-GPU jobs on 2 GPUs: fair share 2/3 each.
        let mut view = FakeView::new(2, 2);
        let events = (0..3).map(|_| Event::JobArrived(view.add_job(1))).collect();
        let mut p = gavel();
        let d = p.decide(&view, events);
        apply(&mut view, &d);
        assert_eq!(holders(&view), vec![0, 1], "arrivals fill free GPUs, oldest first");
        let mut ran = [0u32; 3];
        for _ in 0..6 {
            let d = p.decide(&view, vec![Event::Tick]);
            apply(&mut view, &d);
            for id in holders(&view) {
                ran[id as usize] += 1;
            }
        }
        assert_eq!(ran, [4, 4, 4], "every job gets 2/3 of the rounds");
        assert_eq!(p.counters(2), Some((4, 6)));
    }

    #[test]
    fn non_tick_calls_do_not_preempt() {
        let mut view = FakeView::new(1, 1);
        let a = view.add_job(1);
        let mut p = gavel();
        let d = p.decide(&view, vec![Event::JobArrived(a.clone())]);
        apply(&mut view, &d);
        let b = view.add_job(1);
        let d = p.decide(&view, vec![Event::JobArrived(b)]);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // The first round closes: a ran in it (1 of 1), b did not (0 of 1),
        // so b outranks a for the next one.
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(matches!(&d.actions[..], [Action::Preempt(0), Action::Start(pl)] if pl.job == 1));
    }

    #[test]
    fn snapshot_round_trips_and_foreign_state_is_refused() {
        let mut view = FakeView::new(1, 1);
        let events = (0..2).map(|_| Event::JobArrived(view.add_job(1))).collect();
        let mut p = gavel();
        let d = p.decide(&view, events);
        apply(&mut view, &d);
        for _ in 0..3 {
            let d = p.decide(&view, vec![Event::Tick]);
            apply(&mut view, &d);
        }
        let snap = p.snapshot().unwrap();
        let mut q = gavel();
        q.restore(&snap).unwrap();
        assert_eq!(q.snapshot().unwrap(), snap);
        assert_eq!(q.counters(0), p.counters(0));

        // FIFO keeps no snapshot; whatever another policy or a corrupt file
        // hands over must be refused, leaving the counters alone.
        let mut other = Encoder::default();
        other.u64(u64::from_le_bytes(*b"FIFOsnap")).u64(1);
        let mut future = Encoder::default();
        future.u64(MAGIC).u64(VERSION + 1);
        for bad in [&b""[..], b"garbage!", &other.0, &future.0, &snap[..snap.len() - 3]] {
            let err = q.restore(bad).unwrap_err();
            assert!(err.starts_with("gavel:"), "{err}");
        }
        assert_eq!(q.snapshot().unwrap(), snap);
    }

    #[test]
    fn config_round_sets_the_tick() {
        assert_eq!(Gavel::init("round=60").unwrap().1.tick_interval, Some(60.0));
        assert_eq!(Gavel::init("").unwrap().1.tick_interval, Some(360.0));
        for bad in ["round=0", "round=abc", "rounds=5"] {
            assert!(Gavel::init(bad).err().unwrap().starts_with("gavel:"), "{bad}");
        }
    }
}
