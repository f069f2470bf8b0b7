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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use wsched_sdk::*;

#[cfg(test)]
mod reference;

/// Snapshot header: "GAVEL" and a format version.
const MAGIC: u64 = u64::from_le_bytes(*b"GAVELsnp");
const VERSION: u64 = 1;

/// Rounds a job has been active (live) and has held GPUs in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    received: u64,
    active: u64,
}

/// Waiting (pending or suspended) jobs by gang size, each set in priority
/// order, so that a decision between ticks finds the next job to place in
/// time proportional to the gang sizes waiting, not to the live jobs.
///
/// Between ticks a job's priority `share / ratio` changes only through
/// `share`, which is the same for every job, so the order is that of
/// `ratio` alone (ascending; ties: lower id): distinct ratios of round
/// counts are far further apart than the rounding of one division, so the
/// division by `share` never merges or swaps them. Counters change only at
/// ticks and on restore, where the queue is built again.
#[derive(Debug, Default)]
struct Queue {
    /// Each queued job's gang size and key.
    of: HashMap<JobId, (u32, u64)>,
    by_gang: BTreeMap<u32, BTreeSet<(u64, JobId)>>,
}

impl Queue {
    fn insert(&mut self, id: JobId, gpus: u32, key: u64) {
        self.remove(id);
        self.of.insert(id, (gpus, key));
        self.by_gang.entry(gpus).or_default().insert((key, id));
    }

    fn remove(&mut self, id: JobId) {
        if let Some((gpus, key)) = self.of.remove(&id)
            && let Some(set) = self.by_gang.get_mut(&gpus)
        {
            set.remove(&(key, id));
            if set.is_empty() {
                self.by_gang.remove(&gpus);
            }
        }
    }

    fn clear(&mut self) {
        self.of.clear();
        self.by_gang.clear();
    }

    fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// The first job in priority order whose gang is 1 to `most` GPUs, and
    /// its gang size.
    fn first_fitting(&self, most: usize) -> Option<(JobId, u32)> {
        let most = u32::try_from(most).unwrap_or(u32::MAX);
        if most == 0 {
            return None;
        }
        self.by_gang
            .range(1..=most)
            .filter_map(|(&gpus, set)| set.first().map(|&(key, id)| (key, id, gpus)))
            .min()
            .map(|(_, id, gpus)| (id, gpus))
    }
}

/// A job's place in the queue between ticks: its ratio of rounds received
/// to rounds active, floored as the priority floors it. Positive and
/// finite, so its bits order as the number does.
fn queue_key(c: Counters) -> u64 {
    ratio(c).max(1e-3).to_bits()
}

fn ratio(c: Counters) -> f64 {
    if c.active == 0 {
        0.0
    } else {
        c.received as f64 / c.active as f64
    }
}

/// The Gavel policy.
#[derive(Debug)]
pub struct Gavel {
    round: f64,
    /// Live jobs: gang size and state as last known.
    jobs: BTreeMap<JobId, (u32, JobState)>,
    /// Per-job round counters (policy-private; snapshotted).
    counters: BTreeMap<JobId, Counters>,
    /// The live jobs waiting for GPUs, in priority order.
    queue: Queue,
    /// Free GPUs kept from events and this policy's own actions.
    free: FreeGpus,
    /// Whether `capacity` is known (false until read, and after a GPU changed).
    capacity_known: bool,
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
                self.set(job.id, job.gpus_requested, job.state);
            }
            _ => self.forget(job.id),
        }
    }

    /// Record a live job's gang size and state, queueing it if it waits.
    fn set(&mut self, id: JobId, gpus: u32, state: JobState) {
        self.jobs.insert(id, (gpus, state));
        if matches!(state, JobState::Pending | JobState::Suspended) {
            let key = queue_key(self.counters.get(&id).copied().unwrap_or_default());
            self.queue.insert(id, gpus, key);
        } else {
            self.queue.remove(id);
        }
    }

    fn forget(&mut self, id: JobId) {
        self.jobs.remove(&id);
        self.counters.remove(&id);
        self.queue.remove(id);
    }

    /// Queue every waiting job again (after its counters changed).
    fn requeue(&mut self) {
        self.queue.clear();
        for (&id, &(gpus, state)) in &self.jobs {
            if matches!(state, JobState::Pending | JobState::Suspended) {
                let key = queue_key(self.counters.get(&id).copied().unwrap_or_default());
                self.queue.insert(id, gpus, key);
            }
        }
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
                (share / ratio(c).max(1e-3), id)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, id)| id).collect()
    }

    /// Rounds received and active of a job (for tests and tools).
    pub fn counters(&self, id: JobId) -> Option<(u64, u64)> {
        self.counters.get(&id).map(|c| (c.received, c.active))
    }

    /// A tick: close the round that ended, pick the next round's jobs in
    /// priority order, preempt the others and place the picked ones. A
    /// round touches every live job, so this reads every running job and
    /// orders every live job.
    fn round(&mut self, view: &impl View, actions: &mut Vec<Action>) {
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

        let order = self.by_priority();
        self.free.sync(view);
        // Pick the round's jobs, then preempt the others to make room.
        let mut cap = self.capacity;
        let mut chosen = BTreeSet::new();
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
        // Preempted jobs whose GPUs may not all be free now (shared ones,
        // or unknown to the view): the pool reads the view again after
        // this decision.
        let mut unsure = Vec::new();
        for r in &running {
            if !chosen.contains(&r.id) {
                actions.push(Action::Preempt(r.id));
                match view.job(r.id) {
                    Some(job) if r.fraction >= 1.0 - 1e-9 => self.free.vacate(r.id, &job.placement),
                    _ => unsure.push(r.id),
                }
                if let Some(j) = self.jobs.get_mut(&r.id) {
                    j.1 = JobState::Suspended;
                }
            }
        }
        for id in order.into_iter().filter(|id| chosen.contains(id)) {
            if self.free.is_empty() {
                break;
            }
            let Some(&(gpus, state)) = self.jobs.get(&id) else {
                continue;
            };
            if !matches!(state, JobState::Pending | JobState::Suspended) {
                continue;
            }
            let Some(gpus) = self.free.take_gang(id, gpus) else {
                continue;
            };
            actions.push(start_or_resume(id, state, gpus));
            if let Some(j) = self.jobs.get_mut(&id) {
                j.1 = JobState::Running;
            }
        }
        for id in unsure {
            self.free.release(id);
            self.free.invalidate();
        }
        self.requeue();
    }

    /// Between ticks: fill free GPUs in priority order, preempting nothing.
    /// A job whose gang does not fit is skipped; the walk ends when no
    /// waiting gang fits in what is left.
    fn fill(&mut self, view: &impl View, actions: &mut Vec<Action>) {
        if self.queue.is_empty() {
            return;
        }
        self.free.sync(view);
        while !self.free.is_empty() {
            let Some((id, gpus)) = self.queue.first_fitting(self.free.len()) else {
                break;
            };
            let state = self.jobs.get(&id).map_or(JobState::Pending, |j| j.1);
            let Some(placement) = self.free.take_gang(id, gpus) else {
                break;
            };
            actions.push(start_or_resume(id, state, placement));
            self.set(id, gpus, JobState::Running);
        }
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
        let round = parse_config(config)?;
        let policy = Gavel {
            round,
            jobs: BTreeMap::new(),
            counters: BTreeMap::new(),
            queue: Queue::default(),
            free: FreeGpus::new(),
            capacity_known: false,
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
        for event in &events {
            self.free.observe(event);
        }
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
                Event::GpuChanged(_) => self.capacity_known = false,
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gavel: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.forget(r.job),
                    }
                }
            }
        }
        if !self.capacity_known {
            self.capacity = view.gpus().iter().filter(|g| g.online).count() as u32;
            self.capacity_known = true;
        }
        let mut actions = Vec::new();
        if tick {
            self.round(view, &mut actions);
        } else {
            self.fill(view, &mut actions);
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
        self.requeue();
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
    use wsched_sdk::testing::{FakeView, Rng};

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

    /// Carry out a decision on the fake view as the host would, refusing
    /// some actions at random; returns the rejections to report.
    fn apply_some(view: &mut FakeView, d: &Decision, rng: &mut Rng) -> Vec<Event> {
        let mut rejected = Vec::new();
        for (index, a) in d.actions.iter().enumerate() {
            let job = match a {
                Action::Preempt(id) => *id,
                Action::Start(p) | Action::Resume(p) => p.job,
                other => panic!("unexpected {other:?}"),
            };
            // The host refuses a gang on GPUs that are not free (a
            // preemption before it in the batch may have been refused).
            let invalid = match a {
                Action::Start(p) | Action::Resume(p) => p.gpus.iter().any(|&g| {
                    let gpu = &view.gpus[g as usize];
                    !gpu.online || !gpu.residents.is_empty()
                }),
                _ => false,
            };
            if invalid || rng.below(25) == 0 {
                rejected.push(Event::ActionRejected(Rejection {
                    index: index as u32,
                    job,
                    reason: "refused by the test".into(),
                }));
                continue;
            }
            match a {
                Action::Preempt(id) => view.suspend(*id),
                Action::Start(p) | Action::Resume(p) => view.place(p.job, &p.gpus, 1.0),
                _ => unreachable!(),
            }
        }
        rejected
    }

    /// The incremental policy decides exactly what the old one (which read
    /// every running job and free GPU and sorted every job at every
    /// decision) decided, through arrivals, completions, failures, ticks,
    /// the host's preemptions, GPUs going and coming, refused actions and
    /// takeovers.
    #[test]
    fn agrees_with_the_full_recomputation() {
        for seed in 1..=60u64 {
            let mut rng = Rng::new(seed);
            let gpus = 4 + rng.below(13) as u32;
            let mut view = FakeView::new(gpus, 1 + rng.below(4) as u32);
            let mut p = gavel();
            let mut r = reference::Reference::init("").unwrap().0;
            let mut events: Vec<Event> = Vec::new();
            for step in 0..400 {
                for _ in 0..1 + rng.below(3) {
                    match rng.below(20) {
                        0..=6 => {
                            let size = [0, 1, 1, 1, 1, 2, 2, 3, 4, 5, 8, 99][rng.below(12) as usize];
                            events.push(Event::JobArrived(view.add_job(size)));
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
                        11..=15 => events.push(Event::Tick),
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
                            // A takeover: fresh instances, the counters
                            // handed over, every live job announced.
                            let snap = p.snapshot().unwrap();
                            p = gavel();
                            p.restore(&snap).unwrap();
                            r = reference::Reference::init("").unwrap().0;
                            r.restore_counters(&snap).unwrap();
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
                let got = p.decide(&view, events.clone());
                let want = r.decide(&view, std::mem::take(&mut events));
                assert_eq!(
                    format!("{:?}", got.actions),
                    format!("{:?}", want.actions),
                    "seed {seed}, step {step}"
                );
                events = apply_some(&mut view, &got, &mut rng);
            }
            for id in 0..view.jobs.len() as JobId {
                assert_eq!(p.counters(id), r.counters(id), "seed {seed}, job {id}");
            }
        }
    }

    #[test]
    fn queue_finds_the_first_gang_that_fits() {
        let mut q = Queue::default();
        assert_eq!(q.first_fitting(4), None);
        q.insert(1, 4, 5);
        q.insert(2, 1, 7);
        q.insert(3, 2, 5);
        assert_eq!(q.first_fitting(0), None);
        assert_eq!(q.first_fitting(8), Some((1, 4)), "lowest key, then lowest id");
        assert_eq!(q.first_fitting(3), Some((3, 2)));
        assert_eq!(q.first_fitting(1), Some((2, 1)));
        q.insert(3, 2, 9);
        assert_eq!(q.first_fitting(3), Some((2, 1)), "re-keyed");
        q.remove(2);
        q.remove(1);
        assert_eq!(q.first_fitting(1), None);
        assert_eq!(q.first_fitting(2), Some((3, 2)));
        q.clear();
        assert!(q.is_empty());
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
