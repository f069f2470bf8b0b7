//! One machine's worth of both kinds of work: synthetic jobs on emulated
//! GPUs and commands as local processes, side by side.
//!
//! A service accepts both in one queue, and a policy must see them as one
//! cluster, so one backend routes each job by what it is: a job with a
//! command registered goes to [`ProcessBackend`], every other job is
//! model-driven as on [`super::emulated::EmulatedBackend`].

use std::path::PathBuf;

use super::process::ProcessSpec;
use super::processes::ProcessBackend;
use super::{Backend, Ending};
use crate::cluster::{Applied, Cluster};
use crate::wit::{Action, JobId};

/// Emulated GPUs for synthetic jobs, local processes for commands.
#[derive(Debug)]
pub struct LocalBackend {
    processes: ProcessBackend,
}

impl LocalBackend {
    /// Process jobs keep their directories (logs, control socket) under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            processes: ProcessBackend::new(root),
        }
    }

    /// Job `id` is a command, not a synthetic job; call it right after
    /// submitting. `restarts` is how many times it was started before (a
    /// job recovered after the server restarted is told so, to resume from
    /// its own checkpoint).
    pub fn register_command(&mut self, id: JobId, spec: ProcessSpec, restarts: u32) {
        self.processes.register(id, spec);
        self.processes.set_restarts(id, restarts);
    }

    /// The process backend, for logs and progress of command jobs.
    pub fn processes(&self) -> &ProcessBackend {
        &self.processes
    }

    /// Whether any command job has a live process (they must be polled:
    /// their ends cannot be predicted).
    pub fn has_processes(&self) -> bool {
        self.processes.live_count() > 0
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "emulated"
    }

    fn carry_out(&mut self, cluster: &Cluster, action: &Action, applied: &Applied) -> Result<(), String> {
        if self.processes.is_registered(action.job()) {
            self.processes.carry_out(cluster, action, applied)
        } else {
            Ok(())
        }
    }

    fn sync(&mut self, cluster: &Cluster, id: JobId) -> Result<(), String> {
        if self.processes.is_registered(id) {
            self.processes.sync(cluster, id)
        } else {
            Ok(())
        }
    }

    fn ended(&mut self, cluster: &Cluster) -> Vec<(JobId, Ending)> {
        let mut ended: Vec<(JobId, Ending)> = cluster
            .work_completed()
            .into_iter()
            .filter(|id| !self.processes.is_registered(*id))
            .map(|id| (id, Ok(())))
            .collect();
        ended.extend(self.processes.ended(cluster));
        ended
    }

    fn progress(&mut self) -> Vec<(JobId, Option<u64>, Option<f64>)> {
        Backend::progress(&mut self.processes)
    }

    fn next_end(&self, cluster: &Cluster) -> Option<f64> {
        cluster.next_completion()
    }
}
