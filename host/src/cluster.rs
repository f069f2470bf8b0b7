//! The cluster model: the host's single source of truth about jobs and GPUs.
//!
//! Policies only propose; this module decides whether a proposal is
//! possible. Every [`Action`] goes through [`Cluster::apply`], which checks
//! it against the current state (unknown job, wrong state, partial gang,
//! GPU over capacity, memory that does not fit, ...) and either carries out
//! the state change or returns a reason, leaving the model untouched. That
//! keeps a buggy or hostile plugin from ever corrupting the cluster, and it
//! is also why actions in one batch are applied in order: a preemption
//! frees GPUs that a later start in the same batch may use.
//!
//! The model is backend-agnostic. Progress is kept as seconds of work on
//! the job's full gang, so the simulator can predict completions and real
//! backends can report measured progress into the same field.
//!
//! Why nothing here walks every job or GPU on an event: replays of large
//! traces on large clusters are event loops, and an event's cost must not
//! grow with the cluster. So a running job's progress and service are
//! settled only when its rate changes (`accounted_at`, read lazily with
//! [`Job::progress_at`] and friends), completions sit in ordered sets keyed
//! by projected finish (re-keyed only for the jobs whose rate changes), the
//! free GPUs and the allocated share are maintained as they change (the
//! share in exact fixed point, so the total equals the sum over GPUs), and
//! the job table is hashed by a multiplicative hash of the id.

use crate::bounds;
use crate::wit::{
    Action, ClusterStats, GpuId, GpuInfo, GpuMeasurement, JobId, JobInfo, JobState, Resident, RunningJob,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Fractions are compared with this slack so that 0.5 + 0.5 fits in 1.0.
const FRACTION_EPSILON: f64 = 1e-9;

/// What a submitter asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The user or tenant (virtual cluster).
    pub tenant: String,
    /// Gang size: the job starts on exactly this many GPUs.
    pub gpus: u32,
    /// Seconds of work on the full gang, when known (the simulator knows it
    /// from the trace; a real job may not).
    pub work: Option<f64>,
    /// What policies are told to expect (`expected-duration`); may differ
    /// from `work`, or be withheld.
    pub expected_duration: Option<f64>,
    /// Device memory needed on each GPU, in bytes.
    pub memory_per_gpu: u64,
    /// Iterations in total, when known.
    pub iterations_total: Option<u64>,
    /// Share of one GPU that is enough for the job, in (0, 1], when the
    /// submitter said so (single-GPU jobs only): held at this share or
    /// more, the job runs at full speed.
    pub share_requested: Option<f64>,
    /// The weight the job starts with (policies may change it with
    /// `set-priority`); 1.0 when none is given.
    pub priority: Option<f64>,
    /// Its type in the cluster's throughput table (see
    /// [`Cluster::set_speed_model`]), when it has one.
    pub job_type: Option<u16>,
}

impl JobSpec {
    /// A job of `gpus` GPUs for `work` seconds, with nothing else known.
    pub fn new(tenant: impl Into<String>, gpus: u32, work: f64) -> Self {
        JobSpec {
            tenant: tenant.into(),
            gpus,
            work: Some(work),
            expected_duration: Some(work),
            memory_per_gpu: 0,
            iterations_total: None,
            share_requested: None,
            priority: None,
            job_type: None,
        }
    }
}

/// One job and everything the host tracks about it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique id; ids grow with submission order.
    pub id: JobId,
    /// What was asked for.
    pub spec: JobSpec,
    /// When it was submitted.
    pub submit_time: f64,
    /// Where it is in its life.
    pub state: JobState,
    /// GPUs held now (empty unless running).
    pub placement: Vec<GpuId>,
    /// Share of each held GPU.
    pub fraction: f64,
    /// Seconds of work on the full gang done, as of `accounted_at` (see
    /// [`Job::progress_at`] for now).
    pub progress: f64,
    /// GPU-seconds of service received, as of `accounted_at`.
    pub attained_gpu_seconds: f64,
    /// Seconds spent running, as of `accounted_at`.
    pub attained_seconds: f64,
    /// When `progress` and the attained service were last brought up to
    /// date; a running job accrues from here at its current rate.
    pub accounted_at: f64,
    /// When it last started or resumed.
    pub since: f64,
    /// Until when it holds its GPUs without progressing: it is restoring
    /// its state after a resume, a move or a resize (see
    /// [`Cluster::set_restart_cost`]).
    pub stalled_until: f64,
    /// Seconds it spent restoring so far, as of `accounted_at`.
    pub restart_seconds: f64,
    /// How fast it runs per GPU on the GPUs it holds, relative to its
    /// reference (see [`crate::speed::ThroughputTable::relative_speed`]);
    /// 1 without a throughput table. Set when it is placed.
    pub speed: f32,
    /// The part of `speed` due to its gang spreading over nodes (1 on one
    /// node): kept to report what spreading cost.
    pub spread_factor: f32,
    /// While it shares its GPUs with other jobs and sharing is modelled as
    /// measured ([`Colocation::Measured`]): its speed there relative to
    /// alone (always positive), which replaces its share of the GPUs. 0
    /// otherwise (not an `Option`: 4 bytes less in every job record).
    pub co_located: f32,
    /// When it first started.
    pub first_start: Option<f64>,
    /// When it finished or failed.
    pub end_time: Option<f64>,
    /// Weight set by the policy.
    pub priority: f64,
    /// Times preempted.
    pub preemptions: u32,
    /// Times moved to other GPUs.
    pub migrations: u32,
    /// Iterations done, when a backend reports them.
    pub iterations_done: Option<u64>,
    /// Measured seconds per iteration, when a backend reports them.
    pub iteration_time: Option<f64>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
}

impl Job {
    /// Progress per second of wall time: GPUs held times share, over the
    /// gang size asked for (1.0 when exclusive on the full gang). A job
    /// that said a share of a GPU is enough runs at full speed on it.
    pub fn rate(&self) -> f64 {
        if self.state != JobState::Running || self.spec.gpus == 0 {
            return 0.0;
        }
        // Times 1.0 (no table, or the reference) leaves it exact.
        self.placement.len() as f64 * self.share() / self.spec.gpus as f64 * f64::from(self.speed)
    }

    /// What its share of its GPUs gives it: its fraction (up to the share
    /// it said is enough), or its measured speed beside the jobs it shares
    /// them with.
    fn share(&self) -> f64 {
        if self.co_located > 0.0 {
            return f64::from(self.co_located);
        }
        match self.spec.share_requested {
            Some(enough) if enough > 0.0 => (self.fraction / enough).min(1.0),
            _ => self.fraction,
        }
    }

    /// Its speed beside the jobs it shares its GPUs with, relative to
    /// alone, when sharing is modelled as measured and it shares them.
    pub fn co_located_factor(&self) -> Option<f32> {
        (self.co_located > 0.0).then_some(self.co_located)
    }

    /// Work (seconds on its full gang at its reference) that spreading
    /// over nodes and sharing GPUs cost it in its `progressing` seconds at
    /// its current rate: what it would have done on one node, and alone
    /// on its GPUs, minus what it did.
    fn model_losses(&self, progressing: f64) -> ModelLosses {
        if progressing <= 0.0 || self.state != JobState::Running || self.spec.gpus == 0 {
            return ModelLosses::default();
        }
        let per_second = self.placement.len() as f64 / self.spec.gpus as f64 * f64::from(self.speed);
        let spread = f64::from(self.spread_factor);
        let spread_work = if spread > 0.0 && spread != 1.0 {
            progressing * per_second * self.share() * (1.0 / spread - 1.0)
        } else {
            0.0
        };
        let interference_work = self
            .co_located_factor()
            .map_or(0.0, |factor| progressing * per_second * (1.0 - f64::from(factor)));
        ModelLosses {
            spread_work,
            interference_work,
        }
    }

    /// Seconds of full-gang work left as of `accounted_at`, when the
    /// total is known.
    pub fn remaining_work(&self) -> Option<f64> {
        self.spec.work.map(|w| (w - self.progress).max(0.0))
    }

    /// Seconds running since the accounts were last settled, as of `now`.
    fn unaccounted(&self, now: f64) -> f64 {
        if self.state == JobState::Running {
            (now - self.accounted_at).max(0.0)
        } else {
            0.0
        }
    }

    /// Seconds since the accounts were last settled, as of `now`, that it
    /// held its GPUs restoring its state, without progress.
    fn stalled(&self, now: f64) -> f64 {
        if self.state == JobState::Running && self.stalled_until > self.accounted_at {
            (self.stalled_until.min(now) - self.accounted_at).max(0.0)
        } else {
            0.0
        }
    }

    /// Seconds of full-gang work done as of `now`.
    pub fn progress_at(&self, now: f64) -> f64 {
        let dt = self.unaccounted(now);
        if dt > 0.0 {
            self.progress + (dt - self.stalled(now)) * self.rate()
        } else {
            self.progress
        }
    }

    /// Seconds spent restoring after restarts as of `now` (time it held
    /// GPUs without progressing).
    pub fn restart_seconds_at(&self, now: f64) -> f64 {
        self.restart_seconds + self.stalled(now)
    }

    /// GPU-seconds of service received as of `now`.
    pub fn attained_gpu_seconds_at(&self, now: f64) -> f64 {
        let dt = self.unaccounted(now);
        if dt > 0.0 {
            self.attained_gpu_seconds + dt * self.placement.len() as f64 * self.fraction
        } else {
            self.attained_gpu_seconds
        }
    }

    /// Seconds spent running as of `now`.
    pub fn attained_seconds_at(&self, now: f64) -> f64 {
        let dt = self.unaccounted(now);
        if dt > 0.0 {
            self.attained_seconds + dt
        } else {
            self.attained_seconds
        }
    }

    /// Bring `progress` and the attained service up to `now`; returns
    /// what the performance model cost it since the last settlement.
    fn settle(&mut self, now: f64) -> ModelLosses {
        let dt = self.unaccounted(now);
        let losses = self.model_losses(dt - self.stalled(now));
        self.progress = self.progress_at(now);
        self.restart_seconds = self.restart_seconds_at(now);
        self.attained_gpu_seconds = self.attained_gpu_seconds_at(now);
        self.attained_seconds = self.attained_seconds_at(now);
        self.accounted_at = now;
        losses
    }

    /// Whether the job has ended (finished or failed).
    pub fn is_done(&self) -> bool {
        matches!(self.state, JobState::Finished | JobState::Failed)
    }
}

/// Work the performance model cost, in seconds of work on a job's full
/// gang at its reference, summed over jobs: what running spread over
/// nodes, and sharing GPUs, took compared with one node and GPUs alone.
/// (A restart's cost is time, kept per job as `restart_seconds`.)
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelLosses {
    /// Lost to gangs spread over several nodes.
    pub spread_work: f64,
    /// Lost to interference between jobs sharing GPUs (against each
    /// running alone there).
    pub interference_work: f64,
}

impl std::ops::AddAssign for ModelLosses {
    fn add_assign(&mut self, other: ModelLosses) {
        self.spread_work += other.spread_work;
        self.interference_work += other.interference_work;
    }
}

/// What a restart costs: a job that takes GPUs again after a preemption,
/// or moves to others (a migration, a resize), holds them this long
/// restoring its state before it progresses again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RestartCost {
    /// The same seconds for every restart: 0 makes restarts free (the
    /// default); [`RestartCost::CHECKPOINT`] is a restore from a
    /// checkpoint as Pollux measured it.
    Fixed(f64),
    /// Seconds per GiB of the job's device memory on one GPU (all of the
    /// GPU's memory when the job's is not known), each GPU's state moving
    /// over its own link: suspending through host memory, as
    /// [`RestartCost::HOST_MEMORY`] measured.
    PerGib(f64),
}

impl RestartCost {
    /// A restore from a checkpoint: 30 s, Pollux's measurement (Qiao et
    /// al., OSDI'21, section 5; the simulator in its repository).
    pub const CHECKPOINT: RestartCost = RestartCost::Fixed(30.0);
    /// Suspend and resume through pinned host memory: 44 ms per GiB, the
    /// CUDA backend's figure on an H200 (BENCHMARKS.md).
    pub const HOST_MEMORY: RestartCost = RestartCost::PerGib(0.044);
}

impl Default for RestartCost {
    fn default() -> Self {
        RestartCost::Fixed(0.0)
    }
}

/// The least interference factor: a job beside others runs at least at
/// 1% of its speed alone (a smaller one would all but stop it).
pub const MIN_INTERFERENCE: f64 = 0.01;

/// How jobs sharing a GPU progress.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Colocation {
    /// By time-slicing: each at its share of the GPU (the share it said is
    /// enough counting as all of it), with no packing gain and no
    /// interference. The default, and what a model without measurements
    /// can say.
    #[default]
    TimeSlice,
    /// Together, each at its measured speed beside the other: the
    /// throughput table's pair figure for two typed jobs on the same GPUs,
    /// else `interference` times its speed alone (shared by more than two,
    /// each gets `interference * 2 / residents`: the pair's total split
    /// evenly). `interference` None: the mean of the table's measured
    /// single-GPU pairs on the GPU's kind, else 0.5 (no gain over
    /// time-slicing).
    Measured {
        /// Speed beside one other job relative to alone, in (0, 1].
        interference: Option<f64>,
    },
}

/// Relative slack under which a job's remaining work counts as done:
/// progress accrues in floating point, and a job that finishes at exactly
/// its predicted time must not be left with 1e-12 s of work to do.
const DONE_EPSILON: f64 = 1e-9;

/// Whether a running job's known work is done as of `now`: what is left is
/// within rounding of zero, or too little to move the clock at all (at a
/// large `now`, `now + left / rate == now`: waiting for it would stop time).
fn work_done(job: &Job, now: f64) -> bool {
    if job.state != JobState::Running {
        return false;
    }
    let Some(work) = job.spec.work else {
        return false;
    };
    let left = (work - job.progress_at(now)).max(0.0);
    if left <= done_slack(job) {
        return true;
    }
    let rate = job.rate();
    rate > 0.0 && now + left / rate <= now
}

/// Work left under which a job counts as done (see [`DONE_EPSILON`]).
fn done_slack(job: &Job) -> f64 {
    DONE_EPSILON * job.spec.work.unwrap_or(0.0).max(1.0)
}

/// A time as an ordered key (times in the model are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Time(f64);

impl Eq for Time {}

impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Where a running job sits in the completion sets: when it finishes at
/// its current rate, and the earliest time its work counts as done (its
/// finish less the rounding slack).
#[derive(Debug, Clone, Copy)]
struct CompletionKey {
    finish: Time,
    done_from: Time,
}

/// A hasher for job ids: a multiplicative (Fibonacci) hash, one multiply
/// per lookup. Ids are dense integers from the host, not input an attacker
/// picks to collide, so SipHash's protection buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<JobId, V, BuildHasherDefault<IdHasher>>;

/// Shares in fixed point: units of 2^-64 of a GPU. Every share the model
/// accepts (at least 0.001, about 2^-10, with 52 bits of mantissa) is a
/// whole number of units, so sums are exact and do not depend on order.
const SHARE_ONE: u128 = 1 << 64;

fn share_units(fraction: f64) -> u128 {
    // An exact product by a power of two, then a truncating cast (exact
    // for every fraction of 2^-12 or more).
    (fraction.clamp(0.0, 1.0) * SHARE_ONE as f64) as u128
}

/// Hardware description of one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSpec {
    /// Node (machine) index.
    pub node: u32,
    /// Model name.
    pub kind: String,
    /// Device memory in bytes.
    pub memory_total: u64,
}

/// One GPU and who uses it.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// Index in the cluster.
    pub id: GpuId,
    /// Hardware description.
    pub spec: GpuSpec,
    /// Device memory taken by residents, in bytes.
    pub memory_used: u64,
    /// Whether anything may be placed on it.
    pub online: bool,
    /// Jobs placed here and their shares.
    pub residents: Vec<Resident>,
    /// What the GPU's own counters said at the last sample (real GPUs).
    pub measured: Option<GpuMeasurement>,
    /// The residents' shares summed in fixed point (see [`SHARE_ONE`]).
    allocated_units: u128,
}

impl Gpu {
    /// The share of this GPU allocated to jobs now, in [0, 1].
    pub fn allocated(&self) -> f64 {
        self.residents.iter().map(|r| r.fraction).sum::<f64>().min(1.0)
    }

    fn share_used_by_others(&self, job: JobId) -> f64 {
        self.residents.iter().filter(|r| r.job != job).map(|r| r.fraction).sum()
    }

    fn is_free(&self) -> bool {
        self.online && self.residents.is_empty()
    }
}

/// Why [`Cluster::submit`] refused a job: it could never run here, or a
/// number in it is out of bounds (see [`crate::bounds`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    /// No GPU asked for.
    NoGpus,
    /// More GPUs than the cluster has.
    TooManyGpus {
        /// GPUs asked for.
        asked: u32,
        /// GPUs in the cluster.
        cluster: u32,
    },
    /// More memory per GPU than the largest GPU has.
    TooMuchMemory {
        /// Bytes per GPU asked for.
        asked: u64,
        /// The largest GPU's memory.
        largest: u64,
    },
    /// A number out of bounds: the field, and why.
    OutOfBounds {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Every job id has been given out.
    IdsExhausted,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::NoGpus => f.write_str("a job must ask for at least one GPU"),
            SubmitError::TooManyGpus { asked, cluster } => {
                write!(f, "job asks for {asked} GPUs, the cluster has {cluster}")
            }
            SubmitError::TooMuchMemory { asked, largest } => {
                write!(f, "job needs {asked} bytes per GPU, the largest GPU has {largest}")
            }
            SubmitError::OutOfBounds { field, why } => write!(f, "{field} {why}"),
            SubmitError::IdsExhausted => f.write_str("no job id is left to give out"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why [`Cluster::restore`] refused a job known from before a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreError {
    /// A job with this id is already in the model.
    IdTaken(JobId),
    /// A live job that could never run here now (fewer GPUs than before, a
    /// bound tightened): why, as a submission would be refused.
    CannotRun {
        /// The job.
        job: JobId,
        /// Why a submission of its spec is refused.
        why: SubmitError,
    },
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::IdTaken(id) => write!(f, "job {id} already exists"),
            RestoreError::CannotRun { job, why } => write!(f, "job {job}: {why}"),
        }
    }
}

impl std::error::Error for RestoreError {}

impl From<SubmitError> for String {
    fn from(e: SubmitError) -> String {
        e.to_string()
    }
}

/// Why [`Cluster::apply`] refused an action, leaving the model as it was.
/// Its text (`Display`) is what the policy reads in `action-rejected`.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No such job.
    UnknownJob(JobId),
    /// The job is in a state the action does not apply to.
    WrongState {
        /// The job.
        job: JobId,
        /// Its state.
        is: JobState,
        /// The states the action needs.
        wanted: Vec<JobState>,
    },
    /// More GPUs than the cluster has.
    TooManyGpus {
        /// The job.
        job: JobId,
        /// GPUs given.
        given: usize,
        /// GPUs in the cluster.
        cluster: usize,
    },
    /// A gang of the wrong size.
    PartialGang {
        /// The job.
        job: JobId,
        /// GPUs it needs together.
        needs: u32,
        /// GPUs given.
        given: usize,
    },
    /// A GPU named twice.
    GpuListedTwice {
        /// The job.
        job: JobId,
        /// The GPU.
        gpu: GpuId,
    },
    /// A GPU id past the cluster's.
    NoSuchGpu {
        /// The GPU.
        gpu: GpuId,
        /// GPUs in the cluster.
        cluster: usize,
    },
    /// A GPU that is offline.
    GpuOffline(GpuId),
    /// A GPU without the share asked for.
    GpuFull {
        /// The GPU.
        gpu: GpuId,
        /// The job.
        job: JobId,
        /// Who holds it, and how much.
        holders: Vec<(JobId, f64)>,
        /// Its share left.
        free: f64,
        /// The share asked for.
        asked: f64,
    },
    /// A GPU without the memory the job needs.
    GpuMemory {
        /// The GPU.
        gpu: GpuId,
        /// The job.
        job: JobId,
        /// Bytes free on it.
        free: u64,
        /// Bytes the job needs.
        needs: u64,
    },
    /// A migration that changes the gang's size.
    MigrateResizes {
        /// The job.
        job: JobId,
        /// GPUs it holds.
        holds: usize,
        /// GPUs given.
        given: usize,
    },
    /// A resize to no GPU at all.
    ResizeToNothing(JobId),
    /// A share of a running job on GPUs it does not hold.
    ShareElsewhere {
        /// The job.
        job: JobId,
        /// The GPUs it holds.
        holds: Vec<GpuId>,
    },
    /// A share out of bounds (see [`crate::bounds`]).
    BadShare(String),
    /// A priority out of bounds.
    BadPriority(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownJob(id) => write!(f, "unknown job {id}"),
            Refusal::WrongState { job, is, wanted } => {
                let names: Vec<&str> = wanted.iter().map(|s| s.name()).collect();
                write!(f, "job {job} is {}, not {}", is.name(), names.join(" or "))
            }
            Refusal::TooManyGpus { job, given, cluster } => {
                write!(f, "job {job} was given {given} GPUs, the cluster has {cluster}")
            }
            Refusal::PartialGang { job, needs, given } => {
                write!(
                    f,
                    "partial gang: job {job} needs {needs} GPUs together, was given {given}"
                )
            }
            Refusal::GpuListedTwice { job, gpu } => write!(f, "gpu {gpu} is listed twice for job {job}"),
            Refusal::NoSuchGpu { gpu, cluster } => {
                write!(f, "gpu {gpu} does not exist (the cluster has {cluster} GPUs)")
            }
            Refusal::GpuOffline(gpu) => write!(f, "gpu {gpu} is offline"),
            Refusal::GpuFull {
                gpu,
                job,
                holders,
                free,
                asked,
            } => {
                let holders: Vec<String> = holders.iter().map(|(j, s)| format!("job {j} ({s:.2})")).collect();
                write!(
                    f,
                    "gpu {gpu} is held by {}: {free:.2} of it is free, job {job} asks for {asked:.2}",
                    holders.join(", ")
                )
            }
            Refusal::GpuMemory { gpu, job, free, needs } => {
                write!(f, "gpu {gpu} has {free} bytes of memory free, job {job} needs {needs}")
            }
            Refusal::MigrateResizes { job, holds, given } => write!(
                f,
                "migrate keeps the gang size: job {job} holds {holds} GPUs, got {given}"
            ),
            Refusal::ResizeToNothing(job) => write!(f, "resize of job {job} names no GPU (preempt it instead)"),
            Refusal::ShareElsewhere { job, holds } => write!(
                f,
                "share of running job {job} must name the GPUs it holds {holds:?} (migrate it to move it)"
            ),
            Refusal::BadShare(why) => write!(f, "share fraction {why}"),
            Refusal::BadPriority(why) => write!(f, "priority {why}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// What [`Cluster::apply`] changed, for backends and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A job started or resumed.
    Started,
    /// A job was suspended.
    Preempted,
    /// A running job moved to other GPUs.
    Migrated,
    /// A job's gang size or GPU share changed, or it was placed shared.
    Reshaped,
    /// Bookkeeping only (priority).
    Noted,
}

/// Jobs, GPUs and the clock.
#[derive(Debug, Default)]
pub struct Cluster {
    now: f64,
    gpus: Vec<Gpu>,
    /// Boxed so that growing the table moves pointers, not whole jobs: with
    /// the jobs inline, each doubling of a 50,000-job table stalled the
    /// scheduler loop for 20 ms or more.
    jobs: IdMap<Box<Job>>,
    pending: BTreeSet<JobId>,
    running: BTreeSet<JobId>,
    suspended: BTreeSet<JobId>,
    waiting_gangs: GangSizes,
    /// Online GPUs with no resident.
    free: BTreeSet<GpuId>,
    /// Running jobs with known work and a positive rate, by finish time.
    by_finish: BTreeSet<(Time, JobId)>,
    /// The same jobs, by the time their work counts as done.
    by_done: BTreeSet<(Time, JobId)>,
    /// Each such job's keys in the two sets.
    completion_keys: IdMap<CompletionKey>,
    /// Sum over GPUs of min(1, allocated share), in fixed point.
    allocated_units: u128,
    next_id: JobId,
    /// What a restart costs (see [`Cluster::set_restart_cost`]).
    restart_cost: RestartCost,
    /// Measured throughputs (see [`Cluster::set_speed_model`]).
    speed_model: Option<SpeedModel>,
    /// How jobs sharing a GPU progress (see [`Cluster::set_colocation`]).
    colocation: Colocation,
    /// Each GPU's interference factor, resolved by `set_colocation` (empty
    /// when sharing is time-sliced).
    interference: Vec<f32>,
    /// What the performance model cost, settled so far.
    losses: ModelLosses,
    /// Speed of a spread gang relative to one node where the table says
    /// nothing (see [`Cluster::set_spread_penalty`]).
    spread_penalty: Option<f32>,
}

/// A throughput table with the cluster's kinds resolved in it once.
#[derive(Debug)]
struct SpeedModel {
    table: std::sync::Arc<crate::speed::ThroughputTable>,
    /// The kind trace durations were measured on.
    reference: u16,
    /// Each GPU's kind in the table, by GPU id: on one node, and spread
    /// over several (`<kind>_unconsolidated`, else the kind itself).
    kinds: Vec<Option<(u16, u16)>>,
}

impl Cluster {
    /// A cluster of the given GPUs (ids are their indices).
    pub fn new(gpus: Vec<GpuSpec>) -> Self {
        let gpus: Vec<Gpu> = gpus
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Gpu {
                id: i as GpuId,
                spec,
                memory_used: 0,
                online: true,
                residents: Vec::new(),
                measured: None,
                allocated_units: 0,
            })
            .collect();
        let free = gpus.iter().map(|g| g.id).collect();
        Cluster {
            gpus,
            free,
            ..Cluster::default()
        }
    }

    /// `count` identical GPUs, `per_node` to a node.
    pub fn homogeneous(count: u32, per_node: u32, kind: &str, memory_total: u64) -> Self {
        let per_node = per_node.max(1);
        Cluster::new(
            (0..count)
                .map(|i| GpuSpec {
                    node: i / per_node,
                    kind: kind.to_string(),
                    memory_total,
                })
                .collect(),
        )
    }

    /// Make every restart cost `seconds`: a job that takes GPUs again after
    /// a preemption, or moves to others (a migration, a resize), holds them
    /// that long restoring its state from a checkpoint before it makes
    /// progress again (Pollux measured about 30 s). 0, the default, makes
    /// restarts free. Refused (false, nothing changed) unless finite and
    /// from 0 to [`crate::bounds::MAX_JOB_SECONDS`].
    pub fn set_restart_cost(&mut self, seconds: f64) -> bool {
        self.set_restart_model(RestartCost::Fixed(seconds))
    }

    /// Make restarts cost what `cost` says (see [`RestartCost`]). Refused
    /// (false, nothing changed) unless its number is finite and from 0 to
    /// [`crate::bounds::MAX_JOB_SECONDS`].
    pub fn set_restart_model(&mut self, cost: RestartCost) -> bool {
        let (RestartCost::Fixed(n) | RestartCost::PerGib(n)) = cost;
        if !(n.is_finite() && (0.0..=bounds::MAX_JOB_SECONDS).contains(&n)) {
            return false;
        }
        self.restart_cost = cost;
        true
    }

    /// Seconds a restart of job `spec` onto `gpus` costs.
    fn restart_seconds_for(&self, spec: &JobSpec, gpus: &[GpuId]) -> f64 {
        match self.restart_cost {
            RestartCost::Fixed(seconds) => seconds,
            RestartCost::PerGib(per_gib) => {
                // Each GPU's state moves over its own link, in parallel: the
                // job's memory on one GPU, or all of it when not known.
                let bytes = if spec.memory_per_gpu > 0 {
                    spec.memory_per_gpu
                } else {
                    gpus.iter()
                        .filter_map(|&g| self.gpus.get(g as usize))
                        .map(|g| g.spec.memory_total)
                        .max()
                        .unwrap_or(0)
                };
                (bytes as f64 / f64::from(1u32 << 30) * per_gib).min(bounds::MAX_JOB_SECONDS)
            }
        }
    }

    /// Make jobs with a type run at the speed `table` gives for their type,
    /// the GPU kind they run on and the GPUs they hold, relative to
    /// `reference`, the kind their declared work was measured on with the
    /// GPUs they asked for, on one node: there they run as without a table.
    /// A gang on several kinds runs at its slowest kind's speed; a gang
    /// over several nodes at the kind's `<kind>_unconsolidated` figure
    /// where the table has one (Gavel's does); a figure the table lacks
    /// counts as the reference's. Refused (false, nothing changed) when the
    /// table has no kind `reference`.
    pub fn set_speed_model(&mut self, table: std::sync::Arc<crate::speed::ThroughputTable>, reference: &str) -> bool {
        let Some(reference) = table.kind_index(reference) else {
            return false;
        };
        let kinds = self
            .gpus
            .iter()
            .map(|g| {
                let alone = table.kind_index(&g.spec.kind)?;
                let spread = table
                    .kind_index(&format!("{}_unconsolidated", g.spec.kind))
                    .unwrap_or(alone);
                Some((alone, spread))
            })
            .collect();
        self.speed_model = Some(SpeedModel {
            table,
            reference,
            kinds,
        });
        true
    }

    /// Model how jobs sharing a GPU progress. Call after
    /// [`Cluster::set_speed_model`] (the default interference factor comes
    /// from its table) and before any job runs. Refused (false, nothing
    /// changed) unless a given interference factor is in [0.01, 1].
    pub fn set_colocation(&mut self, colocation: Colocation) -> bool {
        let factor_of = |g: &Gpu| -> f64 {
            match colocation {
                Colocation::TimeSlice => 1.0,
                Colocation::Measured { interference: Some(f) } => f,
                Colocation::Measured { interference: None } => self
                    .speed_model
                    .as_ref()
                    .and_then(|m| m.table.mean_pair_factor(m.table.kind_index(&g.spec.kind)?))
                    .unwrap_or(0.5),
            }
        };
        if let Colocation::Measured { interference: Some(f) } = colocation
            && !(f.is_finite() && (MIN_INTERFERENCE..=1.0).contains(&f))
        {
            return false;
        }
        self.interference = match colocation {
            Colocation::TimeSlice => Vec::new(),
            Colocation::Measured { .. } => self.gpus.iter().map(|g| factor_of(g) as f32).collect(),
        };
        self.colocation = colocation;
        true
    }

    /// How jobs sharing a GPU progress.
    pub fn colocation(&self) -> Colocation {
        self.colocation
    }

    /// What the performance model has cost so far, running jobs' unsettled
    /// time included.
    pub fn model_losses(&self) -> ModelLosses {
        let mut losses = self.losses;
        for id in &self.running {
            if let Some(job) = self.jobs.get(id) {
                losses += job.model_losses(job.unaccounted(self.now) - job.stalled(self.now));
            }
        }
        losses
    }

    /// Job `id`'s rate alone on `gpus` GPUs of kind `kind` (on one node, or
    /// over several when `spread`) relative to its reference, from the
    /// throughput table: what `cluster-view.throughput` answers. None
    /// without a model, a type or a figure.
    pub fn expected_rate(&self, id: JobId, kind: &str, gpus: u32, spread: bool) -> Option<f64> {
        let model = self.speed_model.as_ref()?;
        let job = self.jobs.get(&id)?;
        let job_type = job.spec.job_type?;
        // Kind names are at most 64 bytes: a longer one (from a plugin)
        // is unknown without copying it.
        if kind.len() > 64 {
            return None;
        }
        let alone = model.table.kind_index(kind)?;
        let kind = if spread {
            model
                .table
                .kind_index(&format!("{kind}_unconsolidated"))
                .unwrap_or(alone)
        } else {
            alone
        };
        model.table.rate(model.reference, job_type, job.spec.gpus, kind, gpus)
    }

    /// The rates of jobs `a` and `b` sharing the same `gpus` GPUs of kind
    /// `kind`, each relative to its reference, when the table measured
    /// the pair: what `cluster-view.co-located` answers.
    pub fn co_located_rates(&self, a: JobId, b: JobId, kind: &str, gpus: u32) -> Option<(f64, f64)> {
        let model = self.speed_model.as_ref()?;
        if kind.len() > 64 {
            return None;
        }
        let k = model.table.kind_index(kind)?;
        let (ja, jb) = (self.jobs.get(&a)?, self.jobs.get(&b)?);
        let (ta, tb) = (ja.spec.job_type?, jb.spec.job_type?);
        let (sa, sb) = model.table.pair(k, ta, tb, gpus)?;
        let base_a = model.table.throughput_index(model.reference, ta, ja.spec.gpus)?;
        let base_b = model.table.throughput_index(model.reference, tb, jb.spec.gpus)?;
        let (ra, rb) = (sa / base_a, sb / base_b);
        (ra.is_finite() && rb.is_finite()).then_some((ra, rb))
    }

    /// The index of job type `name` in the throughput table, for a job's
    /// [`JobSpec::job_type`]; None without a table or such a type.
    pub fn job_type_index(&self, name: &str) -> Option<u16> {
        let types = self.speed_model.as_ref()?.table.types();
        types.binary_search_by(|t| t.as_str().cmp(name)).ok().map(|i| i as u16)
    }

    /// Whether jobs with a type run at their measured speed (see
    /// [`Cluster::set_speed_model`]).
    pub fn has_speed_model(&self) -> bool {
        self.speed_model.is_some()
    }

    /// Job `id`'s type as the throughput table names it.
    pub fn job_type_name(&self, id: JobId) -> Option<&str> {
        let model = self.speed_model.as_ref()?;
        let t = self.jobs.get(&id)?.spec.job_type?;
        model.table.types().get(usize::from(t)).map(String::as_str)
    }

    /// Seconds of reference work job `id` is expected to have left now: its
    /// expected duration less its progress, when policies are told it
    /// (what `cluster-view.remaining-work` answers; never the true work
    /// when durations are withheld).
    pub fn remaining_work_now(&self, id: JobId) -> Option<f64> {
        let job = self.jobs.get(&id)?;
        let expected = job.spec.expected_duration?;
        Some((expected - job.progress_at(self.now)).max(0.0))
    }

    /// Job `id`'s speed beside the other jobs on `gpus` when sharing is
    /// modelled as measured (None: time-sliced, or alone on them).
    fn co_location_on(&self, id: JobId, gpus: &[GpuId]) -> Option<f32> {
        if self.colocation == Colocation::TimeSlice {
            return None;
        }
        let mut others: Vec<JobId> = Vec::new();
        let mut most = 1usize;
        for &g in gpus {
            let Some(gpu) = self.gpus.get(g as usize) else { continue };
            most = most.max(gpu.residents.len());
            for r in gpu.residents.iter().filter(|r| r.job != id) {
                if !others.contains(&r.job) {
                    others.push(r.job);
                }
            }
        }
        if others.is_empty() {
            return None;
        }
        // Two jobs on exactly the same GPUs of one kind: their measured pair.
        if let ([other], 2, Some(model)) = (others.as_slice(), most, &self.speed_model) {
            let kinds = || gpus.iter().map(|&g| model.kinds.get(g as usize).copied().flatten());
            let kind = kinds().next().flatten();
            let same_gpus = self.jobs.get(other).is_some_and(|o| same_set(&o.placement, gpus));
            if let (Some(Some((kind, _))), true, true) = (kinds().next(), kinds().all(|k| k == kind), same_gpus)
                && let (Some(a), Some(b)) = (
                    self.jobs.get(&id).and_then(|j| j.spec.job_type),
                    self.jobs.get(other).and_then(|j| j.spec.job_type),
                )
                && let Some(f) = model
                    .table
                    .pair_factor(kind, a, b, u32::try_from(gpus.len()).unwrap_or(u32::MAX))
            {
                // Bounded, as every speed, so that no job stops for good.
                return Some(f.clamp(MIN_INTERFERENCE, 1.0 / MIN_INTERFERENCE) as f32);
            }
        }
        let factor = gpus
            .iter()
            .filter_map(|&g| self.interference.get(g as usize).copied())
            .fold(1.0f32, f32::min);
        Some(factor * 2.0 / most as f32)
    }

    /// Re-rate the running jobs that share any of `gpus` (but `except`)
    /// after a job came or went: their speed beside others changed. Only
    /// when sharing is modelled as measured; time-sliced shares do not
    /// depend on the neighbours.
    fn rerate_neighbours(&mut self, gpus: &[GpuId], except: JobId) {
        if self.colocation == Colocation::TimeSlice {
            return;
        }
        let mut neighbours: Vec<JobId> = Vec::new();
        for &g in gpus {
            if let Some(gpu) = self.gpus.get(g as usize) {
                for r in gpu.residents.iter().filter(|r| r.job != except) {
                    if !neighbours.contains(&r.job) {
                        neighbours.push(r.job);
                    }
                }
            }
        }
        let now = self.now;
        for n in neighbours {
            let Some(job) = self.jobs.get(&n) else { continue };
            if job.state != JobState::Running {
                continue;
            }
            let placement = job.placement.clone();
            let factor = self.co_location_on(n, &placement);
            if let Some(job) = self.jobs.get_mut(&n) {
                if job.co_located_factor() == factor {
                    continue;
                }
                self.losses += job.settle(now);
                job.co_located = factor.unwrap_or(0.0);
            }
            self.rekey(n);
        }
    }

    /// The speed a job of `spec` has on `gpus` (1 without a speed model
    /// or a type), and the part of it due to spreading over nodes.
    fn speed_on(&self, spec: &JobSpec, gpus: &[GpuId]) -> (f32, f32) {
        let node = |g: GpuId| self.gpus.get(g as usize).map(|g| g.spec.node);
        let spread = gpus.windows(2).any(|w| node(w[0]) != node(w[1]));
        let (Some(model), Some(job_type)) = (&self.speed_model, spec.job_type) else {
            return match self.spread_penalty {
                Some(p) if spread => (p, p),
                _ => (1.0, 1.0),
            };
        };
        let held = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
        // A gang over several nodes runs at the table's "unconsolidated"
        // throughput for its kind, where the table has one.
        let slowest = |spread: bool| {
            gpus.iter()
                .map(|&g| match model.kinds.get(g as usize).copied().flatten() {
                    Some((alone, spread_kind)) => {
                        let kind = if spread { spread_kind } else { alone };
                        model
                            .table
                            .relative_speed(model.reference, job_type, spec.gpus, kind, held)
                    }
                    None => 1.0, // a kind the table lacks: as the reference
                })
                .min_by(f64::total_cmp)
                .map_or(1.0, |s| s as f32)
        };
        // Bounded so that a hostile table cannot stop a job (a speed of
        // 1e-300 is 0 in f32) or make its finish time overflow.
        let speed = slowest(spread).clamp(1e-6, 1e6);
        let on_one_node = if spread { slowest(false).clamp(1e-6, 1e6) } else { speed };
        if let (true, Some(p)) = (spread, self.spread_penalty)
            && speed >= on_one_node
        {
            // The table has no slower figure for the spread gang: the
            // configured penalty stands in.
            return (on_one_node * p, p);
        }
        let factor = if on_one_node > 0.0 { speed / on_one_node } else { 1.0 };
        (speed, factor)
    }

    /// Make a gang spread over several nodes run at `factor` of its speed
    /// on one node wherever the throughput table has no slower figure for
    /// it (untyped jobs, kinds or types without `<kind>_unconsolidated`
    /// figures): a per-cluster stand-in for measured placement effects,
    /// e.g. a model's slowdown over a slow network. None (the default): no
    /// penalty beyond the table's. Refused (false) unless in [0.01, 1].
    pub fn set_spread_penalty(&mut self, factor: Option<f64>) -> bool {
        if let Some(f) = factor
            && !(f.is_finite() && (MIN_INTERFERENCE..=1.0).contains(&f))
        {
            return false;
        }
        self.spread_penalty = factor.map(|f| f as f32);
        true
    }

    /// What a restart costs (see [`Cluster::set_restart_model`]).
    pub fn restart_cost(&self) -> RestartCost {
        self.restart_cost
    }

    /// The clock.
    pub fn now(&self) -> f64 {
        self.now
    }

    /// Move the clock to `t`; running jobs accrue progress and service
    /// from it (read lazily). A time in the past is ignored: the clock
    /// never goes back.
    pub fn advance(&mut self, t: f64) {
        if t > self.now {
            self.now = t;
        }
    }

    /// Running jobs whose known work is done by now (to within rounding),
    /// oldest first: what a model-driven backend (the simulator, emulated
    /// GPUs) reports as finished. Jobs whose work is unknown never appear.
    /// Costs what it returns, not the number of running jobs.
    pub fn work_completed(&self) -> Vec<JobId> {
        let now = self.now;
        let mut done: Vec<JobId> = self
            .by_done
            .range(..=(Time(now), JobId::MAX))
            .map(|&(_, id)| id)
            .filter(|id| {
                self.jobs.get(id).is_some_and(|job| {
                    work_done(job, now) || self.completion_keys.get(id).is_some_and(|k| k.finish.0 <= now)
                })
            })
            .collect();
        done.sort_unstable();
        done
    }

    /// When the next running job's known work completes, if any is making
    /// progress (now, for one already done).
    pub fn next_completion(&self) -> Option<f64> {
        if !self.work_completed_is_empty() {
            return Some(self.now);
        }
        self.by_finish.first().map(|&(t, _)| t.0.max(self.now))
    }

    fn work_completed_is_empty(&self) -> bool {
        let now = self.now;
        !self.by_done.range(..=(Time(now), JobId::MAX)).any(|&(_, id)| {
            self.jobs.get(&id).is_some_and(|job| {
                work_done(job, now) || self.completion_keys.get(&id).is_some_and(|k| k.finish.0 <= now)
            })
        })
    }

    /// Put job `id` where it belongs in the completion sets after its rate
    /// changed (its accounts settled at now): out if it is not running
    /// with known work at a positive rate.
    fn rekey(&mut self, id: JobId) {
        if let Some(old) = self.completion_keys.remove(&id) {
            self.by_finish.remove(&(old.finish, id));
            self.by_done.remove(&(old.done_from, id));
        }
        let Some(job) = self.jobs.get(&id) else { return };
        let rate = job.rate();
        let (true, Some(left)) = (job.state == JobState::Running && rate > 0.0, job.remaining_work()) else {
            return;
        };
        // Progress starts once a restart's restore is over.
        let from = self.now.max(job.stalled_until);
        let key = CompletionKey {
            finish: Time(from + left / rate),
            done_from: Time(from + (left - done_slack(job)) / rate),
        };
        self.by_finish.insert((key.finish, id));
        self.by_done.insert((key.done_from, id));
        self.completion_keys.insert(id, key);
    }

    /// Number of GPUs, online or not.
    pub fn gpu_count(&self) -> u32 {
        self.gpus.len() as u32
    }

    /// All GPUs.
    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id).map(|job| &**job)
    }

    /// Every job the host knows, in no particular order.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|job| &**job)
    }

    /// Ids of running jobs, oldest first.
    pub fn running_ids(&self) -> &BTreeSet<JobId> {
        &self.running
    }

    /// How many live jobs are in `state` (0 for ended states), without
    /// listing them.
    pub fn count_in(&self, state: JobState) -> usize {
        match state {
            JobState::Pending => self.pending.len(),
            JobState::Running => self.running.len(),
            JobState::Suspended => self.suspended.len(),
            JobState::Finished | JobState::Failed => 0,
        }
    }

    /// Ids of jobs in `state`, oldest first.
    pub fn ids_in(&self, state: JobState) -> Vec<JobId> {
        match state {
            JobState::Pending => self.pending.iter().copied().collect(),
            JobState::Running => self.running.iter().copied().collect(),
            JobState::Suspended => self.suspended.iter().copied().collect(),
            JobState::Finished | JobState::Failed => {
                let mut ids: Vec<JobId> = self.jobs.values().filter(|j| j.state == state).map(|j| j.id).collect();
                ids.sort_unstable();
                ids
            }
        }
    }

    /// Whether the cluster idles while work waits that could run: nothing
    /// runs, and some waiting job's gang fits in the free GPUs. A policy
    /// that leaves it so is stalled (see the scheduler's watchdog).
    pub fn idles_with_work(&self) -> bool {
        self.running.is_empty()
            && self
                .waiting_gangs
                .smallest()
                .is_some_and(|gang| gang as usize <= self.free.len())
    }

    /// Number of jobs waiting (pending or suspended) or running.
    pub fn live_jobs(&self) -> usize {
        self.pending.len() + self.running.len() + self.suspended.len()
    }

    /// Counters for `cluster-view.stats`.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            gpus: self.gpu_count(),
            free_gpus: self.free.len() as u32,
            pending: self.pending.len() as u32,
            running: self.running.len() as u32,
            suspended: self.suspended.len() as u32,
        }
    }

    /// Sum over GPUs of the share allocated to jobs (0 ..= GPU count).
    /// Kept as GPUs change, in exact fixed point: the same as summing
    /// [`Gpu::allocated`] over the GPUs for the shares policies use (whole
    /// GPUs, halves, quarters...), and never dependent on order.
    pub fn allocated_share(&self) -> f64 {
        self.allocated_units as f64 / SHARE_ONE as f64
    }

    /// Online GPUs with no resident, lowest id first.
    pub fn free_gpu_ids(&self) -> Vec<GpuId> {
        self.free.iter().copied().collect()
    }

    /// Online GPUs with no resident, lowest id first, without collecting them.
    pub fn free_gpus(&self) -> impl Iterator<Item = GpuId> + '_ {
        self.free.iter().copied()
    }

    /// Waiting (pending or suspended) jobs, oldest submission first,
    /// without collecting them: a strict FIFO reads only the head.
    pub fn waiting_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        let mut pending = self.pending.iter().copied().peekable();
        let mut suspended = self.suspended.iter().copied().peekable();
        std::iter::from_fn(move || match (pending.peek(), suspended.peek()) {
            (Some(p), Some(s)) if s < p => suspended.next(),
            (Some(_), _) => pending.next(),
            (None, _) => suspended.next(),
        })
    }

    /// The policy-facing record of one job.
    pub fn job_info(&self, id: JobId) -> Option<JobInfo> {
        let j = self.jobs.get(&id)?;
        Some(JobInfo {
            id: j.id,
            tenant: j.spec.tenant.clone(),
            submit_time: j.submit_time,
            gpus_requested: j.spec.gpus,
            state: j.state,
            placement: j.placement.clone(),
            fraction: j.fraction,
            attained_gpu_seconds: j.attained_gpu_seconds_at(self.now),
            attained_seconds: j.attained_seconds_at(self.now),
            iterations_done: j.iterations_done,
            iterations_total: j.spec.iterations_total,
            iteration_time: j.iteration_time,
            expected_duration: j.spec.expected_duration,
            memory_per_gpu: j.spec.memory_per_gpu,
            share_requested: j.spec.share_requested,
            priority: j.priority,
            preemptions: j.preemptions,
        })
    }

    /// Compact records of the running jobs, oldest first.
    pub fn running_jobs(&self) -> Vec<RunningJob> {
        self.running
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| RunningJob {
                id: j.id,
                gpus: j.placement.len() as u32,
                fraction: j.fraction,
                attained_gpu_seconds: j.attained_gpu_seconds_at(self.now),
                submit_time: j.submit_time,
                since: j.since,
                priority: j.priority,
            })
            .collect()
    }

    /// The policy-facing record of one GPU.
    pub fn gpu_info(&self, id: GpuId) -> Option<GpuInfo> {
        let g = self.gpus.get(id as usize)?;
        Some(GpuInfo {
            id: g.id,
            node: g.spec.node,
            kind: g.spec.kind.clone(),
            memory_total: g.spec.memory_total,
            memory_used: g.memory_used,
            online: g.online,
            residents: g.residents.clone(),
        })
    }

    /// Records of the live jobs (pending, running, suspended), oldest first:
    /// what a policy is told when it takes over.
    pub fn live_job_infos(&self) -> Vec<JobInfo> {
        self.live_ids().into_iter().filter_map(|id| self.job_info(id)).collect()
    }

    /// Ids of the live (pending, running or suspended) jobs, oldest first.
    pub fn live_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self
            .pending
            .iter()
            .chain(&self.running)
            .chain(&self.suspended)
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Why [`Cluster::submit`] would refuse `spec`, without submitting it
    /// (to accept several jobs all or none).
    pub fn check_submission(&self, spec: &JobSpec) -> Result<(), SubmitError> {
        let out_of_bounds = |field| move |why| SubmitError::OutOfBounds { field, why };
        if spec.gpus == 0 {
            return Err(SubmitError::NoGpus);
        }
        if spec.gpus > self.gpu_count() {
            return Err(SubmitError::TooManyGpus {
                asked: spec.gpus,
                cluster: self.gpu_count(),
            });
        }
        if let Some(w) = spec.work {
            bounds::check_job_seconds(w).map_err(out_of_bounds("job work"))?;
        }
        if let Some(d) = spec.expected_duration {
            bounds::check_job_seconds(d).map_err(out_of_bounds("expected duration"))?;
        }
        if let Some(share) = spec.share_requested {
            bounds::check_share(share).map_err(out_of_bounds("requested share"))?;
        }
        if let Some(p) = spec.priority {
            bounds::check_priority(p, true).map_err(out_of_bounds("priority"))?;
        }
        if spec.iterations_total.is_some_and(|n| n > bounds::MAX_ITERATIONS) {
            return Err(SubmitError::OutOfBounds {
                field: "iterations",
                why: format!("must be at most {}", bounds::MAX_ITERATIONS),
            });
        }
        if spec.memory_per_gpu > 0 {
            let largest = self.gpus.iter().map(|g| g.spec.memory_total).max().unwrap_or(0);
            if spec.memory_per_gpu > largest {
                return Err(SubmitError::TooMuchMemory {
                    asked: spec.memory_per_gpu,
                    largest,
                });
            }
        }
        Ok(())
    }

    /// Accept a job at the current time. Refused (with the reason) when it
    /// can never run here: no GPUs asked for, or more than the cluster has,
    /// or more memory per GPU than the largest GPU has.
    pub fn submit(&mut self, spec: JobSpec) -> Result<JobId, SubmitError> {
        self.check_submission(&spec)?;
        let priority = spec.priority.filter(|p| p.is_finite() && *p > 0.0).unwrap_or(1.0);
        let gpus = spec.gpus;
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(SubmitError::IdsExhausted)?;
        self.jobs.insert(
            id,
            Box::new(Job {
                id,
                spec,
                submit_time: self.now,
                state: JobState::Pending,
                placement: Vec::new(),
                fraction: 1.0,
                progress: 0.0,
                attained_gpu_seconds: 0.0,
                attained_seconds: 0.0,
                accounted_at: self.now,
                since: self.now,
                stalled_until: 0.0,
                restart_seconds: 0.0,
                speed: 1.0,
                spread_factor: 1.0,
                co_located: 0.0,
                first_start: None,
                end_time: None,
                priority,
                preemptions: 0,
                migrations: 0,
                iterations_done: None,
                iteration_time: None,
                failure: None,
            }),
        );
        self.pending.insert(id);
        self.waiting_gangs.add(gpus);
        Ok(id)
    }

    /// Put back a job known from before a restart, under its own id. An
    /// ended job is kept as it was; a live one holds no GPUs after a
    /// restart, so it comes back pending (never started) or suspended
    /// (keeping its progress) for the policy to place again. Refused if the
    /// id is taken or the job could never run here.
    pub fn restore(&mut self, mut job: Job) -> Result<(), RestoreError> {
        if self.jobs.contains_key(&job.id) {
            return Err(RestoreError::IdTaken(job.id));
        }
        if !job.is_done() {
            self.check_submission(&job.spec)
                .map_err(|why| RestoreError::CannotRun { job: job.id, why })?;
            job.placement.clear();
            job.state = if job.first_start.is_some() {
                JobState::Suspended
            } else {
                JobState::Pending
            };
            job.since = self.now;
        }
        job.accounted_at = self.now;
        let id = job.id;
        let state = job.state;
        let gang = job.spec.gpus;
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.jobs.insert(id, Box::new(job));
        match state {
            JobState::Pending => {
                self.pending.insert(id);
            }
            JobState::Suspended => {
                self.suspended.insert(id);
            }
            _ => {}
        }
        if is_waiting(state) {
            self.waiting_gangs.add(gang);
        }
        Ok(())
    }

    /// Mark a job finished and free its GPUs. Returns false if it was not live.
    pub fn finish(&mut self, id: JobId) -> bool {
        self.end(id, JobState::Finished, None)
    }

    /// Mark a job failed (with why) and free its GPUs. Returns false if it was not live.
    pub fn fail(&mut self, id: JobId, reason: impl Into<String>) -> bool {
        self.end(id, JobState::Failed, Some(reason.into()))
    }

    fn end(&mut self, id: JobId, state: JobState, failure: Option<String>) -> bool {
        let live = self.jobs.get(&id).is_some_and(|j| !j.is_done());
        if !live {
            return false;
        }
        self.release(id);
        self.set_state(id, state);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.end_time = Some(self.now);
            job.failure = failure;
        }
        true
    }

    /// The id the next submitted job gets.
    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    /// Never give out an id below `floor` (ids of deleted jobs, after a
    /// restart, must not come back).
    pub fn reserve_ids_below(&mut self, floor: JobId) {
        self.next_id = self.next_id.max(floor);
    }

    /// Drop an ended (finished or failed) job from the model, for a service
    /// that keeps ended jobs only for a while. Returns false, changing
    /// nothing, if the job is unknown or still live: a live job is never
    /// dropped.
    pub fn forget(&mut self, id: JobId) -> bool {
        if !self.jobs.get(&id).is_some_and(|j| j.is_done()) {
            return false;
        }
        self.jobs.remove(&id);
        true
    }

    /// Record what a backend measured about a live job (the policy reads it
    /// in the job's record). Returns false if the job is not live.
    pub fn report_progress(&mut self, id: JobId, iterations: Option<u64>, iteration_time: Option<f64>) -> bool {
        let Some(job) = self.jobs.get_mut(&id).filter(|j| !j.is_done()) else {
            return false;
        };
        if iterations.is_some() {
            job.iterations_done = iterations;
        }
        if iteration_time.is_some_and(|t| t.is_finite() && t >= 0.0) {
            job.iteration_time = iteration_time;
        }
        true
    }

    /// Record what GPU `gpu` measured (a backend's sample).
    pub fn set_measured(&mut self, gpu: GpuId, measured: GpuMeasurement) {
        if let Some(g) = self.gpus.get_mut(gpu as usize) {
            g.measured = Some(measured);
        }
    }

    /// Take a GPU offline (its residents are suspended, keeping progress) or
    /// bring it back. Returns the jobs that were suspended.
    pub fn set_gpu_online(&mut self, gpu: GpuId, online: bool) -> Vec<JobId> {
        let Some(g) = self.gpus.get(gpu as usize) else {
            return Vec::new();
        };
        let victims: Vec<JobId> = if online {
            Vec::new()
        } else {
            g.residents.iter().map(|r| r.job).collect()
        };
        for &job in &victims {
            self.release(job);
            self.set_state(job, JobState::Suspended);
            if let Some(j) = self.jobs.get_mut(&job) {
                j.preemptions += 1;
            }
        }
        self.gpus[gpu as usize].online = online;
        self.note_free(gpu);
        victims
    }

    /// Check an action against the current state and carry it out, or say
    /// why not (leaving everything as it was).
    pub fn apply(&mut self, action: &Action) -> Result<Applied, Refusal> {
        let id = action.job();
        let job = self.jobs.get(&id).ok_or(Refusal::UnknownJob(id))?;
        let state = job.state;
        let requested = job.spec.gpus;
        let expect = |wanted: &[JobState]| -> Result<(), Refusal> {
            if wanted.contains(&state) {
                Ok(())
            } else {
                Err(Refusal::WrongState {
                    job: id,
                    is: state,
                    wanted: wanted.to_vec(),
                })
            }
        };
        match action {
            Action::Start(p) | Action::Resume(p) => {
                let from = if matches!(action, Action::Start(_)) {
                    JobState::Pending
                } else {
                    JobState::Suspended
                };
                expect(&[from])?;
                self.check_gang(id, requested, p.gpus.len())?;
                self.check_gpus(id, &p.gpus, 1.0)?;
                self.place(id, &p.gpus, 1.0);
                Ok(Applied::Started)
            }
            Action::Preempt(_) => {
                expect(&[JobState::Running])?;
                self.release(id);
                self.set_state(id, JobState::Suspended);
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.preemptions += 1;
                }
                Ok(Applied::Preempted)
            }
            Action::Migrate(p) => {
                expect(&[JobState::Running])?;
                let (held, fraction) = (job.placement.len(), job.fraction);
                if p.gpus.len() != held {
                    return Err(Refusal::MigrateResizes {
                        job: id,
                        holds: held,
                        given: p.gpus.len(),
                    });
                }
                self.check_gpus(id, &p.gpus, fraction)?;
                let moved = !same_set(&self.jobs[&id].placement, &p.gpus);
                self.place(id, &p.gpus, fraction);
                if moved && let Some(j) = self.jobs.get_mut(&id) {
                    j.migrations += 1;
                }
                Ok(Applied::Migrated)
            }
            Action::Resize(p) => {
                expect(&[JobState::Pending, JobState::Running, JobState::Suspended])?;
                if p.gpus.is_empty() {
                    return Err(Refusal::ResizeToNothing(id));
                }
                let fraction = if state == JobState::Running { job.fraction } else { 1.0 };
                self.check_gpus(id, &p.gpus, fraction)?;
                self.place(id, &p.gpus, fraction);
                Ok(Applied::Reshaped)
            }
            Action::Share(s) => {
                bounds::check_share(s.fraction).map_err(Refusal::BadShare)?;
                match state {
                    JobState::Running => {
                        if !same_set(&job.placement, &s.gpus) {
                            return Err(Refusal::ShareElsewhere {
                                job: id,
                                holds: job.placement.clone(),
                            });
                        }
                    }
                    JobState::Pending | JobState::Suspended => {
                        self.check_gang(id, requested, s.gpus.len())?;
                    }
                    _ => expect(&[JobState::Pending, JobState::Running, JobState::Suspended])?,
                }
                self.check_gpus(id, &s.gpus, s.fraction)?;
                self.place(id, &s.gpus, s.fraction);
                Ok(Applied::Reshaped)
            }
            Action::SetPriority((_, weight)) => {
                expect(&[JobState::Pending, JobState::Running, JobState::Suspended])?;
                bounds::check_priority(*weight, false).map_err(Refusal::BadPriority)?;
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.priority = *weight;
                }
                Ok(Applied::Noted)
            }
        }
    }

    fn check_gang(&self, id: JobId, requested: u32, given: usize) -> Result<(), Refusal> {
        if given > self.gpus.len() {
            return Err(Refusal::TooManyGpus {
                job: id,
                given,
                cluster: self.gpus.len(),
            });
        }
        if given != requested as usize {
            return Err(Refusal::PartialGang {
                job: id,
                needs: requested,
                given,
            });
        }
        Ok(())
    }

    /// Can job `id` hold `fraction` of each of `gpus`? GPUs it already holds
    /// count as available to it.
    fn check_gpus(&self, id: JobId, gpus: &[GpuId], fraction: f64) -> Result<(), Refusal> {
        if gpus.len() > self.gpus.len() {
            return Err(Refusal::TooManyGpus {
                job: id,
                given: gpus.len(),
                cluster: self.gpus.len(),
            });
        }
        let memory = self.jobs.get(&id).map(|j| j.spec.memory_per_gpu).unwrap_or(0);
        for (i, &gpu) in gpus.iter().enumerate() {
            if gpus[..i].contains(&gpu) {
                return Err(Refusal::GpuListedTwice { job: id, gpu });
            }
            let g = self.gpus.get(gpu as usize).ok_or(Refusal::NoSuchGpu {
                gpu,
                cluster: self.gpus.len(),
            })?;
            if !g.online {
                return Err(Refusal::GpuOffline(gpu));
            }
            let others = g.share_used_by_others(id);
            if others + fraction > 1.0 + FRACTION_EPSILON {
                return Err(Refusal::GpuFull {
                    gpu,
                    job: id,
                    holders: g
                        .residents
                        .iter()
                        .filter(|r| r.job != id)
                        .map(|r| (r.job, r.fraction))
                        .collect(),
                    free: (1.0 - others).max(0.0),
                    asked: fraction,
                });
            }
            let own = if g.residents.iter().any(|r| r.job == id) {
                memory
            } else {
                0
            };
            let used_by_others = g.memory_used.saturating_sub(own);
            if used_by_others.saturating_add(memory) > g.spec.memory_total {
                return Err(Refusal::GpuMemory {
                    gpu,
                    job: id,
                    free: g.spec.memory_total.saturating_sub(used_by_others),
                    needs: memory,
                });
            }
        }
        Ok(())
    }

    /// Keep the free set and the allocated total right after GPU `gpu`
    /// changed (residents or online).
    fn note_free(&mut self, gpu: GpuId) {
        let Some(g) = self.gpus.get_mut(gpu as usize) else {
            return;
        };
        if g.is_free() {
            self.free.insert(gpu);
        } else {
            self.free.remove(&gpu);
        }
        let old = g.allocated_units.min(SHARE_ONE);
        g.allocated_units = g.residents.iter().map(|r| share_units(r.fraction)).sum();
        let new = g.allocated_units.min(SHARE_ONE);
        self.allocated_units = self.allocated_units - old + new;
    }

    /// Put a job on `gpus` with `fraction` each (after checks), as running.
    fn place(&mut self, id: JobId, gpus: &[GpuId], fraction: f64) {
        // A restart: a job that ran before takes GPUs again (a resume), or
        // a running one moves to others (a migration or a resize). It then
        // restores its state before it progresses.
        let restart = self.restart_cost != RestartCost::Fixed(0.0)
            && self.jobs.get(&id).is_some_and(|j| match j.state {
                JobState::Running => !same_set(&j.placement, gpus),
                _ => j.first_start.is_some(),
            });
        self.release(id);
        let memory = self.jobs.get(&id).map(|j| j.spec.memory_per_gpu).unwrap_or(0);
        for &gpu in gpus {
            let g = &mut self.gpus[gpu as usize];
            g.residents.push(Resident { job: id, fraction });
            g.memory_used = g.memory_used.saturating_add(memory);
            self.note_free(gpu);
        }
        let now = self.now;
        let was_running = self.jobs.get(&id).is_some_and(|j| j.state == JobState::Running);
        let (speed, spread_factor) = self.jobs.get(&id).map_or((1.0, 1.0), |j| self.speed_on(&j.spec, gpus));
        let co_located = self.co_location_on(id, gpus);
        let restart_seconds = match self.jobs.get(&id) {
            Some(j) if restart => self.restart_seconds_for(&j.spec, gpus),
            _ => 0.0,
        };
        if let Some(j) = self.jobs.get_mut(&id) {
            j.speed = speed;
            j.spread_factor = spread_factor;
            j.co_located = co_located.unwrap_or(0.0);
            j.placement = gpus.to_vec();
            j.fraction = fraction;
            if !was_running {
                j.since = now;
            }
            j.first_start.get_or_insert(now);
            if restart {
                j.stalled_until = now + restart_seconds;
            }
        }
        self.set_state(id, JobState::Running);
        if was_running {
            // A migration or a new share: the rate may have changed
            // without a change of state.
            self.rekey(id);
        }
        self.rerate_neighbours(gpus, id);
    }

    /// Take a job off all its GPUs (state unchanged), its accounts
    /// settled first: every change of rate goes through here.
    fn release(&mut self, id: JobId) {
        let now = self.now;
        let Some(job) = self.jobs.get_mut(&id) else { return };
        self.losses += job.settle(now);
        job.co_located = 0.0;
        let memory = job.spec.memory_per_gpu;
        let held = std::mem::take(&mut job.placement);
        for &gpu in &held {
            if let Some(g) = self.gpus.get_mut(gpu as usize) {
                g.residents.retain(|r| r.job != id);
                g.memory_used = g.memory_used.saturating_sub(memory);
                self.note_free(gpu);
            }
        }
        self.rerate_neighbours(&held, id);
    }

    fn set_state(&mut self, id: JobId, state: JobState) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        let old = std::mem::replace(&mut job.state, state);
        let gang = job.spec.gpus;
        if is_waiting(old) && !is_waiting(state) {
            self.waiting_gangs.remove_one(gang);
        } else if !is_waiting(old) && is_waiting(state) {
            self.waiting_gangs.add(gang);
        }
        for (s, set) in [
            (JobState::Pending, &mut self.pending),
            (JobState::Running, &mut self.running),
            (JobState::Suspended, &mut self.suspended),
        ] {
            if old == s {
                set.remove(&id);
            }
            if state == s {
                set.insert(id);
            }
        }
        if old != state {
            self.rekey(id);
        }
    }
}

fn is_waiting(state: JobState) -> bool {
    matches!(state, JobState::Pending | JobState::Suspended)
}

/// How many waiting jobs ask for each gang size: the smallest waiting gang
/// in O(log n), so that "could anything waiting start now?" costs nothing
/// per decision, whatever the queue's depth.
#[derive(Debug, Default)]
struct GangSizes(BTreeMap<u32, usize>);

impl GangSizes {
    fn add(&mut self, gang: u32) {
        *self.0.entry(gang).or_default() += 1;
    }

    fn remove_one(&mut self, gang: u32) {
        if let Some(count) = self.0.get_mut(&gang) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&gang);
            }
        }
    }

    fn smallest(&self) -> Option<u32> {
        self.0.keys().next().copied()
    }
}

fn same_set(a: &[GpuId], b: &[GpuId]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::{Placement, SharedPlacement};

    fn cluster(gpus: u32) -> Cluster {
        Cluster::homogeneous(gpus, 4, "test", 16 << 30)
    }

    fn start(job: JobId, gpus: &[GpuId]) -> Action {
        Action::Start(Placement {
            job,
            gpus: gpus.to_vec(),
        })
    }

    #[test]
    fn accounts_settle_lazily_and_completions_come_in_finish_order() {
        let mut c = cluster(4);
        let a = c.submit(JobSpec::new("u", 2, 100.0)).unwrap();
        let b = c.submit(JobSpec::new("u", 1, 30.0)).unwrap();
        let w = c.submit(JobSpec::new("u", 4, 10.0)).unwrap();
        c.apply(&start(a, &[0, 1])).unwrap();
        c.apply(&start(b, &[2])).unwrap();
        assert_eq!(c.next_completion(), Some(30.0));
        c.advance(10.0);
        let job = c.job(a).unwrap();
        assert_eq!((job.progress, job.progress_at(10.0)), (0.0, 10.0), "read lazily");
        assert_eq!(c.job_info(a).unwrap().attained_gpu_seconds, 20.0);
        assert_eq!((c.free_gpu_ids(), c.allocated_share()), (vec![3], 3.0));
        c.advance(30.0);
        assert_eq!(c.work_completed(), vec![b]);
        assert!(c.finish(b));
        assert_eq!(c.job(b).unwrap().attained_seconds, 30.0, "settled at its end");
        assert_eq!(c.next_completion(), Some(100.0));
        // Halving a's share halves its rate: its finish is re-keyed.
        let half = Action::Share(SharedPlacement {
            job: a,
            gpus: vec![0, 1],
            fraction: 0.5,
        });
        c.apply(&half).unwrap();
        assert_eq!(c.allocated_share(), 1.0);
        assert_eq!(c.next_completion(), Some(30.0 + 70.0 / 0.5));
        c.apply(&Action::Preempt(a)).unwrap();
        assert_eq!(c.job(a).unwrap().progress, 30.0);
        assert_eq!(
            (c.next_completion(), c.allocated_share(), c.free_gpu_ids().len()),
            (None, 0.0, 4)
        );
        // Waiting jobs, pending and suspended merged, oldest first.
        assert_eq!(c.waiting_ids().collect::<Vec<_>>(), vec![a, w]);
    }

    #[test]
    fn only_ended_jobs_are_forgotten() {
        let mut c = cluster(4);
        let running = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        let waiting = c.submit(JobSpec::new("u", 4, 10.0)).unwrap();
        let done = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        c.apply(&start(running, &[0])).unwrap();
        c.apply(&start(done, &[1])).unwrap();
        assert!(c.finish(done));
        assert!(!c.forget(running), "a running job is never dropped");
        assert!(!c.forget(waiting), "a waiting job is never dropped");
        assert!(!c.forget(999), "unknown");
        assert!(c.forget(done));
        assert!(c.job(done).is_none());
        assert!(!c.forget(done), "already gone");
        assert_eq!(c.job(running).map(|j| j.state), Some(JobState::Running));
        assert_eq!(c.job(waiting).map(|j| j.state), Some(JobState::Pending));
        assert_eq!(c.stats().pending, 1);
    }

    #[test]
    fn rejects_with_reasons_and_leaves_state_alone() {
        let mut c = cluster(4);
        let a = c.submit(JobSpec::new("u", 2, 10.0)).unwrap();
        let b = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        assert_eq!(c.apply(&start(99, &[0])).unwrap_err(), Refusal::UnknownJob(99));
        assert_eq!(c.apply(&start(99, &[0])).unwrap_err().to_string(), "unknown job 99");
        assert!(
            c.apply(&start(a, &[0]))
                .unwrap_err()
                .to_string()
                .starts_with("partial gang")
        );
        assert!(
            c.apply(&start(a, &[0, 9]))
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        assert!(
            c.apply(&start(a, &[1, 1]))
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let too_many: Vec<GpuId> = (0..10).collect();
        assert!(
            c.apply(&start(a, &too_many))
                .unwrap_err()
                .to_string()
                .contains("the cluster has 4")
        );
        assert_eq!(c.stats().free_gpus, 4);
        assert_eq!(c.apply(&start(a, &[0, 1])), Ok(Applied::Started));
        assert!(
            c.apply(&start(a, &[2, 3]))
                .unwrap_err()
                .to_string()
                .contains("is running, not pending")
        );
        assert!(
            c.apply(&start(b, &[1]))
                .unwrap_err()
                .to_string()
                .contains("held by job 0")
        );
        assert_eq!(c.stats().free_gpus, 2);
        assert_eq!(c.job(b).unwrap().state, JobState::Pending);
    }

    #[test]
    fn preempt_keeps_progress_and_frees_gpus() {
        let mut c = cluster(2);
        let a = c.submit(JobSpec::new("u", 2, 100.0)).unwrap();
        c.apply(&start(a, &[0, 1])).unwrap();
        c.advance(30.0);
        c.apply(&Action::Preempt(a)).unwrap();
        c.advance(50.0);
        let j = c.job(a).unwrap();
        assert_eq!((j.progress, j.attained_gpu_seconds, j.preemptions), (30.0, 60.0, 1));
        assert_eq!(c.free_gpu_ids(), vec![0, 1]);
        c.apply(&Action::Resume(Placement {
            job: a,
            gpus: vec![1, 0],
        }))
        .unwrap();
        assert_eq!(c.job(a).unwrap().since, 50.0);
    }

    #[test]
    fn a_restart_holds_the_gpus_without_progress_for_the_restart_cost() {
        let mut c = cluster(4);
        assert!(c.set_restart_cost(30.0));
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
            assert!(!c.set_restart_cost(bad), "{bad}");
        }
        assert_eq!(c.restart_cost(), RestartCost::Fixed(30.0));
        let a = c.submit(JobSpec::new("u", 1, 100.0)).unwrap();
        c.apply(&start(a, &[0])).unwrap();
        assert_eq!(c.next_completion(), Some(100.0), "a first start costs nothing");
        c.advance(40.0);
        c.apply(&Action::Preempt(a)).unwrap();
        c.advance(60.0);
        let resume = |gpus: Vec<GpuId>| Action::Resume(Placement { job: a, gpus });
        c.apply(&resume(vec![1])).unwrap();
        // 60 s of work left, after 30 s of restore: done at 60 + 30 + 60.
        assert_eq!(c.next_completion(), Some(150.0));
        c.advance(75.0);
        let j = c.job(a).unwrap();
        assert_eq!(
            (j.progress_at(75.0), j.restart_seconds_at(75.0)),
            (40.0, 15.0),
            "restoring"
        );
        assert_eq!(
            c.job_info(a).unwrap().attained_gpu_seconds,
            55.0,
            "the GPU is held all along"
        );
        // Preempted mid-restore: the restore is lost, and starts again on resume.
        c.apply(&Action::Preempt(a)).unwrap();
        c.apply(&resume(vec![2])).unwrap();
        assert_eq!(c.next_completion(), Some(75.0 + 30.0 + 60.0));
        c.advance(110.0);
        // A move restarts too; a new share on the same GPU does not.
        c.apply(&Action::Migrate(Placement { job: a, gpus: vec![3] })).unwrap();
        assert_eq!(c.job(a).unwrap().progress, 45.0);
        assert_eq!(c.next_completion(), Some(110.0 + 30.0 + 55.0));
        c.apply(&Action::Share(SharedPlacement {
            job: a,
            gpus: vec![3],
            fraction: 0.5,
        }))
        .unwrap();
        assert_eq!(
            c.next_completion(),
            Some(140.0 + 110.0),
            "restore unchanged, then half speed"
        );
        c.advance(250.0);
        assert_eq!(c.work_completed(), vec![a]);
        assert!(c.finish(a));
        let j = c.job(a).unwrap();
        assert_eq!(j.restart_seconds_at(250.0), 15.0 + 30.0 + 30.0);
    }

    #[test]
    fn restarts_through_host_memory_cost_by_the_memory_moved() {
        let mut c = Cluster::homogeneous(2, 2, "V100", 16 << 30);
        assert!(c.set_restart_model(RestartCost::HOST_MEMORY));
        assert!(!c.set_restart_model(RestartCost::PerGib(f64::NAN)));
        let mut spec = JobSpec::new("u", 1, 100.0);
        spec.memory_per_gpu = 4 << 30;
        let small = c.submit(spec).unwrap();
        let unknown = c.submit(JobSpec::new("u", 1, 100.0)).unwrap();
        for (job, gpu) in [(small, 0), (unknown, 1)] {
            c.apply(&start(job, &[gpu])).unwrap();
            c.apply(&Action::Preempt(job)).unwrap();
            c.apply(&Action::Resume(Placement { job, gpus: vec![gpu] })).unwrap();
        }
        let stalled = |job| c.job(job).unwrap().stalled_until;
        assert!(
            (stalled(small) - 4.0 * 0.044).abs() < 1e-12,
            "4 GiB: {}",
            stalled(small)
        );
        assert!(
            (stalled(unknown) - 16.0 * 0.044).abs() < 1e-12,
            "unknown: the whole 16 GiB GPU: {}",
            stalled(unknown)
        );
    }

    #[test]
    fn jobs_sharing_a_gpu_run_at_their_measured_pair_speed() {
        let table = crate::speed::ThroughputTable::from_gavel_json(
            r#"{"v100": {"('A', 1)": {"null": 10.0, "('B', 1)": [6.0, 4.0]},
                         "('B', 1)": {"null": 8.0},
                         "('C', 1)": {"null": 5.0}}}"#,
        )
        .unwrap();
        let mut c = Cluster::homogeneous(2, 2, "V100", 16 << 30);
        assert!(c.set_speed_model(std::sync::Arc::new(table), "V100"));
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY, 5e-324, 1e-3] {
            assert!(
                !c.set_colocation(Colocation::Measured {
                    interference: Some(bad)
                }),
                "{bad}"
            );
        }
        assert!(c.set_colocation(Colocation::Measured {
            interference: Some(0.7)
        }));
        let typed = |c: &mut Cluster, t: u16| {
            let mut spec = JobSpec::new("u", 1, 100.0);
            spec.job_type = Some(t);
            c.submit(spec).unwrap()
        };
        let (a, b, cc) = (typed(&mut c, 0), typed(&mut c, 1), typed(&mut c, 2));
        let share = |job, fraction| {
            Action::Share(SharedPlacement {
                job,
                gpus: vec![0],
                fraction,
            })
        };
        // Alone on half a GPU: its share, as time-sliced.
        c.apply(&share(a, 0.5)).unwrap();
        assert_eq!(c.next_completion(), Some(200.0));
        // Beside B: the measured pair, 6/10 and 4/8 of alone, whatever the shares.
        c.apply(&share(b, 0.5)).unwrap();
        assert_eq!(c.job(a).unwrap().co_located_factor(), Some(0.6));
        assert_eq!(c.job(b).unwrap().co_located_factor(), Some(0.5));
        let finish = |c: &Cluster, job| c.completion_keys.get(&job).unwrap().finish.0;
        assert!((finish(&c, a) - 100.0 / 0.6).abs() < 1e-4);
        assert!((finish(&c, b) - 200.0).abs() < 1e-4);
        c.advance(50.0);
        // B leaves: A is alone again, at its half share, its progress kept.
        c.apply(&Action::Preempt(b)).unwrap();
        assert_eq!(c.job(a).unwrap().co_located_factor(), None);
        assert!((c.job(a).unwrap().progress - 30.0).abs() < 1e-4);
        assert!((finish(&c, a) - (50.0 + 70.0 / 0.5)).abs() < 1e-4);
        // No pair figure for A and C: the interference factor.
        c.apply(&share(cc, 0.5)).unwrap();
        assert_eq!(c.job(a).unwrap().co_located_factor(), Some(0.7));
        assert_eq!(c.job(cc).unwrap().co_located_factor(), Some(0.7));
        // What sharing cost: A 50 s at 0.6 of alone, B 50 s at 0.5.
        let losses = c.model_losses();
        assert!(
            (losses.interference_work - (50.0 * 0.4 + 50.0 * 0.5)).abs() < 1e-3,
            "{losses:?}"
        );
        assert_eq!(losses.spread_work, 0.0);
        c.advance(60.0);
        let losses = c.model_losses();
        assert!(
            (losses.interference_work - (45.0 + 2.0 * 10.0 * 0.3)).abs() < 1e-3,
            "running jobs' unsettled time counts: {losses:?}"
        );
    }

    #[test]
    fn a_spread_penalty_slows_gangs_over_nodes_where_the_table_says_nothing() {
        let mut c = Cluster::homogeneous(4, 2, "V100", 16 << 30);
        for bad in [0.0, 1.5, f64::NAN, 5e-324] {
            assert!(!c.set_spread_penalty(Some(bad)), "{bad}");
        }
        assert!(c.set_spread_penalty(Some(0.5)));
        let a = c.submit(JobSpec::new("u", 2, 100.0)).unwrap();
        let b = c.submit(JobSpec::new("u", 2, 100.0)).unwrap();
        c.apply(&start(a, &[0, 1])).unwrap();
        c.apply(&start(b, &[2, 3])).unwrap();
        assert_eq!(c.job(a).unwrap().speed, 1.0, "one node");
        c.apply(&Action::Migrate(Placement {
            job: b,
            gpus: vec![1, 2],
        }))
        .unwrap_err();
        c.apply(&Action::Preempt(a)).unwrap();
        c.apply(&Action::Migrate(Placement {
            job: b,
            gpus: vec![1, 2],
        }))
        .unwrap();
        assert_eq!((c.job(b).unwrap().speed, c.job(b).unwrap().spread_factor), (0.5, 0.5));
        c.advance(10.0);
        assert!(
            (c.model_losses().spread_work - 5.0).abs() < 1e-9,
            "{:?}",
            c.model_losses()
        );
    }

    #[test]
    fn the_job_record_stays_small() {
        // 800,000-job replays keep every record: each 8 bytes here is
        // 6.4 MB there, against a budget of 1 KiB per job in all.
        assert!(
            std::mem::size_of::<Job>() <= 344,
            "{} bytes",
            std::mem::size_of::<Job>()
        );
    }

    #[test]
    fn time_sliced_sharing_is_the_default_and_neighbours_do_not_matter() {
        let mut c = Cluster::homogeneous(1, 1, "V100", 16 << 30);
        assert_eq!(c.colocation(), Colocation::TimeSlice);
        let (a, b) = (
            c.submit(JobSpec::new("u", 1, 100.0)).unwrap(),
            c.submit(JobSpec::new("u", 1, 100.0)).unwrap(),
        );
        for job in [a, b] {
            c.apply(&Action::Share(SharedPlacement {
                job,
                gpus: vec![0],
                fraction: 0.5,
            }))
            .unwrap();
        }
        assert_eq!(
            (c.job(a).unwrap().co_located_factor(), c.job(a).unwrap().rate()),
            (None, 0.5)
        );
        assert_eq!(c.next_completion(), Some(200.0));
        assert_eq!(c.model_losses(), ModelLosses::default());
    }

    #[test]
    fn a_typed_job_runs_at_its_measured_speed_where_it_runs() {
        let table = crate::speed::ThroughputTable::from_gavel_json(
            r#"{"v100": {"('R', 1)": {"null": 10.0}, "('R', 2)": {"null": 16.0}},
                "k80": {"('R', 1)": {"null": 2.5}, "('R', 2)": {"null": 4.0}}}"#,
        )
        .unwrap();
        let gpus = (0..4)
            .map(|i| GpuSpec {
                node: i / 2,
                kind: if i < 2 { "V100" } else { "K80" }.into(),
                memory_total: 1 << 30,
            })
            .collect();
        let mut c = Cluster::new(gpus);
        assert!(
            !c.set_speed_model(std::sync::Arc::new(table.clone()), "H200"),
            "not in the table"
        );
        assert!(c.set_speed_model(std::sync::Arc::new(table), "V100"));
        let typed = |c: &mut Cluster, gpus: u32| {
            let mut spec = JobSpec::new("u", gpus, 100.0);
            spec.job_type = Some(0);
            c.submit(spec).unwrap()
        };
        // On the reference kind with its gang: as without a table.
        let a = typed(&mut c, 1);
        c.apply(&start(a, &[0])).unwrap();
        assert_eq!((c.job(a).unwrap().speed, c.next_completion()), (1.0, Some(100.0)));
        // On a K80: a quarter of the speed.
        let b = typed(&mut c, 1);
        c.apply(&start(b, &[2])).unwrap();
        assert_eq!(c.job(b).unwrap().rate(), 0.25);
        // A gang across both kinds runs at the K80s' speed (4 / 16 per the
        // gang of two); an untyped job as before.
        c.apply(&Action::Preempt(a)).unwrap();
        c.apply(&Action::Preempt(b)).unwrap();
        let g = typed(&mut c, 2);
        c.apply(&start(g, &[1, 3])).unwrap();
        assert_eq!(c.job(g).unwrap().rate(), 0.25);
        let u = c.submit(JobSpec::new("u", 1, 100.0)).unwrap();
        c.apply(&start(u, &[2])).unwrap();
        assert_eq!(c.job(u).unwrap().rate(), 1.0);
    }

    #[test]
    fn a_typed_gang_over_several_nodes_runs_at_the_unconsolidated_figure() {
        let table = crate::speed::ThroughputTable::from_gavel_json(
            r#"{"v100": {"('R', 2)": {"null": 16.0}},
                "v100_unconsolidated": {"('R', 2)": {"null": 12.0}}}"#,
        )
        .unwrap();
        let mut c = Cluster::homogeneous(4, 2, "V100", 1 << 30);
        assert!(c.set_speed_model(std::sync::Arc::new(table), "V100"));
        let mut spec = JobSpec::new("u", 2, 100.0);
        spec.job_type = Some(0);
        let a = c.submit(spec.clone()).unwrap();
        c.apply(&start(a, &[0, 1])).unwrap();
        assert_eq!(c.job(a).unwrap().rate(), 1.0, "one node: the reference");
        c.apply(&Action::Migrate(Placement {
            job: a,
            gpus: vec![1, 2],
        }))
        .unwrap();
        assert_eq!(c.job(a).unwrap().rate(), 0.75, "two nodes: 12 of 16 steps per second");
    }

    #[test]
    fn sharing_respects_capacity_and_memory() {
        let mut c = Cluster::homogeneous(1, 1, "test", 10);
        let mut spec = JobSpec::new("u", 1, 10.0);
        spec.memory_per_gpu = 6;
        let a = c.submit(spec.clone()).unwrap();
        let b = c.submit(spec).unwrap();
        let c3 = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        let share = |job, fraction| {
            Action::Share(SharedPlacement {
                job,
                gpus: vec![0],
                fraction,
            })
        };
        c.apply(&share(a, 0.5)).unwrap();
        assert!(c.apply(&share(b, 0.5)).unwrap_err().to_string().contains("memory"));
        assert!(
            c.apply(&share(c3, 0.6))
                .unwrap_err()
                .to_string()
                .contains("0.50 of it is free")
        );
        c.apply(&share(c3, 0.5)).unwrap();
        assert_eq!(c.job(c3).unwrap().rate(), 0.5);
        assert!(c.apply(&share(a, 0.7)).is_err());
        assert!(
            c.apply(&share(a, f64::NAN))
                .unwrap_err()
                .to_string()
                .contains("fraction")
        );
        assert_eq!(c.allocated_share(), 1.0);
    }

    #[test]
    fn submission_refuses_impossible_jobs() {
        let mut c = cluster(4);
        assert!(
            c.submit(JobSpec::new("u", 5, 1.0))
                .unwrap_err()
                .to_string()
                .contains("cluster has 4")
        );
        assert!(c.submit(JobSpec::new("u", 0, 1.0)).is_err());
        assert!(c.submit(JobSpec::new("u", 1, f64::INFINITY)).is_err());
        assert_eq!(c.live_jobs(), 0);
    }

    #[test]
    fn work_too_small_to_move_a_late_clock_is_done_not_a_hang() {
        let mut c = cluster(1);
        c.advance(1e12);
        let tiny = c.submit(JobSpec::new("u", 1, 1e-5)).unwrap();
        c.apply(&start(tiny, &[0])).unwrap();
        // now + 1e-5 == now at this clock: waiting for the job would stop time.
        assert_eq!(c.next_completion(), Some(1e12));
        assert_eq!(c.work_completed(), vec![tiny]);
    }

    #[test]
    fn hostile_numbers_in_specs_and_actions_are_refused() {
        let mut c = cluster(2);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e20] {
            assert!(c.submit(JobSpec::new("u", 1, bad)).is_err(), "{bad}");
        }
        let mut spec = JobSpec::new("u", 1, 10.0);
        spec.memory_per_gpu = u64::MAX;
        assert!(c.submit(spec).is_err());
        let a = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        for fraction in [1e-300, 5e-324, 0.0, f64::NAN] {
            let share = Action::Share(SharedPlacement {
                job: a,
                gpus: vec![0],
                fraction,
            });
            assert!(c.apply(&share).unwrap_err().to_string().contains("share"), "{fraction}");
        }
        for weight in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
            assert!(c.apply(&Action::SetPriority((a, weight))).is_err(), "{weight}");
        }
        // A stored job id at the very end of the id space does not wrap.
        c.reserve_ids_below(u64::MAX);
        assert!(c.submit(JobSpec::new("u", 1, 1.0)).is_err());
    }

    #[test]
    fn idling_with_work_is_seen_without_scanning_the_queue() {
        let mut c = cluster(4);
        assert!(!c.idles_with_work(), "nothing waits");
        let big = c.submit(JobSpec::new("u", 8, 10.0));
        assert!(big.is_err(), "more GPUs than the cluster has");
        let a = c.submit(JobSpec::new("u", 4, 10.0)).unwrap();
        assert!(c.idles_with_work());
        c.apply(&start(a, &[0, 1, 2, 3])).unwrap();
        let b = c.submit(JobSpec::new("u", 1, 10.0)).unwrap();
        assert!(!c.idles_with_work(), "something runs");
        c.apply(&Action::Preempt(a)).unwrap();
        assert!(c.idles_with_work(), "preempted work waits on free GPUs");
        c.set_gpu_online(0, false);
        c.set_gpu_online(1, false);
        c.set_gpu_online(2, false);
        assert!(c.idles_with_work(), "job b still fits on the one GPU left");
        c.apply(&start(b, &[3])).unwrap();
        assert!(!c.idles_with_work());
    }

    #[test]
    fn offline_gpu_suspends_its_jobs() {
        let mut c = cluster(2);
        let a = c.submit(JobSpec::new("u", 2, 100.0)).unwrap();
        c.apply(&start(a, &[0, 1])).unwrap();
        assert_eq!(c.set_gpu_online(1, false), vec![a]);
        assert_eq!(c.job(a).unwrap().state, JobState::Suspended);
        assert_eq!(c.free_gpu_ids(), vec![0]);
        assert!(
            c.apply(&Action::Resume(Placement {
                job: a,
                gpus: vec![0, 1]
            }))
            .unwrap_err()
            .to_string()
            .contains("offline")
        );
        c.set_gpu_online(1, true);
        assert_eq!(c.stats().free_gpus, 2);
    }
}
