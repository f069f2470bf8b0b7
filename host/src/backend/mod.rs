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

use crate::cluster::{Applied, Cluster};
use crate::wit::{Action, JobId};

/// How a job ended on its backend.
pub type Ending = Result<(), String>;

/// Something that carries out decisions on real (or emulated) work.
pub trait Backend {
    /// Short name for logs ("emulated", "processes", "cuda").
    fn name(&self) -> &'static str;

    /// Carry out an action that the cluster model has just validated and
    /// applied (`cluster` shows the state after it). An error means the job
    /// cannot go on (its command would not start, say): the caller marks
    /// it failed with that reason.
    fn carry_out(&mut self, cluster: &Cluster, action: &Action, applied: &Applied) -> Result<(), String>;

    /// Bring job `id`'s work in line with the model after the host changed
    /// it without an action: cancelled it, or suspended it because a GPU
    /// it held went away. Nothing to do by default.
    fn sync(&mut self, _cluster: &Cluster, _id: JobId) -> Result<(), String> {
        Ok(())
    }

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
