//! `wsched serve`: a long-running scheduler that takes jobs and policies
//! over gRPC, stores every acknowledged job, and runs the active policy's
//! decisions on a backend.
//!
//! The shape follows from two promises. *Decisions stay deterministic and
//! serial*: one thread, the scheduler loop ([`core`]), owns the runtime
//! (cluster model, policy, backend) and the database, and does everything
//! in turns; gRPC handlers ([`grpc`]) only validate requests and send them
//! to it. *An acknowledged job is never lost*: a turn first applies every
//! request that arrived, lets the policy decide, then commits all changes
//! in one transaction, and only then replies. Under load, thousands of
//! submissions share one turn and one fsync, which is how durability and
//! throughput go together.
//!
//! - [`core`]: the scheduler loop and its state.
//! - [`grpc`]: the tonic services, request validation and the bearer token.
//! - [`health`]: the standard health service and the handle that sets it.
//! - [`status`]: status codes and messages as standard clients expect them.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//! - [`client`]: the `wsched` command line's side of the service.
//! - [`manifest`]: job specs from YAML files.
//! - [`spec`]: what a valid job spec is, at every edge.

pub mod core;
pub mod grpc;
pub mod health;
pub mod manifest;
pub mod metrics;
pub mod spec;
pub mod status;

pub use self::core::BUILTIN_FIFO;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::backend::device::Device;
use crate::backend::synthetic::SuspendMemory;
use crate::backend::{cuda, worker};
use crate::engine::Limits;
use crate::proto;
use crate::topology::Topology;

/// Default address of the gRPC service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default address of the Prometheus endpoint.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Which backend runs the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a driver is present, emulated GPUs otherwise.
    Auto,
    /// Emulated GPUs (synthetic jobs advance with the wall clock); command
    /// jobs run as local processes.
    Emulated,
    /// Real NVIDIA GPUs through the CUDA driver.
    Cuda,
    /// CPU stand-ins for GPUs (--emulate-gpus of them) that run synthetic
    /// jobs' kernel arithmetic for real: the CUDA backend's whole path
    /// above the driver (iterations, suspension, migration, faults) on a
    /// machine with no GPU. Slow: give jobs small --gflops-per-iteration.
    CpuDevices,
}

/// Everything `wsched serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the gRPC service listens.
    pub listen: SocketAddr,
    /// Where `/metrics` is served (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Directory for the database, the token and job directories.
    pub state_dir: PathBuf,
    /// The bearer token for mutating calls; read from (or generated into)
    /// `state_dir/token` when none.
    pub token: Option<String>,
    /// A plugin file to load (under its file stem) and activate with this
    /// config at start, instead of restoring the stored active policy.
    pub initial_policy: Option<(PathBuf, String)>,
    /// Backend choice.
    pub backend: BackendChoice,
    /// The GPUs synthetic jobs run on (filled in by [`serve`] from the
    /// backend choice; empty means emulated GPUs).
    pub devices: Vec<Arc<dyn Device>>,
    /// Whether a preempted synthetic job keeps its device memory.
    pub suspend_memory: SuspendMemory,
    /// The emulated cluster (its GPU count and memory also size the
    /// `cpu-devices` backend's stand-ins).
    pub emulated: Topology,
    /// Limits for plugins (`max_plugin_size` bounds what may be loaded).
    pub limits: Limits,
    /// Longest the scheduler loop sleeps with nothing due (it also wakes
    /// on every request).
    pub poll: Duration,
    /// How often running jobs' progress is written to the database, so
    /// that a crash loses at most this much of it.
    pub checkpoint_every: Duration,
    /// How long an ended (finished or failed) job is kept after it ended:
    /// its record, spec and logs are then deleted, from memory and the
    /// database. `None` keeps ended jobs forever.
    pub finished_ttl: Option<Duration>,
    /// Refuse command jobs: run only synthetic (emulated or device) jobs.
    pub no_command_jobs: bool,
    /// Run command jobs as this user instead of the server's own.
    pub run_as: Option<crate::backend::process::Credentials>,
    /// Where `LoadPolicy` may read plugin files named by path; none: it
    /// may not (clients send the bytes).
    pub policy_dir: Option<PathBuf>,
    /// Reads need the token too (without it, reads are open but never
    /// show environment values).
    pub auth_reads: bool,
    /// How long a shutdown waits for open calls before it closes them.
    pub shutdown_grace: Duration,
    /// How long the cluster may sit idle with work that fits before the
    /// active plugin is called stalled and ejected.
    pub stall_timeout: Duration,
    /// The performance model of emulated GPUs (ignored on real ones).
    pub performance: Performance,
}

/// How emulated GPUs run jobs: the simulator's performance model (see
/// `crate::cluster`), so that a policy sees in `serve` what it sees in
/// `sim`.
#[derive(Debug, Clone, Default)]
pub struct Performance {
    /// A measured throughput table and the GPU kind job durations are
    /// measured on: typed jobs (`JobSpec.job_type`) run at their speed
    /// where they run. None: every job at the same speed.
    pub table: Option<(Arc<crate::speed::ThroughputTable>, String)>,
    /// What a restart costs a job.
    pub restart_cost: crate::cluster::RestartCost,
    /// How jobs sharing a GPU progress.
    pub colocation: crate::cluster::Colocation,
    /// Speed of a gang spread over nodes where the table says nothing.
    pub spread_penalty: Option<f64>,
}

/// How long ended jobs are kept by default: a week, long enough to look at
/// a job's result and logs after a weekend, short enough that a busy
/// service's memory and database do not grow without end.
pub const DEFAULT_FINISHED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The GPU kind of emulated GPUs given by count (`--emulate-gpus N`).
pub const EMULATED_KIND: &str = "emulated";

impl ServeConfig {
    /// Defaults for a state directory: loopback, emulated or CUDA by what
    /// the machine has, 4 emulated GPUs.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("valid default address")),
            state_dir: state_dir.into(),
            token: None,
            initial_policy: None,
            backend: BackendChoice::Auto,
            devices: Vec::new(),
            suspend_memory: SuspendMemory::Keep,
            emulated: Topology::homogeneous(4, 8, EMULATED_KIND, 80 << 30)
                .expect("the default cluster is within bounds"),
            limits: Limits::default(),
            poll: Duration::from_millis(200),
            checkpoint_every: Duration::from_secs(10),
            finished_ttl: Some(DEFAULT_FINISHED_TTL),
            no_command_jobs: false,
            run_as: None,
            policy_dir: None,
            auth_reads: false,
            shutdown_grace: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            performance: Performance::default(),
        }
    }
}

/// The default state directory: `$XDG_STATE_HOME/wsched` or `~/.local/state/wsched`.
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("wsched"))
}

/// Make the state directory private to the server's user: created 0700 (an
/// existing one with looser permissions is tightened, and the log says so),
/// and everything the server creates from now on, 0600 files and 0700
/// directories (the process's umask; job processes get the umask the
/// server was started with back). The directory holds the token, every
/// job's spec and logs: nobody else has business reading it.
pub fn prepare_state_dir(dir: &Path, traversable: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the state directory {}", dir.display()))?
        .permissions()
        .mode();
    // With `--run-as` the directory is 0711 on purpose (see open_jobs_to).
    let allowed = if traversable { 0o011 } else { 0 };
    if mode & 0o077 & !allowed != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
        tracing::warn!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "the state directory was readable by others; it is 0700 now");
    }
    for name in ["wsched.redb", "wsched.wal0", "wsched.wal1", "serve.addr"] {
        let path = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (chmod 600)", path.display()))?;
        }
    }
    ORIGINAL_UMASK.get_or_init(|| {
        // SAFETY: umask(2) only swaps the process's file mode mask.
        unsafe { libc::umask(0o077) }
    });
    Ok(())
}

/// With `--run-as`, a job runs as another user and must reach its own
/// directory (its control socket) under the state directory: the state
/// directory and `jobs/` become 0711, which lets others pass through but
/// not list them (everything in them stays 0600 or 0700, and each job's
/// own directory is its user's).
fn open_jobs_to(state_dir: &Path, user: &crate::backend::process::Credentials) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // SAFETY: geteuid(2) only reads the process's effective user id.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && euid != user.uid {
        anyhow::bail!(
            "--run-as {}: the server runs as user id {euid}; only root can start jobs as another user",
            user.name
        );
    }
    let jobs = state_dir.join("jobs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&jobs)
        .with_context(|| format!("cannot create {}", jobs.display()))?;
    for dir in [state_dir, jobs.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot open {} to --run-as {} (chmod 711)", dir.display(), user.name))?;
    }
    Ok(())
}

/// The umask the process had before [`prepare_state_dir`] made it 0077:
/// what job processes are started with.
pub static ORIGINAL_UMASK: std::sync::OnceLock<libc::mode_t> = std::sync::OnceLock::new();

/// The token file inside a state directory.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("token")
}

/// Read the token from `path`, or generate one there (readable only by its
/// owner) when the file does not exist.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(_) => read_token_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .context("cannot read /dev/urandom for a token")?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the token file {}", path.display()))?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the token file {}", path.display())),
    }
}

/// Longest token file accepted.
const MAX_TOKEN_FILE: usize = 4096;

/// The token in the file at `path`, which must be a regular file that only
/// its owner can read (a token others can read is no secret).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{}: the token file is readable by others (mode {:o}); run `chmod 600` on it",
            path.display(),
            mode & 0o777
        );
    }
    let bytes = crate::files::read_regular_file(path, MAX_TOKEN_FILE)
        .map_err(|why| anyhow::anyhow!("cannot read the token file {}: {why}", path.display()))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: the token file is not text", path.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(!token.is_empty(), "{}: the token file is empty", path.display());
    Ok(token)
}

/// How many worker threads the service's async runtime gets: one per core
/// but one, at least one.
///
/// Why not one per core: the scheduler loop and the database writer are
/// threads of their own, busy under load, and every runtime worker beyond
/// the cores they leave only adds wake-ups and work stealing. On two cores,
/// in 18 alternated pairs of runs of the service bench (32 and 64 clients),
/// one worker instead of two gave more submissions a second in 14 and a
/// lower p99 in 14.
pub fn runtime_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// The async runtime `wsched serve` runs on: [`runtime_workers`] workers.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio_runtime_with_workers(runtime_workers())
}

/// The same runtime with `workers` workers (benchmarks compare counts).
pub fn tokio_runtime_with_workers(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("wsched-grpc")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Run the service until SIGINT or SIGTERM.
pub async fn serve(config: ServeConfig, cache: Option<crate::engine::CompileCache>) -> anyhow::Result<()> {
    serve_until(config, cache, shutdown_signal()).await
}

/// Run the service until `shutdown` completes (benchmarks and embedders
/// stop it this way), then store the final state and return.
pub async fn serve_until(
    config: ServeConfig,
    cache: Option<crate::engine::CompileCache>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut config = config;
    let fallback = match (config.backend, cuda::driver_present()) {
        (BackendChoice::Emulated, _) => Some("asked for".to_string()),
        (BackendChoice::CpuDevices, _) => {
            let program = std::env::current_exe().context("cannot find this program to start device workers")?;
            let memory = config
                .emulated
                .groups()
                .iter()
                .map(|g| g.memory_per_gpu)
                .max()
                .unwrap_or(0);
            let workers = worker::cpu_workers(&program, config.emulated.gpus(), memory)?;
            config.devices = workers.into_iter().map(|d| d as Arc<dyn Device>).collect();
            None
        }
        (BackendChoice::Cuda, false) => {
            anyhow::bail!("--backend cuda: no NVIDIA driver found (libcuda.so does not load); use --backend emulated")
        }
        (BackendChoice::Auto, false) => Some("no NVIDIA driver found".to_string()),
        (choice, true) => {
            // Each GPU in a worker process of its own: a device fault costs
            // that process, not the server, and the GPU comes back.
            let found = std::env::current_exe()
                .context("cannot find this program to start GPU workers")
                .and_then(|program| worker::discover_cuda(&program));
            match found {
                Ok(devices) => {
                    config.devices = devices.into_iter().map(|d| d as Arc<dyn Device>).collect();
                    None
                }
                Err(e) if choice == BackendChoice::Cuda => anyhow::bail!("--backend cuda: {e:#}"),
                Err(e) => Some(format!("a driver is present but the GPUs cannot be used: {e:#}")),
            }
        }
    };
    match &fallback {
        Some(why) => tracing::info!(
            "wsched serve: backend emulated ({}; {why}); command jobs run as local processes",
            config.emulated.describe()
        ),
        None => {
            let names: Vec<String> = config
                .devices
                .iter()
                .map(|d| {
                    format!(
                        "{} {} ({} GiB)",
                        d.info().ordinal,
                        d.info().name,
                        d.info().memory_total >> 30
                    )
                })
                .collect();
            tracing::info!(
                "wsched serve: backend {} ({} GPU(s): {}); synthetic jobs run kernels, command jobs run as local processes",
                if config.backend == BackendChoice::CpuDevices {
                    "cpu-devices"
                } else {
                    "cuda"
                },
                config.devices.len(),
                names.join(", ")
            );
        }
    }

    prepare_state_dir(&config.state_dir, config.run_as.is_some())?;
    if let Some(user) = &config.run_as {
        open_jobs_to(&config.state_dir, user)?;
    }
    let token = match &config.token {
        Some(token) if !token.trim().is_empty() => token.trim().to_string(),
        Some(_) => anyhow::bail!("--token: empty"),
        None => load_or_create_token(&token_path(&config.state_dir))?,
    };
    let engine = crate::engine::Engine::with_cache(config.limits.clone(), cache)?;
    let metrics = metrics::Metrics::new();
    let (handle, mut loop_thread) = core::start(&config, engine, metrics.clone())?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Tests and the CLI find a server started on port 0 through this file.
    std::fs::write(config.state_dir.join("serve.addr"), format!("{address}\n"))
        .with_context(|| format!("cannot write {}", config.state_dir.join("serve.addr").display()))?;
    tracing::info!(%address, state_dir = %config.state_dir.display(), "gRPC service listening");

    if let Some(addr) = config.metrics_listen {
        let metrics = metrics.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(async move {
            if let Err(e) = metrics::serve_on(listener, metrics).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }

    let auth = grpc::Auth::new(&token).with_reads_needing_token(config.auth_reads);
    let policy_dir = match &config.policy_dir {
        Some(dir) => Some(
            dir.canonicalize()
                .with_context(|| format!("--policy-dir {}", dir.display()))?,
        ),
        None => None,
    };
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let services = grpc::Services::new(
        handle.clone(),
        auth,
        spec::ServerChecks {
            no_command_jobs: config.no_command_jobs,
        },
        config.limits.max_plugin_size,
        policy_dir,
        stopping.clone(),
    );
    let max_message = config.limits.max_plugin_size + (1 << 20);
    let jobs =
        proto::jobs_server::JobsServer::new(services.jobs()).max_decoding_message_size(grpc::MAX_JOBS_REQUEST_BYTES);
    let policies =
        proto::policies_server::PoliciesServer::new(services.policies()).max_decoding_message_size(max_message);
    let cluster = proto::cluster_server::ClusterServer::new(services.cluster());
    // Every service SERVING from here on; `health` is the handle that
    // changes that (`set_serving`, `shut_down` to end Watch streams).
    let health = health::Health::new([
        <proto::jobs_server::JobsServer<grpc::JobsApi> as tonic::server::NamedService>::NAME,
        <proto::policies_server::PoliciesServer<grpc::PoliciesApi> as tonic::server::NamedService>::NAME,
        <proto::cluster_server::ClusterServer<grpc::ClusterApi> as tonic::server::NamedService>::NAME,
    ]);
    health.set_serving(true);
    // Both reflection versions, each listing the other too: older grpcurl
    // releases and grpcio-reflection's client speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    drop(services);

    let mut stop_accepting = stopping.clone();
    let mut server = Box::pin(
        tonic::transport::Server::builder()
            .layer(status::layer())
            .add_service(health.service())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(jobs)
            .add_service(policies)
            .add_service(cluster)
            .serve_with_incoming_shutdown(
                // Small replies must leave at once, not wait for Nagle's
                // algorithm to fill a segment.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stop_accepting.wait_for(|&stopping| stopping).await;
                },
            ),
    );
    let core::LoopThread { ended, .. } = &mut loop_thread;
    // Run until asked to stop, or until the scheduler loop dies: a server
    // whose loop is gone must not go on looking healthy.
    let mut died = None;
    tokio::select! {
        result = &mut server => {
            result.context("the gRPC server failed")?;
        }
        () = shutdown => tracing::info!("shutting down"),
        outcome = ended => {
            died = Some(match outcome {
                Ok(Err(why)) => why,
                Ok(Ok(())) => "it stopped while the server was running".to_string(),
                Err(_) => "its thread ended without a word".to_string(),
            });
        }
    }
    // Tell health checkers first (their Watch streams end with
    // NOT_SERVING), then end job watch streams and stop taking calls;
    // calls still open get a bounded time to finish.
    health.shut_down();
    let _ = stopping_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(result) => result.context("the gRPC server failed")?,
        Err(_) => tracing::warn!(
            grace_seconds = config.shutdown_grace.as_secs_f64(),
            "calls were still open after the shutdown grace time; closing them"
        ),
    }
    // Connections the grace time could not close still hold handles to the
    // scheduler loop (the runtime's end closes them): tell the loop to
    // store its final state and stop all the same.
    drop(server);
    handle.stop();
    drop(handle);
    if let Some(why) = died {
        anyhow::bail!("the scheduler loop died ({why}); the server stopped so that a supervisor restarts it");
    }
    tracing::info!("shutting down: storing the final state");
    tokio::task::spawn_blocking(move || loop_thread.join())
        .await
        .map_err(|e| anyhow::anyhow!("the scheduler thread could not be joined: {e}"))??;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
