//! Jobs as local commands: the backend for a machine's own GPUs, driven by
//! processes rather than by the model.
//!
//! Each job is a command ([`ProcessSpec`]) registered when it is submitted.
//! The backend keeps each live process where the model says the job is:
//! running on exactly its placement, or suspended. It does that by
//! reconciling after every action rather than by translating actions one
//! by one, so that a `share`, a `resize` or a resume on other GPUs all come
//! down to the same few cases:
//!
//! - running, no process yet: start it on the placement;
//! - running on other GPUs than the process was given: restart it there
//!   (a process cannot change `CUDA_VISIBLE_DEVICES`; the job is told
//!   through `WSCHED_RESTARTS` and resumes from its own checkpoint);
//! - running, process suspended: resume it;
//! - suspended, process running: suspend it (cooperatively if it takes
//!   part, see [`super::process`], else SIGSTOP);
//! - ended in the model (cancelled): kill it.
//!
//! A job finishes when its process exits with status 0 and fails with the
//! exit code or signal otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{ProcessJob, ProcessSpec, Progress, Suspension, describe_exit};
use super::{Backend, Ending};
use crate::cluster::{Applied, Cluster};
use crate::wit::{Action, GpuId, JobId, JobState};

/// How long a cooperating job gets to checkpoint before SIGSTOP, by default.
pub const DEFAULT_SUSPEND_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Live {
    process: ProcessJob,
    gpus: Vec<GpuId>,
}

/// Runs each job as a local process in its own directory under `root`.
#[derive(Debug)]
pub struct ProcessBackend {
    root: PathBuf,
    suspend_deadline: Duration,
    specs: HashMap<JobId, ProcessSpec>,
    live: HashMap<JobId, Live>,
    restarts: HashMap<JobId, u32>,
    /// Endings found while carrying out actions (a job that exited as it
    /// was being suspended), reported at the next `ended`.
    early_ends: Vec<(JobId, Ending)>,
    /// Last progress of processes that ended, reported at the next `progress`.
    final_progress: Vec<(JobId, Progress)>,
}

impl ProcessBackend {
    /// A backend keeping job directories (`job-ID/`: logs, control socket)
    /// under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcessBackend {
            root: root.into(),
            suspend_deadline: DEFAULT_SUSPEND_DEADLINE,
            specs: HashMap::new(),
            live: HashMap::new(),
            restarts: HashMap::new(),
            early_ends: Vec::new(),
            final_progress: Vec::new(),
        }
    }

    /// Give cooperating jobs `deadline` to checkpoint before SIGSTOP.
    pub fn with_suspend_deadline(mut self, deadline: Duration) -> Self {
        self.suspend_deadline = deadline;
        self
    }

    /// Say what job `id` runs; call it right after submitting the job.
    pub fn register(&mut self, id: JobId, spec: ProcessSpec) {
        self.specs.insert(id, spec);
    }

    /// Say that job `id` was started `restarts` times before (by an earlier
    /// run of the host); it is told so in `WSCHED_RESTARTS`.
    pub fn set_restarts(&mut self, id: JobId, restarts: u32) {
        if restarts > 0 {
            self.restarts.insert(id, restarts);
        }
    }

    /// Drop job `id` once it ended and the service forgets it: its command,
    /// its restart count and its directory (logs included). Does nothing
    /// while it has a process.
    pub fn forget(&mut self, id: JobId) {
        if self.live.contains_key(&id) {
            return;
        }
        self.specs.remove(&id);
        self.restarts.remove(&id);
        let dir = self.job_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(job = id, dir = %dir.display(), error = %e, "cannot remove an expired job's directory")
            }
        }
    }

    /// Whether job `id` has a command registered here.
    pub fn is_registered(&self, id: JobId) -> bool {
        self.specs.contains_key(&id)
    }

    /// How many jobs have a process now (running or suspended).
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The directory with job `id`'s `stdout.log` and `stderr.log`.
    pub fn job_dir(&self, id: JobId) -> PathBuf {
        self.root.join(format!("job-{id}"))
    }

    /// What job `id`'s process has reported, while it has one.
    pub fn progress(&self, id: JobId) -> Option<Progress> {
        self.live.get(&id).map(|l| l.process.progress())
    }

    /// Times job `id` was restarted on other GPUs.
    pub fn restarts(&self, id: JobId) -> u32 {
        self.restarts.get(&id).copied().unwrap_or(0)
    }

    fn spawn(&mut self, id: JobId, gpus: &[GpuId]) -> Result<(), String> {
        let Some(spec) = self.specs.get(&id) else {
            return Err(format!("job {id}: no command registered with the process backend"));
        };
        let mut spec = spec.clone();
        let restarts = self.restarts(id);
        spec.env.insert("WSCHED_RESTARTS".into(), restarts.to_string());
        let dir = self.job_dir(id);
        let process = ProcessJob::spawn(id, &spec, gpus, &dir).map_err(|e| format!("{e:#}"))?;
        self.live.insert(
            id,
            Live {
                process,
                gpus: gpus.to_vec(),
            },
        );
        Ok(())
    }

    /// Bring job `id`'s process in line with the model.
    fn reconcile(&mut self, id: JobId, state: JobState, placement: &[GpuId]) -> Result<(), String> {
        match state {
            JobState::Running => match self.live.get_mut(&id) {
                None => self.spawn(id, placement),
                Some(live) if live.gpus != placement => {
                    live.process.kill().map_err(|e| format!("{e:#}"))?;
                    self.live.remove(&id);
                    *self.restarts.entry(id).or_default() += 1;
                    tracing::info!(job = id, gpus = ?placement, "restarting the job's process on other GPUs");
                    self.spawn(id, placement)
                }
                Some(live) if live.process.is_suspended() => live.process.resume().map_err(|e| format!("{e:#}")),
                Some(_) => Ok(()),
            },
            JobState::Suspended => {
                let Some(live) = self.live.get_mut(&id) else {
                    return Ok(());
                };
                if live.process.is_suspended() {
                    return Ok(());
                }
                match live.process.suspend(self.suspend_deadline) {
                    Ok(Suspension::Exited(status)) => {
                        if let Some(live) = self.live.remove(&id) {
                            self.final_progress.push((id, live.process.final_progress()));
                        }
                        self.early_ends.push((id, ending(status)));
                        Ok(())
                    }
                    Ok(how) => {
                        tracing::debug!(job = id, ?how, "suspended");
                        Ok(())
                    }
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            JobState::Pending => Ok(()),
            JobState::Finished | JobState::Failed => {
                if let Some(mut live) = self.live.remove(&id) {
                    live.process.kill().map_err(|e| format!("{e:#}"))?;
                }
                Ok(())
            }
        }
    }
}

fn ending(status: std::process::ExitStatus) -> Ending {
    if status.success() {
        Ok(())
    } else {
        Err(describe_exit(status))
    }
}

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn carry_out(&mut self, cluster: &Cluster, action: &Action, _applied: &Applied) -> Result<(), String> {
        self.sync(cluster, action.job())
    }

    fn sync(&mut self, cluster: &Cluster, id: JobId) -> Result<(), String> {
        let Some(job) = cluster.job(id) else {
            return Ok(());
        };
        let (state, placement) = (job.state, job.placement.clone());
        self.reconcile(id, state, &placement)
    }

    fn ended(&mut self, _cluster: &Cluster) -> Vec<(JobId, Ending)> {
        let mut ended = std::mem::take(&mut self.early_ends);
        let mut ids: Vec<JobId> = self.live.keys().copied().collect();
        ids.sort_unstable(); // report in job order, whatever the map's order
        for id in ids {
            let Some(live) = self.live.get_mut(&id) else { continue };
            match live.process.try_wait() {
                Ok(Some(status)) => {
                    if let Some(live) = self.live.remove(&id) {
                        self.final_progress.push((id, live.process.final_progress()));
                    }
                    ended.push((id, ending(status)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.live.remove(&id);
                    ended.push((id, Err(format!("{e:#}"))));
                }
            }
        }
        ended
    }

    fn progress(&mut self) -> Vec<(JobId, Option<u64>, Option<f64>)> {
        let mut reports: Vec<_> = std::mem::take(&mut self.final_progress);
        reports.extend(self.live.iter().map(|(&id, live)| (id, live.process.progress())));
        let mut reports: Vec<_> = reports
            .into_iter()
            .filter(|(_, p)| p.cooperative)
            .map(|(id, p)| (id, p.iterations, p.iteration_time))
            .collect();
        reports.sort_unstable_by_key(|r| r.0);
        reports
    }

    fn next_end(&self, _cluster: &Cluster) -> Option<f64> {
        None // a process ends when it ends: poll
    }
}

impl ProcessBackend {
    /// The root directory holding the job directories.
    pub fn root(&self) -> &Path {
        &self.root
    }
}
