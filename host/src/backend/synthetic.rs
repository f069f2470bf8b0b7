//! Synthetic training jobs that run real kernels on devices: the backend
//! that turns start, preempt, resume, migrate, resize and share into work
//! that runs, stops, moves and shares a GPU.
//!
//! Each job gets a worker thread that owns the job's state on its GPUs (one
//! [`Lane`] per GPU of the gang) and loops over iterations: launch the step
//! on every lane, wait for all of them, count. Between two iterations (and
//! only there, so that no work is half done) it looks at what the backend
//! wants of it:
//!
//! - run on a gang: if the state is elsewhere (a migration, a resize, a
//!   resume after the state was released), it is copied through host
//!   memory onto the new gang; then iterations go on;
//! - park (the job was preempted): stop iterating, keep the state on the
//!   device so that resuming in place costs nothing, or release it to host
//!   memory; a parked job whose memory is needed by another job is told to
//!   release it first (the policy decides who runs; the backend decides
//!   whose memory stays);
//! - stop (cancelled): drop everything.
//!
//! The backend mirrors the model as [`super::processes`] does: after each
//! action it brings the job's worker in line with the job's state and
//! placement, and waits for the worker to get there (at most one iteration
//! plus the copies). Two jobs on one GPU (`share`) each have their own
//! stream, so their kernels run side by side.
//!
//! A device fault ends the job that met it with the driver's error; the
//! device is then checked with a probe, and if its context is lost, the
//! other jobs on it fail too (their state went with the context), the
//! context is recreated and checked again; a device that still fails is
//! reported offline, so the policy stops placing work on it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::{Device, DeviceError, Kernel, Lane, Saved};
use super::{Backend, BackendError, Ending, WorkOp};
use crate::cluster::Cluster;
use crate::wit::{GpuId, JobId, JobState};

/// Work per GPU per iteration when a job does not say: about 3 ms on an
/// H100-class GPU.
pub const DEFAULT_FLOPS_PER_ITERATION: f64 = 2.0e11;

/// How often GPUs' own counters are read.
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// Words of a finished job's state kept for checks.
pub const SAMPLE_WORDS: usize = 64;

/// How long the backend waits for a worker to reach an iteration boundary
/// and carry out a change.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a synthetic job runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Iterations to run; when none, it runs until `seconds` of running time.
    pub iterations: Option<u64>,
    /// Running time to finish after, when `iterations` is none.
    pub seconds: f64,
    /// Floating-point operations per GPU per iteration.
    pub flops_per_iteration: f64,
    /// Share of each GPU's multiprocessors a launch occupies, in (0, 1].
    pub share: f64,
    /// Device memory the job holds on each GPU, in bytes (at least its
    /// kernel's working set).
    pub memory_bytes: u64,
    /// Fault on the device on purpose at this iteration (tests the fault
    /// path end to end).
    pub fault_at_iteration: Option<u64>,
    /// Iterations done before (by an earlier run of the host); counting
    /// goes on from there, the state starts over.
    pub done_before: u64,
}

impl Workload {
    /// The launch of one iteration on `device`.
    pub fn kernel_on(&self, device: &dyn Device) -> Kernel {
        Kernel::sized(device.info().multiprocessors, self.share, self.flops_per_iteration)
    }

    /// `seconds` of running time at the default size, on whole GPUs.
    pub fn seconds(seconds: f64) -> Self {
        Workload {
            iterations: None,
            seconds,
            flops_per_iteration: DEFAULT_FLOPS_PER_ITERATION,
            share: 1.0,
            memory_bytes: 0,
            fault_at_iteration: None,
            done_before: 0,
        }
    }
}

/// Whether a preempted job's device memory is kept for a fast resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuspendMemory {
    /// Keep it while no other job needs it (the default).
    #[default]
    Keep,
    /// Copy the state to host memory and free the device at once.
    Release,
}

/// What the backend wants of a worker.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Run(Vec<GpuId>),
    Park { release: bool },
    Stop,
}

/// Where a worker is.
#[derive(Debug, Clone, PartialEq)]
enum At {
    Starting,
    Running(Vec<GpuId>),
    Parked { on_device: bool },
    Ended,
}

/// A worker's state, shared with the backend.
#[derive(Debug)]
struct Status {
    want: Want,
    at: At,
    iterations: u64,
    iteration_time: Option<f64>,
    /// Iterations reported to the model so far.
    reported: u64,
    ran: Duration,
    ending: Option<Ending>,
    /// The GPU whose context a fault may have taken down.
    faulted: Option<GpuId>,
    /// Device memory held now, per GPU.
    held: Vec<(GpuId, u64)>,
    parked_since: Option<Instant>,
    /// The first words of the state when the job finished.
    sample: Vec<f32>,
}

#[derive(Debug)]
struct Control {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The backend's handle on a [`JobThread`]: its controls, and the thread,
/// stopped and joined when the handle drops.
struct JobHandle {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.control.lock().want = Want::Stop;
        self.control.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs synthetic jobs as real kernels on devices (one per cluster GPU,
/// in GPU id order).
pub struct SyntheticBackend {
    devices: Vec<Arc<dyn Device>>,
    workloads: HashMap<JobId, Workload>,
    /// The thread driving each started job.
    threads: HashMap<JobId, JobHandle>,
    suspend_memory: SuspendMemory,
    /// Device memory the backend lets jobs hold on each GPU, when less
    /// than the device has.
    memory_limit: Option<u64>,
    /// GPUs found broken after a fault, not yet reported.
    broken: Vec<GpuId>,
    /// Jobs that lost their state with a device's context.
    lost: Vec<(JobId, Ending)>,
    /// Last progress of jobs that ended, for the next `progress`.
    final_progress: Vec<(JobId, Option<u64>, Option<f64>)>,
    /// The first words of each finished job's state.
    samples: HashMap<JobId, Vec<f32>>,
    last_measured: Option<Instant>,
}

impl std::fmt::Debug for SyntheticBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyntheticBackend")
            .field("devices", &self.devices.len())
            .field("jobs", &self.threads.len())
            .finish()
    }
}

impl SyntheticBackend {
    /// A backend for `devices`; cluster GPU `i` is `devices[i]`.
    pub fn new(devices: Vec<Arc<dyn Device>>) -> Self {
        SyntheticBackend {
            devices,
            workloads: HashMap::new(),
            threads: HashMap::new(),
            suspend_memory: SuspendMemory::default(),
            memory_limit: None,
            broken: Vec::new(),
            lost: Vec::new(),
            final_progress: Vec::new(),
            samples: HashMap::new(),
            last_measured: None,
        }
    }

    /// Keep or release a preempted job's device memory.
    pub fn with_suspend_memory(mut self, how: SuspendMemory) -> Self {
        self.suspend_memory = how;
        self
    }

    /// Let jobs hold at most `bytes` of device memory on each GPU (the
    /// cluster model should show the same figure): parked jobs release
    /// their memory when keeping it would go over.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Memory jobs may hold on `device`.
    pub fn memory_capacity(&self, device: &dyn Device) -> u64 {
        let total = device.info().memory_total;
        self.memory_limit.map_or(total, |limit| limit.min(total))
    }

    /// The devices, in cluster GPU order.
    pub fn devices(&self) -> &[Arc<dyn Device>] {
        &self.devices
    }

    /// Say what job `id` runs; call it right after submitting the job.
    pub fn register(&mut self, id: JobId, workload: Workload) {
        self.workloads.insert(id, workload);
    }

    /// Whether job `id` is a synthetic job of this backend.
    pub fn is_registered(&self, id: JobId) -> bool {
        self.workloads.contains_key(&id)
    }

    /// Whether any job has a worker (its end must be polled for).
    pub fn has_work(&self) -> bool {
        !self.threads.is_empty()
    }

    /// Iterations job `id` has done, while it has a worker.
    pub fn iterations(&self, id: JobId) -> Option<u64> {
        self.threads.get(&id).map(|w| w.control.lock().iterations)
    }

    /// Whether job `id`'s worker is parked at an iteration boundary (it
    /// waits for its next command and runs no kernel).
    pub fn is_parked(&self, id: JobId) -> bool {
        self.threads
            .get(&id)
            .is_some_and(|w| matches!(w.control.lock().at, At::Parked { .. }))
    }

    /// Device memory job `id` holds now, per GPU.
    pub fn held(&self, id: JobId) -> Vec<(GpuId, u64)> {
        self.threads
            .get(&id)
            .map(|w| w.control.lock().held.clone())
            .unwrap_or_default()
    }

    /// Words of state job `id` holds per GPU: its memory, at least the
    /// largest working set its kernel can have on these devices.
    fn words(&self, workload: &Workload) -> u64 {
        let working_set = self
            .devices
            .iter()
            .map(|d| workload.kernel_on(d.as_ref()).working_set())
            .max()
            .unwrap_or(0);
        (workload.memory_bytes / 4).max(working_set)
    }

    fn spawn(&mut self, id: JobId) -> Result<(), String> {
        let Some(workload) = self.workloads.get(&id).cloned() else {
            return Err(format!("job {id}: no synthetic workload registered"));
        };
        let done_before = workload.done_before;
        let control = Arc::new(Control {
            status: Mutex::new(Status {
                want: Want::Park { release: false },
                at: At::Starting,
                iterations: done_before,
                iteration_time: None,
                reported: done_before,
                ran: Duration::ZERO,
                ending: None,
                faulted: None,
                held: Vec::new(),
                parked_since: None,
                sample: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let job = JobThread {
            id,
            words: self.words(&workload),
            workload,
            devices: self.devices.clone(),
            control: control.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("wsched-gpu-job-{id}"))
            .spawn(move || job.run())
            .map_err(|e| format!("job {id}: cannot start its worker thread: {e}"))?;
        self.threads.insert(
            id,
            JobHandle {
                control,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    /// Tell job `id`'s worker what to do and wait until it has (or ended).
    fn command(&mut self, id: JobId, want: Want) -> Result<(), String> {
        let Some(worker) = self.threads.get(&id) else {
            return Ok(());
        };
        let control = worker.control.clone();
        let mut status = control.lock();
        status.want = want.clone();
        control.changed.notify_all();
        let done = |s: &Status| match (&s.want, &s.at) {
            (_, At::Ended) => true,
            (Want::Run(gpus), At::Running(at)) => gpus == at,
            (Want::Park { release }, At::Parked { on_device }) => !(*release && *on_device),
            (Want::Stop, _) => true,
            _ => false,
        };
        // A worker that ended instead (a device error) counts as done: the
        // ending is reported by `ended`, with the device's error.
        let (status, timeout) = control
            .changed
            .wait_timeout_while(status, ACK_TIMEOUT, |s| !done(s))
            .unwrap_or_else(|e| e.into_inner());
        drop(status);
        if timeout.timed_out() {
            return Err(format!(
                "job {id}: its worker did not reach an iteration boundary within {ACK_TIMEOUT:?}"
            ));
        }
        Ok(())
    }

    /// Make room on `gpus` for job `id`: parked jobs that keep their state
    /// on those GPUs release it (oldest first) while the GPU's memory would
    /// not hold everyone.
    fn make_room(&mut self, id: JobId, gpus: &[GpuId]) -> Result<(), String> {
        let Some(workload) = self.workloads.get(&id) else {
            return Ok(());
        };
        let need = self.words(workload) * 4;
        for &gpu in gpus {
            let Some(device) = self.devices.get(gpu as usize).cloned() else {
                continue;
            };
            let capacity = self.memory_capacity(device.as_ref());
            loop {
                let mut held_by_others = 0u64;
                let mut parked: Vec<(Instant, JobId)> = Vec::new();
                for (&other, worker) in &self.threads {
                    if other == id {
                        continue;
                    }
                    let status = worker.control.lock();
                    let here: u64 = status.held.iter().filter(|(g, _)| *g == gpu).map(|(_, b)| b).sum();
                    held_by_others += here;
                    if here > 0 && matches!(status.at, At::Parked { on_device: true }) {
                        parked.push((status.parked_since.unwrap_or_else(Instant::now), other));
                    }
                }
                // The driver's own free figure also counts other processes.
                let short = held_by_others + need > capacity
                    || device
                        .memory_free()
                        .is_some_and(|free| free < need && !parked.is_empty());
                if !short {
                    break;
                }
                let Some(&(_, victim)) = parked.iter().min() else { break };
                tracing::debug!(
                    job = victim,
                    gpu,
                    "releasing a parked job's device memory for another job"
                );
                self.command(victim, Want::Park { release: true })?;
            }
        }
        Ok(())
    }

    /// Bring job `id`'s worker in line with the model.
    fn reconcile_job(&mut self, id: JobId, state: JobState, placement: &[GpuId]) -> Result<(), String> {
        match state {
            JobState::Running => {
                if !self.threads.contains_key(&id) {
                    self.spawn(id)?;
                }
                self.make_room(id, placement)?;
                self.command(id, Want::Run(placement.to_vec()))
            }
            JobState::Suspended => {
                let release = self.suspend_memory == SuspendMemory::Release;
                self.command(id, Want::Park { release })
            }
            JobState::Pending => Ok(()),
            JobState::Finished | JobState::Failed => {
                self.threads.remove(&id); // the worker stops and is joined as it drops
                self.workloads.remove(&id);
                Ok(())
            }
        }
    }

    /// After a fault on `gpu`: check it; if its context is lost, every job
    /// with state there lost it too, and the context is recreated.
    fn recover_device(&mut self, gpu: GpuId) {
        let Some(device) = self.devices.get(gpu as usize).cloned() else {
            return;
        };
        match device.check() {
            Ok(()) => {
                tracing::info!(gpu, "GPU checked after a job's fault: it works, back in the pool");
                return;
            }
            Err(e) => tracing::warn!(gpu, error = %e, "GPU check after a fault failed: resetting its context"),
        }
        let mut victims: Vec<JobId> = self
            .threads
            .iter()
            .filter(|(_, w)| w.control.lock().held.iter().any(|(g, _)| *g == gpu))
            .map(|(&id, _)| id)
            .collect();
        victims.sort_unstable();
        for id in victims {
            if let Some(worker) = self.threads.remove(&id) {
                let already = worker.control.lock().ending.take();
                drop(worker);
                let why = match already {
                    Some(Err(why)) => why,
                    _ => format!("lost its state on GPU {gpu}: the GPU's context failed after another job's fault"),
                };
                self.lost.push((id, Err(why)));
            }
        }
        let outcome = device.reset().and_then(|()| device.check());
        match outcome {
            Ok(()) => tracing::info!(gpu, "GPU context recreated and checked: back in the pool"),
            Err(e) => {
                tracing::error!(gpu, error = %e, "GPU still fails after a reset: taking it offline");
                self.broken.push(gpu);
            }
        }
    }

    /// GPUs found broken since the last call (the host takes them offline).
    pub fn take_broken(&mut self) -> Vec<GpuId> {
        std::mem::take(&mut self.broken)
    }

    /// The first words of job `id`'s state as it ended (at most
    /// [`SAMPLE_WORDS`]), for checks against [`super::device::reference_rounds`].
    pub fn final_sample(&self, id: JobId) -> Option<&[f32]> {
        self.samples.get(&id).map(Vec::as_slice)
    }
}

/// A device error, with the GPU it happened on.
type Fault = (GpuId, DeviceError);

/// One job's worker: owns its lanes, runs its iterations.
struct JobThread {
    id: JobId,
    words: u64,
    workload: Workload,
    devices: Vec<Arc<dyn Device>>,
    control: Arc<Control>,
}

/// Where a job's state lives between iterations.
enum Placement {
    /// Nowhere yet: it starts from the initial state.
    Fresh,
    /// In host memory (released or moving).
    Host(Saved),
    /// On these GPUs, one lane each (replicas).
    Device(Vec<(GpuId, Box<dyn Lane>)>),
}

impl JobThread {
    fn run(self) {
        let mut placement = Placement::Fresh;
        let result = self.iterate(&mut placement);
        drop(placement);
        let mut status = self.control.lock();
        status.at = At::Ended;
        status.held.clear();
        match result {
            Ok(true) => status.ending = Some(Ok(())),
            Ok(false) => {} // stopped: the model already ended it
            Err((gpu, error)) => {
                if error.sticky {
                    status.faulted = Some(gpu);
                }
                let name = match self.devices.get(gpu as usize) {
                    Some(d) => format!("GPU {gpu} ({})", d.info().name),
                    None => format!("GPU {gpu}"),
                };
                status.ending = Some(Err(format!("{name}: {}", error.message)));
            }
        }
        drop(status);
        self.control.changed.notify_all();
    }

    /// Iterate until done (`Ok(true)`), stopped (`Ok(false)`) or a device
    /// error (with the GPUs it concerns).
    fn iterate(&self, placement: &mut Placement) -> Result<bool, Fault> {
        let kernels: Vec<Kernel> = self
            .devices
            .iter()
            .map(|d| self.workload.kernel_on(d.as_ref()))
            .collect();
        // Whether `At::Running` on the current placement has been reported.
        let mut running_reported = false;
        loop {
            let want = {
                let mut status = self.control.lock();
                loop {
                    let idle = match (&status.want, &status.at) {
                        (Want::Park { release }, At::Parked { on_device }) => !(*release && *on_device),
                        (Want::Park { .. }, At::Starting) => true,
                        _ => false,
                    };
                    if !idle {
                        break status.want.clone();
                    }
                    status = self.control.changed.wait(status).unwrap_or_else(|e| e.into_inner());
                }
            };
            match want {
                Want::Stop => return Ok(false),
                Want::Park { release } => {
                    if release && let Placement::Device(lanes) = placement {
                        let state = save(lanes)?;
                        *placement = Placement::Host(state);
                    }
                    let on_device = matches!(placement, Placement::Device(_));
                    self.report(At::Parked { on_device }, placement);
                    running_reported = false;
                }
                Want::Run(gpus) => {
                    let here = match placement {
                        Placement::Device(lanes) => lanes.iter().map(|(g, _)| *g).eq(gpus.iter().copied()),
                        _ => false,
                    };
                    if !here {
                        self.place(placement, &gpus)?;
                        running_reported = false;
                    }
                    if !running_reported {
                        self.report(At::Running(gpus), placement);
                        running_reported = true;
                    }
                    if self.step(placement, &kernels)? {
                        if let Placement::Device(lanes) = placement
                            && let Some((gpu, lane)) = lanes.first_mut()
                        {
                            let sample = lane.peek(SAMPLE_WORDS).map_err(|e| (*gpu, e))?;
                            self.control.lock().sample = sample;
                        }
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Move the state onto `gpus`, through host memory.
    fn place(&self, placement: &mut Placement, gpus: &[GpuId]) -> Result<(), Fault> {
        tracing::debug!(job = self.id, ?gpus, "placing the job's state");
        let state = match std::mem::replace(placement, Placement::Fresh) {
            Placement::Fresh => None,
            Placement::Host(state) => Some(state),
            Placement::Device(mut lanes) => Some(save(&mut lanes)?),
        };
        let mut lanes = Vec::with_capacity(gpus.len());
        for &gpu in gpus {
            let Some(device) = self.devices.get(gpu as usize) else {
                return Err((gpu, DeviceError::call(format!("no device for GPU {gpu}"))));
            };
            match device.open(self.words, state.as_ref().map(|s| s.words())) {
                Ok(lane) => lanes.push((gpu, lane)),
                Err(e) => {
                    // Keep what we had: a failed move must not lose the state.
                    if let Some(state) = state {
                        *placement = Placement::Host(state);
                    }
                    return Err((gpu, e));
                }
            }
        }
        *placement = Placement::Device(lanes);
        Ok(())
    }

    /// One iteration on every lane; true when the job is done.
    fn step(&self, placement: &mut Placement, kernels: &[Kernel]) -> Result<bool, Fault> {
        let Placement::Device(lanes) = placement else {
            return Ok(false);
        };
        let iteration = self.control.lock().iterations + 1;
        let fault = self.workload.fault_at_iteration == Some(iteration);
        let started = Instant::now();
        for (gpu, lane) in lanes.iter_mut() {
            lane.launch(kernels[*gpu as usize], fault).map_err(|e| (*gpu, e))?;
        }
        for (gpu, lane) in lanes.iter_mut() {
            lane.wait().map_err(|e| (*gpu, e))?;
        }
        let took = started.elapsed();
        let mut status = self.control.lock();
        status.iterations = iteration;
        status.iteration_time = Some(took.as_secs_f64());
        status.ran += took;
        let done = match self.workload.iterations {
            Some(total) => iteration >= total,
            None => status.ran.as_secs_f64() >= self.workload.seconds,
        };
        Ok(done)
    }

    fn report(&self, at: At, placement: &Placement) {
        let mut status = self.control.lock();
        status.held = match placement {
            Placement::Device(lanes) => lanes.iter().map(|(g, l)| (*g, l.bytes())).collect(),
            _ => Vec::new(),
        };
        status.parked_since = matches!(at, At::Parked { .. }).then(Instant::now);
        status.at = at;
        drop(status);
        self.control.changed.notify_all();
    }
}

fn save(lanes: &mut [(GpuId, Box<dyn Lane>)]) -> Result<Saved, Fault> {
    let Some((gpu, lane)) = lanes.first_mut() else {
        return Ok(Box::new(Vec::new()));
    };
    lane.save().map_err(|e| (*gpu, e))
}

impl Backend for SyntheticBackend {
    fn name(&self) -> &'static str {
        self.devices.first().map_or("cuda", |d| d.backend_name())
    }

    fn reconcile(&mut self, cluster: &Cluster, id: JobId) -> Result<(), BackendError> {
        let Some(job) = cluster.job(id) else {
            return Ok(());
        };
        let (state, placement) = (job.state, job.placement.clone());
        self.reconcile_job(id, state, &placement)
            .map_err(|reason| BackendError::new(id, WorkOp::for_state(state), reason))
    }

    // Its final sample; nothing while it runs.
    fn forget(&mut self, id: JobId) {
        if !self.threads.contains_key(&id) {
            self.workloads.remove(&id);
            self.samples.remove(&id);
        }
    }

    fn ended(&mut self, _cluster: &Cluster) -> Vec<(JobId, Ending)> {
        let mut ended = std::mem::take(&mut self.lost);
        let mut faulted: Vec<GpuId> = Vec::new();
        let mut ids: Vec<JobId> = self.threads.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(worker) = self.threads.get(&id) else { continue };
            let mut status = worker.control.lock();
            if status.at != At::Ended {
                continue;
            }
            let ending = status.ending.take();
            faulted.extend(status.faulted.take());
            let report = (id, Some(status.iterations), status.iteration_time);
            let sample = std::mem::take(&mut status.sample);
            drop(status);
            if let Some(ending) = ending {
                if report.1 > Some(0) {
                    self.final_progress.push(report);
                }
                if !sample.is_empty() {
                    self.samples.insert(id, sample);
                }
                ended.push((id, ending));
            }
        }
        for (id, _) in &ended {
            self.threads.remove(id);
            self.workloads.remove(id);
        }
        faulted.sort_unstable();
        faulted.dedup();
        for gpu in faulted {
            self.recover_device(gpu);
        }
        ended.append(&mut self.lost);
        ended
    }

    fn progress(&mut self) -> Vec<(JobId, Option<u64>, Option<f64>)> {
        let mut reports = std::mem::take(&mut self.final_progress);
        for (&id, worker) in &self.threads {
            let mut status = worker.control.lock();
            if status.iterations != status.reported {
                status.reported = status.iterations;
                reports.push((id, Some(status.iterations), status.iteration_time));
            }
        }
        reports.sort_unstable_by_key(|r| r.0);
        reports
    }

    fn measure(&mut self) -> Vec<(GpuId, crate::wit::GpuMeasurement)> {
        // The counters are sampled by the driver about once a second, and
        // reading them costs a system call or two: no need to ask more often.
        if self.last_measured.is_some_and(|t| t.elapsed() < MEASURE_EVERY) {
            return Vec::new();
        }
        self.last_measured = Some(Instant::now());
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(gpu, device)| device.measure().map(|m| (gpu as GpuId, m)))
            .collect()
    }

    fn next_end(&self, _cluster: &Cluster) -> Option<f64> {
        None // real kernels end when they end: poll
    }
}
