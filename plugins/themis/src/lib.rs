//! Themis-style finish-time fairness over leases.
//!
//! From Mahajan et al., "Themis: Fair and Efficient GPU Cluster Scheduling"
//! (NSDI'20). Themis measures fairness by how much longer a job takes on
//! the shared cluster than it would on its own fair slice of it: the
//! finish-time fairness `rho = T_shared / T_ideal`. A job with `rho` above 1
//! is worse off than if it had been given `1/N` of the cluster; Themis hands
//! GPUs out in leases, and at each lease's end gives them to the jobs
//! furthest behind, so that the worst `rho` stays as small as it can.
//!
//! Here, for each live job at time `t`, with `d` its expected duration on
//! its gang, `a` the seconds it has run on it (its attained service over
//! its gang size) and `c` the cluster's contention (GPUs asked for by every
//! live job over the GPUs online, at least 1):
//! - `T_shared = (t - submit) + (d - a)`: its finish time if it ran from now
//!   to its end;
//! - `T_ideal = d * c`: its time on a `1/c` slice of the cluster;
//! - `rho = T_shared / T_ideal`.
//!
//! A job whose duration is not told (`expected-duration` withheld) is
//! taken to need as long again as it has run (`d = 2a`, at least one
//! lease), the usual guess of schedulers that do not know.
//!
//! At each lease's end (the tick), the fairness knob `f` (`fairness=0.8`)
//! decides how many jobs bid: the `ceil((1 - f) * n)` with the worst `rho`
//! (at least one) are offered GPUs first, worst first, each taking its gang
//! if it fits; then, as Themis leaves no GPU idle, the others by `rho` while
//! GPUs remain. Running jobs not chosen are preempted. Between leases,
//! arrivals and completions only fill free GPUs by `rho`, preempting none.
//! `f = 0` offers GPUs to every job in `rho` order (the most efficient);
//! `f` near 1 to the worst few (the fairest).
//!
//! The paper's auction (bids of each job's valuation of GPU bundles,
//! placement-aware) needs a model of how a job's speed depends on its
//! placement, which the host does not model yet: here a job bids for its
//! whole gang, anywhere.
//!
//! Cost: `rho` moves with time for every job, so a lease's end, and a
//! decision with free GPUs and waiting jobs, read every live job; other
//! decisions (nothing free, nothing waiting) read none.
//!
//! Config: `lease=600` (seconds, > 0), `fairness=0.8` (in [0, 1)).

use std::collections::{BTreeMap, BTreeSet};
use wsched_sdk::*;

/// A live job as the policy keeps it.
#[derive(Debug, Clone, Copy)]
struct Live {
    gpus: u32,
    state: JobState,
    submit: f64,
}

/// The Themis policy.
#[derive(Debug)]
pub struct Themis {
    lease: f64,
    fairness: f64,
    /// Live jobs: gang, state as last known, submission time.
    jobs: BTreeMap<JobId, Live>,
    free: FreeGpus,
    /// Online GPUs (read again after a GPU changed).
    capacity: Option<u32>,
}

fn parse_config(config: &str) -> Result<(f64, f64), String> {
    let (mut lease, mut fairness) = (600.0, 0.8);
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("themis: `{pair}` is not key=value"));
        };
        let value = value.trim();
        let number: f64 = value
            .parse()
            .map_err(|_| format!("themis: {}: `{value}` is not a number", key.trim()))?;
        match key.trim() {
            "lease" if number.is_finite() && number > 0.0 => lease = number,
            "lease" => return Err(format!("themis: lease: `{value}` must be seconds > 0")),
            "fairness" if (0.0..1.0).contains(&number) => fairness = number,
            "fairness" => return Err(format!("themis: fairness: `{value}` must be in [0, 1)")),
            other => return Err(format!("themis: unknown config key `{other}` (known: lease, fairness)")),
        }
    }
    Ok((lease, fairness))
}

impl Themis {
    fn note(&mut self, job: &JobInfo) {
        match job.state {
            JobState::Pending | JobState::Running | JobState::Suspended => {
                self.jobs.insert(
                    job.id,
                    Live {
                        gpus: job.gpus_requested,
                        state: job.state,
                        submit: job.submit_time,
                    },
                );
            }
            _ => {
                self.jobs.remove(&job.id);
            }
        }
    }

    /// Each live job's finish-time fairness now, worst (largest) first;
    /// ties: older job first.
    fn by_rho(&self, view: &impl View, capacity: u32) -> Vec<(f64, JobId)> {
        let now = view.now();
        let demand: u64 = self.jobs.values().map(|j| u64::from(j.gpus)).sum();
        let contention = (demand as f64 / f64::from(capacity.max(1))).max(1.0);
        let mut order: Vec<(f64, JobId)> = self
            .jobs
            .keys()
            .map(|&id| {
                let job = view.job(id);
                let gpus = job.as_ref().map_or(1, |j| j.gpus_requested.max(1));
                let attained = job.as_ref().map_or(0.0, |j| j.attained_gpu_seconds) / f64::from(gpus);
                let duration = job
                    .as_ref()
                    .and_then(|j| j.expected_duration)
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .unwrap_or((2.0 * attained).max(self.lease));
                let submit = self.jobs.get(&id).map_or(now, |j| j.submit);
                let shared = (now - submit).max(0.0) + (duration - attained).max(0.0);
                let rho = shared / (duration * contention);
                (if rho.is_finite() { rho } else { f64::MAX }, id)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order
    }

    /// A lease ends: choose who holds GPUs for the next one.
    fn lease_end(&mut self, view: &impl View, capacity: u32, actions: &mut Vec<Action>) {
        let running = view.running();
        let held: BTreeMap<JobId, u32> = running.iter().map(|r| (r.id, r.gpus)).collect();
        let order = self.by_rho(view, capacity);
        let bidders = (((1.0 - self.fairness) * order.len() as f64).ceil() as usize).max(1);
        let mut cap = capacity;
        let mut chosen: BTreeSet<JobId> = BTreeSet::new();
        let mut picked: Vec<JobId> = Vec::new();
        let (first, rest) = order.split_at(bidders.min(order.len()));
        for &(_, id) in first.iter().chain(rest) {
            let gpus = held
                .get(&id)
                .copied()
                .or_else(|| self.jobs.get(&id).map(|j| j.gpus))
                .unwrap_or(0);
            if gpus > 0 && gpus <= cap {
                cap -= gpus;
                chosen.insert(id);
                picked.push(id);
            }
        }
        self.free.sync(view);
        let mut unsure = Vec::new();
        for r in &running {
            if chosen.contains(&r.id) {
                continue;
            }
            actions.push(Action::Preempt(r.id));
            match view.job(r.id) {
                Some(job) if r.fraction >= 1.0 - 1e-9 => self.free.vacate(r.id, &job.placement),
                _ => unsure.push(r.id),
            }
            if let Some(j) = self.jobs.get_mut(&r.id) {
                j.state = JobState::Suspended;
            }
        }
        for id in picked {
            self.place(id, actions);
        }
        for id in unsure {
            self.free.release(id);
            self.free.invalidate();
        }
    }

    /// Start or resume a waiting job on free GPUs, if its gang fits.
    fn place(&mut self, id: JobId, actions: &mut Vec<Action>) -> bool {
        let Some(&live) = self.jobs.get(&id) else { return false };
        if !matches!(live.state, JobState::Pending | JobState::Suspended) {
            return false;
        }
        let Some(gpus) = self.free.take_gang(id, live.gpus) else {
            return false;
        };
        let placement = Placement { job: id, gpus };
        actions.push(if live.state == JobState::Suspended {
            Action::Resume(placement)
        } else {
            Action::Start(placement)
        });
        if let Some(j) = self.jobs.get_mut(&id) {
            j.state = JobState::Running;
        }
        true
    }

    /// Between leases: fill free GPUs by `rho`, preempting nothing.
    fn fill(&mut self, view: &impl View, capacity: u32, actions: &mut Vec<Action>) {
        if !self
            .jobs
            .values()
            .any(|j| matches!(j.state, JobState::Pending | JobState::Suspended))
        {
            return;
        }
        self.free.sync(view);
        if self.free.is_empty() {
            return;
        }
        for (_, id) in self.by_rho(view, capacity) {
            if self.free.is_empty() {
                break;
            }
            self.place(id, actions);
        }
    }
}

impl Policy for Themis {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let (lease, fairness) = parse_config(config)?;
        Ok((
            Themis {
                lease,
                fairness,
                jobs: BTreeMap::new(),
                free: FreeGpus::new(),
                capacity: None,
            },
            PolicyInfo {
                name: "themis".into(),
                tick_interval: Some(lease),
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        for event in &events {
            self.free.observe(event);
        }
        let mut lease_over = false;
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => {
                    self.jobs.remove(&id);
                }
                Event::JobPreempted(id) | Event::ActionRejected(Rejection { job: id, .. }) => match view.job(id) {
                    Some(job) => self.note(&job),
                    None => {
                        self.jobs.remove(&id);
                    }
                },
                Event::GpuChanged(_) => self.capacity = None,
                Event::Tick => lease_over = true,
            }
        }
        let capacity = *self
            .capacity
            .get_or_insert_with(|| view.gpus().iter().filter(|g| g.online).count() as u32);
        let mut actions = Vec::new();
        if lease_over {
            self.lease_end(view, capacity, &mut actions);
        } else {
            self.fill(view, capacity, &mut actions);
        }
        Decision { actions, wakeup: None }
    }
}

export_policy!(Themis);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::{FakeView, placed};

    fn policy(config: &str) -> Themis {
        Themis::init(config).expect("valid config").0
    }

    #[test]
    fn a_lease_goes_to_the_job_furthest_behind_its_fair_finish() {
        // One GPU. A has run 900 s of its 1000; B arrived at 0 and waited,
        // needing 1000 s. At t = 1000: A's rho = (1000 + 100) / (1000 * 2),
        // B's rho = (1000 + 1000) / (1000 * 2): B is worse off and wins the
        // lease, A is preempted.
        let mut view = FakeView::new(1, 1);
        let a = view.add_job(1).id;
        let b = view.add_job(1).id;
        for id in [a, b] {
            view.job_mut(id).expected_duration = Some(1000.0);
        }
        view.place(a, &[0], 1.0);
        view.job_mut(a).attained_gpu_seconds = 900.0;
        let mut p = policy("lease=600;fairness=0.5");
        let arrivals = vec![
            Event::JobArrived(view.job(a).unwrap()),
            Event::JobArrived(view.job(b).unwrap()),
        ];
        assert!(
            p.decide(&view, arrivals).actions.is_empty(),
            "no GPU free between leases"
        );
        view.now = 1000.0;
        let d = p.decide(&view, vec![Event::Tick]);
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == a),
            "{:?}",
            d.actions
        );
        assert_eq!(placed(&d), vec![b]);
    }

    #[test]
    fn between_leases_free_gpus_go_by_rho_without_preempting() {
        let mut view = FakeView::new(2, 2);
        let long_waiter = view.add_job(1).id;
        let fresh = view.add_job(1).id;
        let holder = view.add_job(1).id;
        view.place(holder, &[0], 1.0);
        for id in [long_waiter, fresh, holder] {
            view.job_mut(id).expected_duration = Some(100.0);
        }
        view.job_mut(fresh).submit_time = 500.0;
        view.now = 500.0;
        let mut p = policy("");
        let events = [long_waiter, fresh, holder]
            .iter()
            .map(|&id| Event::JobArrived(view.job(id).unwrap()))
            .collect();
        let d = p.decide(&view, events);
        assert_eq!(
            placed(&d),
            vec![long_waiter],
            "the one that waited longest is furthest behind"
        );
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Preempt(_))));
    }

    #[test]
    fn config_keys_are_checked() {
        assert!(Themis::init("lease=60;fairness=0").is_ok());
        for bad in [
            "lease=0",
            "lease=-1",
            "lease=NaN",
            "fairness=1",
            "fairness=-0.1",
            "speed=2",
            "lease",
        ] {
            assert!(Themis::init(bad).is_err(), "{bad}");
        }
    }
}
