//! The scheduler loop: the one thread that owns the decision loop and the
//! database.
//!
//! Each turn: wait for a request or for the next thing due (a predicted job
//! end, a tick, a process to poll); book what ended ([`DecisionLoop::begin`]);
//! take every request that has arrived and apply it to the model; let the
//! policy decide ([`DecisionLoop::decide`]);
//! write every job that changed, in one transaction; then reply and
//! publish events. Replies to requests that change anything wait for the
//! commit, so an acknowledgement always means "on disk".
//!
//! Keeping all of this on one thread is deliberate: the policy sees one
//! ordered history (the simulator runs the very same `DecisionLoop` phases on a
//! virtual clock, so it is the history the simulator gives it), no lock is
//! held across a plugin call, and a slow request cannot interleave with a
//! half-applied decision.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot};
use tonic::Status;

use super::ServeConfig;
use super::metrics::Metrics;
use super::spec::{self, ServerChecks};
use crate::backend::Backend;
use crate::backend::device::DeviceInfo;
use crate::backend::local::LocalBackend;
use crate::backend::process::{Launch, ProcessSpec};
use crate::backend::synthetic::{DEFAULT_FLOPS_PER_ITERATION, SyntheticBackend, Workload};
use crate::cluster::{Cluster, GpuSpec, Job, JobSpec};
use crate::decision::DecisionLoop;
use crate::engine::{Engine, Plugin};
use crate::latency::Latencies;
use crate::native::Fifo;
use crate::proto;
use crate::scheduler::{PolicyHost, PolicyNotice, StallRule};
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
    /// A page of the jobs matching a filter.
    List(ListQuery, Reply<ListPage>),
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
    /// Store the final state and stop, whoever still holds a handle (a
    /// connection the shutdown could not close in time).
    Stop,
}

/// Which jobs `ListJobs` asks for, and where its page starts.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only jobs in these states (all when empty).
    pub states: Vec<proto::JobState>,
    /// Only this user's jobs (all when empty).
    pub user: String,
    /// Where the page starts.
    pub from: ListFrom,
    /// Most jobs in the page.
    pub size: usize,
}

/// Where a page of jobs starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFrom {
    /// At the oldest job.
    Oldest,
    /// At this id (the previous page's continuation).
    After(JobId),
    /// The newest matching jobs, oldest of them first, in one page.
    Newest,
}

/// A page of jobs, and the id the next one starts at (`None`: no more).
#[derive(Debug, Default)]
pub struct ListPage {
    /// The jobs, oldest first.
    pub jobs: Vec<proto::Job>,
    /// Where the next page starts.
    pub next: Option<JobId>,
}

/// Jobs one `ListJobs` call may look at: it then ends its page early (with
/// a token to go on), so that a filter matching few of many jobs never
/// holds the loop for long.
const LIST_SCAN_BUDGET: usize = 20_000;

/// Bytes of jobs in one page at most, well under gRPC's usual 4 MiB limit
/// on a client's received message.
const LIST_PAGE_BYTES: usize = 3 << 20;

/// Time a turn spends on queued reads (listings) after its decision; the
/// rest wait for the next turn, which comes at once. Listings never hold
/// up a decision for longer.
const READ_BUDGET: Duration = Duration::from_millis(4);

/// Most notes kept in a job's record.
const MAX_NOTES: usize = 16;

/// A handle to the scheduler loop; cheap to clone.
#[derive(Clone)]
pub struct CoreHandle {
    tx: Sender<Request>,
    /// The engine plugins are compiled with (compiling happens off the loop).
    pub engine: Engine,
}

impl CoreHandle {
    /// Ask the loop to store its final state and stop after this turn.
    pub fn stop(&self) {
        let _ = self.tx.send(Request::Stop);
    }

    /// Send a request and wait for its answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler stopped before answering; the server is going down"))?
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

/// What the service keeps about a job beside the model's record: the spec
/// as it was submitted, and what only the service tracks.
#[derive(Debug, Clone, Default)]
struct Record {
    spec: proto::JobSpec,
    /// Times the server restarted while the job was live.
    recoveries: u32,
    /// Notes for the job's history, newest last, at most [`MAX_NOTES`].
    notes: Vec<proto::JobNote>,
    /// The process group of the job's command while it has a process.
    process_group: Option<i32>,
}

impl Record {
    fn new(spec: proto::JobSpec) -> Record {
        Record {
            spec,
            ..Record::default()
        }
    }

    fn note(&mut self, text: String) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.remove(0);
        }
        self.notes.push(proto::JobNote { time: unix_now(), text });
    }
}

struct Core {
    decisions: DecisionLoop<LocalBackend>,
    writer: Option<Writer>,
    /// Unix time of the model's clock zero.
    clock_origin: f64,
    /// The service's record of every job it knows, in id order (what
    /// listings page through). Boxed for the reason the cluster's jobs
    /// are: a table that grows moves pointers, not specs.
    records: BTreeMap<JobId, Box<Record>>,
    /// Listings waiting for the time a turn gives reads.
    reads: VecDeque<(ListQuery, Reply<ListPage>)>,
    plugins: BTreeMap<String, LoadedPlugin>,
    active: ActivePolicyRecord,
    stats: HashMap<String, PolicyStats>,
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
    /// Panic when a job of this name is submitted (tests of a dying loop
    /// set [`PANIC_ON_JOB_NAME`]; nothing else can make the loop panic).
    panic_on_name: Option<String>,
    /// A [`Request::Stop`] came: this is the last turn.
    stop_requested: bool,
}

/// Environment variable naming a job whose submission makes the
/// scheduler loop panic: how the tests show that a dead loop takes the
/// server down instead of leaving it looking healthy.
pub const PANIC_ON_JOB_NAME: &str = "WSCHED_TEST_PANIC_ON_JOB_NAME";

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
    /// Cleared if the writer thread panics: the loop must not go on
    /// taking work that can never be stored.
    alive: Arc<AtomicBool>,
}

impl Writer {
    fn start(store: Store, checkpoints_stored: prometheus_client::metrics::counter::Counter) -> anyhow::Result<Writer> {
        let shared: Arc<(Mutex<Outbox>, Condvar)> = Arc::default();
        let thread_shared = shared.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let thread = std::thread::Builder::new()
            .name("wsched-writer".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    write_loop(store, &thread_shared, &checkpoints_stored)
                }));
                if let Err(panic) = result {
                    tracing::error!(panic = %panic_message(&*panic), "the database writer died");
                    thread_alive.store(false, Ordering::SeqCst);
                }
            })
            .context("cannot start the database writer thread")?;
        Ok(Writer {
            shared,
            thread: Some(thread),
            alive,
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
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
        self.stop();
    }

    fn stop(&mut self) {
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

impl Drop for Writer {
    /// Also when the loop unwinds from a panic: what it handed over is
    /// committed, and its replies sent, before the process goes down.
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(
    mut store: Store,
    shared: &(Mutex<Outbox>, Condvar),
    checkpoints_stored: &prometheus_client::metrics::counter::Counter,
) {
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
        match &error {
            Some(e) => tracing::error!(error = %e, "commit failed"),
            None => {
                checkpoints_stored.inc_by(batch.checkpoints);
            }
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
pub fn start(config: &ServeConfig, engine: Engine, metrics: Metrics) -> anyhow::Result<(CoreHandle, LoopThread)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let (ended_tx, ended) = oneshot::channel();
    let config = config.clone();
    let thread_engine = engine.clone();
    // The loop's thread builds the decision loop itself: plugin instances and
    // processes belong to the thread that drives them (job processes are
    // tied to it so that they die with the host).
    let thread = std::thread::Builder::new()
        .name("wsched-scheduler".into())
        .spawn(move || {
            let recovered =
                std::panic::catch_unwind(AssertUnwindSafe(|| Core::recover(&config, thread_engine, metrics)))
                    .unwrap_or_else(|panic| Err(anyhow::anyhow!("recovery panicked: {}", panic_message(&*panic))));
            let core = match recovered {
                Ok(core) => core,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // A loop that dies must not leave a server that looks healthy:
            // whoever holds `ended` hears why, and takes the server down.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || core.run(rx)))
                .unwrap_or_else(|panic| Err(format!("it panicked: {}", panic_message(&*panic))));
            if let Err(why) = &outcome {
                tracing::error!(%why, "the scheduler loop died");
            }
            let _ = ended_tx.send(outcome);
        })
        .context("cannot start the scheduler thread")?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the scheduler thread died during recovery"))??;
    Ok((CoreHandle { tx, engine }, LoopThread { ended, thread }))
}

/// The scheduler loop's thread, and word of how it ended.
pub struct LoopThread {
    /// Resolves when the loop ends: `Ok` after it stopped because every
    /// handle was dropped, the reason if it died.
    pub ended: oneshot::Receiver<Result<(), String>>,
    thread: std::thread::JoinHandle<()>,
}

impl LoopThread {
    /// Wait for the thread to end (after the last handle is dropped, it
    /// stores the final state first). Blocking.
    pub fn join(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))
    }
}

/// What a panic said, for a log line.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
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
        job_type: None,
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

fn policy_event(time: f64, from: &str, to: &str, reason: &str, state_handed_over: bool, detail: &str) -> proto::Event {
    proto::Event {
        time,
        kind: Some(proto::event::Kind::Policy(proto::PolicyChange {
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
            state_handed_over,
            detail: detail.to_string(),
        })),
    }
}

impl Core {
    fn recover(config: &ServeConfig, engine: Engine, metrics: Metrics) -> anyhow::Result<Core> {
        let checks = ServerChecks {
            no_command_jobs: config.no_command_jobs,
        };
        let mut store = Store::open(&crate::store::database_path(&config.state_dir))?;
        let recovered = store.recover()?;
        let origin = match recovered.clock_origin {
            Some(origin) => origin,
            None => {
                let origin = unix_now();
                store.set_clock_origin(origin)?;
                origin
            }
        };
        let mut cluster = if config.devices.is_empty() {
            Cluster::new(config.emulated.gpu_specs())
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
        cluster.advance(unix_now() - origin);
        if config.devices.is_empty() {
            // Emulated GPUs run jobs as the simulator does.
            let model = &config.performance;
            if let Some((table, reference)) = &model.table
                && !cluster.set_speed_model(table.clone(), reference)
            {
                anyhow::bail!(
                    "the throughput table has no GPU kind {}",
                    crate::bounds::shown(reference)
                );
            }
            if !cluster.set_restart_model(model.restart_cost)
                || !cluster.set_colocation(model.colocation)
                || !cluster.set_spread_penalty(model.spread_penalty)
            {
                anyhow::bail!("performance model out of bounds: {model:?}");
            }
        }
        let host = PolicyHost::new(engine.clone(), cluster);
        let jobs_dir = config.state_dir.join("jobs");
        let backend = if config.devices.is_empty() {
            LocalBackend::new(jobs_dir)
        } else {
            let devices = SyntheticBackend::new(config.devices.clone()).with_suspend_memory(config.suspend_memory);
            LocalBackend::with_devices(jobs_dir, devices)
        }
        .with_launch(Launch {
            run_as: config.run_as.clone(),
            // Jobs get the umask the server was started with, not the
            // server's own private one.
            umask: super::ORIGINAL_UMASK.get().copied(),
        });
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut core = Core {
            decisions: DecisionLoop::new(host, backend),
            writer: None,
            clock_origin: origin,
            records: BTreeMap::new(),
            reads: VecDeque::new(),
            plugins: BTreeMap::new(),
            active: ActivePolicyRecord {
                name: BUILTIN_FIFO.into(),
                config: String::new(),
            },
            stats: HashMap::new(),
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
            panic_on_name: std::env::var(PANIC_ON_JOB_NAME).ok().filter(|n| !n.is_empty()),
            stop_requested: false,
        };
        core.decisions.host_mut().set_stall_rule(StallRule {
            idle_seconds: config.stall_timeout.as_secs_f64(),
            ..StallRule::SERVICE
        });

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
            let bytes = crate::files::read_regular_file(path, engine.limits().max_plugin_size)
                .map_err(|why| anyhow::anyhow!("--policy: cannot read {}: {why}", path.display()))?;
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
            if core.recover_job(job, &checks) {
                requeued += 1;
            }
        }
        core.clean_up_after_crash();
        // Stored in id order; expiry goes by end time.
        core.expiry
            .make_contiguous()
            .sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some(floor) = recovered.next_id {
            core.decisions.host_mut().reserve_ids_below(floor);
        }
        if !core.records.is_empty() {
            tracing::info!(jobs = core.records.len(), requeued, "jobs recovered from the database");
        }
        core.flush_jobs(false);
        store.commit(&std::mem::take(&mut core.batch))?;
        core.pending_events.clear(); // nobody is watching yet
        core.writer = Some(Writer::start(store, core.metrics.checkpoints_stored.clone())?);
        Ok(core)
    }

    /// Put one stored job back: into the model, the backend (if it is
    /// live) and the service's records. A record that cannot be handled
    /// any more (no spec, a spec this server refuses, more GPUs than it
    /// has) is kept as a failed job that says why, never dropped and never
    /// allowed to stop the start. Returns whether the job was re-queued.
    fn recover_job(&mut self, job: proto::Job, checks: &ServerChecks) -> bool {
        let id = job.id;
        let origin = self.clock_origin;
        let state = state_from_proto(job.state).unwrap_or(JobState::Pending);
        let mut live = !matches!(state, JobState::Finished | JobState::Failed);
        // Why a live job cannot be run again, if it cannot.
        let mut refusal = None;
        let spec = match &job.spec {
            Some(spec) => spec.clone(),
            None => {
                refusal = Some("the stored record has no spec".to_string());
                proto::JobSpec {
                    gpus: 1,
                    ..Default::default()
                }
            }
        };
        if refusal.is_none()
            && let Err(e) = spec::validate(&spec, "spec")
        {
            refusal = Some(format!("its stored spec is refused now: {e}"));
        }
        if refusal.is_none() && checks.no_command_jobs && matches!(spec.work, Some(proto::job_spec::Work::Command(_))) {
            refusal = Some("this server runs no command jobs (--no-command-jobs)".to_string());
        }
        // Stored numbers are read back as carefully as a client's.
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        let time = |t: f64| finite(t - origin);
        let mut model = model_spec(&spec);
        if let Some(name) = &spec.job_type {
            model.job_type = self.decisions.host().cluster().job_type_index(name);
            if model.job_type.is_none() {
                tracing::warn!(
                    job = id,
                    job_type = %crate::bounds::shown(name),
                    "the job's type is not in this server's throughput table: it runs as untyped"
                );
            }
        }
        if refusal.is_some() {
            // Out of bounds values must not reach the model, even for a
            // job that only sits there failed.
            model = JobSpec {
                work: None,
                expected_duration: None,
                share_requested: None,
                priority: None,
                iterations_total: None,
                gpus: model.gpus.clamp(1, crate::bounds::MAX_GPUS_PER_JOB),
                ..model
            };
        }
        let progress = finite(job.progress.unwrap_or(0.0).clamp(0.0, 1.0) * model.work.unwrap_or(0.0));
        let attained = finite(job.attained_gpu_seconds).max(0.0);
        let restored = Job {
            id,
            submit_time: time(job.submit_time),
            state,
            placement: Vec::new(),
            fraction: 1.0,
            progress,
            attained_gpu_seconds: attained,
            attained_seconds: attained / f64::from(model.gpus.max(1)),
            accounted_at: 0.0,
            since: 0.0,
            stalled_until: 0.0,
            restart_seconds: 0.0,
            speed: 1.0,
            spread_factor: 1.0,
            co_located: 0.0,
            first_start: job.start_time.map(time),
            end_time: job.end_time.map(time),
            priority: if crate::bounds::check_priority(job.priority, true).is_ok() {
                job.priority
            } else {
                1.0
            },
            preemptions: job.preemptions,
            migrations: job.migrations,
            iterations_done: job.iterations_done,
            iteration_time: job.iteration_time_seconds.filter(|t| t.is_finite() && *t >= 0.0),
            failure: (!job.failure.is_empty()).then(|| job.failure.clone()),
            spec: model,
        };
        let mut record = Record {
            spec,
            recoveries: job.recoveries.saturating_add(u32::from(live)),
            notes: job.notes.clone(),
            process_group: job.process_group,
        };
        let refused = match refusal {
            Some(why) if live => Err(why),
            _ => self
                .decisions
                .host_mut()
                .restore(restored.clone())
                .map_err(|e| e.to_string()),
        };
        if let Err(why) = refused {
            // A live job that can no longer run here (a spec refused now,
            // fewer GPUs than before): it ends, saying why, rather than
            // vanishing, waiting forever or stopping the start.
            tracing::error!(job = id, %why, "a recovered job cannot run here; it is marked failed");
            let mut failed = restored;
            failed.state = JobState::Failed;
            failed.end_time = Some(self.model_now());
            failed.failure = Some(format!("after a restart: {why}"));
            if let Err(why) = self.decisions.host_mut().restore(failed) {
                // Only a duplicate id gets here: the record stays in the
                // database, where `wsched store recover` can see it.
                tracing::error!(job = id, %why, "cannot restore a stored job; it is kept in the database only");
                return false;
            }
            live = false;
            self.changed.insert(id);
        }
        if live {
            record.note("the server restarted while the job was live: it is queued again, keeping its progress".into());
            if let Some(process) = process_spec(&record.spec) {
                self.decisions
                    .backend_mut()
                    .register_command(id, process, record.recoveries);
            }
            if let Some(workload) = synthetic_workload(&record.spec, job.iterations_done.unwrap_or(0)) {
                self.decisions.backend_mut().register_synthetic(id, workload);
            }
            self.changed.insert(id);
        }
        if let Some(job) = self.decisions.host().cluster().job(id) {
            queue_for_expiry(&mut self.expiry, self.finished_ttl, job);
        }
        self.records.insert(id, Box::new(record));
        live
    }

    /// Before recovered command jobs run again: kill whatever their earlier
    /// run left behind (children and grandchildren survive a `kill -9` of
    /// the server: only a job's first process dies with it), so that a
    /// restart never runs a job twice; each job's notes say what was done.
    fn clean_up_after_crash(&mut self) {
        let jobs: Vec<(JobId, Option<i32>)> = self
            .records
            .iter()
            .filter(|(id, _)| self.decisions.backend().processes().is_registered(**id))
            .map(|(id, record)| (*id, record.process_group))
            .collect();
        if jobs.is_empty() {
            return;
        }
        let found = match self.decisions.backend().clean_up_after_crash(&jobs) {
            Ok(found) => found,
            Err(e) => {
                // Each job's own start checks again and refuses to run
                // beside leftovers, so this is not the last line.
                tracing::error!(error = %format!("{e:#}"), "cannot look for processes left by the previous run");
                return;
            }
        };
        for (id, leftovers) in found {
            if !leftovers.spared.is_empty() {
                tracing::warn!(job = id, pids = ?leftovers.spared, "processes in the job's old process group do not carry its marker; left alone");
            }
            let text = match (leftovers.killed.len(), leftovers.survivors.is_empty()) {
                (0, true) => continue,
                (n, true) => format!(
                    "after the server crashed: killed {n} process(es) left of the job's earlier run (pids {:?}) before it runs again",
                    leftovers.killed
                ),
                (_, false) => format!(
                    "after the server crashed: processes of the job's earlier run (pids {:?}) would not die; it will not be started beside them",
                    leftovers.survivors
                ),
            };
            tracing::warn!(job = id, %text, "leftovers of a crashed run");
            if let Some(record) = self.records.get_mut(&id) {
                record.note(text);
                self.changed.insert(id);
            }
        }
    }

    /// The model's clock for the wall clock now.
    fn model_now(&self) -> f64 {
        unix_now() - self.clock_origin
    }

    fn job_message(&self, job: &Job) -> proto::Job {
        let now = self.decisions.host().cluster().now();
        let counted = job.iterations_done.zip(job.spec.iterations_total.filter(|&t| t > 0));
        let progress = match job.spec.work {
            // What the backend counted is the truth, where it counts.
            _ if job.state == JobState::Finished => Some(1.0),
            _ if counted.is_some() => counted.map(|(done, total)| (done as f64 / total as f64).clamp(0.0, 1.0)),
            Some(w) if w > 0.0 => Some((job.progress_at(now) / w).clamp(0.0, 1.0)),
            Some(_) => Some(if job.state == JobState::Finished { 1.0 } else { 0.0 }),
            None => None,
        };
        let record = self.records.get(&job.id);
        proto::Job {
            id: job.id,
            spec: record.map(|r| r.spec.clone()),
            state: state_to_proto(job.state) as i32,
            submit_time: self.clock_origin + job.submit_time,
            start_time: job.first_start.map(|t| self.clock_origin + t),
            end_time: job.end_time.map(|t| self.clock_origin + t),
            placement: job.placement.clone(),
            fraction: job.fraction,
            progress,
            attained_gpu_seconds: job.attained_gpu_seconds_at(now),
            preemptions: job.preemptions,
            migrations: job.migrations,
            iterations_done: job.iterations_done,
            iteration_time_seconds: job.iteration_time,
            failure: job.failure.clone().unwrap_or_default(),
            recoveries: record.map_or(0, |r| r.recoveries),
            priority: job.priority,
            notes: record.map(|r| r.notes.clone()).unwrap_or_default(),
            process_group: record.and_then(|r| r.process_group),
        }
    }

    /// Take turns until every handle is gone; an error says why the loop
    /// cannot go on (the database writer died).
    fn run(mut self, rx: Receiver<Request>) -> Result<(), String> {
        let mut requests = Vec::new();
        loop {
            if let Some(writer) = &self.writer
                && !writer.is_alive()
            {
                return Err("the database writer died: nothing can be stored any more".into());
            }
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
            if self.stop_requested {
                break;
            }
        }
        // Last words: store running jobs' progress.
        self.flush_jobs(true);
        if let Some(writer) = self.writer.take() {
            writer.send(std::mem::take(&mut self.batch), std::mem::take(&mut self.deferred));
            writer.close();
        }
        tracing::info!("scheduler loop stopped");
        Ok(())
    }

    fn time_to_next_turn(&self) -> Duration {
        if !self.reads.is_empty() {
            return Duration::ZERO;
        }
        let mut wait = self.poll;
        if self.decisions.backend().needs_polling() {
            wait = wait.min(PROCESS_POLL);
        }
        if let Some(due) = self.decisions.next_due() {
            wait = wait.min(crate::bounds::duration(due - self.model_now()));
        }
        wait
    }

    /// Answer queued listings until [`READ_BUDGET`] is spent; the rest
    /// wait for the next turn.
    fn serve_reads(&mut self) {
        let started = Instant::now();
        while started.elapsed() < READ_BUDGET {
            let Some((query, reply)) = self.reads.pop_front() else {
                break;
            };
            let _ = reply.send(Ok(self.list(&query)));
        }
    }

    fn turn(&mut self, requests: Vec<Request>) {
        let now = self.model_now();
        // Endings first, then the turn's requests, then the decision: at
        // one instant completions free GPUs before arrivals are seen, as
        // in the simulator (the same `DecisionLoop` phases).
        let mut step = self.decisions.begin(now);
        for req in requests {
            self.handle(req);
        }
        self.decisions.decide(&mut step);
        self.account(&step);
        self.expire(now);

        let checkpoint = self.last_checkpoint.elapsed() >= self.checkpoint_every;
        if checkpoint {
            self.last_checkpoint = Instant::now();
            self.batch.checkpoints += 1;
            self.metrics.checkpoints_taken.inc();
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
        self.serve_reads();
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
            if !self.decisions.forget(id) {
                continue; // queued twice, or gone already
            }
            let next_id = self.decisions.host().cluster().next_id();
            if id + 1 == next_id {
                // The newest job ever given out: with its record gone, a
                // restart would give its id out again, unless told.
                self.batch.next_id = Some(next_id);
            }
            self.records.remove(&id);
            self.changed.remove(&id);
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
        let cluster = self.decisions.host().cluster();
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
                let job = self.decisions.host().cluster().job(id);
                let _ = reply.send(
                    job.map(|j| self.job_message(j))
                        .ok_or_else(|| Status::not_found(format!("id: no job {id}"))),
                );
            }
            // Listings wait for the end of the turn, after the decision,
            // where they get a bounded share of its time.
            Request::List(query, reply) => self.reads.push_back((query, reply)),
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
            Request::Stop => self.stop_requested = true,
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
        let cluster = self.decisions.host().cluster();
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
        let mut model = model_spec(&spec);
        if let Some(name) = &spec.job_type {
            let cluster = self.decisions.host().cluster();
            match cluster.job_type_index(name) {
                Some(t) => model.job_type = Some(t),
                None => {
                    let why = if cluster.has_speed_model() {
                        "not a type of this server's throughput table"
                    } else {
                        "this server has no throughput table (serve --throughputs)"
                    };
                    let _ = reply.send(Err(Status::invalid_argument(format!(
                        "spec.job_type: {}: {why}",
                        crate::bounds::shown(name)
                    ))));
                    return;
                }
            }
        }
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
        let cluster = self.decisions.host().cluster();
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
        if self.panic_on_name.as_deref() == Some(spec.name.as_str()) {
            panic!("injected for a test: a job named {:?} ({PANIC_ON_JOB_NAME})", spec.name);
        }
        let id = self.decisions.submit(model)?;
        if let Some(process) = process_spec(&spec) {
            self.decisions.backend_mut().register_command(id, process, 0);
        }
        if let Some(workload) = synthetic_workload(&spec, 0) {
            self.decisions.backend_mut().register_synthetic(id, workload);
        }
        self.records.insert(id, Box::new(Record::new(spec)));
        self.changed.insert(id);
        self.fresh.insert(id);
        // Announce it as accepted now: the decision later in this turn may
        // start it, and watchers should see both.
        if self.watched()
            && let Some(job) = self.decisions.host().cluster().job(id)
        {
            self.pending_events.push(job_event(self.job_message(job)));
        }
        self.metrics.jobs_submitted.inc();
        Ok(id)
    }

    fn cancel(&mut self, id: JobId, reply: Reply<proto::Job>) {
        let Some(job) = self.decisions.host().cluster().job(id) else {
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
        self.decisions.cancel(id);
        self.changed.insert(id);
        self.metrics.observe_end(self.decisions.host().cluster().job(id));
        match self.decisions.host().cluster().job(id).map(|j| self.job_message(j)) {
            Some(message) => self.defer(reply, message),
            None => {
                let _ = reply.send(Err(Status::internal("cancelled job vanished")));
            }
        }
    }

    /// One page of a listing. Its cost is bounded whatever the filter: it
    /// looks at no more than [`LIST_SCAN_BUDGET`] jobs and builds no more
    /// than the page's size or [`LIST_PAGE_BYTES`]; when it stops early,
    /// the next page starts where it stopped.
    fn list(&self, query: &ListQuery) -> ListPage {
        let cluster = self.decisions.host().cluster();
        let matches = |job: &Job| {
            (query.states.is_empty() || query.states.contains(&state_to_proto(job.state)))
                && (query.user.is_empty() || job.spec.tenant == query.user)
        };
        let mut page = ListPage::default();
        let mut bytes = 0usize;
        let ids: Box<dyn Iterator<Item = &JobId>> = match query.from {
            ListFrom::Oldest => Box::new(self.records.keys()),
            ListFrom::After(first) => Box::new(self.records.range(first..).map(|(id, _)| id)),
            ListFrom::Newest => Box::new(self.records.keys().rev()),
        };
        for (scanned, &id) in ids.enumerate() {
            if scanned >= LIST_SCAN_BUDGET || page.jobs.len() >= query.size || bytes >= LIST_PAGE_BYTES {
                page.next = Some(id);
                break;
            }
            let Some(job) = cluster.job(id).filter(|j| matches(j)) else {
                continue;
            };
            let message = self.job_message(job);
            bytes += prost::Message::encoded_len(&message);
            page.jobs.push(message);
        }
        if query.from == ListFrom::Newest {
            page.jobs.reverse();
            page.next = None;
        }
        page
    }

    fn cluster_state(&self) -> proto::ClusterState {
        let cluster = self.decisions.host().cluster();
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
            backend: self.decisions.backend().name().to_string(),
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
            self.decisions.host_mut().swap_native(Box::new(Fifo))
        } else {
            let loaded = self
                .plugins
                .get(name)
                .ok_or_else(|| Status::not_found(format!("name: no plugin loaded as {name}")))?;
            let instance = self.decisions.host().prepare(&loaded.plugin, config).map_err(|e| {
                Status::failed_precondition(format!("{name} did not start ({e}); the active policy stays"))
            })?;
            self.decisions
                .host_mut()
                .swap(instance)
                .map_err(|e| Status::failed_precondition(e.to_string()))?
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
            report.note.as_deref().unwrap_or(""),
        ));
        Ok(proto::SwapPolicyResponse {
            from: from.name,
            to: name.to_string(),
            state_handed_over: report.state_handed_over,
            note: report.note.unwrap_or_default(),
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
        let host = self.decisions.host().stats();
        proto::ListPoliciesResponse {
            active: self.active.name.clone(),
            policies: names.into_iter().map(|n| self.policy_message(n)).collect(),
            swaps: host.swaps,
            ejections: host.ejections,
            strikes: host.strikes,
        }
    }

    /// Book what a step did: changed jobs, statistics, metrics, ejections.
    fn account(&mut self, step: &crate::decision::Step) {
        let name = self.active.name.clone();
        let cluster = self.decisions.host().cluster();
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
                // A command's process group, kept in its record for the
                // clean-up after a crash; a start or a move makes a new one.
                let group = self.decisions.backend().process_group(action.job());
                if group.is_some()
                    && let Some(record) = self.records.get_mut(&action.job())
                {
                    record.process_group = group;
                }
                match action {
                    Action::Preempt(_) => {
                        self.metrics.preemptions.inc();
                    }
                    Action::Migrate(_) => {
                        self.metrics.migrations.inc();
                    }
                    Action::Start(_) => {
                        if let Some(job) = self.decisions.host().cluster().job(action.job()) {
                            self.metrics.observe_start(job);
                        }
                    }
                    _ => {}
                }
            }
        }
        let ended = step.ended.iter().map(|(id, _)| *id);
        for id in ended.chain(step.backend_errors.iter().map(|e| e.job)) {
            self.changed.insert(id);
            self.metrics.observe_end(self.decisions.host().cluster().job(id));
        }

        // Told by the decision core, not found by diffing its counters.
        for notice in &step.notices {
            match notice {
                PolicyNotice::Strike { .. } => {
                    stats.strikes += 1;
                    self.metrics.strikes(&name, 1);
                }
                PolicyNotice::LogLinesDropped { lines, .. } => self.metrics.log_lines_dropped(&name, *lines),
                PolicyNotice::Ejection(ejection) => {
                    stats.ejections += 1;
                    self.metrics.ejections.inc();
                    let (to, why) = (&ejection.to, &ejection.fault);
                    tracing::error!(policy = %name, %to, %why, "policy ejected");
                    self.pending_events
                        .push(policy_event(unix_now(), &name, to, "ejected", false, why));
                    self.active = ActivePolicyRecord {
                        name: BUILTIN_FIFO.into(),
                        config: String::new(),
                    };
                    self.batch.active = Some(self.active.clone());
                }
            }
        }
    }

    fn update_gauges(&self) {
        let cluster = self.decisions.host().cluster();
        self.metrics.set_gauges(
            cluster.count_in(JobState::Pending),
            cluster.running_ids().len(),
            cluster.count_in(JobState::Suspended),
            cluster.allocated_share() / f64::from(cluster.gpu_count().max(1)),
        );
    }
}
