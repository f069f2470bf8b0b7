//! The free GPUs, kept from events instead of read from the view at every
//! decision.
//!
//! Why: `cluster-view.free-gpus` costs what it returns, and on a large,
//! lightly loaded cluster it returns thousands of ids at every arrival, so
//! a policy that reads it each time pays for the cluster's size rather
//! than for what changed. A policy that places jobs whole (one job per
//! GPU) knows what changes the free set: its own starts and preemptions,
//! and the ends of jobs. This keeps that set, reading the view only when
//! it cannot know (before the first decision, and after a GPU changed or
//! an action was refused).

use crate::{Event, GpuId, JobId, View};
use std::collections::{BTreeMap, BTreeSet};

use crate::{IdMap, IdSet};

/// Free GPUs for a policy that places every job exclusively.
///
/// Use: call [`FreeGpus::observe`] with each event, [`FreeGpus::sync`]
/// before deciding, then [`FreeGpus::take`] for each gang it starts and
/// [`FreeGpus::release`] for each job it preempts.
#[derive(Debug, Default, Clone)]
pub struct FreeGpus {
    free: BTreeSet<GpuId>,
    /// Each GPU's node (GPU ids are indices), read with the free set.
    node_of: Vec<u32>,
    /// Free GPUs per node.
    by_node: BTreeMap<u32, BTreeSet<GpuId>>,
    /// Nodes by how many free GPUs they have (count, then node id).
    by_count: BTreeSet<(usize, u32)>,
    /// The GPUs each running job holds whole, as far as this policy knows.
    held: IdMap<JobId, Vec<GpuId>>,
    /// Running jobs that share their GPUs (met at a takeover): when one
    /// ends, whether its GPUs are free depends on the others.
    shared: IdSet<JobId>,
    /// Whether `free` is known to match the cluster.
    known: bool,
}

impl FreeGpus {
    /// A pool that reads the view at the first [`FreeGpus::sync`].
    pub fn new() -> Self {
        FreeGpus::default()
    }

    /// Take note of one event.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::JobArrived(job) if !job.placement.is_empty() => {
                // Running already: a takeover, or a restart.
                if job.fraction >= 1.0 {
                    self.held.insert(job.id, job.placement.clone());
                } else {
                    self.shared.insert(job.id);
                }
            }
            Event::JobArrived(_) | Event::Tick => {}
            Event::JobFinished(id) | Event::JobFailed((id, _)) | Event::JobPreempted(id) => {
                if !self.held.contains_key(id) && !self.shared.contains(id) {
                    // A job this pool never saw placed (it may have held
                    // GPUs all the same): read the view again.
                    self.known = false;
                }
                self.release(*id);
            }
            // A GPU came or went: the set can no longer be trusted.
            Event::GpuChanged(_) => self.known = false,
            // One of this policy's actions was refused: the set can no
            // longer be trusted, nor what the job named holds (a refused
            // start left it nothing; after a refused preemption it still
            // holds what it held). When it ends, the view is read again.
            Event::ActionRejected(r) => {
                self.held.remove(&r.job);
                self.shared.remove(&r.job);
                self.known = false;
            }
        }
    }

    /// Read the free GPUs from the view if the set may be stale.
    pub fn sync(&mut self, view: &impl View) {
        if !self.known {
            self.node_of = view.gpus().iter().map(|g| g.node).collect();
            self.free.clear();
            self.by_node.clear();
            self.by_count.clear();
            for g in view.free_gpus() {
                self.insert(g);
            }
            self.known = true;
        }
    }

    fn node(&self, gpu: GpuId) -> u32 {
        self.node_of.get(gpu as usize).copied().unwrap_or(u32::MAX)
    }

    fn insert(&mut self, gpu: GpuId) {
        if !self.free.insert(gpu) {
            return;
        }
        let node = self.node(gpu);
        let on_node = self.by_node.entry(node).or_default();
        self.by_count.remove(&(on_node.len(), node));
        on_node.insert(gpu);
        self.by_count.insert((on_node.len(), node));
    }

    fn remove(&mut self, gpu: GpuId) {
        if !self.free.remove(&gpu) {
            return;
        }
        let node = self.node(gpu);
        if let Some(on_node) = self.by_node.get_mut(&node) {
            self.by_count.remove(&(on_node.len(), node));
            on_node.remove(&gpu);
            if on_node.is_empty() {
                self.by_node.remove(&node);
            } else {
                self.by_count.insert((on_node.len(), node));
            }
        }
    }

    /// How many GPUs are free.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether none is free.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// The free GPUs, lowest id first.
    pub fn iter(&self) -> impl Iterator<Item = GpuId> + '_ {
        self.free.iter().copied()
    }

    /// Give `job` the `k` lowest free GPUs, or none if fewer are free (a
    /// gang is all or nothing).
    pub fn take(&mut self, job: JobId, k: u32) -> Option<Vec<GpuId>> {
        let gpus = self.take_exactly(k)?;
        self.held.insert(job, gpus.clone());
        Some(gpus)
    }

    /// Give `job` these GPUs (chosen by the policy from [`FreeGpus::iter`]).
    pub fn assign(&mut self, job: JobId, gpus: &[GpuId]) {
        for &g in gpus {
            self.remove(g);
        }
        self.held.insert(job, gpus.to_vec());
    }

    fn take_exactly(&mut self, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || self.free.len() < k {
            return None;
        }
        let gpus: Vec<GpuId> = self.free.iter().take(k).copied().collect();
        for &g in &gpus {
            self.remove(g);
        }
        Some(gpus)
    }

    /// Read the free GPUs (online, no resident) from a GPU list the
    /// policy read itself, as [`FreeGpus::sync`] would from the view.
    pub fn reset(&mut self, gpus: &[crate::GpuInfo]) {
        let len = gpus.iter().map(|g| g.id as usize + 1).max().unwrap_or(0);
        self.node_of = vec![u32::MAX; len];
        for g in gpus {
            self.node_of[g.id as usize] = g.node;
        }
        self.free.clear();
        self.by_node.clear();
        self.by_count.clear();
        for g in gpus.iter().filter(|g| g.online && g.residents.is_empty()) {
            self.insert(g.id);
        }
        self.held.clear();
        self.shared.clear();
        self.known = true;
    }

    /// Whether the set is known to match the cluster (false before the
    /// first read and after [`FreeGpus::invalidate`] or an event that
    /// makes it unsure).
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Mark one GPU free, for a policy that tracks who holds each GPU
    /// itself (one that shares GPUs, which this pool cannot follow).
    pub fn mark_free(&mut self, gpu: GpuId) {
        self.insert(gpu);
    }

    /// Mark one GPU held (see [`FreeGpus::mark_free`]).
    pub fn mark_busy(&mut self, gpu: GpuId) {
        self.remove(gpu);
    }

    /// The lowest free GPU on `node`, if any.
    pub fn first_on_node(&self, node: u32) -> Option<GpuId> {
        self.by_node.get(&node).and_then(|s| s.first().copied())
    }

    /// How many GPUs are free on `node`.
    pub fn free_on_node(&self, node: u32) -> usize {
        self.by_node.get(&node).map_or(0, BTreeSet::len)
    }

    /// The nodes with a free GPU and how many each has, lowest node first.
    pub fn nodes(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.by_node.iter().map(|(&n, s)| (n, s.len()))
    }

    /// The `k` lowest free GPUs on `node` (fewer if fewer are free), taken.
    pub fn take_on_node(&mut self, node: u32, k: usize) -> Vec<GpuId> {
        let gpus: Vec<GpuId> = self
            .by_node
            .get(&node)
            .map(|s| s.iter().take(k).copied().collect())
            .unwrap_or_default();
        for &g in &gpus {
            self.remove(g);
        }
        gpus
    }

    /// The most free GPUs on any one node (0 when none is free).
    pub fn most_on_one_node(&self) -> usize {
        self.by_count.last().map_or(0, |&(count, _)| count)
    }

    /// Choose a gang as [`FreeGpus::take_gang`] does and take it, without
    /// recording who holds it (for a policy that tracks that itself).
    pub fn choose_gang(&mut self, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || self.free.len() < k {
            return None;
        }
        Some(self.gang(k))
    }

    /// Give `job` a gang of `k` GPUs on as few nodes as possible, choosing
    /// exactly what [`crate::Topology::take_gang`] would from the same free
    /// set: the fullest node that fits it whole (best fit, so that big
    /// holes stay for big gangs), else the nodes with the most free GPUs,
    /// lowest ids within a node. In time proportional to the nodes it
    /// touches, not to the free GPUs. None if fewer than `k` are free.
    pub fn take_gang(&mut self, job: JobId, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || self.free.len() < k {
            return None;
        }
        let chosen = self.gang(k);
        self.held.insert(job, chosen.clone());
        Some(chosen)
    }

    fn gang(&mut self, k: usize) -> Vec<GpuId> {
        let plan: Vec<(u32, usize)> = match self.by_count.range((k, 0)..).next() {
            Some(&(_, node)) => vec![(node, k)],
            None => {
                // Most free first, lowest node first among equals.
                let mut plan = Vec::new();
                let mut left = k;
                let mut counts = self.by_count.iter().rev().peekable();
                while left > 0 {
                    let Some(&&(count, _)) = counts.peek() else { break };
                    let mut same: Vec<u32> = Vec::new();
                    while let Some(&&(c, node)) = counts.peek() {
                        if c != count {
                            break;
                        }
                        same.push(node);
                        counts.next();
                    }
                    same.sort_unstable();
                    for node in same {
                        let m = left.min(count);
                        plan.push((node, m));
                        left -= m;
                        if left == 0 {
                            break;
                        }
                    }
                }
                plan
            }
        };
        let mut chosen = Vec::with_capacity(k);
        for (node, m) in plan {
            if let Some(on_node) = self.by_node.get(&node) {
                chosen.extend(on_node.iter().take(m).copied());
            }
        }
        for &g in &chosen {
            self.remove(g);
        }
        chosen.sort_unstable();
        chosen
    }

    /// `job` leaves `gpus` free (a preemption this policy made, with the
    /// GPUs the view says it held).
    pub fn vacate(&mut self, job: JobId, gpus: &[GpuId]) {
        self.held.remove(&job);
        self.shared.remove(&job);
        if self.known {
            for &g in gpus {
                self.insert(g);
            }
        }
    }

    /// Forget what is known: the next [`FreeGpus::sync`] reads the view
    /// (e.g. after this policy preempted a job whose GPUs it cannot tell
    /// are free now).
    pub fn invalidate(&mut self) {
        self.known = false;
    }

    /// `job` no longer holds its GPUs (it ended, or was preempted).
    pub fn release(&mut self, job: JobId) {
        if self.shared.remove(&job) {
            self.known = false;
        }
        if let Some(gpus) = self.held.remove(&job)
            && self.known
        {
            for g in gpus {
                self.insert(g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;
    use crate::testing::FakeView;

    #[test]
    fn gangs_are_chosen_as_take_gang_would() {
        let mut view = FakeView::new(16, 4);
        // Busy: GPUs 3, 6, 7, 12, 14, 15.
        for (i, gpus) in [vec![3], vec![6, 7], vec![12], vec![14, 15]].into_iter().enumerate() {
            let job = view.add_job(gpus.len() as u32).id;
            view.place(job, &gpus, 1.0);
            assert_eq!(job, i as u64);
        }
        let topology = Topology::new(&view.gpus);
        let mut reference = view.free_gpus();
        let mut pool = FreeGpus::new();
        pool.sync(&view);
        for (job, k) in [2u32, 1, 4, 3, 5, 1, 1].into_iter().enumerate() {
            let job = 100 + job as u64;
            assert_eq!(
                pool.take_gang(job, k),
                topology.take_gang(&mut reference, k),
                "gang of {k}"
            );
            assert_eq!(pool.iter().collect::<Vec<_>>(), reference, "after a gang of {k}");
        }
    }

    #[test]
    fn marked_by_hand_gangs_still_chosen_as_take_gang_would() {
        // A policy that tracks occupancy itself: random GPUs marked busy
        // and free, gangs chosen without a holder, compared with
        // Topology::take_gang on the same free list.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let gpus = 1 + below(24) as u32;
            let view = FakeView::new(gpus, 1 + below(8) as u32);
            let topology = Topology::new(&view.gpus);
            let mut pool = FreeGpus::new();
            pool.reset(&view.gpus);
            assert!(pool.is_known());
            let mut reference: Vec<GpuId> = view.free_gpus();
            for _ in 0..30 {
                let g = below(gpus as u64) as GpuId;
                match below(4) {
                    0 => {
                        pool.mark_busy(g);
                        reference.retain(|&f| f != g);
                    }
                    1 => {
                        pool.mark_free(g);
                        if !reference.contains(&g) {
                            reference.push(g);
                            reference.sort_unstable();
                        }
                    }
                    2 => {
                        let node = topology.node(g);
                        let on_node: Vec<GpuId> = reference
                            .iter()
                            .copied()
                            .filter(|&f| topology.node(f) == node)
                            .collect();
                        assert_eq!(pool.first_on_node(node), on_node.first().copied());
                        assert_eq!(pool.free_on_node(node), on_node.len());
                        let k = below(3) as usize;
                        let taken = pool.take_on_node(node, k);
                        assert_eq!(taken, on_node.iter().take(k).copied().collect::<Vec<_>>());
                        reference.retain(|f| !taken.contains(f));
                    }
                    _ => {
                        let k = below(6) as u32;
                        assert_eq!(
                            pool.choose_gang(k),
                            topology.take_gang(&mut reference, k),
                            "gang of {k}"
                        );
                    }
                }
                assert_eq!(pool.iter().collect::<Vec<_>>(), reference);
            }
        }
    }

    #[test]
    fn kept_from_events_and_read_from_the_view_only_when_unknown() {
        let mut view = FakeView::new(4, 4);
        let a = view.add_job(1).id;
        view.place(a, &[1], 1.0);
        let mut pool = FreeGpus::new();
        pool.observe(&Event::JobArrived(view.job(a).unwrap()));
        pool.sync(&view);
        assert_eq!(pool.iter().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(pool.take(7, 2), Some(vec![0, 2]));
        assert_eq!(pool.take(8, 2), None, "all or nothing");
        pool.observe(&Event::JobFinished(a));
        assert_eq!(pool.iter().collect::<Vec<_>>(), vec![1, 3]);
        pool.release(7);
        assert_eq!(pool.len(), 4);
        // A refused start: the job holds nothing, and its end frees nothing.
        assert_eq!(pool.take(9, 1), Some(vec![0]));
        pool.observe(&Event::ActionRejected(crate::Rejection {
            index: 0,
            job: 9,
            reason: "refused".into(),
        }));
        pool.sync(&view);
        assert_eq!(pool.iter().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(pool.take(10, 3), Some(vec![0, 2, 3]));
        pool.observe(&Event::JobFailed((9, "never started".into())));
        pool.sync(&view);
        assert_eq!(
            pool.iter().collect::<Vec<_>>(),
            vec![0, 2, 3],
            "read again: the view knows"
        );
        pool.release(10);
        // After a GPU change the view is read again.
        pool.observe(&Event::GpuChanged(0));
        pool.sync(&view);
        assert_eq!(pool.iter().collect::<Vec<_>>(), vec![0, 2, 3]);
    }
}
