//! The policy as it was before it kept its waiting jobs and free GPUs
//! from events: it read every running job and every free GPU and sorted
//! every live job at every decision. Kept, for tests only, as the
//! reference the incremental policy must agree with action for action.

use super::parse_config;
use std::collections::BTreeMap;
use wsched_sdk::*;

/// Rounds a job has been active (live) and has held GPUs in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    received: u64,
    active: u64,
}

/// The Gavel policy.
#[derive(Debug)]
pub struct Reference {
    /// Live jobs: gang size and state as last known.
    jobs: BTreeMap<JobId, (u32, JobState)>,
    /// Per-job round counters (policy-private; snapshotted).
    counters: BTreeMap<JobId, Counters>,
    topology: Option<Topology>,
    capacity: u32,
}

impl Reference {
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

impl Policy for Reference {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let round = parse_config(config)?;
        let policy = Reference {
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
}

impl Reference {
    /// Take over the counters of a snapshot made by `Gavel::snapshot`.
    pub fn restore_counters(&mut self, state: &[u8]) -> Result<(), String> {
        self.counters = super::decode(state)?
            .into_iter()
            .map(|(id, c)| {
                (
                    id,
                    Counters {
                        received: c.received,
                        active: c.active,
                    },
                )
            })
            .collect();
        Ok(())
    }
}
