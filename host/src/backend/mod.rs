//! Backends carry out a policy's decisions on work that really runs.
//!
//! The policy decides and the cluster model ([`crate::cluster`]) validates
//! and books every action; a backend then makes it happen: it starts,
//! suspends, resumes or moves the work, and reports back which jobs ended.
//! Keeping the bookkeeping in the model and only the doing in the backend
//! is what lets the simulator, emulated GPUs, local processes and (later)
//! CUDA workers share one decision loop ([`crate::runtime`]).
//!
//! - [`emulated`]: GPUs that exist only in the model; a job finishes when
//!   its declared work is done, on the wall clock. Any machine, no GPU.
//! - [`processes`]: each job is a local command, given its GPUs through
//!   `CUDA_VISIBLE_DEVICES`; it finishes when the process exits.
//! - [`process`]: one such command, its logs and how it is suspended.
//! - [`leftovers`]: what such a command left running when the server
//!   died, killed before it starts again.
//! - [`synthetic`]: built-in training jobs running real kernels on
//!   devices, suspended at iteration boundaries, moved through host memory.
//! - [`device`]: what those jobs need of a GPU, and a CPU stand-in with
//!   the same arithmetic; [`cuda`]: the same on NVIDIA GPUs (cudarc).
//! - [`worker`]: each device in a process of its own, restarted after a
//!   fault (what the service uses).
//! - [`local`]: one machine's backend: processes for commands, and
//!   synthetic jobs on CUDA devices or on emulated GPUs.

pub mod cuda;
pub mod device;
pub mod emulated;
pub mod leftovers;
pub mod local;
pub mod process;
pub mod processes;
pub mod synthetic;
pub mod worker;

use crate::cluster::Cluster;
use crate::wit::{JobId, JobState};

/// How a job ended on its backend.
pub type Ending = Result<(), String>;

/// What the model asked of a job's work when a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOp {
    /// Run it on its GPUs: start it, resume it or move it there.
    Run,
    /// Suspend it, keeping its progress.
    Suspend,
    /// Stop it for good (it ended or was cancelled).
    Stop,
}

impl WorkOp {
    /// The operation the model asks for a job in `state`.
    pub fn for_state(state: JobState) -> WorkOp {
        match state {
            JobState::Running => WorkOp::Run,
            JobState::Suspended | JobState::Pending => WorkOp::Suspend,
            JobState::Finished | JobState::Failed => WorkOp::Stop,
        }
    }

    /// Its name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            WorkOp::Run => "run",
            WorkOp::Suspend => "suspend",
            WorkOp::Stop => "stop",
        }
    }
}

/// Why a backend could not bring a job's work in line with the model:
/// its command would not start, a process could not be signalled, a
/// device worker could not be reached. The job cannot go on; its text
/// (`Display`, the backend's own words) is the job's failure reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    /// The job.
    pub job: JobId,
    /// What the model asked of its work.
    pub op: WorkOp,
    /// What went wrong, as the backend says it.
    pub reason: String,
}

impl BackendError {
    /// Job `job`'s work could not be brought to what `op` asks, because `reason`.
    pub fn new(job: JobId, op: WorkOp, reason: impl Into<String>) -> BackendError {
        BackendError {
            job,
            op,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for BackendError {}

/// Something that carries out decisions on real (or emulated) work.
pub trait Backend {
    /// Short name for logs ("emulated", "processes", "cuda").
    fn name(&self) -> &'static str;

    /// Bring job `id`'s work in line with the model (`cluster`, after the
    /// change): run it on the GPUs it holds, suspend it, or stop it. The
    /// one path for every change, whether a policy's action made it or the
    /// host did (a cancel, a GPU that went away): a backend compares what
    /// it runs with what the model says, so it never needs to know which
    /// action led there, and calling it twice changes nothing. An error
    /// means the job cannot go on: the caller marks it failed.
    fn reconcile(&mut self, cluster: &Cluster, id: JobId) -> Result<(), BackendError>;

    /// Drop what is kept about ended job `id` (its logs, its final state
    /// sample) once the front end forgets the job. Nothing by default.
    fn forget(&mut self, _id: JobId) {}

    /// Jobs that ended since the last call, as of the model's clock.
    fn ended(&mut self, cluster: &Cluster) -> Vec<(JobId, Ending)>;

    /// What the backend measured about jobs since the last call: (job,
    /// iterations done, seconds per iteration), including the last report
    /// of jobs that `ended` just returned. None by default.
    fn progress(&mut self) -> Vec<(JobId, Option<u64>, Option<f64>)> {
        Vec::new()
    }

    /// What GPUs' own counters say, sampled since the last call (real
    /// GPUs only). None by default.
    fn measure(&mut self) -> Vec<(crate::wit::GpuId, crate::wit::GpuMeasurement)> {
        Vec::new()
    }

    /// GPUs found broken since the last call: the host takes them offline
    /// (their jobs are suspended and the policy hears `gpu-changed`).
    fn broken_gpus(&mut self) -> Vec<crate::wit::GpuId> {
        Vec::new()
    }

    /// When the next job is expected to end, when the backend can predict
    /// it (the emulated backend can; real processes cannot).
    fn next_end(&self, cluster: &Cluster) -> Option<f64>;
}
