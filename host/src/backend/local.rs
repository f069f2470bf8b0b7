//! One machine's worth of work: commands as local processes, and built-in
//! synthetic jobs either on the machine's CUDA GPUs or on emulated GPUs.
//!
//! A service accepts both kinds in one queue, and a policy must see them as
//! one cluster, so one backend routes each job by what it is: a job with a
//! command registered goes to [`ProcessBackend`]; a synthetic job runs real
//! kernels on [`SyntheticBackend`] when the machine has GPUs for it, and is
//! model-driven as on [`super::emulated::EmulatedBackend`] otherwise.

use std::path::PathBuf;

use super::leftovers::Leftovers;
use super::process::ProcessSpec;
use super::processes::ProcessBackend;
use super::synthetic::{SyntheticBackend, Workload};
use super::{Backend, BackendError, Ending};
use crate::cluster::Cluster;
use crate::wit::{GpuId, JobId};

/// Local processes for commands; devices or emulated GPUs for synthetic jobs.
#[derive(Debug)]
pub struct LocalBackend {
    processes: ProcessBackend,
    devices: Option<SyntheticBackend>,
}

impl LocalBackend {
    /// Emulated GPUs: process jobs keep their directories (logs, control
    /// socket) under `root`; synthetic jobs are driven by the model.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            processes: ProcessBackend::new(root),
            devices: None,
        }
    }

    /// Real devices: synthetic jobs run on `devices` (cluster GPU `i` is
    /// its device `i`).
    pub fn with_devices(root: impl Into<PathBuf>, devices: SyntheticBackend) -> Self {
        LocalBackend {
            processes: ProcessBackend::new(root),
            devices: Some(devices),
        }
    }

    /// Start command jobs' processes as `launch` says (as another user).
    pub fn with_launch(mut self, launch: super::process::Launch) -> Self {
        self.processes = self.processes.with_launch(launch);
        self
    }

    /// Job `id` is a command, not a synthetic job; call it right after
    /// submitting. `restarts` is how many times it was started before (a
    /// job recovered after the server restarted is told so, to resume from
    /// its own checkpoint).
    pub fn register_command(&mut self, id: JobId, spec: ProcessSpec, restarts: u32) {
        self.processes.register(id, spec);
        self.processes.set_restarts(id, restarts);
    }

    /// Job `id` is a synthetic job; on real devices it runs `workload`
    /// (on emulated GPUs the model's declared work is all there is).
    pub fn register_synthetic(&mut self, id: JobId, workload: Workload) {
        if let Some(devices) = &mut self.devices {
            devices.register(id, workload);
        }
    }

    /// The process group of command job `id`'s process, while it has one:
    /// to record with the job, for [`Self::clean_up_after_crash`].
    pub fn process_group(&self, id: JobId) -> Option<i32> {
        self.processes.process_group(id)
    }

    /// At start, before recovered command jobs can run again: kill what
    /// the crashed server left of `jobs` (id and recorded process group);
    /// see [`ProcessBackend::clean_up_after_crash`].
    pub fn clean_up_after_crash(&self, jobs: &[(JobId, Option<i32>)]) -> anyhow::Result<Vec<(JobId, Leftovers)>> {
        self.processes.clean_up_after_crash(jobs)
    }

    /// The process backend, for logs and progress of command jobs.
    pub fn processes(&self) -> &ProcessBackend {
        &self.processes
    }

    /// The device backend, when synthetic jobs run on real devices.
    pub fn devices(&self) -> Option<&SyntheticBackend> {
        self.devices.as_ref()
    }

    /// Whether any job's end cannot be foreseen (a live process, a job
    /// running kernels): the caller must poll.
    pub fn needs_polling(&self) -> bool {
        self.processes.live_count() > 0 || self.devices.as_ref().is_some_and(SyntheticBackend::has_work)
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        match &self.devices {
            Some(devices) => devices.name(),
            None => "emulated",
        }
    }

    fn reconcile(&mut self, cluster: &Cluster, id: JobId) -> Result<(), BackendError> {
        if self.processes.is_registered(id) {
            self.processes.reconcile(cluster, id)
        } else if let Some(devices) = self.devices.as_mut().filter(|d| d.is_registered(id)) {
            devices.reconcile(cluster, id)
        } else {
            Ok(())
        }
    }

    fn forget(&mut self, id: JobId) {
        self.processes.forget(id);
        if let Some(devices) = &mut self.devices {
            devices.forget(id);
        }
    }

    fn ended(&mut self, cluster: &Cluster) -> Vec<(JobId, Ending)> {
        let mut ended: Vec<(JobId, Ending)> = if self.devices.is_some() {
            Vec::new()
        } else {
            cluster
                .work_completed()
                .into_iter()
                .filter(|id| !self.processes.is_registered(*id))
                .map(|id| (id, Ok(())))
                .collect()
        };
        ended.extend(self.processes.ended(cluster));
        if let Some(devices) = &mut self.devices {
            ended.extend(devices.ended(cluster));
        }
        ended
    }

    fn progress(&mut self) -> Vec<(JobId, Option<u64>, Option<f64>)> {
        let mut reports = Backend::progress(&mut self.processes);
        if let Some(devices) = &mut self.devices {
            reports.extend(devices.progress());
        }
        reports
    }

    fn measure(&mut self) -> Vec<(GpuId, crate::wit::GpuMeasurement)> {
        self.devices.as_mut().map(Backend::measure).unwrap_or_default()
    }

    fn broken_gpus(&mut self) -> Vec<GpuId> {
        self.devices
            .as_mut()
            .map(SyntheticBackend::take_broken)
            .unwrap_or_default()
    }

    fn next_end(&self, cluster: &Cluster) -> Option<f64> {
        if self.devices.is_some() {
            None
        } else {
            cluster.next_completion()
        }
    }
}
