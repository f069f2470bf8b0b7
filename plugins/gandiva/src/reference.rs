//! The policy as it was before it kept its own model of the cluster: it
//! read every GPU and every running job at every decision. Kept, for tests
//! only, as the reference the incremental policy must agree with, action
//! for action.

use super::{EPS, parse_config};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use wsched_sdk::*;

/// A job waiting for GPUs.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    gpus: u32,
    state: JobState,
    memory: u64,
}

/// The Gandiva policy.
#[derive(Debug)]
pub struct Reference {
    pack: bool,
    max_share: u32,
    waiting: BTreeMap<JobId, Waiting>,
    topology: Option<Topology>,
}

impl Reference {
    fn note(&mut self, job: &JobInfo) {
        match job.state {
            JobState::Pending | JobState::Suspended => {
                let w = Waiting {
                    gpus: job.gpus_requested,
                    state: job.state,
                    memory: job.memory_per_gpu,
                };
                self.waiting.insert(job.id, w);
            }
            _ => {
                self.waiting.remove(&job.id);
            }
        }
    }
}

/// Whether every resident of `gpu` is a running job that holds this GPU only.
fn single_gpu_residents(gpu: &GpuInfo, running: &HashMap<JobId, RunningJob>) -> bool {
    !gpu.residents.is_empty()
        && gpu
            .residents
            .iter()
            .all(|r| running.get(&r.job).is_some_and(|j| j.gpus == 1))
}

impl Policy for Reference {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let (pack, max_share) = parse_config(config)?;
        let policy = Reference {
            pack,
            max_share,
            waiting: BTreeMap::new(),
            topology: None,
        };
        Ok((
            policy,
            PolicyInfo {
                name: "gandiva".into(),
                tick_interval: None,
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => {
                    self.waiting.remove(&id);
                }
                Event::JobPreempted(id) => {
                    if let Some(job) = view.job(id) {
                        self.note(&job);
                    }
                }
                Event::GpuChanged(_) => self.topology = None,
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gandiva: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => {
                            self.waiting.remove(&r.job);
                        }
                    }
                }
                Event::Tick => {}
            }
        }
        let mut actions = Vec::new();
        let gpus = view.gpus();
        let running: HashMap<JobId, RunningJob> = view.running().into_iter().map(|r| (r.id, r)).collect();
        let underfull = |g: &GpuInfo| {
            g.online
                && !g.residents.is_empty()
                && single_gpu_residents(g, &running)
                && g.residents.iter().map(|r| r.fraction).sum::<f64>() < 1.0 - EPS
        };
        if self.waiting.is_empty() && view.stats().free_gpus == 0 && !gpus.iter().any(underfull) {
            return Decision { actions, wakeup: None };
        }
        // GPUs steps 2 and 3 act on: their shares are set there.
        let mut touched: BTreeSet<GpuId> = BTreeSet::new();
        let topology = self.topology.get_or_insert_with(|| Topology::new(&gpus)).clone();
        let mut free: Vec<GpuId> = gpus
            .iter()
            .filter(|g| g.online && g.residents.is_empty())
            .map(|g| g.id)
            .collect();

        // 1. Exclusive starts, FIFO, skipping gangs that do not fit.
        let mut placed = Vec::new();
        // One-GPU jobs started in this batch: they can host a packed job
        // right away, as GPUs held from earlier calls can.
        let mut fresh: Vec<(GpuId, JobId, u64)> = Vec::new();
        for (&id, w) in &self.waiting {
            if free.is_empty() {
                break;
            }
            let Some(gang) = topology.take_gang(&mut free, w.gpus) else {
                continue;
            };
            if let [gpu] = gang[..] {
                fresh.push((gpu, id, w.memory));
            }
            let placement = Placement { job: id, gpus: gang };
            actions.push(match w.state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            });
            placed.push(id);
        }
        for id in placed.drain(..) {
            self.waiting.remove(&id);
        }

        // 2. Full cluster: pack 1-GPU jobs by time-slicing busy GPUs.
        if free.is_empty() && self.pack && self.max_share >= 2 {
            let mut hosts: Vec<(usize, GpuId, Vec<JobId>, u64, u64)> = gpus
                .iter()
                .filter(|g| {
                    g.online && g.residents.len() < self.max_share as usize && single_gpu_residents(g, &running)
                })
                .map(|g| {
                    let jobs = g.residents.iter().map(|r| r.job).collect();
                    (g.residents.len(), g.id, jobs, g.memory_used, g.memory_total)
                })
                .collect();
            for &(gpu, job, memory) in &fresh {
                if let Some(g) = gpus.iter().find(|g| g.id == gpu) {
                    hosts.push((1, gpu, vec![job], g.memory_used.saturating_add(memory), g.memory_total));
                }
            }
            hosts.sort_by_key(|h| (h.0, h.1));
            for (&id, w) in &self.waiting {
                if w.gpus != 1 {
                    continue;
                }
                let Some(h) = hosts
                    .iter_mut()
                    .find(|h| h.0 < self.max_share as usize && h.3.saturating_add(w.memory) <= h.4)
                else {
                    continue;
                };
                let fraction = 1.0 / (h.2.len() + 1) as f64;
                for &resident in &h.2 {
                    actions.push(Action::Share(SharedPlacement {
                        job: resident,
                        gpus: vec![h.1],
                        fraction,
                    }));
                }
                actions.push(Action::Share(SharedPlacement {
                    job: id,
                    gpus: vec![h.1],
                    fraction,
                }));
                touched.insert(h.1);
                h.0 += 1;
                h.2.push(id);
                h.3 += w.memory;
                placed.push(id);
            }
            for id in placed.drain(..) {
                self.waiting.remove(&id);
            }
        }

        // 3. Free GPUs and packed ones: spread the packed jobs out again.
        if !free.is_empty() {
            for g in &gpus {
                if free.is_empty() {
                    break;
                }
                if !(g.online && g.residents.len() >= 2 && single_gpu_residents(g, &running)) {
                    continue;
                }
                let mut stay: Vec<JobId> = g.residents.iter().map(|r| r.job).collect();
                stay.sort_unstable();
                let Some(mover) = stay.pop() else { continue };
                // Prefer a free GPU on the same node (cheaper move).
                let node = topology.node(g.id);
                let pos = free.iter().position(|&f| topology.node(f) == node).unwrap_or(0);
                let target = free.remove(pos);
                touched.insert(g.id);
                touched.insert(target);
                actions.push(Action::Migrate(Placement {
                    job: mover,
                    gpus: vec![target],
                }));
                actions.push(Action::Share(SharedPlacement {
                    job: mover,
                    gpus: vec![target],
                    fraction: 1.0,
                }));
                let fraction = 1.0 / stay.len() as f64;
                for job in stay {
                    actions.push(Action::Share(SharedPlacement {
                        job,
                        gpus: vec![g.id],
                        fraction,
                    }));
                }
            }
        }

        // 4. GPUs whose sharers hold less than all of it (at the start of
        // the decision; none that steps 2 and 3 acted on): an equal part each.
        for g in &gpus {
            if !touched.contains(&g.id) && underfull(g) {
                let mut residents: Vec<(JobId, f64)> = g.residents.iter().map(|r| (r.job, r.fraction)).collect();
                actions.extend(super::regrow(g.id, &mut residents));
            }
        }

        // 5. Free GPUs: pull scattered gangs onto one node.
        if !free.is_empty() {
            let mut node_size: BTreeMap<u32, u32> = BTreeMap::new();
            for g in gpus.iter().filter(|g| g.online) {
                *node_size.entry(topology.node(g.id)).or_default() += 1;
            }
            let mut spread: Vec<&RunningJob> = running
                .values()
                .filter(|r| r.gpus > 1 && r.fraction >= 1.0 - EPS)
                .filter(|r| node_size.values().any(|&n| n >= r.gpus))
                .collect();
            spread.sort_by_key(|r| r.id);
            for r in spread {
                if free.is_empty() {
                    break;
                }
                let Some(job) = view.job(r.id) else { continue };
                let held = &job.placement;
                if held.len() != r.gpus as usize || topology.nodes_spanned(held) <= 1 {
                    continue;
                }
                // The node needing the fewest moves that can hold the gang.
                let mut best: Option<(usize, u32)> = None;
                for (&node, &size) in &node_size {
                    if (size as usize) < held.len() {
                        continue;
                    }
                    let own = held.iter().filter(|&&g| topology.node(g) == node).count();
                    let spare = free.iter().filter(|&&g| topology.node(g) == node).count();
                    if own + spare >= held.len() && best.is_none_or(|(b, _)| own > b) {
                        best = Some((own, node));
                    }
                }
                let Some((own, node)) = best else { continue };
                let mut target: Vec<GpuId> = held.iter().copied().filter(|&g| topology.node(g) == node).collect();
                let mut need = held.len() - own;
                free.retain(|&g| {
                    if need > 0 && topology.node(g) == node {
                        target.push(g);
                        need -= 1;
                        false
                    } else {
                        true
                    }
                });
                target.sort_unstable();
                free.extend(held.iter().copied().filter(|g| !target.contains(g)));
                free.sort_unstable();
                actions.push(Action::Migrate(Placement {
                    job: r.id,
                    gpus: target,
                }));
            }
        }
        Decision { actions, wakeup: None }
    }
}
