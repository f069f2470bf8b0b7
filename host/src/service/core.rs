//! The scheduler loop: the one thread that owns the runtime and the
//! database.
//!
//! Each turn: wait for a request or for the next thing due (a predicted job
//! end, a tick, a process to poll); take every request that has arrived;
//! apply them to the model; let the policy decide ([`Runtime::step`]);
//! write every job that changed, in one transaction; then reply and
//! publish events. Replies to requests that change anything wait for the
//! commit, so an acknowledgement always means "on disk".
//!
//! Keeping all of this on one thread is deliberate: the policy sees one
//! ordered history (the same as the simulator would give it), no lock is
//! held across a plugin call, and a slow request cannot interleave with a
//! half-applied decision.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot};
use tonic::Status;

use super::ServeConfig;
use super::metrics::Metrics;
use crate::backend::Backend;
use crate::backend::device::DeviceInfo;
use crate::backend::local::LocalBackend;
use crate::backend::process::ProcessSpec;
use crate::backend::synthetic::{DEFAULT_FLOPS_PER_ITERATION, SyntheticBackend, Workload};
use crate::cluster::{Cluster, GpuSpec, Job, JobSpec};
use crate::engine::{Engine, Plugin};
use crate::latency::Latencies;
use crate::native::Fifo;
use crate::proto;
use crate::runtime::Runtime;
use crate::scheduler::{ActivePolicy, PolicyHost};
use crate::store::{ActivePolicyRecord, Batch, Store};
use crate::wit::{Action, JobId, JobState};

/// The name of the built-in policy, usable wherever a plugin's name is.
pub const BUILTIN_FIFO: &str = "builtin-fifo";

/// Requests a turn takes at most before deciding, so that decisions keep
/// happening under a flood of requests.
const MAX_REQUESTS_PER_TURN: usize = 8192;

/// How often the loop polls while command jobs have live processes (their
/// ends cannot be predicted).
const PROCESS_POLL: Duration = Duration::from_millis(20);

/// Events buffered for watchers; one that falls further behind is told so.
pub const EVENT_BUFFER: usize = 65_536;

type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// What the gRPC layer asks of the scheduler loop. Requests are validated
/// before they get here, except against cluster state.
pub enum Request {
    /// Accept a job.
    Submit(proto::JobSpec, Reply<u64>),
    /// Several jobs, all or none.
    SubmitMany(Vec<proto::JobSpec>, Reply<Vec<u64>>),
    /// One job.
    Get(u64, Reply<proto::Job>),
    /// Jobs matching a filter.
    List(proto::ListJobsRequest, Reply<Vec<proto::Job>>),
    /// Cancel a live job.
    Cancel(u64, Reply<proto::Job>),
    /// Subscribe to events, with the current state first if asked.
    Watch(bool, Reply<(Vec<proto::Event>, broadcast::Receiver<Arc<proto::Event>>)>),
    /// The GPUs and totals.
    Cluster(Reply<proto::ClusterState>),
    /// Keep a compiled plugin under a name.
    AddPlugin {
        /// Name to keep it under.
        name: String,
        /// The compiled plugin.
        plugin: LoadedPlugin,
        /// Its component bytes, to store.
        bytes: Vec<u8>,
        /// Where to answer.
        reply: Reply<proto::Policy>,
    },
    /// Make a loaded plugin (or the built-in FIFO) the active policy.
    Swap(String, String, Reply<proto::SwapPolicyResponse>),
    /// The loaded plugins with their statistics.
    ListPolicies(Reply<proto::ListPoliciesResponse>),
    /// Forget a loaded plugin.
    Unload(String, Reply<()>),
}

/// A handle to the scheduler loop; cheap to clone.
#[derive(Clone)]
pub struct CoreHandle {
    tx: Sender<Request>,
    /// The engine plugins are compiled with (compiling happens off the loop).
    pub engine: Engine,
}

impl CoreHandle {
    /// Send a request and wait for its answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        rx.await
            .map_err(|_| Status::internal("the scheduler loop stopped before answering"))?
    }
}

/// A compiled plugin kept under a name, with what is shown about it.
pub struct LoadedPlugin {
    plugin: Plugin,
    sha256: String,
    size: usize,
    /// The name the plugin gives itself (from a trial start).
    info: String,
}

impl LoadedPlugin {
    /// Compile `bytes` as plugin `name` and learn the name it gives itself
    /// from a trial start with no config and an empty cluster (empty when
    /// it will not start that way: it may need its config). Slow: call it
    /// off the scheduler loop.
    pub fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<LoadedPlugin, crate::engine::LoadError> {
        let plugin = engine.load_bytes(name, bytes)?;
        let info = match engine.instantiate(&plugin, "", 0.0) {
            Ok(instance) => instance.info().name.clone(),
            Err(e) => {
                tracing::debug!(plugin = name, error = %e, "trial start without config failed");
                String::new()
            }
        };
        Ok(LoadedPlugin {
            plugin,
            sha256: format!("{:x}", Sha256::digest(bytes)),
            size: bytes.len(),
            info,
        })
    }

    /// The name the plugin gives itself; empty if it needs its config to start.
    pub fn self_name(&self) -> &str {
        &self.info
    }
}

/// Statistics of one policy over all the times it was active.
#[derive(Default)]
struct PolicyStats {
    calls: u64,
    call_times: Latencies,
    applied: u64,
    rejected: u64,
    strikes: u64,
    ejections: u64,
}

type WatchReply = (bool, Reply<(Vec<proto::Event>, broadcast::Receiver<Arc<proto::Event>>)>);

/// Replies to send once the turn's changes are committed.
type Deferred = Box<dyn FnOnce(Result<(), &str>) + Send>;

struct Core {
    runtime: Runtime<LocalBackend>,
    writer: Option<Writer>,
    /// Unix time of the model's clock zero.
    epoch: f64,
    /// Boxed for the reason the cluster's jobs are: a table that grows
    /// moves pointers, not specs.
    specs: HashMap<JobId, Box<proto::JobSpec>>,
    recoveries: HashMap<JobId, u32>,
    plugins: BTreeMap<String, LoadedPlugin>,
    active: ActivePolicyRecord,
    stats: HashMap<String, PolicyStats>,
    seen_strikes: u64,
    seen_ejections: u64,
    events: broadcast::Sender<Arc<proto::Event>>,
    metrics: Metrics,
    batch: Batch,
    changed: BTreeSet<JobId>,
    /// Jobs submitted this turn, already announced as pending.
    fresh: BTreeSet<JobId>,
    /// Watch requests, answered at the end of the turn.
    watchers: Vec<WatchReply>,
    deferred: Vec<Deferred>,
    pending_events: Vec<proto::Event>,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    /// Seconds an ended job is kept (`None`: forever).
    finished_ttl: Option<f64>,
    /// Ended jobs by when they ended (model time), oldest first: the
    /// candidates for expiry, so that expiring never scans every job.
    expiry: VecDeque<(f64, JobId)>,
    poll: Duration,
    /// The real devices behind the cluster's GPUs (none when emulated).
    devices_info: Vec<DeviceInfo>,
}

/// Changes waiting for the writer thread: turns that come while it is
/// committing pile up here and go into its next commit together.
#[derive(Default)]
struct Outbox {
    batch: Batch,
    replies: Vec<Deferred>,
    closed: bool,
}

/// The thread that commits to the database and then acknowledges.
///
/// Why a thread of its own: an fsync takes a while, and the scheduler loop
/// should go on deciding meanwhile. The loop hands each turn's changes and
/// replies over; the writer commits everything that has piled up in one
/// transaction, in order, and only then sends the replies, so an
/// acknowledgement still always means "on disk".
struct Writer {
    shared: Arc<(Mutex<Outbox>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(store: Store) -> anyhow::Result<Writer> {
        let shared: Arc<(Mutex<Outbox>, Condvar)> = Arc::default();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wsched-writer".into())
            .spawn(move || write_loop(store, &thread_shared))
            .context("cannot start the database writer thread")?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    fn send(&self, batch: Batch, replies: Vec<Deferred>) {
        if batch.is_empty() && replies.is_empty() {
            return;
        }
        let (lock, ready) = &*self.shared;
        let mut outbox = lock.lock().unwrap_or_else(|p| p.into_inner());
        outbox.batch.merge(batch);
        outbox.replies.extend(replies);
        ready.notify_one();
    }

    /// Commit what is left and stop.
    fn close(mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        ready.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the database writer panicked");
        }
    }
}

fn write_loop(mut store: Store, shared: &(Mutex<Outbox>, Condvar)) {
    let (lock, ready) = shared;
    loop {
        let (batch, replies, closed) = {
            let mut outbox = lock.lock().unwrap_or_else(|p| p.into_inner());
            while outbox.batch.is_empty() && outbox.replies.is_empty() && !outbox.closed {
                outbox = ready.wait(outbox).unwrap_or_else(|p| p.into_inner());
            }
            (
                std::mem::take(&mut outbox.batch),
                std::mem::take(&mut outbox.replies),
                outbox.closed,
            )
        };
        let error = store
            .commit(&batch)
            .err()
            .map(|e| format!("cannot store the change: {e:#}"));
        if let Some(e) = &error {
            tracing::error!(error = %e, "commit failed");
        }
        for reply in replies {
            reply(match &error {
                None => Ok(()),
                Some(e) => Err(e.as_str()),
            });
        }
        if closed {
            let outbox = lock.lock().unwrap_or_else(|p| p.into_inner());
            if outbox.batch.is_empty() && outbox.replies.is_empty() {
                return;
            }
        }
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Open the database, recover every stored job, plugin and the active
/// policy, and start the scheduler loop on its own thread. Returns once
/// recovery is done (an error means the service must not start).
pub fn start(
    config: &ServeConfig,
    engine: Engine,
    metrics: Metrics,
) -> anyhow::Result<(CoreHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let config = config.clone();
    let thread_engine = engine.clone();
    // The loop's thread builds the runtime itself: plugin instances and
    // processes belong to the thread that drives them (job processes are
    // tied to it so that they die with the host).
    let thread = std::thread::Builder::new()
        .name("wsched-scheduler".into())
        .spawn(move || match Core::recover(&config, thread_engine, metrics) {
            Ok(core) => {
                let _ = ready_tx.send(Ok(()));
                core.run(rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("cannot start the scheduler thread")?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the scheduler thread died during recovery"))??;
    Ok((CoreHandle { tx, engine }, thread))
}

fn state_to_proto(state: JobState) -> proto::JobState {
    match state {
        JobState::Pending => proto::JobState::Pending,
        JobState::Running => proto::JobState::Running,
        JobState::Suspended => proto::JobState::Suspended,
        JobState::Finished => proto::JobState::Finished,
        JobState::Failed => proto::JobState::Failed,
    }
}

fn state_from_proto(state: i32) -> Option<JobState> {
    match proto::JobState::try_from(state).ok()? {
        proto::JobState::Pending => Some(JobState::Pending),
        proto::JobState::Running => Some(JobState::Running),
        proto::JobState::Suspended => Some(JobState::Suspended),
        proto::JobState::Finished => Some(JobState::Finished),
        proto::JobState::Failed => Some(JobState::Failed),
        proto::JobState::Unspecified => None,
    }
}

/// The model's view of a submitted spec (validated by the gRPC layer).
fn model_spec(spec: &proto::JobSpec) -> JobSpec {
    let work = match &spec.work {
        Some(proto::job_spec::Work::Synthetic(s)) => Some(s.seconds),
        _ => None,
    };
    JobSpec {
        tenant: spec.user.clone(),
        gpus: spec.gpus,
        work,
        expected_duration: spec.expected_duration_seconds.or(work),
        memory_per_gpu: spec.memory_per_gpu_bytes,
        iterations_total: spec.iterations,
        share_requested: spec.gpu_fraction,
        priority: spec.priority,
    }
}

/// What a synthetic job runs on real devices; `done` iterations were done
/// before a restart (synthetic jobs keep no checkpoint: their state starts
/// over, their count goes on).
fn synthetic_workload(spec: &proto::JobSpec, done: u64) -> Option<Workload> {
    let Some(proto::job_spec::Work::Synthetic(s)) = &spec.work else {
        return None;
    };
    Some(Workload {
        iterations: spec.iterations,
        seconds: s.seconds,
        flops_per_iteration: s.gflops_per_iteration.map_or(DEFAULT_FLOPS_PER_ITERATION, |g| g * 1e9),
        share: spec.gpu_fraction.unwrap_or(1.0),
        memory_bytes: spec.memory_per_gpu_bytes,
        fault_at_iteration: s.fault_at_iteration,
        done_before: done,
    })
}

fn process_spec(spec: &proto::JobSpec) -> Option<ProcessSpec> {
    match &spec.work {
        Some(proto::job_spec::Work::Command(c)) => Some(ProcessSpec {
            command: c.argv.clone(),
            env: c.env.clone().into_iter().collect(),
            workdir: (!c.workdir.is_empty()).then(|| c.workdir.clone().into()),
        }),
        _ => None,
    }
}

/// Queue `job` for expiry if it ended and ended jobs expire (`ttl`).
fn queue_for_expiry(expiry: &mut VecDeque<(f64, JobId)>, ttl: Option<f64>, job: &Job) {
    if ttl.is_some()
        && job.is_done()
        && let Some(ended) = job.end_time
    {
        expiry.push_back((ended, job.id));
    }
}

fn job_event(job: proto::Job) -> proto::Event {
    proto::Event {
        time: unix_now(),
        kind: Some(proto::event::Kind::Job(job)),
    }
}

fn policy_event(time: f64, from: &str, to: &str, reason: &str, state_handed_over: bool) -> proto::Event {
    proto::Event {
        time,
        kind: Some(proto::event::Kind::Policy(proto::PolicyChange {
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
            state_handed_over,
        })),
    }
}

impl Core {
    fn recover(config: &ServeConfig, engine: Engine, metrics: Metrics) -> anyhow::Result<Core> {
        let mut store = Store::open(&crate::store::database_path(&config.state_dir))?;
        let recovered = store.recover()?;
        let epoch = match recovered.epoch {
            Some(epoch) => epoch,
            None => {
                let epoch = unix_now();
                store.set_epoch(epoch)?;
                epoch
            }
        };
        let mut cluster = if config.devices.is_empty() {
            Cluster::homogeneous(config.emulate_gpus, config.gpus_per_node, "emulated", config.gpu_memory)
        } else {
            Cluster::new(
                config
                    .devices
                    .iter()
                    .map(|d| GpuSpec {
                        node: 0,
                        kind: d.info().name.clone(),
                        memory_total: d.info().memory_total,
                    })
                    .collect(),
            )
        };
        cluster.advance(unix_now() - epoch);
        let host = PolicyHost::new(engine.clone(), cluster);
        let jobs_dir = config.state_dir.join("jobs");
        let backend = if config.devices.is_empty() {
            LocalBackend::new(jobs_dir)
        } else {
            let devices = SyntheticBackend::new(config.devices.clone()).with_suspend_memory(config.suspend_memory);
            LocalBackend::with_devices(jobs_dir, devices)
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut core = Core {
            runtime: Runtime::new(host, backend),
            writer: None,
            epoch,
            specs: HashMap::new(),
            recoveries: HashMap::new(),
            plugins: BTreeMap::new(),
            active: ActivePolicyRecord {
                name: BUILTIN_FIFO.into(),
                config: String::new(),
            },
            stats: HashMap::new(),
            seen_strikes: 0,
            seen_ejections: 0,
            events,
            metrics,
            batch: Batch::default(),
            changed: BTreeSet::new(),
            fresh: BTreeSet::new(),
            watchers: Vec::new(),
            deferred: Vec::new(),
            pending_events: Vec::new(),
            last_checkpoint: Instant::now(),
            checkpoint_every: config.checkpoint_every,
            finished_ttl: config.finished_ttl.map(|d| d.as_secs_f64()),
            expiry: VecDeque::new(),
            poll: config.poll,
            devices_info: config.devices.iter().map(|d| d.info().clone()).collect(),
        };

        core.metrics.policy_active(BUILTIN_FIFO);
        for (name, bytes) in recovered.plugins {
            match LoadedPlugin::compile(&engine, &name, &bytes) {
                Ok(plugin) => {
                    core.plugins.insert(name, plugin);
                }
                Err(e) => tracing::error!(plugin = %name, error = %e, "a stored plugin no longer loads; dropped"),
            }
        }
        let mut active = recovered.active;
        if let Some((path, config)) = &config.initial_policy {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("policy")
                .to_string();
            let bytes = std::fs::read(path).with_context(|| format!("--policy: cannot read {}", path.display()))?;
            let plugin = LoadedPlugin::compile(&engine, &name, &bytes)
                .map_err(|e| anyhow::anyhow!("--policy {}: {e}", path.display()))?;
            core.plugins.insert(name.clone(), plugin);
            core.batch.plugins.push((name.clone(), bytes));
            active = Some(ActivePolicyRecord {
                name,
                config: config.clone(),
            });
        }
        if let Some(active) = active
            && active.name != BUILTIN_FIFO
        {
            match core.activate(&active.name, &active.config) {
                Ok(_) => {
                    tracing::info!(policy = %active.name, "active policy set");
                    core.batch.active = Some(core.active.clone());
                }
                Err(e) if config.initial_policy.is_some() => {
                    anyhow::bail!("--policy: {}", e.message())
                }
                Err(e) => {
                    tracing::error!(policy = %active.name, error = %e.message(), "cannot restore the active policy; the built-in FIFO decides")
                }
            }
        }

        let mut requeued = 0usize;
        for job in recovered.jobs {
            let id = job.id;
            let Some(spec) = job.spec.clone() else {
                tracing::error!(job = id, "stored job has no spec; kept out of the model");
                continue;
            };
            let state = state_from_proto(job.state).unwrap_or(JobState::Pending);
            let live = !matches!(state, JobState::Finished | JobState::Failed);
            let recoveries = job.recoveries + u32::from(live);
            let model = model_spec(&spec);
            let progress = job.progress.unwrap_or(0.0) * model.work.unwrap_or(0.0);
            let restored = Job {
                id,
                submit_time: job.submit_time - epoch,
                state,
                placement: Vec::new(),
                fraction: 1.0,
                progress,
                attained_gpu_seconds: job.attained_gpu_seconds,
                attained_seconds: job.attained_gpu_seconds / f64::from(spec.gpus.max(1)),
                since: 0.0,
                first_start: job.start_time.map(|t| t - epoch),
                end_time: job.end_time.map(|t| t - epoch),
                priority: if job.priority > 0.0 { job.priority } else { 1.0 },
                preemptions: job.preemptions,
                migrations: job.migrations,
                iterations_done: job.iterations_done,
                iteration_time: job.iteration_time_seconds,
                failure: (!job.failure.is_empty()).then(|| job.failure.clone()),
                spec: model,
            };
            let mut live = live;
            if let Err(why) = core.runtime.host_mut().restore(restored.clone()) {
                // A live job that can no longer run here (the server came
                // back with fewer GPUs): it ends, saying why, rather than
                // vanishing or waiting forever.
                tracing::error!(job = id, %why, "a recovered job cannot run on this cluster; it is marked failed");
                let mut failed = restored;
                failed.state = JobState::Failed;
                failed.end_time = Some(unix_now() - epoch);
                failed.failure = Some(format!("after a restart: {why}"));
                if let Err(why) = core.runtime.host_mut().restore(failed) {
                    tracing::error!(job = id, %why, "cannot restore a stored job; it is kept in the database only");
                    continue;
                }
                live = false;
                core.changed.insert(id);
            }
            if live {
                if let Some(process) = process_spec(&spec) {
                    core.runtime.backend_mut().register_command(id, process, recoveries);
                }
                if let Some(workload) = synthetic_workload(&spec, job.iterations_done.unwrap_or(0)) {
                    core.runtime.backend_mut().register_synthetic(id, workload);
                }
                requeued += 1;
                core.changed.insert(id);
            }
            if let Some(job) = core.runtime.host().cluster().job(id) {
                queue_for_expiry(&mut core.expiry, core.finished_ttl, job);
            }
            core.specs.insert(id, Box::new(spec));
            core.recoveries.insert(id, recoveries);
        }
        // Stored in id order; expiry goes by end time.
        core.expiry
            .make_contiguous()
            .sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some(floor) = recovered.next_id {
            core.runtime.host_mut().reserve_ids_below(floor);
        }
        if !core.specs.is_empty() {
            tracing::info!(jobs = core.specs.len(), requeued, "jobs recovered from the database");
        }
        core.flush_jobs(false);
        store.commit(&std::mem::take(&mut core.batch))?;
        core.pending_events.clear(); // nobody is watching yet
        core.writer = Some(Writer::start(store)?);
        Ok(core)
    }

    /// The model's clock for the wall clock now.
    fn model_now(&self) -> f64 {
        unix_now() - self.epoch
    }

    fn job_message(&self, job: &Job) -> proto::Job {
        let counted = job.iterations_done.zip(job.spec.iterations_total.filter(|&t| t > 0));
        let progress = match job.spec.work {
            // What the backend counted is the truth, where it counts.
            _ if job.state == JobState::Finished => Some(1.0),
            _ if counted.is_some() => counted.map(|(done, total)| (done as f64 / total as f64).clamp(0.0, 1.0)),
            Some(w) if w > 0.0 => Some((job.progress / w).clamp(0.0, 1.0)),
            Some(_) => Some(if job.state == JobState::Finished { 1.0 } else { 0.0 }),
            None => None,
        };
        proto::Job {
            id: job.id,
            spec: self.specs.get(&job.id).map(|spec| (**spec).clone()),
            state: state_to_proto(job.state) as i32,
            submit_time: self.epoch + job.submit_time,
            start_time: job.first_start.map(|t| self.epoch + t),
            end_time: job.end_time.map(|t| self.epoch + t),
            placement: job.placement.clone(),
            fraction: job.fraction,
            progress,
            attained_gpu_seconds: job.attained_gpu_seconds,
            preemptions: job.preemptions,
            migrations: job.migrations,
            iterations_done: job.iterations_done,
            iteration_time_seconds: job.iteration_time,
            failure: job.failure.clone().unwrap_or_default(),
            recoveries: self.recoveries.get(&job.id).copied().unwrap_or(0),
            priority: job.priority,
        }
    }

    fn run(mut self, rx: Receiver<Request>) {
        let mut requests = Vec::new();
        loop {
            let wait = self.time_to_next_turn();
            match rx.recv_timeout(wait) {
                Ok(req) => requests.push(req),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while requests.len() < MAX_REQUESTS_PER_TURN {
                match rx.try_recv() {
                    Ok(req) => requests.push(req),
                    Err(_) => break,
                }
            }
            self.turn(std::mem::take(&mut requests));
        }
        // Last words: store running jobs' progress.
        self.flush_jobs(true);
        if let Some(writer) = self.writer.take() {
            writer.send(std::mem::take(&mut self.batch), std::mem::take(&mut self.deferred));
            writer.close();
        }
        tracing::info!("scheduler loop stopped");
    }

    fn time_to_next_turn(&self) -> Duration {
        let mut wait = self.poll;
        if self.runtime.backend().needs_polling() {
            wait = wait.min(PROCESS_POLL);
        }
        if let Some(due) = self.runtime.next_due() {
            let until = (due - self.model_now()).max(0.0);
            wait = wait.min(Duration::from_secs_f64(until));
        }
        wait
    }

    fn turn(&mut self, requests: Vec<Request>) {
        let now = self.model_now();
        self.runtime.host_mut().advance(now);
        for req in requests {
            self.handle(req);
        }
        let step = self.runtime.step(now);
        self.account(&step);
        self.expire(now);

        let checkpoint = self.last_checkpoint.elapsed() >= self.checkpoint_every;
        if checkpoint {
            self.last_checkpoint = Instant::now();
        }
        self.flush_jobs(checkpoint);
        if let Some(writer) = &self.writer {
            writer.send(std::mem::take(&mut self.batch), std::mem::take(&mut self.deferred));
        }
        // Events go out now, a moment before the commit that makes them
        // durable; only acknowledgements wait for it.
        for event in self.pending_events.drain(..) {
            // No watcher is not an error.
            let _ = self.events.send(Arc::new(event));
        }
        // Watchers join here, at the end of the turn, so that the state
        // they are shown and the events they get next fit together.
        for (include_current, reply) in std::mem::take(&mut self.watchers) {
            let rx = self.events.subscribe();
            let current = if include_current {
                self.current_events()
            } else {
                Vec::new()
            };
            let _ = reply.send(Ok((current, rx)));
        }
        self.update_gauges();
    }

    /// Forget the jobs that ended more than the retention time ago: from
    /// the model, the backend (logs included) and, through a tombstone in
    /// this turn's commit, the database. Only ended jobs are ever forgotten.
    fn expire(&mut self, now: f64) {
        let Some(ttl) = self.finished_ttl else { return };
        while let Some(&(ended, id)) = self.expiry.front() {
            if ended + ttl > now {
                break;
            }
            self.expiry.pop_front();
            if !self.runtime.host_mut().forget(id) {
                continue; // queued twice, or gone already
            }
            let next_id = self.runtime.host().cluster().next_id();
            if id + 1 == next_id {
                // The newest job ever given out: with its record gone, a
                // restart would give its id out again, unless told.
                self.batch.next_id = Some(next_id);
            }
            self.specs.remove(&id);
            self.recoveries.remove(&id);
            self.changed.remove(&id);
            self.runtime.backend_mut().forget(id);
            self.batch.expired.push(id);
            self.metrics.jobs_expired.inc();
            if self.watched() {
                self.pending_events.push(proto::Event {
                    time: unix_now(),
                    kind: Some(proto::event::Kind::JobDeleted(id)),
                });
            }
        }
    }

    /// Whether anyone is watching events. Job events cost a copy of the job
    /// each, so nobody watching means none are built; watchers join only at
    /// the end of a turn, so none can miss an event skipped earlier in it.
    fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Put every changed job (and, at checkpoints, every running one) into
    /// the batch, and publish the changed ones.
    fn flush_jobs(&mut self, checkpoint: bool) {
        let changed = std::mem::take(&mut self.changed);
        let fresh = std::mem::take(&mut self.fresh);
        let watched = self.watched();
        let cluster = self.runtime.host().cluster();
        for &id in &changed {
            let Some(job) = cluster.job(id) else { continue };
            queue_for_expiry(&mut self.expiry, self.finished_ttl, job);
            let message = self.job_message(job);
            // A job submitted this turn and still pending was announced at submission.
            if watched && !(fresh.contains(&id) && job.state == JobState::Pending) {
                self.pending_events.push(job_event(message.clone()));
            }
            self.batch.jobs.push(message);
        }
        if checkpoint {
            for &id in cluster.running_ids().difference(&changed) {
                if let Some(job) = cluster.job(id) {
                    self.batch.jobs.push(self.job_message(job));
                }
            }
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Submit(spec, reply) => self.submit(spec, reply),
            Request::SubmitMany(specs, reply) => self.submit_many(specs, reply),
            Request::Get(id, reply) => {
                let job = self.runtime.host().cluster().job(id);
                let _ = reply.send(
                    job.map(|j| self.job_message(j))
                        .ok_or_else(|| Status::not_found(format!("id: no job {id}"))),
                );
            }
            Request::List(filter, reply) => {
                let _ = reply.send(Ok(self.list(&filter)));
            }
            Request::Cancel(id, reply) => self.cancel(id, reply),
            Request::Watch(include_current, reply) => self.watchers.push((include_current, reply)),
            Request::Cluster(reply) => {
                let _ = reply.send(Ok(self.cluster_state()));
            }
            Request::AddPlugin {
                name,
                plugin,
                bytes,
                reply,
            } => self.add_plugin(name, plugin, bytes, reply),
            Request::Swap(name, config, reply) => {
                let result = self.activate(&name, &config);
                match result {
                    Ok(response) => {
                        self.batch.active = Some(self.active.clone());
                        self.defer(reply, response);
                    }
                    Err(status) => {
                        let _ = reply.send(Err(status));
                    }
                }
            }
            Request::ListPolicies(reply) => {
                let _ = reply.send(Ok(self.list_policies()));
            }
            Request::Unload(name, reply) => {
                if name == self.active.name {
                    let _ = reply.send(Err(Status::failed_precondition(format!(
                        "name: policy {name} is active; swap to another before unloading it"
                    ))));
                } else if self.plugins.remove(&name).is_none() {
                    let _ = reply.send(Err(Status::not_found(format!("name: no plugin loaded as {name}"))));
                } else {
                    self.batch.unload.push(name);
                    self.defer(reply, ());
                }
            }
        }
    }

    /// Every live job's state, as events.
    fn current_events(&self) -> Vec<proto::Event> {
        let cluster = self.runtime.host().cluster();
        cluster
            .live_ids()
            .into_iter()
            .filter_map(|id| cluster.job(id))
            .map(|job| job_event(self.job_message(job)))
            .collect()
    }

    /// Answer once the turn's changes are committed.
    fn defer<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.deferred.push(Box::new(move |committed| {
            let _ = reply.send(committed.map(|()| value).map_err(Status::unavailable));
        }));
    }

    fn submit(&mut self, spec: proto::JobSpec, reply: Reply<u64>) {
        let model = model_spec(&spec);
        match self.accept(spec, model) {
            Ok(id) => self.defer(reply, id),
            Err(why) => {
                let _ = reply.send(Err(Status::invalid_argument(format!("spec: {why}"))));
            }
        }
    }

    /// Accept every job or none: all are checked against the cluster
    /// before the first is submitted, and one reply follows their commit.
    fn submit_many(&mut self, specs: Vec<proto::JobSpec>, reply: Reply<Vec<u64>>) {
        let models: Vec<JobSpec> = specs.iter().map(model_spec).collect();
        let cluster = self.runtime.host().cluster();
        for (i, model) in models.iter().enumerate() {
            if let Err(why) = cluster.check_submission(model) {
                let _ = reply.send(Err(Status::invalid_argument(format!("specs[{i}]: {why}"))));
                return;
            }
        }
        let mut ids = Vec::with_capacity(specs.len());
        for (i, (spec, model)) in specs.into_iter().zip(models).enumerate() {
            match self.accept(spec, model) {
                Ok(id) => ids.push(id),
                Err(why) => {
                    // Checked above, so this cannot happen; if it does, the
                    // jobs already accepted stay (they are in the model) and
                    // the client is told which one failed.
                    let _ = reply.send(Err(Status::internal(format!(
                        "specs[{i}]: {why} (jobs {ids:?} were accepted)"
                    ))));
                    return;
                }
            }
        }
        self.defer(reply, ids);
    }

    /// Put one job (`model` is `spec` as the cluster sees it) into the
    /// model and the backend, and announce it.
    fn accept(&mut self, spec: proto::JobSpec, model: JobSpec) -> Result<JobId, String> {
        let id = self.runtime.submit(model)?;
        if let Some(process) = process_spec(&spec) {
            self.runtime.backend_mut().register_command(id, process, 0);
        }
        if let Some(workload) = synthetic_workload(&spec, 0) {
            self.runtime.backend_mut().register_synthetic(id, workload);
        }
        self.specs.insert(id, Box::new(spec));
        self.changed.insert(id);
        self.fresh.insert(id);
        // Announce it as accepted now: the decision later in this turn may
        // start it, and watchers should see both.
        if self.watched()
            && let Some(job) = self.runtime.host().cluster().job(id)
        {
            self.pending_events.push(job_event(self.job_message(job)));
        }
        self.metrics.jobs_submitted.inc();
        Ok(id)
    }

    fn cancel(&mut self, id: JobId, reply: Reply<proto::Job>) {
        let Some(job) = self.runtime.host().cluster().job(id) else {
            let _ = reply.send(Err(Status::not_found(format!("id: no job {id}"))));
            return;
        };
        if job.is_done() {
            let _ = reply.send(Err(Status::failed_precondition(format!(
                "id: job {id} already {}",
                job.state.name()
            ))));
            return;
        }
        self.runtime.cancel(id);
        self.changed.insert(id);
        self.metrics.observe_end(self.runtime.host().cluster().job(id));
        match self.runtime.host().cluster().job(id).map(|j| self.job_message(j)) {
            Some(message) => self.defer(reply, message),
            None => {
                let _ = reply.send(Err(Status::internal("cancelled job vanished")));
            }
        }
    }

    fn list(&self, filter: &proto::ListJobsRequest) -> Vec<proto::Job> {
        let states: BTreeSet<i32> = filter.states.iter().copied().collect();
        let mut jobs: Vec<&Job> = self
            .runtime
            .host()
            .cluster()
            .jobs()
            .filter(|j| states.is_empty() || states.contains(&(state_to_proto(j.state) as i32)))
            .filter(|j| filter.user.is_empty() || j.spec.tenant == filter.user)
            .collect();
        jobs.sort_unstable_by_key(|j| j.id);
        if filter.limit > 0 && jobs.len() > filter.limit as usize {
            jobs.drain(..jobs.len() - filter.limit as usize);
        }
        jobs.into_iter().map(|j| self.job_message(j)).collect()
    }

    fn cluster_state(&self) -> proto::ClusterState {
        let cluster = self.runtime.host().cluster();
        let gpus: Vec<proto::Gpu> = cluster
            .gpus()
            .iter()
            .map(|g| proto::Gpu {
                id: g.id,
                node: g.spec.node,
                kind: g.spec.kind.clone(),
                memory_total_bytes: g.spec.memory_total,
                memory_used_bytes: g.memory_used,
                online: g.online,
                residents: g
                    .residents
                    .iter()
                    .map(|r| proto::Resident {
                        job: r.job,
                        fraction: r.fraction,
                    })
                    .collect(),
                allocated: g.allocated(),
                uuid: self
                    .devices_info
                    .get(g.id as usize)
                    .map(|d| d.uuid.clone())
                    .unwrap_or_default(),
                compute_capability: self
                    .devices_info
                    .get(g.id as usize)
                    .map(|d| format!("{}.{}", d.compute_capability.0, d.compute_capability.1))
                    .unwrap_or_default(),
                measured_utilisation: g.measured.map(|m| m.utilisation),
                measured_memory_used_bytes: g.measured.map(|m| m.memory_used),
            })
            .collect();
        let nodes = gpus.iter().map(|g| g.node).collect::<BTreeSet<_>>().len() as u32;
        proto::ClusterState {
            backend: self.runtime.backend().name().to_string(),
            nodes,
            pending_jobs: cluster.count_in(JobState::Pending) as u64,
            running_jobs: cluster.running_ids().len() as u64,
            suspended_jobs: cluster.count_in(JobState::Suspended) as u64,
            utilisation: cluster.allocated_share() / f64::from(cluster.gpu_count().max(1)),
            policy: self.active.name.clone(),
            time: unix_now(),
            gpus,
        }
    }

    fn add_plugin(&mut self, name: String, plugin: LoadedPlugin, bytes: Vec<u8>, reply: Reply<proto::Policy>) {
        if name == BUILTIN_FIFO {
            let _ = reply.send(Err(Status::invalid_argument(format!(
                "name: {BUILTIN_FIFO} is reserved"
            ))));
            return;
        }
        if name == self.active.name {
            let _ = reply.send(Err(Status::failed_precondition(format!(
                "name: policy {name} is active; load the new version under another name and swap to it"
            ))));
            return;
        }
        self.plugins.insert(name.clone(), plugin);
        self.batch.plugins.push((name.clone(), bytes));
        let message = self.policy_message(&name);
        self.defer(reply, message);
    }

    /// Make `name` the active policy with `config`. On failure the old one
    /// stays active.
    fn activate(&mut self, name: &str, config: &str) -> Result<proto::SwapPolicyResponse, Status> {
        let report = if name == BUILTIN_FIFO {
            self.runtime.host_mut().swap_native(Box::new(Fifo))
        } else {
            let loaded = self
                .plugins
                .get(name)
                .ok_or_else(|| Status::not_found(format!("name: no plugin loaded as {name}")))?;
            let instance = self.runtime.host().prepare(&loaded.plugin, config).map_err(|e| {
                Status::failed_precondition(format!("{name} did not start ({e}); the active policy stays"))
            })?;
            self.runtime
                .host_mut()
                .swap(instance)
                .map_err(Status::failed_precondition)?
        };
        let from = std::mem::replace(
            &mut self.active,
            ActivePolicyRecord {
                name: name.to_string(),
                config: config.to_string(),
            },
        );
        self.metrics.policy_swaps.inc();
        self.metrics.policy_active(name);
        self.pending_events.push(policy_event(
            unix_now(),
            &from.name,
            name,
            "swap",
            report.state_handed_over,
        ));
        Ok(proto::SwapPolicyResponse {
            from: from.name,
            to: name.to_string(),
            state_handed_over: report.state_handed_over,
        })
    }

    fn policy_message(&self, name: &str) -> proto::Policy {
        let stats = self.stats.get(name);
        let stats = stats.map(|s| proto::PolicyStats {
            calls: s.calls,
            p50_seconds: s.call_times.quantile(0.5) / 1e9,
            p99_seconds: s.call_times.quantile(0.99) / 1e9,
            actions_applied: s.applied,
            actions_rejected: s.rejected,
            strikes: s.strikes,
            ejections: s.ejections,
        });
        let active = name == self.active.name;
        let config = if active {
            self.active.config.clone()
        } else {
            String::new()
        };
        match self.plugins.get(name) {
            Some(p) => proto::Policy {
                name: name.to_string(),
                plugin_name: p.info.clone(),
                size_bytes: p.size as u64,
                sha256: p.sha256.clone(),
                active,
                config,
                stats,
            },
            None => proto::Policy {
                name: name.to_string(),
                plugin_name: BUILTIN_FIFO.to_string(),
                active,
                config,
                stats,
                ..Default::default()
            },
        }
    }

    fn list_policies(&self) -> proto::ListPoliciesResponse {
        let mut names: Vec<&str> = vec![BUILTIN_FIFO];
        names.extend(self.plugins.keys().map(String::as_str));
        let host = self.runtime.host().stats();
        proto::ListPoliciesResponse {
            active: self.active.name.clone(),
            policies: names.into_iter().map(|n| self.policy_message(n)).collect(),
            swaps: host.swaps,
            ejections: host.ejections,
            strikes: host.strikes,
        }
    }

    /// Book what a step did: changed jobs, statistics, metrics, ejections.
    fn account(&mut self, step: &crate::runtime::Step) {
        let name = self.active.name.clone();
        let cluster = self.runtime.host().cluster();
        let pending = cluster.count_in(JobState::Pending) + cluster.count_in(JobState::Suspended) > 0;
        let stats = self.stats.entry(name.clone()).or_default();
        for outcome in &step.outcomes {
            for &nanos in &outcome.call_nanos {
                stats.calls += 1;
                stats.call_times.record(nanos);
                self.metrics.observe_call(&name, outcome.decision_point, nanos);
            }
            stats.applied += outcome.applied.len() as u64;
            stats.rejected += outcome.rejected.len() as u64;
            self.metrics
                .schedule_attempts(outcome.applied.len(), outcome.rejected.len(), pending);
            for (action, _) in &outcome.applied {
                self.changed.insert(action.job());
                match action {
                    Action::Preempt(_) => {
                        self.metrics.preemptions.inc();
                    }
                    Action::Migrate(_) => {
                        self.metrics.migrations.inc();
                    }
                    Action::Start(_) => {
                        if let Some(job) = self.runtime.host().cluster().job(action.job()) {
                            self.metrics.observe_start(job);
                        }
                    }
                    _ => {}
                }
            }
        }
        let ended = step.ended.iter().map(|(id, _)| *id);
        for id in ended.chain(step.backend_errors.iter().map(|(id, _)| *id)) {
            self.changed.insert(id);
            self.metrics.observe_end(self.runtime.host().cluster().job(id));
        }

        let host = self.runtime.host().stats();
        let (strikes, ejections) = (host.strikes, host.ejections);
        if strikes > self.seen_strikes {
            let new = strikes - self.seen_strikes;
            stats.strikes += new;
            self.metrics.strikes(&name, new);
            self.seen_strikes = strikes;
        }
        if ejections > self.seen_ejections {
            self.seen_ejections = ejections;
            stats.ejections += 1;
            self.metrics.ejections.inc();
            let to = match self.runtime.host().active() {
                ActivePolicy::Native(p) => p.name().to_string(),
                ActivePolicy::Plugin(p) => p.info().name.clone(),
            };
            self.pending_events
                .push(policy_event(unix_now(), &name, &to, "ejected", false));
            self.active = ActivePolicyRecord {
                name: BUILTIN_FIFO.into(),
                config: String::new(),
            };
            self.batch.active = Some(self.active.clone());
        }
    }

    fn update_gauges(&self) {
        let cluster = self.runtime.host().cluster();
        self.metrics.set_gauges(
            cluster.count_in(JobState::Pending),
            cluster.running_ids().len(),
            cluster.count_in(JobState::Suspended),
            cluster.allocated_share() / f64::from(cluster.gpu_count().max(1)),
        );
    }
}
