//! Built-in policies compiled into the host.
//!
//! The scheduler falls back to one of these when a plugin is ejected, the
//! way Linux's sched_ext hands tasks back to the fair scheduler: whatever a
//! plugin did, jobs keep flowing. They read the cluster model directly, so
//! they need no events and cannot be confused by a plugin's leftovers
//! (suspended jobs, shared GPUs).

use crate::cluster::Cluster;
use crate::wit::{Action, Decision, Event, JobState, Placement};

/// A policy that runs inside the host, with direct access to the model.
pub trait NativePolicy: Send {
    /// Short name for logs and metrics.
    fn name(&self) -> &str;
    /// Decide, as a plugin would; `events` are given for symmetry.
    fn decide(&mut self, cluster: &Cluster, events: &[Event]) -> Decision;
}

/// Strict FIFO over every waiting job (pending or suspended), oldest
/// submission first; the head blocks the queue when it does not fit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fifo;

impl NativePolicy for Fifo {
    fn name(&self) -> &str {
        "builtin-fifo"
    }

    /// Reads only the head of the queue and the GPUs it takes: the cost
    /// of a decision is that of the jobs it starts, whatever the queue's
    /// depth or the cluster's size.
    fn decide(&mut self, cluster: &Cluster, _events: &[Event]) -> Decision {
        let mut left = cluster.stats().free_gpus as usize;
        let mut free = cluster.free_gpus();
        let mut actions = Vec::new();
        for id in cluster.waiting_ids() {
            let Some(job) = cluster.job(id) else { continue };
            let need = job.spec.gpus as usize;
            if need > left {
                break;
            }
            left -= need;
            let placement = Placement {
                job: id,
                gpus: free.by_ref().take(need).collect(),
            };
            actions.push(if job.state == JobState::Suspended {
                Action::Resume(placement)
            } else {
                Action::Start(placement)
            });
        }
        Decision { actions, wakeup: None }
    }
}
