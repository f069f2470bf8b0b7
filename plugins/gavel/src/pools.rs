//! The GPU kinds of the cluster and the free GPUs of each kind, kept from
//! events and this policy's own actions, read from the view only when they
//! cannot be known (before the first decision, after a GPU changed, an
//! action was refused, or a job this policy never saw placed ended).

use std::collections::BTreeMap;
use wsched_sdk::*;

/// The kinds, by name, and what the policy needs of each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kinds {
    /// Distinct `gpu-info.kind`s of every GPU, online or not, sorted.
    pub names: Vec<String>,
    /// Online GPUs of each kind.
    pub caps: Vec<u32>,
    /// The most GPUs of each kind on one node (online or not): a gang up
    /// to this size can be placed on one node, so its throughput is read
    /// for one node; a larger one for a spread gang.
    pub per_node: Vec<u32>,
}

impl Kinds {
    fn of(gpus: &[GpuInfo]) -> Kinds {
        let mut names: Vec<String> = gpus.iter().map(|g| g.kind.clone()).collect();
        names.sort();
        names.dedup();
        let mut caps = vec![0; names.len()];
        let mut nodes: BTreeMap<(usize, u32), u32> = BTreeMap::new();
        for g in gpus {
            let k = names.binary_search(&g.kind).unwrap_or(0);
            if g.online {
                caps[k] += 1;
            }
            *nodes.entry((k, g.node)).or_default() += 1;
        }
        let mut per_node = vec![0; names.len()];
        for ((k, _), n) in nodes {
            per_node[k] = per_node[k].max(n);
        }
        Kinds { names, caps, per_node }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// Free GPUs per kind, for a policy that places every job exclusively.
#[derive(Debug, Default)]
pub struct Pools {
    pub kinds: Kinds,
    /// Each GPU's kind (GPU ids are indices).
    kind_of: Vec<usize>,
    /// The free GPUs of each kind.
    free: Vec<FreeGpus>,
    /// The GPUs each running job holds whole, as far as this policy knows.
    held: IdMap<JobId, Vec<GpuId>>,
    /// Whether `free` is known to match the cluster.
    known: bool,
}

impl Pools {
    /// Take note of one event.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::JobArrived(job) if !job.placement.is_empty() => {
                // Running already (a takeover): what it holds is read again.
                if job.fraction >= 1.0 {
                    self.held.insert(job.id, job.placement.clone());
                }
                self.known = false;
            }
            Event::JobArrived(_) | Event::Tick => {}
            Event::JobFinished(id) | Event::JobFailed((id, _)) | Event::JobPreempted(id) => self.release(*id),
            Event::GpuChanged(_) => self.known = false,
            Event::ActionRejected(r) => {
                self.held.remove(&r.job);
                self.known = false;
            }
        }
    }

    /// Read the GPUs from the view if the free sets may be stale. Returns
    /// the kinds as they were when they changed (names or capacities).
    pub fn sync(&mut self, view: &impl View) -> Option<Kinds> {
        if self.known {
            return None;
        }
        let gpus = view.gpus();
        let kinds = Kinds::of(&gpus);
        let len = gpus.iter().map(|g| g.id as usize + 1).max().unwrap_or(0);
        self.kind_of = vec![usize::MAX; len];
        let mut by_kind: Vec<Vec<GpuInfo>> = vec![Vec::new(); kinds.len()];
        for g in gpus {
            let k = kinds.names.binary_search(&g.kind).unwrap_or(0);
            self.kind_of[g.id as usize] = k;
            by_kind[k].push(g);
        }
        self.free = by_kind
            .iter()
            .map(|gpus| {
                let mut pool = FreeGpus::new();
                pool.reset(gpus);
                pool
            })
            .collect();
        self.known = true;
        if kinds != self.kinds {
            Some(std::mem::replace(&mut self.kinds, kinds))
        } else {
            None
        }
    }

    /// Forget the free sets: the next [`Pools::sync`] reads the view.
    pub fn invalidate(&mut self) {
        self.known = false;
    }

    /// The kind of GPU `gpu`.
    pub fn kind_of(&self, gpu: GpuId) -> Option<usize> {
        self.kind_of
            .get(gpu as usize)
            .copied()
            .filter(|&k| k < self.kinds.len())
    }

    /// The kind a running job holds GPUs of, if this policy knows what it holds.
    pub fn kind_of_job(&self, job: JobId) -> Option<usize> {
        self.held
            .get(&job)
            .and_then(|gpus| gpus.first())
            .and_then(|&g| self.kind_of(g))
    }

    /// Record what a running job holds, read from the view.
    pub fn note_held(&mut self, job: JobId, gpus: &[GpuId], fraction: f64) {
        if fraction >= 1.0 && !gpus.is_empty() {
            self.held.insert(job, gpus.to_vec());
        }
    }

    /// How many GPUs of kind `kind` are free.
    pub fn free(&self, kind: usize) -> usize {
        self.free.get(kind).map_or(0, FreeGpus::len)
    }

    /// Give `job` a gang of `gpus` free GPUs of kind `kind`, on as few
    /// nodes as possible (best fit): [`FreeGpus::choose_gang`].
    pub fn take(&mut self, kind: usize, job: JobId, gpus: u32) -> Option<Vec<GpuId>> {
        let gang = self.free.get_mut(kind)?.choose_gang(gpus)?;
        self.held.insert(job, gang.clone());
        Some(gang)
    }

    /// How many free GPUs are left of each kind if `gpus` more are taken
    /// from `left`, most first (ties: lower kind), as few kinds as that
    /// allows: the plan of a gang larger than any kind. None if fewer than
    /// `gpus` are left in all.
    pub fn spread(left: &mut [u32], gpus: u32) -> Option<Vec<(usize, u32)>> {
        if gpus == 0 || left.iter().map(|&l| u64::from(l)).sum::<u64>() < u64::from(gpus) {
            return None;
        }
        let mut kinds: Vec<usize> = (0..left.len()).collect();
        kinds.sort_by(|&a, &b| left[b].cmp(&left[a]).then(a.cmp(&b)));
        let (mut plan, mut need) = (Vec::new(), gpus);
        for k in kinds {
            let n = need.min(left[k]);
            if n > 0 {
                left[k] -= n;
                plan.push((k, n));
                need -= n;
            }
        }
        Some(plan)
    }

    /// The free GPUs of each kind, for [`Pools::spread`].
    pub fn free_counts(&self) -> Vec<u32> {
        (0..self.kinds.len()).map(|k| self.free(k) as u32).collect()
    }

    /// How many GPUs of each kind a running job holds, if this policy
    /// knows what it holds.
    pub fn held_counts(&self, job: JobId) -> Option<Vec<u32>> {
        let gpus = self.held.get(&job)?;
        let mut counts = vec![0; self.kinds.len()];
        for &g in gpus {
            counts[self.kind_of(g)?] += 1;
        }
        Some(counts)
    }

    /// Give `job` free GPUs of several kinds, `plan` says how many of
    /// each (a gang larger than any kind), each part on as few nodes as
    /// possible; all or nothing.
    pub fn take_spread(&mut self, job: JobId, plan: &[(usize, u32)]) -> Option<Vec<GpuId>> {
        let mut taken = Vec::new();
        for &(k, n) in plan {
            match self.free.get_mut(k).and_then(|pool| pool.choose_gang(n)) {
                Some(part) => taken.extend(part),
                None => {
                    self.mark_free(&taken);
                    return None;
                }
            }
        }
        taken.sort_unstable();
        self.held.insert(job, taken.clone());
        Some(taken)
    }

    /// `job`, preempted by this policy, leaves free what it held whole.
    /// Returns false when that is not known (the next sync reads the view).
    pub fn vacate(&mut self, job: JobId) -> bool {
        match self.held.remove(&job) {
            Some(gpus) => {
                self.mark_free(&gpus);
                true
            }
            None => {
                self.known = false;
                false
            }
        }
    }

    /// `job` no longer holds its GPUs (it ended, or the host preempted it).
    fn release(&mut self, job: JobId) {
        match self.held.remove(&job) {
            Some(gpus) => self.mark_free(&gpus),
            // A job this policy never saw placed (it may have held GPUs
            // all the same): read the view again.
            None => self.known = false,
        }
    }

    fn mark_free(&mut self, gpus: &[GpuId]) {
        if !self.known {
            return;
        }
        for &g in gpus {
            if let Some(k) = self.kind_of(g) {
                self.free[k].mark_free(g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    #[test]
    fn kinds_and_free_sets_per_kind() {
        let mut view = FakeView::new(8, 2);
        view.set_kind(0..4, "fast");
        view.set_kind(4..8, "slow");
        let a = view.add_job(1).id;
        view.place(a, &[5], 1.0);
        let mut pools = Pools::default();
        pools.observe(&Event::JobArrived(view.job(a).unwrap()));
        assert_eq!(pools.sync(&view), Some(Kinds::default()), "first read: changed");
        assert_eq!(pools.kinds.names, vec!["fast", "slow"]);
        assert_eq!(pools.kinds.caps, vec![4, 4]);
        assert_eq!(pools.kinds.per_node, vec![2, 2]);
        assert_eq!((pools.free(0), pools.free(1)), (4, 3));
        assert_eq!(pools.kind_of_job(a), Some(1));
        // Best fit on the slow kind: node 2 (GPU 5 busy) has one free.
        assert_eq!(pools.take(1, 9, 1), Some(vec![4]));
        assert_eq!(pools.take(1, 10, 2), Some(vec![6, 7]));
        assert_eq!(pools.take(1, 11, 1), None);
        pools.observe(&Event::JobFinished(a));
        assert_eq!(pools.free(1), 1);
        assert!(pools.vacate(10));
        assert_eq!(pools.free(1), 3);
        assert_eq!(pools.sync(&view), None, "known: not read again");
        // A GPU going offline changes the capacity.
        view.gpus[0].online = false;
        pools.observe(&Event::GpuChanged(0));
        let old = pools.sync(&view).expect("capacity changed");
        assert_eq!(old.caps, vec![4, 4]);
        assert_eq!(pools.kinds.caps, vec![3, 4]);
    }

    #[test]
    fn gangs_larger_than_any_kind_spread_over_kinds() {
        let mut left = vec![2, 5, 3];
        assert_eq!(Pools::spread(&mut left, 7), Some(vec![(1, 5), (2, 2)]));
        assert_eq!(left, vec![2, 0, 1]);
        assert_eq!(Pools::spread(&mut left, 4), None);
        assert_eq!(left, vec![2, 0, 1], "untouched when it does not fit");
        assert_eq!(Pools::spread(&mut left, 0), None);

        let mut view = FakeView::new(6, 2);
        view.set_kind(0..2, "a");
        view.set_kind(2..6, "b");
        let mut pools = Pools::default();
        pools.sync(&view);
        assert_eq!(pools.free_counts(), vec![2, 4]);
        assert_eq!(pools.take_spread(7, &[(1, 4), (0, 1)]), Some(vec![0, 2, 3, 4, 5]));
        assert_eq!(pools.held_counts(7), Some(vec![1, 4]));
        assert_eq!(pools.take_spread(8, &[(0, 1), (1, 1)]), None, "all or nothing");
        assert_eq!(pools.free_counts(), vec![1, 0]);
        assert!(pools.vacate(7));
        assert_eq!(pools.free_counts(), vec![2, 4]);
    }
}
