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
use std::collections::{BTreeSet, HashMap, HashSet};

/// Free GPUs for a policy that places every job exclusively.
///
/// Use: call [`FreeGpus::observe`] with each event, [`FreeGpus::sync`]
/// before deciding, then [`FreeGpus::take`] for each gang it starts and
/// [`FreeGpus::release`] for each job it preempts.
#[derive(Debug, Default, Clone)]
pub struct FreeGpus {
    free: BTreeSet<GpuId>,
    /// The GPUs each running job holds whole, as far as this policy knows.
    held: HashMap<JobId, Vec<GpuId>>,
    /// Running jobs that share their GPUs (met at a takeover): when one
    /// ends, whether its GPUs are free depends on the others.
    shared: HashSet<JobId>,
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
            // A GPU came or went, or one of this policy's actions was
            // refused: the set can no longer be trusted.
            Event::GpuChanged(_) | Event::ActionRejected(_) => self.known = false,
        }
    }

    /// Read the free GPUs from the view if the set may be stale.
    pub fn sync(&mut self, view: &impl View) {
        if !self.known {
            self.free = view.free_gpus().into_iter().collect();
            self.known = true;
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
        for g in gpus {
            self.free.remove(g);
        }
        self.held.insert(job, gpus.to_vec());
    }

    fn take_exactly(&mut self, k: u32) -> Option<Vec<GpuId>> {
        let k = k as usize;
        if k == 0 || self.free.len() < k {
            return None;
        }
        Some((0..k).filter_map(|_| self.free.pop_first()).collect())
    }

    /// `job` leaves `gpus` free (a preemption this policy made, with the
    /// GPUs the view says it held).
    pub fn vacate(&mut self, job: JobId, gpus: &[GpuId]) {
        self.held.remove(&job);
        self.shared.remove(&job);
        if self.known {
            self.free.extend(gpus.iter().copied());
        }
    }

    /// `job` no longer holds its GPUs (it ended, or was preempted).
    pub fn release(&mut self, job: JobId) {
        if self.shared.remove(&job) {
            self.known = false;
        }
        if let Some(gpus) = self.held.remove(&job)
            && self.known
        {
            self.free.extend(gpus);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeView;

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
        // After a GPU change the view is read again.
        pool.observe(&Event::GpuChanged(0));
        pool.sync(&view);
        assert_eq!(pool.iter().collect::<Vec<_>>(), vec![0, 2, 3]);
    }
}
