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
//!
//! A job is never started beside what is left of an earlier run of it (a
//! server killed with SIGKILL leaves the job's grandchildren running):
//! before a job whose directory exists is started, its leftovers are
//! killed ([`super::leftovers`]), and the start fails if any survive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::leftovers::{self, Leftovers, Target};
use super::process::{Launch, ProcessJob, ProcessSpec, Progress, Suspension, control_socket, describe_exit};
use super::{Backend, BackendError, Ending, WorkOp};
use crate::cluster::Cluster;
use crate::wit::{GpuId, JobId, JobState};

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
    /// How long leftovers of a job's earlier run get to die after SIGKILL.
    leftover_deadline: Duration,
    specs: HashMap<JobId, ProcessSpec>,
    live: HashMap<JobId, Live>,
    restarts: HashMap<JobId, u32>,
    /// Endings found while carrying out actions (a job that exited as it
    /// was being suspended), reported at the next `ended`.
    early_ends: Vec<(JobId, Ending)>,
    /// Last progress of processes that ended, reported at the next `progress`.
    final_progress: Vec<(JobId, Progress)>,
    /// How processes are started (user, umask).
    launch: Launch,
}

impl ProcessBackend {
    /// A backend keeping job directories (`job-ID/`: logs, control socket)
    /// under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcessBackend {
            root: root.into(),
            suspend_deadline: DEFAULT_SUSPEND_DEADLINE,
            leftover_deadline: leftovers::DEFAULT_DEADLINE,
            specs: HashMap::new(),
            live: HashMap::new(),
            restarts: HashMap::new(),
            early_ends: Vec::new(),
            final_progress: Vec::new(),
            launch: Launch::default(),
        }
    }

    /// Start every process as `launch` says (as another user, say).
    pub fn with_launch(mut self, launch: Launch) -> Self {
        self.launch = launch;
        self
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

    /// What job `id` runs is needed only while it is live: the job's record
    /// (the service's) is where it stays.
    fn drop_launch(&mut self, id: JobId) {
        self.specs.remove(&id);
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

    /// The process group of job `id`'s process, while it has one: what to
    /// record, so that a server restarted after a crash can point out
    /// members of the group that are not the job's ([`Leftovers::spared`]).
    pub fn process_group(&self, id: JobId) -> Option<i32> {
        self.live.get(&id).map(|l| l.process.process_group())
    }

    /// Kill what an earlier run of the server left of `jobs` (each with its
    /// recorded process group, if any), before they are started again; one
    /// [`Leftovers`] per job, in order. One pass over `/proc` serves them
    /// all. Fails when a job has a process of this server, or when `/proc`
    /// cannot be read.
    pub fn clean_up_after_crash(&self, jobs: &[(JobId, Option<i32>)]) -> anyhow::Result<Vec<(JobId, Leftovers)>> {
        if let Some((id, _)) = jobs.iter().find(|(id, _)| self.live.contains_key(id)) {
            bail!("job {id} is running here; only what an earlier server left of it can be cleaned up");
        }
        let targets: Vec<Target> = jobs
            .iter()
            .map(|&(id, recorded_group)| Target {
                control_socket: control_socket(&self.job_dir(id)),
                recorded_group,
            })
            .collect();
        let found = leftovers::kill(&targets, self.leftover_deadline)
            .context("cannot look for processes that jobs left when the server stopped")?;
        Ok(jobs.iter().map(|&(id, _)| id).zip(found).collect())
    }

    /// Kill what an earlier run left of job `id` before it starts again;
    /// an error if any of it survives. A job without a directory was never
    /// started, so nothing can be left of it.
    fn kill_leftovers(&self, id: JobId, dir: &Path) -> Result<(), String> {
        if !dir.exists() {
            return Ok(());
        }
        let target = Target {
            control_socket: control_socket(dir),
            recorded_group: None,
        };
        let found = leftovers::kill_one(target, self.leftover_deadline)
            .map_err(|e| format!("job {id}: cannot look for processes left from its earlier run: {e}"))?;
        if !found.killed.is_empty() {
            tracing::warn!(job = id, pids = ?found.killed, "killed processes left from the job's earlier run before starting it again");
        }
        if !found.is_clean() {
            let pids: Vec<String> = found.survivors.iter().map(i32::to_string).collect();
            return Err(format!(
                "job {id}: processes of its earlier run (pids {}) are still alive {:?} after SIGKILL; it is not started beside them",
                pids.join(", "),
                self.leftover_deadline
            ));
        }
        Ok(())
    }

    fn spawn(&mut self, id: JobId, gpus: &[GpuId]) -> Result<(), String> {
        let Some(spec) = self.specs.get(&id) else {
            return Err(format!("job {id}: no command registered with the process backend"));
        };
        let mut spec = spec.clone();
        let restarts = self.restarts(id);
        spec.env.insert("WSCHED_RESTARTS".into(), restarts.to_string());
        let dir = self.job_dir(id);
        self.kill_leftovers(id, &dir)?;
        let process = ProcessJob::spawn_with(id, &spec, gpus, &dir, &self.launch).map_err(|e| format!("{e:#}"))?;
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
    fn reconcile_job(&mut self, id: JobId, state: JobState, placement: &[GpuId]) -> Result<(), String> {
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
                self.drop_launch(id);
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

    fn reconcile(&mut self, cluster: &Cluster, id: JobId) -> Result<(), BackendError> {
        let Some(job) = cluster.job(id) else {
            return Ok(());
        };
        let (state, placement) = (job.state, job.placement.clone());
        self.reconcile_job(id, state, &placement)
            .map_err(|reason| BackendError::new(id, WorkOp::for_state(state), reason))
    }

    // Remove ended job `id`'s directory (its logs) and restart count once
    // the service forgets the job; its command went when it ended. Does
    // nothing while it has a process.
    fn forget(&mut self, id: JobId) {
        if self.live.contains_key(&id) {
            return;
        }
        self.drop_launch(id);
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
        for (id, _) in &ended {
            self.drop_launch(*id);
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::backend::leftovers::testing::Sleeper;

    fn backend_with_a_leftover_of_job(id: JobId, root: &Path) -> (ProcessBackend, Sleeper) {
        let mut backend = ProcessBackend::new(root);
        backend.register(
            id,
            ProcessSpec {
                command: vec!["true".into()],
                ..ProcessSpec::default()
            },
        );
        let dir = backend.job_dir(id);
        std::fs::create_dir_all(&dir).expect("job directory");
        let leftover = Sleeper::start(Some(&control_socket(&dir)), 0);
        (backend, leftover)
    }

    #[test]
    fn a_job_is_not_started_beside_a_leftover_of_its_earlier_run() {
        let root = tempfile::tempdir().expect("tempdir");
        let (mut backend, mut leftover) = backend_with_a_leftover_of_job(3, root.path());
        backend.leftover_deadline = Duration::ZERO;
        let err = backend.spawn(3, &[0]).expect_err("a leftover survives");
        assert!(
            err.starts_with(&format!(
                "job 3: processes of its earlier run (pids {}) are still alive",
                leftover.pid()
            )),
            "{err}"
        );
        assert_eq!(backend.live_count(), 0);
        assert_eq!(leftover.ended(), None);

        backend.leftover_deadline = leftovers::DEFAULT_DEADLINE;
        backend.spawn(3, &[0]).expect("started once the leftover is gone");
        let status = leftover.0.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(backend.process_group(3).is_some_and(|group| group > 0));
    }

    #[test]
    fn clean_up_after_crash_kills_each_jobs_leftovers_and_refuses_live_jobs() {
        let root = tempfile::tempdir().expect("tempdir");
        let (mut backend, mut leftover) = backend_with_a_leftover_of_job(4, root.path());
        let found = backend
            .clean_up_after_crash(&[(4, Some(i32::MAX)), (5, None)])
            .expect("clean up");
        assert_eq!(
            found,
            vec![
                (
                    4,
                    Leftovers {
                        killed: vec![leftover.pid()],
                        ..Leftovers::default()
                    }
                ),
                (5, Leftovers::default()),
            ]
        );
        assert_eq!(leftover.0.wait().expect("wait").signal(), Some(libc::SIGKILL));

        backend.spawn(4, &[0]).expect("start");
        let err = backend.clean_up_after_crash(&[(4, None)]).expect_err("job 4 runs here");
        assert!(format!("{err:#}").contains("job 4 is running here"), "{err:#}");
    }
}
