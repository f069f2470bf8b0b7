//! Gandiva-style packing, time-slicing and migration.
//!
//! From Xiao et al., "Gandiva: Introspective Cluster Scheduling for Deep
//! Learning" (OSDI'18). Gandiva treats GPUs as a resource to be shared and
//! rearranged rather than handed out once: when the cluster is full, new
//! jobs still get to run by time-slicing a GPU with another job (here a
//! `share` of the GPU, at most `max_share` jobs per GPU), and when GPUs
//! come free the packed jobs are spread out again and scattered gangs are
//! pulled together onto one node with `migrate`. Letting jobs start early
//! (so users get early feedback) at the cost of some slowdown, and fixing
//! placement as the cluster changes, is what defines it.
//!
//! Each decision, in order:
//! 1. start waiting jobs exclusively on free GPUs, FIFO, node-local gangs
//!    where possible (a gang that does not fit is skipped);
//! 2. with no GPU left free, pack waiting 1-GPU jobs onto GPUs held by
//!    running 1-GPU jobs: first shrink the residents' shares, then place
//!    the newcomer (`share`), e.g. 1.0 -> 0.5 + 0.5;
//! 3. with GPUs still free, un-pack: `migrate` one member of a packed GPU
//!    to a free GPU, then give it and the ones left their larger shares;
//! 4. give GPUs back: where the jobs sharing a GPU hold less than all of
//!    it between them (a partner ended or was preempted), each gets an
//!    equal part of the whole again (shrinking shares before growing
//!    others, so no step overcommits the GPU);
//! 5. with GPUs still free, consolidate: a multi-GPU job spread over
//!    several nodes moves onto one node that has room for it.
//!
//! Config: `pack=true|false` (default true), `max_share=2` (jobs per GPU,
//! >= 1; 1 disables packing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use wsched_sdk::*;

#[cfg(test)]
mod reference;

const EPS: f64 = 1e-6;

/// A job waiting for GPUs.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    gpus: u32,
    state: JobState,
    memory: u64,
}

/// The waiting jobs, oldest (lowest id) first, also by gang size, so that
/// a decision finds the next gang that fits without walking those that
/// do not.
#[derive(Debug, Default)]
struct Queue {
    jobs: BTreeMap<JobId, Waiting>,
    by_gang: BTreeMap<u32, BTreeSet<JobId>>,
}

impl Queue {
    fn insert(&mut self, id: JobId, w: Waiting) {
        self.remove(id);
        self.jobs.insert(id, w);
        self.by_gang.entry(w.gpus).or_default().insert(id);
    }

    fn remove(&mut self, id: JobId) {
        if let Some(w) = self.jobs.remove(&id)
            && let Some(set) = self.by_gang.get_mut(&w.gpus)
        {
            set.remove(&id);
            if set.is_empty() {
                self.by_gang.remove(&w.gpus);
            }
        }
    }

    /// The oldest job whose gang is 1 to `most` GPUs.
    fn first_fitting(&self, most: usize) -> Option<JobId> {
        let most = u32::try_from(most).unwrap_or(u32::MAX);
        if most == 0 {
            return None;
        }
        self.by_gang
            .range(1..=most)
            .filter_map(|(_, set)| set.first().copied())
            .min()
    }

    /// The waiting 1-GPU jobs, oldest first.
    fn singles(&self) -> Vec<JobId> {
        self.by_gang
            .get(&1)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Who holds which GPU, kept from events and this policy's own actions
/// (which the host applies in order, or refuses with an event), and read
/// again from the view whole only when that cannot be known: before the
/// first decision, after a GPU changed and after a refusal. Indexes what
/// each step of a decision looks for, so that finding it costs what
/// changed rather than the cluster's size:
/// - `free`: online GPUs with no resident (with the gang choice of
///   `Topology::take_gang`);
/// - `hosts`: GPUs where a newcomer may be packed (online, fewer than
///   `max_share` residents, all of them 1-GPU jobs), by (residents, id);
/// - `packed`: GPUs with two or more residents, all 1-GPU jobs;
/// - `underfull`: online GPUs whose residents, all 1-GPU jobs, hold less
///   than the whole GPU between them;
/// - `spread`: exclusive multi-GPU jobs spanning several nodes.
///
/// The order of a GPU's residents, and its memory, are read from the view
/// for the few GPUs a decision acts on.
#[derive(Debug, Default)]
struct Model {
    known: bool,
    max_share: usize,
    node_of: Vec<u32>,
    online: Vec<bool>,
    /// Online GPUs per node.
    node_size: BTreeMap<u32, u32>,
    residents: Vec<Vec<JobId>>,
    /// Running jobs: the GPUs each holds (ascending) and its share of each.
    held: HashMap<JobId, (Vec<GpuId>, f64)>,
    free: FreeGpus,
    hosts: BTreeSet<(usize, GpuId)>,
    host_key: Vec<Option<usize>>,
    packed: BTreeSet<GpuId>,
    underfull: BTreeSet<GpuId>,
    spread: BTreeSet<JobId>,
}

impl Model {
    fn node(&self, gpu: GpuId) -> u32 {
        self.node_of.get(gpu as usize).copied().unwrap_or(0)
    }

    /// Read everything from the view.
    fn sync(&mut self, view: &impl View) {
        if self.known {
            return;
        }
        let gpus = view.gpus();
        let len = gpus.iter().map(|g| g.id as usize + 1).max().unwrap_or(0);
        self.node_of = vec![0; len];
        self.online = vec![false; len];
        self.residents = vec![Vec::new(); len];
        self.host_key = vec![None; len];
        self.node_size.clear();
        self.held.clear();
        self.hosts.clear();
        self.packed.clear();
        self.underfull.clear();
        self.spread.clear();
        for g in &gpus {
            let i = g.id as usize;
            self.node_of[i] = g.node;
            self.online[i] = g.online;
            if g.online {
                *self.node_size.entry(g.node).or_default() += 1;
            }
            for r in &g.residents {
                self.residents[i].push(r.job);
                let entry = self.held.entry(r.job).or_insert_with(|| (Vec::new(), r.fraction));
                entry.0.push(g.id);
                entry.1 = r.fraction;
            }
        }
        self.free.reset(&gpus);
        for g in 0..len as GpuId {
            self.refresh_gpu(g);
        }
        let jobs: Vec<JobId> = self.held.keys().copied().collect();
        for id in jobs {
            self.refresh_job(id);
        }
        self.known = true;
    }

    /// Whether every resident of `gpu` is a running job holding this GPU only.
    fn single_gpu_residents(&self, gpu: GpuId) -> bool {
        let res = &self.residents[gpu as usize];
        !res.is_empty() && res.iter().all(|j| self.held.get(j).is_some_and(|h| h.0.len() == 1))
    }

    fn refresh_gpu(&mut self, gpu: GpuId) {
        let i = gpu as usize;
        if i >= self.residents.len() {
            return;
        }
        let online = self.online[i];
        let count = self.residents[i].len();
        if online && count == 0 {
            self.free.mark_free(gpu);
        } else {
            self.free.mark_busy(gpu);
        }
        let single = online && self.single_gpu_residents(gpu);
        if let Some(old) = self.host_key[i].take() {
            self.hosts.remove(&(old, gpu));
        }
        if single && count < self.max_share {
            self.hosts.insert((count, gpu));
            self.host_key[i] = Some(count);
        }
        if single && count >= 2 {
            self.packed.insert(gpu);
        } else {
            self.packed.remove(&gpu);
        }
        let held: f64 = self.residents[i]
            .iter()
            .map(|j| self.held.get(j).map_or(0.0, |h| h.1))
            .sum();
        if single && held < 1.0 - EPS {
            self.underfull.insert(gpu);
        } else {
            self.underfull.remove(&gpu);
        }
    }

    fn refresh_job(&mut self, id: JobId) {
        let spread = self.held.get(&id).is_some_and(|(gpus, fraction)| {
            gpus.len() > 1 && *fraction >= 1.0 - EPS && {
                let first = self.node(gpus[0]);
                gpus.iter().any(|&g| self.node(g) != first)
            }
        });
        if spread {
            self.spread.insert(id);
        } else {
            self.spread.remove(&id);
        }
    }

    /// `job` holds nothing now.
    fn unplace(&mut self, job: JobId) {
        if let Some((gpus, _)) = self.held.remove(&job) {
            for &g in &gpus {
                if let Some(res) = self.residents.get_mut(g as usize) {
                    res.retain(|&r| r != job);
                }
            }
            for g in gpus {
                self.refresh_gpu(g);
            }
        }
        self.spread.remove(&job);
    }

    /// `job` holds `fraction` of each of `gpus` now.
    fn place(&mut self, job: JobId, gpus: &[GpuId], fraction: f64) {
        self.unplace(job);
        let mut gpus: Vec<GpuId> = gpus
            .iter()
            .copied()
            .filter(|&g| (g as usize) < self.residents.len())
            .collect();
        gpus.sort_unstable();
        gpus.dedup();
        for &g in &gpus {
            self.residents[g as usize].push(job);
        }
        self.held.insert(job, (gpus.clone(), fraction));
        for g in gpus {
            self.refresh_gpu(g);
        }
        self.refresh_job(job);
    }

    /// What one of this policy's actions does to the cluster, once applied.
    fn apply(&mut self, action: &Action) {
        match action {
            Action::Start(p) | Action::Resume(p) => self.place(p.job, &p.gpus, 1.0),
            Action::Migrate(p) => {
                let fraction = self.held.get(&p.job).map_or(1.0, |h| h.1);
                self.place(p.job, &p.gpus, fraction);
            }
            Action::Share(p) => self.place(p.job, &p.gpus, p.fraction),
            Action::Preempt(id) => self.unplace(*id),
            Action::Resize(_) | Action::SetPriority(_) => self.known = false,
        }
    }
}

/// The Gandiva policy.
#[derive(Debug)]
pub struct Gandiva {
    pack: bool,
    max_share: u32,
    waiting: Queue,
    model: Model,
}

/// The shares that give `residents` (job, share now) of `gpu` an equal
/// part of the whole GPU: those that shrink first, then those that grow,
/// each in id order, so that no step asks for more than the GPU has.
fn regrow(gpu: GpuId, residents: &mut [(JobId, f64)]) -> Vec<Action> {
    residents.sort_unstable_by_key(|r| r.0);
    let part = 1.0 / residents.len().max(1) as f64;
    let share = |&(job, _): &(JobId, f64)| {
        Action::Share(SharedPlacement {
            job,
            gpus: vec![gpu],
            fraction: part,
        })
    };
    let shrink = residents.iter().filter(|r| r.1 > part + EPS).map(share);
    let grow = residents.iter().filter(|r| r.1 < part - EPS).map(share);
    shrink.chain(grow).collect()
}

fn parse_config(config: &str) -> Result<(bool, u32), String> {
    let (mut pack, mut max_share) = (true, 2);
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("gandiva: `{pair}` is not key=value"));
        };
        let value = value.trim();
        match key.trim() {
            "pack" => {
                pack = value
                    .parse()
                    .map_err(|_| format!("gandiva: pack: `{value}` is not true or false"))?;
            }
            "max_share" => {
                max_share = value
                    .parse()
                    .ok()
                    .filter(|&m| m >= 1)
                    .ok_or_else(|| format!("gandiva: max_share: `{value}` is not a whole number >= 1"))?;
            }
            other => {
                return Err(format!(
                    "gandiva: unknown config key `{other}` (known: pack, max_share)"
                ));
            }
        }
    }
    Ok((pack, max_share))
}

impl Gandiva {
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
            _ => self.waiting.remove(job.id),
        }
    }
}

/// A packing host as step 2 sees it: residents, GPU, resident jobs,
/// memory used and total.
type Host = (usize, GpuId, Vec<JobId>, u64, u64);

impl Policy for Gandiva {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let (pack, max_share) = parse_config(config)?;
        let policy = Gandiva {
            pack,
            max_share,
            waiting: Queue::default(),
            model: Model {
                max_share: max_share as usize,
                ..Model::default()
            },
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
                Event::JobArrived(job) => {
                    if job.placement.is_empty() {
                        self.model.unplace(job.id);
                    } else {
                        self.model.place(job.id, &job.placement, job.fraction);
                    }
                    self.note(&job);
                }
                Event::JobFinished(id) | Event::JobFailed((id, _)) => {
                    self.model.unplace(id);
                    self.waiting.remove(id);
                }
                Event::JobPreempted(id) => {
                    self.model.unplace(id);
                    if let Some(job) = view.job(id) {
                        self.note(&job);
                    }
                }
                Event::GpuChanged(_) => self.model.known = false,
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("gandiva: action rejected: {}", r.reason));
                    self.model.known = false;
                    match view.job(r.job) {
                        Some(job) => self.note(&job),
                        None => self.waiting.remove(r.job),
                    }
                }
                Event::Tick => {}
            }
        }
        self.model.sync(view);
        let mut actions = Vec::new();
        if self.waiting.jobs.is_empty() && self.model.free.is_empty() && self.model.underfull.is_empty() {
            return Decision { actions, wakeup: None };
        }
        // Jobs started by this decision: not candidates for consolidation
        // (only the spread gangs as the decision starts are).
        let mut started: Vec<JobId> = Vec::new();

        // 1. Exclusive starts, FIFO, skipping gangs that do not fit.
        // One-GPU jobs started in this batch: they can host a packed job
        // right away, as GPUs held from earlier calls can.
        let mut fresh: HashMap<GpuId, (JobId, u64)> = HashMap::new();
        while !self.model.free.is_empty() {
            let Some(id) = self.waiting.first_fitting(self.model.free.len()) else {
                break;
            };
            let Some(w) = self.waiting.jobs.get(&id).copied() else {
                break;
            };
            let Some(gang) = self.model.free.choose_gang(w.gpus) else {
                break;
            };
            if let [gpu] = gang[..] {
                fresh.insert(gpu, (id, w.memory));
            }
            started.push(id);
            let placement = Placement { job: id, gpus: gang };
            let action = match w.state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            };
            self.model.apply(&action);
            actions.push(action);
            self.waiting.remove(id);
        }

        // 2. Full cluster: pack 1-GPU jobs by time-slicing busy GPUs.
        if self.model.free.is_empty() && self.pack && self.max_share >= 2 {
            let max = self.max_share as usize;
            // The hosts in (residents, id) order, read from the view as
            // they are reached.
            let mut hosts: Vec<Host> = Vec::new();
            let mut next = self.model.hosts.iter().copied();
            let mut first_open = 0;
            let mut packed = Vec::new();
            let mut placed = Vec::new();
            for id in self.waiting.singles() {
                let Some(w) = self.waiting.jobs.get(&id).copied() else {
                    continue;
                };
                while first_open < hosts.len() && hosts[first_open].0 >= max {
                    first_open += 1;
                }
                let mut i = first_open;
                let found = loop {
                    if i == hosts.len() {
                        let Some((_, gpu)) = next.next() else { break None };
                        let g = view.gpu(gpu);
                        let (used, total) = g.as_ref().map_or((0, 0), |g| (g.memory_used, g.memory_total));
                        hosts.push(match fresh.get(&gpu) {
                            Some(&(job, memory)) => (1, gpu, vec![job], used.saturating_add(memory), total),
                            None => {
                                let jobs: Vec<JobId> = g
                                    .map(|g| g.residents.iter().map(|r| r.job).collect())
                                    .unwrap_or_default();
                                (jobs.len(), gpu, jobs, used, total)
                            }
                        });
                    }
                    let h = &hosts[i];
                    if h.0 < max && h.3.saturating_add(w.memory) <= h.4 {
                        break Some(i);
                    }
                    i += 1;
                };
                let Some(i) = found else {
                    while first_open < hosts.len() && hosts[first_open].0 >= max {
                        first_open += 1;
                    }
                    if first_open == hosts.len() {
                        // Every host is full: no later job fits either.
                        break;
                    }
                    continue;
                };
                let h = &mut hosts[i];
                let fraction = 1.0 / (h.2.len() + 1) as f64;
                for &resident in &h.2 {
                    packed.push(Action::Share(SharedPlacement {
                        job: resident,
                        gpus: vec![h.1],
                        fraction,
                    }));
                }
                packed.push(Action::Share(SharedPlacement {
                    job: id,
                    gpus: vec![h.1],
                    fraction,
                }));
                h.0 += 1;
                h.2.push(id);
                h.3 += w.memory;
                placed.push(id);
            }
            drop(next);
            for action in &packed {
                self.model.apply(action);
            }
            actions.extend(packed);
            for id in placed {
                self.waiting.remove(id);
            }
        }

        // 3. Free GPUs and packed ones: spread the packed jobs out again.
        if !self.model.free.is_empty() {
            // Each GPU packed as the decision starts, once, in id order
            // (this step leaves none packed while a GPU is free).
            let mut from: GpuId = 0;
            while let Some(&gpu) = self.model.packed.range(from..).next() {
                if self.model.free.is_empty() {
                    break;
                }
                let Some(after) = gpu.checked_add(1) else { break };
                from = after;
                let Some(g) = view.gpu(gpu) else { continue };
                let mut stay: Vec<JobId> = g.residents.iter().map(|r| r.job).collect();
                stay.sort_unstable();
                let Some(mover) = stay.pop() else { continue };
                // Prefer a free GPU on the same node (cheaper move).
                let node = self.model.node(gpu);
                let Some(target) = self
                    .model
                    .free
                    .first_on_node(node)
                    .or_else(|| self.model.free.iter().next())
                else {
                    break;
                };
                self.model.free.mark_busy(target);
                let mut step = vec![
                    Action::Migrate(Placement {
                        job: mover,
                        gpus: vec![target],
                    }),
                    Action::Share(SharedPlacement {
                        job: mover,
                        gpus: vec![target],
                        fraction: 1.0,
                    }),
                ];
                let fraction = 1.0 / stay.len() as f64;
                for job in stay {
                    step.push(Action::Share(SharedPlacement {
                        job,
                        gpus: vec![gpu],
                        fraction,
                    }));
                }
                for action in &step {
                    self.model.apply(action);
                }
                actions.extend(step);
            }
        }

        // 4. GPUs whose sharers hold less than all of it: an equal part each.
        let mut from: GpuId = 0;
        while let Some(&gpu) = self.model.underfull.range(from..).next() {
            let Some(after) = gpu.checked_add(1) else { break };
            from = after;
            let mut residents: Vec<(JobId, f64)> = self.model.residents[gpu as usize]
                .iter()
                .map(|&j| (j, self.model.held.get(&j).map_or(0.0, |h| h.1)))
                .collect();
            let step = regrow(gpu, &mut residents);
            for action in &step {
                self.model.apply(action);
            }
            actions.extend(step);
        }

        // 5. Free GPUs: pull scattered gangs onto one node.
        if !self.model.free.is_empty() {
            let largest_node = self.model.node_size.values().copied().max().unwrap_or(0) as usize;
            // Each spread gang once, oldest first; a gang consolidated is
            // spread no more.
            let mut from: JobId = 0;
            while let Some(&id) = self.model.spread.range(from..).next() {
                if self.model.free.is_empty() {
                    break;
                }
                let Some(after) = id.checked_add(1) else { break };
                from = after;
                if started.contains(&id) {
                    continue;
                }
                let Some(held) = self.model.held.get(&id).map(|h| h.0.clone()) else {
                    continue;
                };
                let len = held.len();
                if len > largest_node {
                    continue;
                }
                // The node needing the fewest moves that can hold the gang
                // (ties: the lowest node). A node the gang spans beats any
                // other; else the lowest node with room for all of it.
                let mut own_by_node: BTreeMap<u32, usize> = BTreeMap::new();
                for &g in &held {
                    *own_by_node.entry(self.model.node(g)).or_default() += 1;
                }
                let mut best: Option<(usize, u32)> = None;
                for (&node, &own) in &own_by_node {
                    let size = self.model.node_size.get(&node).copied().unwrap_or(0) as usize;
                    if size >= len
                        && own + self.model.free.free_on_node(node) >= len
                        && best.is_none_or(|(b, _)| own > b)
                    {
                        best = Some((own, node));
                    }
                }
                if best.is_none() {
                    best = self
                        .model
                        .free
                        .nodes()
                        .find(|&(node, spare)| spare >= len && !own_by_node.contains_key(&node))
                        .map(|(node, _)| (0, node));
                }
                let Some((own, node)) = best else { continue };
                let mut target: Vec<GpuId> = held.iter().copied().filter(|&g| self.model.node(g) == node).collect();
                target.extend(self.model.free.take_on_node(node, len - own));
                target.sort_unstable();
                let action = Action::Migrate(Placement { job: id, gpus: target });
                self.model.apply(&action);
                actions.push(action);
            }
        }
        Decision { actions, wakeup: None }
    }
}

export_policy!(Gandiva);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::{FakeView, Rng};

    fn share(job: JobId, gpu: GpuId, fraction: f64) -> Action {
        Action::Share(SharedPlacement {
            job,
            gpus: vec![gpu],
            fraction,
        })
    }

    fn dbg(actions: &[Action]) -> String {
        format!("{actions:?}")
    }

    /// Two GPUs, each held by a running 1-GPU job.
    fn full_cluster() -> FakeView {
        let mut view = FakeView::new(2, 2);
        for g in 0..2 {
            let id = view.add_job(1).id;
            view.place(id, &[g], 1.0);
        }
        view
    }

    #[test]
    fn packs_with_share_when_full() {
        let mut view = full_cluster();
        let newcomer = view.add_job(1);
        let mut p = Gandiva::init("").unwrap().0;
        let d = p.decide(&view, vec![Event::JobArrived(newcomer.clone())]);
        assert_eq!(dbg(&d.actions), dbg(&[share(0, 0, 0.5), share(newcomer.id, 0, 0.5)]));
        // A second and third newcomer: one more fits (GPU 1), then none (max 2 per GPU).
        view.place(0, &[0], 0.5);
        view.gpus[0].residents.push(Resident {
            job: newcomer.id,
            fraction: 0.5,
        });
        view.job_mut(newcomer.id).state = JobState::Running;
        view.job_mut(newcomer.id).placement = vec![0];
        view.job_mut(newcomer.id).fraction = 0.5;
        let (a, b) = (view.add_job(1), view.add_job(1));
        let d = p.decide(&view, vec![Event::JobArrived(a.clone()), Event::JobArrived(b)]);
        assert_eq!(dbg(&d.actions), dbg(&[share(1, 1, 0.5), share(a.id, 1, 0.5)]));
    }

    #[test]
    fn pack_false_only_waits() {
        let mut view = full_cluster();
        let newcomer = view.add_job(1);
        let mut p = Gandiva::init("pack=false").unwrap().0;
        assert!(p.decide(&view, vec![Event::JobArrived(newcomer)]).actions.is_empty());
    }

    #[test]
    fn unpacks_onto_a_freed_gpu() {
        // GPU 0 holds jobs 0 and 2 at 0.5 each; job 1 on GPU 1 finishes.
        let mut view = full_cluster();
        let packed = view.add_job(1).id;
        view.place(0, &[0], 0.5);
        view.gpus[0].residents.push(Resident {
            job: packed,
            fraction: 0.5,
        });
        view.job_mut(packed).state = JobState::Running;
        view.job_mut(packed).placement = vec![0];
        view.job_mut(packed).fraction = 0.5;
        view.finish(1);
        let mut p = Gandiva::init("").unwrap().0;
        let d = p.decide(&view, vec![Event::JobFinished(1)]);
        let migrate = Action::Migrate(Placement {
            job: packed,
            gpus: vec![1],
        });
        assert_eq!(
            dbg(&d.actions),
            dbg(&[migrate, share(packed, 1, 1.0), share(0, 0, 1.0)])
        );
    }

    #[test]
    fn the_job_left_on_a_shared_gpu_gets_all_of_it_back() {
        let mut view = FakeView::new(1, 1);
        let a = view.add_job(1).id;
        let b = view.add_job(1).id;
        view.place(a, &[0], 0.5);
        view.place(b, &[0], 0.5);
        let mut p = Gandiva::init("").unwrap().0;
        let arrivals = vec![
            Event::JobArrived(view.job(a).unwrap()),
            Event::JobArrived(view.job(b).unwrap()),
        ];
        assert!(p.decide(&view, arrivals).actions.is_empty(), "{}", dbg(&[]));
        view.finish(a);
        let d = p.decide(&view, vec![Event::JobFinished(a)]);
        assert_eq!(dbg(&d.actions), dbg(&[share(b, 0, 1.0)]));
        // Three sharers, unequal after one leaves: shrink before growing.
        let mut view = FakeView::new(1, 1);
        let ids: Vec<JobId> = (0..3).map(|_| view.add_job(1).id).collect();
        for (&id, f) in ids.iter().zip([0.25, 0.6, 0.15]) {
            view.place(id, &[0], f);
        }
        let mut p = Gandiva::init("max_share=3").unwrap().0;
        let events = ids.iter().map(|&id| Event::JobArrived(view.job(id).unwrap())).collect();
        p.decide(&view, events);
        view.finish(ids[0]);
        let d = p.decide(&view, vec![Event::JobFinished(ids[0])]);
        assert_eq!(dbg(&d.actions), dbg(&[share(ids[1], 0, 0.5), share(ids[2], 0, 0.5)]));
    }

    #[test]
    fn starts_exclusive_node_local_then_consolidates() {
        // Two nodes of 4. Job 0 spans both nodes on [2, 3, 4, 5].
        let mut view = FakeView::new(8, 4);
        let spread = view.add_job(4).id;
        view.place(spread, &[2, 3, 4, 5], 1.0);
        let mut p = Gandiva::init("").unwrap().0;
        let d = p.decide(&view, vec![Event::JobArrived(view.job(spread).unwrap())]);
        // Node 0 has its 2 GPUs + 2 free: fewest moves ties with node 1; the first wins.
        assert_eq!(
            dbg(&d.actions),
            dbg(&[Action::Migrate(Placement {
                job: spread,
                gpus: vec![0, 1, 2, 3]
            })])
        );

        // A newcomer gets a node-local gang before any consolidation (a
        // policy taking over the same cluster, where nothing moved yet).
        let newcomer = view.add_job(2);
        let mut p = Gandiva::init("").unwrap().0;
        let d = p.decide(
            &view,
            vec![
                Event::JobArrived(view.job(spread).unwrap()),
                Event::JobArrived(newcomer.clone()),
            ],
        );
        assert!(matches!(&d.actions[0], Action::Start(pl) if pl.job == newcomer.id && pl.gpus == vec![0, 1]));
        assert!(matches!(&d.actions[1], Action::Migrate(pl) if pl.job == spread && pl.gpus == vec![4, 5, 6, 7]));
    }

    /// Memory in use on each GPU: its residents' needs.
    fn account_memory(view: &mut FakeView) {
        for i in 0..view.gpus.len() {
            let used = view.gpus[i]
                .residents
                .iter()
                .map(|r| view.job(r.job).map_or(0, |j| j.memory_per_gpu))
                .sum();
            view.gpus[i].memory_used = used;
        }
    }

    /// Carry out a decision on the fake view as a host would, refusing
    /// what does not fit and some actions at random; returns the
    /// rejections to report.
    fn apply_some(view: &mut FakeView, d: &Decision, rng: &mut Rng) -> Vec<Event> {
        let mut rejected = Vec::new();
        for (index, a) in d.actions.iter().enumerate() {
            let (job, gpus, fraction) = match a {
                Action::Start(p) | Action::Resume(p) => (p.job, p.gpus.clone(), 1.0),
                Action::Migrate(p) => (p.job, p.gpus.clone(), view.job(p.job).map_or(1.0, |j| j.fraction)),
                Action::Share(p) => (p.job, p.gpus.clone(), p.fraction),
                other => panic!("unexpected {other:?}"),
            };
            let fits = gpus.iter().all(|&g| {
                let gpu = &view.gpus[g as usize];
                let others: f64 = gpu.residents.iter().filter(|r| r.job != job).map(|r| r.fraction).sum();
                gpu.online && others + fraction <= 1.0 + 1e-9
            });
            if !fits || rng.below(30) == 0 {
                rejected.push(Event::ActionRejected(Rejection {
                    index: index as u32,
                    job,
                    reason: "refused by the test".into(),
                }));
                continue;
            }
            view.place(job, &gpus, fraction);
            account_memory(view);
        }
        rejected
    }

    /// The incremental policy decides exactly what the old one (which read
    /// every GPU and every running job at every decision) decided, through
    /// arrivals, completions, failures, the host's preemptions, GPUs going
    /// and coming, refused actions and takeovers.
    #[test]
    fn agrees_with_the_full_recomputation() {
        let mut kinds = [0usize; 3];
        for seed in 1..=80u64 {
            let mut rng = Rng::new(seed);
            let gpus = 4 + rng.below(13) as u32;
            let mut view = FakeView::new(gpus, 1 + rng.below(4) as u32);
            let config = ["", "", "max_share=3", "pack=false"][rng.below(4) as usize];
            let mut p = Gandiva::init(config).unwrap().0;
            let mut r = reference::Reference::init(config).unwrap().0;
            let mut events: Vec<Event> = Vec::new();
            for step in 0..400 {
                for _ in 0..1 + rng.below(3) {
                    match rng.below(20) {
                        0..=7 => {
                            let size = [0, 1, 1, 1, 1, 1, 2, 2, 3, 4, 5, 8, 99][rng.below(13) as usize];
                            let id = view.add_job(size).id;
                            view.job_mut(id).memory_per_gpu = [0, 0, 0, 30 << 30, 50 << 30][rng.below(5) as usize];
                            events.push(Event::JobArrived(view.job(id).unwrap()));
                        }
                        8..=11 => {
                            if let Some(id) = rng.pick(&view.jobs(JobState::Running)) {
                                view.finish(id);
                                events.push(Event::JobFinished(id));
                            }
                        }
                        12 => {
                            let mut live = view.jobs(JobState::Pending);
                            live.extend(view.jobs(JobState::Suspended));
                            live.extend(view.jobs(JobState::Running));
                            if let Some(id) = rng.pick(&live) {
                                events.push(view.fail(id, "test"));
                            }
                        }
                        13..=14 => events.push(Event::Tick),
                        15 => {
                            if let Some(id) = rng.pick(&view.jobs(JobState::Running)) {
                                view.suspend(id);
                                events.push(Event::JobPreempted(id));
                            }
                        }
                        16 => {
                            let g = rng.below(gpus as u64) as GpuId;
                            events.extend(view.toggle_gpu(g));
                        }
                        17 => {
                            // A takeover: fresh instances, every live job announced.
                            p = Gandiva::init(config).unwrap().0;
                            r = reference::Reference::init(config).unwrap().0;
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
                account_memory(&mut view);
                let got = p.decide(&view, events.clone());
                let want = r.decide(&view, std::mem::take(&mut events));
                assert_eq!(
                    format!("{:?}", got.actions),
                    format!("{:?}", want.actions),
                    "seed {seed}, step {step}"
                );
                for a in &got.actions {
                    kinds[match a {
                        Action::Start(_) | Action::Resume(_) => 0,
                        Action::Share(_) => 1,
                        _ => 2,
                    }] += 1;
                }
                events = apply_some(&mut view, &got, &mut rng);
            }
        }
        assert!(kinds.iter().all(|&n| n > 100), "starts, shares, migrations: {kinds:?}");
    }

    #[test]
    fn config_keys_are_checked() {
        assert!(Gandiva::init("pack=false;max_share=3").is_ok());
        for bad in ["pack=maybe", "max_share=0", "max_share=x", "share=2"] {
            assert!(Gandiva::init(bad).err().unwrap().starts_with("gandiva:"), "{bad}");
        }
    }
}
