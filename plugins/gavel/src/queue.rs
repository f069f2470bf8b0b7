//! Waiting jobs of one GPU kind, by gang size, each set in priority order,
//! so that a decision between ticks finds the next job to place in time
//! proportional to the gang sizes waiting, not to the live jobs.

use std::collections::{BTreeMap, BTreeSet};
use wsched_sdk::*;

/// The queue of one kind. A job's key is its rank in that kind's priority
/// order at the last tick (lower first), or, for a job that arrived since,
/// a number past every rank, in order of arrival. Priorities change only
/// at ticks, where the queues are built again.
#[derive(Debug, Default)]
pub struct Queue {
    /// Each queued job's gang size and key.
    of: IdMap<JobId, (u32, u64)>,
    by_gang: BTreeMap<u32, BTreeSet<(u64, JobId)>>,
}

impl Queue {
    pub fn insert(&mut self, id: JobId, gpus: u32, key: u64) {
        self.remove(id);
        self.of.insert(id, (gpus, key));
        self.by_gang.entry(gpus).or_default().insert((key, id));
    }

    pub fn remove(&mut self, id: JobId) {
        if let Some((gpus, key)) = self.of.remove(&id)
            && let Some(set) = self.by_gang.get_mut(&gpus)
        {
            set.remove(&(key, id));
            if set.is_empty() {
                self.by_gang.remove(&gpus);
            }
        }
    }

    /// The first job in priority order whose gang is 1 to `most` GPUs, and
    /// its gang size.
    pub fn first_fitting(&self, most: usize) -> Option<(JobId, u32)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_gang_that_fits() {
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
        q.remove(3);
        assert_eq!(q.first_fitting(8), None);
    }
}
