//! The `wsched` command line: a thin layer over the library.

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wsched::backend::synthetic::SuspendMemory;
use wsched::cluster::{Colocation, RestartCost};
use wsched::engine::{CompileCache, Engine, Limits};
use wsched::service;

mod client;
use wsched::sim::{self, GpuOutage, PolicyChoice, ScheduledSwap, SimConfig};
use wsched::topology::{Topology, TopologyError};
use wsched::trace::TraceFormatName;

/// GPU cluster scheduling with policies as sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "wsched", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    connect: client::ConnectArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a cluster trace through a policy and report JCT, makespan,
    /// utilisation and fairness.
    Sim(SimArgs),
    /// Work with policy plugins: check one locally, or load, swap, list
    /// and unload them on a running server.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the scheduler service: jobs and policies over gRPC, decisions
    /// carried out on emulated GPUs (or local processes for command jobs).
    Serve(ServeArgs),
    /// Submit, list, inspect, cancel and watch jobs on a running server.
    #[command(subcommand)]
    Job(client::JobCommand),
    /// Serve one GPU to `wsched serve` from a process of its own (started
    /// by the server; a device fault then costs only this process).
    #[command(hide = true)]
    DeviceWorker(DeviceWorkerArgs),
    /// Show the server's GPUs.
    #[command(subcommand)]
    Gpu(client::GpuCommand),
    /// Repair the server's stored state (with the server stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Salvage a damaged state directory that `wsched serve` refuses to
    /// start on: keeps a copy of each damaged file, brings back every
    /// record whose checksum holds, and lists the jobs that were lost.
    Recover,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a plugin against the contract before using it: loads it under
    /// the production limits and runs it through the shipped scenarios.
    /// Exits non-zero if any scenario fails.
    Check {
        /// The plugin (.wasm component).
        plugin: PathBuf,
        /// Configuration string passed to the plugin's init.
        #[arg(long, default_value = "")]
        config: String,
    },
    #[command(flatten)]
    Remote(client::PolicyRemoteCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address for the gRPC service (port 0: any free port, written to
    /// STATE_DIR/serve.addr).
    #[arg(long, default_value = service::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// Address for Prometheus /metrics.
    #[arg(long, default_value = service::DEFAULT_METRICS_LISTEN)]
    metrics_listen: std::net::SocketAddr,
    /// Do not serve /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Which backend runs the work: cuda when an NVIDIA driver and GPU are
    /// found (auto), else emulated GPUs.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// CUDA: whether a preempted synthetic job keeps its device memory
    /// (fast resume; released when another job needs it) or releases it
    /// to host memory at once.
    #[arg(long, value_enum, default_value_t = SuspendMemoryArg::Keep)]
    suspend_memory: SuspendMemoryArg,
    /// GPUs to emulate.
    #[arg(long, default_value_t = 4)]
    emulate_gpus: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Memory of each emulated GPU, in GiB.
    #[arg(long, default_value_t = 80)]
    gpu_memory_gib: u64,
    /// Emulate this cluster (node groups with their GPU kind and memory;
    /// see examples/clusters/) instead of --emulate-gpus identical GPUs.
    /// Implies --backend emulated.
    #[arg(long, value_name = "FILE.yaml", conflicts_with_all = ["emulate_gpus", "gpus_per_node", "gpu_memory_gib"])]
    cluster: Option<PathBuf>,
    /// Policy to activate at start (a .wasm plugin, loaded under its file
    /// name). Without it the stored active policy is restored, or the
    /// built-in FIFO decides.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The performance model of emulated GPUs (with a table, jobs
    /// submitted with a --job-type run at their measured speed).
    #[command(flatten)]
    model: ModelArgs,
    /// Config string for --policy.
    #[arg(long, default_value = "")]
    config: String,
    /// How often running jobs' progress is stored, in seconds: a crash
    /// loses at most this much of it (state changes are stored at once).
    #[arg(long, default_value_t = 10.0)]
    checkpoint_every: f64,
    /// Delete a finished or failed job this many seconds after it ended:
    /// its record (from memory and the database), its spec and its logs;
    /// `never` keeps ended jobs forever [default: 604800, a week].
    #[arg(long, value_name = "SECONDS|never", allow_negative_numbers = true)]
    finished_ttl: Option<String>,
    /// Refuse command jobs: run only synthetic jobs (on emulated GPUs or
    /// real devices). The token otherwise lets a client run any program as
    /// the server's user.
    #[arg(long)]
    no_command_jobs: bool,
    /// Run command jobs as this user (the server must run as root): the
    /// token then lets a client run programs as USER, not as root.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Let `LoadPolicy` read plugin files by path from this directory (and
    /// nowhere else). Without it, clients send the plugin's bytes.
    #[arg(long, value_name = "DIR")]
    policy_dir: Option<PathBuf>,
    /// Require the token for reads too (without it, reads are open but
    /// never show the values of jobs' environments).
    #[arg(long)]
    auth_reads: bool,
    /// How long a shutdown (SIGTERM, Ctrl-C) waits for open calls, watch
    /// streams included, before it closes them, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    shutdown_grace: f64,
    /// How long the cluster may sit idle while waiting work fits before
    /// the active plugin is called stalled and ejected, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    stall_timeout: f64,
    #[command(flatten)]
    limits: LimitArgs,
}

/// `wsched device-worker`.
#[derive(Args)]
struct DeviceWorkerArgs {
    /// Unix socket to serve the host on.
    #[arg(long)]
    socket: PathBuf,
    /// NVIDIA GPU ordinal.
    #[arg(long, conflicts_with = "cpu")]
    cuda: Option<u32>,
    /// A CPU stand-in numbered so.
    #[arg(long)]
    cpu: Option<u32>,
    /// The CPU stand-in's memory, in bytes.
    #[arg(long, default_value_t = 80 << 30)]
    memory: u64,
    /// The CPU stand-in's multiprocessors.
    #[arg(long, default_value_t = 2)]
    multiprocessors: u32,
}

fn run_device_worker(args: DeviceWorkerArgs) -> anyhow::Result<()> {
    use wsched::backend::worker::{WorkerKind, serve};
    let kind = match (args.cuda, args.cpu) {
        (Some(ordinal), None) => WorkerKind::Cuda { ordinal },
        (None, Some(ordinal)) => WorkerKind::Cpu {
            ordinal,
            memory: args.memory,
            multiprocessors: args.multiprocessors,
        },
        _ => bail!("device-worker: give --cuda N or --cpu N"),
    };
    serve::run(&args.socket, &kind)
}

/// `--suspend-memory`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SuspendMemoryArg {
    /// Keep it on the device while no other job needs it.
    Keep,
    /// Copy the state to host memory and free the device.
    Release,
}

/// `sim --trace-format`: how the trace file is written (the library's
/// `trace::TraceFormatName`, spelled for the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TraceFormatArg {
    /// Microsoft Philly, per job: timestamp, duration, num_gpus.
    Philly,
    /// SenseTime Helios: submit_time, duration, gpu_num, user or vc.
    Helios,
    /// Shanghai AI Lab Acme: the Helios columns, times with UTC offsets.
    Acme,
    /// Alibaba GPU trace v2023 pod lists: creation/scheduled/deletion_time, num_gpu, gpu_milli.
    AlibabaPai,
    /// Gavel's .trace files: job type, steps, scale factor, arrival time (tab-separated).
    Gavel,
}

/// The performance model's switches, shared by `sim` and `serve`.
#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// Measured throughputs per job type, GPU kind and gang (Gavel's
    /// format): `gavel` for Gavel's table (built in), or a file. Typed jobs
    /// run at their measured speed where they run.
    #[arg(long, value_name = "gavel|FILE.json")]
    throughputs: Option<String>,
    /// The GPU kind trace durations were measured on (with throughputs;
    /// for a Gavel trace, the kind its steps are timed on).
    #[arg(long, default_value = "V100")]
    reference_gpu: String,
    /// What each restart (a resume after a preemption, a migration, a
    /// resize) costs a job, holding its GPUs without progress: SECONDS,
    /// `checkpoint` (30 s: a restore from a checkpoint as Pollux measured
    /// it) or `host-memory` (44 ms per GiB of its device memory: suspend
    /// and resume through host memory, as measured on an H200). Default:
    /// `checkpoint` with a throughput table, else 0 (free).
    #[arg(long, value_name = "SECONDS|checkpoint|host-memory", allow_hyphen_values = true)]
    restart_cost: Option<String>,
    /// How jobs sharing a GPU progress: `time-slice` (each at its share,
    /// no gain, no interference) or `measured` (together, at the table's
    /// measured pair throughput, else at --interference). Default:
    /// `measured` with a throughput table, else `time-slice`.
    #[arg(long, value_name = "time-slice|measured")]
    colocation: Option<String>,
    /// With --colocation measured: each job's speed beside one other on a
    /// GPU, relative to alone, where the table has no figure for the pair,
    /// in [0.01, 1]. Default: the mean of the table's measured pairs on the
    /// GPU's kind, else 0.5.
    #[arg(long, value_name = "FACTOR", allow_negative_numbers = true)]
    interference: Option<f64>,
    /// Speed of a gang spread over several nodes relative to one node,
    /// where the throughput table has no slower figure for it (untyped
    /// jobs, kinds without `_unconsolidated` figures), in [0.01, 1].
    /// Default: none (no penalty beyond the table's).
    #[arg(long, value_name = "FACTOR", allow_negative_numbers = true)]
    spread_penalty: Option<f64>,
}

/// What [`ModelArgs`] say, resolved.
struct Model {
    table: Option<wsched::speed::ThroughputTable>,
    restart_cost: RestartCost,
    colocation: Colocation,
    spread_penalty: Option<f64>,
}

impl ModelArgs {
    /// The table, restart cost and co-location the flags ask for; the
    /// built-in Gavel table when none is named but `need_table` (a trace
    /// counted in steps).
    fn resolve(&self, need_table: bool, quiet: bool) -> anyhow::Result<Model> {
        let gavel =
            || wsched::speed::ThroughputTable::from_gavel_json(wsched::speed::GAVEL).map_err(|e| anyhow::anyhow!(e));
        let table = match self.throughputs.as_deref() {
            None if need_table => {
                if !quiet {
                    eprintln!("note: the trace counts steps: timing them with Gavel's throughput table");
                }
                Some(gavel()?)
            }
            None => None,
            Some("gavel") => Some(gavel()?),
            Some(source) => Some(
                wsched::speed::ThroughputTable::read(std::path::Path::new(source)).map_err(|e| anyhow::anyhow!(e))?,
            ),
        };
        let restart_cost = match self.restart_cost.as_deref() {
            None if table.is_some() => RestartCost::CHECKPOINT,
            None => RestartCost::default(),
            Some("checkpoint") => RestartCost::CHECKPOINT,
            Some("host-memory") => RestartCost::HOST_MEMORY,
            Some(seconds) => match seconds.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && (0.0..=wsched::bounds::MAX_JOB_SECONDS).contains(&s) => RestartCost::Fixed(s),
                _ => bail!(
                    "--restart-cost: must be `checkpoint`, `host-memory` or seconds from 0 to {:e}, got {}",
                    wsched::bounds::MAX_JOB_SECONDS,
                    wsched::bounds::shown(seconds)
                ),
            },
        };
        if let Some(f) = self.interference
            && !(f.is_finite() && (wsched::cluster::MIN_INTERFERENCE..=1.0).contains(&f))
        {
            bail!("--interference: must be in [0.01, 1], got {f:e}");
        }
        let colocation = match self.colocation.as_deref() {
            None if table.is_none() && self.interference.is_none() => Colocation::TimeSlice,
            None | Some("measured") => Colocation::Measured {
                interference: self.interference,
            },
            Some("time-slice") if self.interference.is_none() => Colocation::TimeSlice,
            Some("time-slice") => bail!("--interference: only with --colocation measured"),
            Some(other) => bail!(
                "--colocation: must be `time-slice` or `measured`, got {}",
                wsched::bounds::shown(other)
            ),
        };
        if let Some(f) = self.spread_penalty
            && !(f.is_finite() && (wsched::cluster::MIN_INTERFERENCE..=1.0).contains(&f))
        {
            bail!("--spread-penalty: must be in [0.01, 1], got {f:e}");
        }
        Ok(Model {
            table,
            restart_cost,
            colocation,
            spread_penalty: self.spread_penalty,
        })
    }
}

/// `serve --backend`: which backend runs the work (the library's
/// `service::BackendChoice`, spelled for the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    /// CUDA when a driver is present, emulated GPUs otherwise.
    Auto,
    /// Emulated GPUs (synthetic jobs advance with the wall clock); command
    /// jobs run as local processes.
    Emulated,
    /// Real NVIDIA GPUs through the CUDA driver.
    Cuda,
    /// CPU stand-ins for GPUs (--emulate-gpus of them) that run synthetic
    /// jobs' kernel arithmetic for real: the CUDA backend's whole path
    /// above the driver on a machine with no GPU. Slow: give jobs small
    /// --gflops-per-iteration.
    CpuDevices,
}

/// Limits for plugins.
#[derive(Args)]
struct LimitArgs {
    /// Per-call deadline for plugins: CPU time, in milliseconds (1 to
    /// 60000); ten times it in wall-clock time stops a call in any case.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    deadline_ms: u64,
    /// Memory cap for plugins, all their memories and tables together, in
    /// MiB (1 to 65536).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    memory_mib: u64,
    /// Faults tolerated before a plugin is ejected.
    #[arg(long, default_value_t = 3)]
    max_strikes: u32,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.deadline_ms),
            memory: usize::try_from(self.memory_mib << 20).unwrap_or(usize::MAX),
            max_strikes: self.max_strikes.max(1),
            ..Limits::default()
        }
    }
}

/// Where compiled plugins are cached.
#[derive(Args)]
struct CacheArgs {
    /// Directory for compiled plugins [default: $XDG_CACHE_HOME/wsched or ~/.cache/wsched].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin, without reading or writing the cache.
    #[arg(long, global = true)]
    no_cache: bool,
}

impl CacheArgs {
    fn cache(&self) -> Option<CompileCache> {
        if self.no_cache {
            return None;
        }
        self.cache_dir
            .clone()
            .or_else(CompileCache::default_dir)
            .map(CompileCache::new)
    }
}

#[derive(Args)]
struct SimArgs {
    /// Trace file: Philly, Helios, Acme or Alibaba PAI CSV (see --trace-format).
    #[arg(long)]
    trace: PathBuf,
    /// The trace's format; by default, the one its header names.
    #[arg(long, value_enum)]
    trace_format: Option<TraceFormatArg>,
    /// GPUs in the simulated cluster (V100s, 16 GiB each). Repeat to sweep
    /// cluster sizes.
    #[arg(long = "gpus", required_unless_present = "cluster", conflicts_with = "cluster")]
    gpus: Vec<u32>,
    /// The cluster, from a description file (node groups with their GPU
    /// kind and memory; see examples/clusters/), instead of --gpus.
    #[arg(long, value_name = "FILE.yaml")]
    cluster: Option<PathBuf>,
    /// Divide the trace's inter-arrival times by this (2 = twice the load).
    /// Repeat to sweep loads. Default 1.
    #[arg(long = "load-scale", value_name = "FACTOR")]
    load_scales: Vec<f64>,
    /// GPUs per node (with --gpus).
    #[arg(long, default_value_t = 8, conflicts_with = "cluster")]
    gpus_per_node: u32,
    /// Policy plugin (.wasm component), or `builtin-fifo`. Repeat to compare
    /// policies side by side; give each its own config as PLUGIN@CONFIG.
    #[arg(long = "policy", value_name = "PLUGIN[@CONFIG]", required = true)]
    policies: Vec<String>,
    /// Configuration string passed to the plugin's init (single policy).
    #[arg(long)]
    config: Option<String>,
    /// Directory for summary.json, timing.json, jobs.csv and plot.svg (one
    /// subdirectory per policy, plus compare.svg, when comparing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hot-swap to another plugin during the replay:
    /// SECONDS=PLUGIN.wasm[@CONFIG] (seconds after the first submission). Repeatable.
    #[arg(long = "swap", value_name = "AT=PLUGIN[@CONFIG]")]
    swaps: Vec<String>,
    /// Take a GPU offline during the replay: GPU@FROM[-UNTIL] (seconds after
    /// the first submission; without UNTIL it never comes back). Repeatable.
    #[arg(long = "gpu-outage", value_name = "GPU@FROM[-UNTIL]")]
    outages: Vec<String>,
    /// Do not tell policies each job's duration (no oracle for SJF).
    #[arg(long)]
    hide_durations: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Replay in rounds of SECONDS, as Gavel's simulator does: arrivals
    /// admitted and decisions made only at round ends (jobs still end at
    /// their exact times; GPUs they free idle until the round ends). For
    /// comparing with round-based simulators; event-exact by default.
    #[arg(long, value_name = "SECONDS")]
    rounds: Option<f64>,
    /// Seed of the job types given to trace jobs (with a throughput table).
    #[arg(long, default_value_t = 0)]
    job_type_seed: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server's log is its record (which backend, swaps, ejections,
    // recoveries): info by default. Other commands print their results and
    // only warnings.
    let default_level = if matches!(cli.command, Command::Serve(_) | Command::DeviceWorker(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a journal
        // must not fill with escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !matches!(cli.command, Command::Serve(_)) {
        // `wsched job list | head` should end quietly, as other Unix tools
        // do, not panic on a closed pipe. (Not for the server: a client that
        // hangs up must not kill it.)
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Sim(args) => run_sim(args, cli.cache.cache()),
        Command::Policy(PolicyCommand::Check { plugin, config }) => run_check(&plugin, &config, cli.cache.cache()),
        Command::Policy(PolicyCommand::Remote(command)) => block_on(client::policy(command, &cli.connect)),
        Command::Job(command) => block_on(client::job(command, &cli.connect)),
        Command::Gpu(command) => block_on(client::gpu(command, &cli.connect)),
        Command::Serve(args) => run_serve(args, &cli.connect, cli.cache.cache()),
        Command::DeviceWorker(args) => run_device_worker(args),
        Command::Store(StoreCommand::Recover) => run_store_recover(&cli.connect),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsched: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// The server's state directory: `--state-dir`, or the default.
fn state_dir(connect: &client::ConnectArgs) -> anyhow::Result<PathBuf> {
    connect
        .state_dir
        .clone()
        .or_else(service::default_state_dir)
        .ok_or_else(|| anyhow!("--state-dir: no default (neither XDG_STATE_HOME nor HOME is set)"))
}

fn run_store_recover(connect: &client::ConnectArgs) -> anyhow::Result<()> {
    let report = wsched::store::salvage(&wsched::store::database_path(&state_dir(connect)?))?;
    print!("{report}");
    Ok(())
}

fn run_serve(args: ServeArgs, connect: &client::ConnectArgs, cache: Option<CompileCache>) -> anyhow::Result<()> {
    let state_dir = state_dir(connect)?;
    let mut config = service::ServeConfig::new(state_dir);
    config.listen = args.listen;
    config.metrics_listen = (!args.no_metrics).then_some(args.metrics_listen);
    config.token = connect.given_token()?;
    config.backend = match args.backend {
        BackendArg::Auto => service::BackendChoice::Auto,
        BackendArg::Emulated => service::BackendChoice::Emulated,
        BackendArg::Cuda => service::BackendChoice::Cuda,
        BackendArg::CpuDevices => service::BackendChoice::CpuDevices,
    };
    config.suspend_memory = match args.suspend_memory {
        SuspendMemoryArg::Keep => SuspendMemory::Keep,
        SuspendMemoryArg::Release => SuspendMemory::Release,
    };
    config.emulated = match &args.cluster {
        Some(path) => {
            match config.backend {
                service::BackendChoice::Auto | service::BackendChoice::Emulated => {}
                _ => bail!("--cluster describes emulated GPUs: it goes with --backend emulated (or auto)"),
            }
            config.backend = service::BackendChoice::Emulated;
            Topology::read(path)?
        }
        None => {
            let memory = args
                .gpu_memory_gib
                .checked_mul(1 << 30)
                .filter(|&m| (1..=wsched::bounds::MAX_MEMORY_BYTES).contains(&m))
                .with_context(|| format!("--gpu-memory-gib: {} is out of range", args.gpu_memory_gib))?;
            Topology::homogeneous(args.emulate_gpus, args.gpus_per_node, service::EMULATED_KIND, memory).map_err(
                |e| match e {
                    TopologyError::Field { field, why } => {
                        let flag = if field == "gpus" {
                            "emulate-gpus".to_string()
                        } else {
                            field.replace(' ', "-")
                        };
                        anyhow::anyhow!("--{flag}: {why}")
                    }
                    other => other.into(),
                },
            )?
        }
    };
    let model = args.model.resolve(false, true)?;
    if let Some(table) = model.table {
        if !table.has_kind(&args.model.reference_gpu) {
            bail!(
                "--reference-gpu: the throughput table has no GPU kind {}",
                wsched::bounds::shown(&args.model.reference_gpu)
            );
        }
        config.performance.table = Some((std::sync::Arc::new(table), args.model.reference_gpu.clone()));
    }
    config.performance.restart_cost = model.restart_cost;
    config.performance.colocation = model.colocation;
    config.performance.spread_penalty = model.spread_penalty;
    config.initial_policy = args.policy.map(|p| (p, args.config));
    config.checkpoint_every = seconds_flag("--checkpoint-every", args.checkpoint_every, 1e-3)?;
    config.shutdown_grace = seconds_flag("--shutdown-grace", args.shutdown_grace, 0.0)?;
    config.stall_timeout = seconds_flag("--stall-timeout", args.stall_timeout, 0.0)?;
    match args.finished_ttl.as_deref() {
        None => {}
        Some("never") => config.finished_ttl = None,
        Some(text) => {
            let ttl: f64 = text
                .parse()
                .map_err(|_| anyhow!("--finished-ttl: give a number of seconds or `never`, got {text:?}"))?;
            config.finished_ttl = Some(seconds_flag("--finished-ttl", ttl, 0.0)?);
        }
    }
    config.no_command_jobs = args.no_command_jobs;
    config.run_as = args
        .run_as
        .as_deref()
        .map(wsched::backend::process::Credentials::of_user)
        .transpose()
        .context("--run-as")?;
    config.policy_dir = args.policy_dir;
    config.auth_reads = args.auth_reads;
    config.limits = args.limits.limits();
    let runtime = service::tokio_runtime()?;
    let result = runtime.block_on(service::serve(config, cache));
    // Connections still open after the shutdown's grace time, and a read of
    // a plugin file stuck in the kernel, must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// A flag's number of seconds, at least `min` and at most about 31 years.
fn seconds_flag(flag: &str, value: f64, min: f64) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value >= min && value <= wsched::bounds::MAX_JOB_SECONDS) {
        bail!(
            "{flag}: must be a number of seconds from {min} to {:e}, got {value}",
            wsched::bounds::MAX_JOB_SECONDS
        );
    }
    Ok(wsched::bounds::duration(value))
}

fn run_check(path: &std::path::Path, config: &str, cache: Option<CompileCache>) -> anyhow::Result<()> {
    let engine = Engine::with_cache(Limits::default(), cache)?;
    let plugin = engine.load_file(path).map_err(|e| anyhow!("{e}"))?;
    let report = wsched::check::check(&engine, &plugin, config)?;
    print!("{report}");
    let failed = report.scenarios.iter().filter(|s| !s.passed()).count();
    if failed > 0 {
        bail!("{}: {failed} scenario(s) failed", path.display());
    }
    Ok(())
}

fn load_policy(engine: &Engine, spec: &str, config: &str) -> anyhow::Result<Option<PolicyChoice>> {
    if spec == "builtin-fifo" {
        if !config.is_empty() {
            bail!("builtin-fifo takes no configuration");
        }
        return Ok(None);
    }
    let plugin = engine.load_file(&PathBuf::from(spec)).map_err(|e| anyhow!("{e}"))?;
    Ok(Some(PolicyChoice {
        plugin,
        config: config.to_string(),
    }))
}

fn parse_swap(engine: &Engine, spec: &str) -> anyhow::Result<ScheduledSwap> {
    let (at, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("--swap `{spec}`: expected SECONDS=PLUGIN[@CONFIG]"))?;
    let at: f64 = at
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| anyhow!("--swap `{spec}`: `{at}` is not a time in seconds"))?;
    let (path, config) = rest.split_once('@').unwrap_or((rest, ""));
    let policy =
        load_policy(engine, path, config)?.ok_or_else(|| anyhow!("--swap `{spec}`: swaps take a plugin file"))?;
    Ok(ScheduledSwap { at, policy })
}

fn parse_outage(spec: &str) -> anyhow::Result<GpuOutage> {
    let bad = || anyhow!("--gpu-outage `{spec}`: expected GPU@FROM[-UNTIL], e.g. 3@3600-7200");
    let (gpu, window) = spec.split_once('@').ok_or_else(bad)?;
    let gpu: u32 = gpu.trim().parse().map_err(|_| bad())?;
    let (from, until) = match window.split_once('-') {
        Some((f, u)) => (f, Some(u)),
        None => (window, None),
    };
    let time = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(bad)
    };
    let from = time(from)?;
    let until = until.map(time).transpose()?;
    if until.is_some_and(|u| u <= from) {
        bail!("--gpu-outage `{spec}`: the GPU must come back after it goes away");
    }
    Ok(GpuOutage { gpu, from, until })
}

/// The replay's progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(jobs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(jobs as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} jobs ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn run_sim(args: SimArgs, cache: Option<CompileCache>) -> anyhow::Result<()> {
    // The clusters to replay on: the description, or one per --gpus size.
    let clusters: Vec<Topology> = match &args.cluster {
        Some(path) => vec![Topology::read(path)?],
        None => args
            .gpus
            .iter()
            .map(|&gpus| {
                Topology::homogeneous(gpus, args.gpus_per_node, sim::DEFAULT_GPU_KIND, sim::DEFAULT_GPU_MEMORY).map_err(
                    |e| match e {
                        TopologyError::Field { field, why } => anyhow::anyhow!("--{}: {why}", field.replace(' ', "-")),
                        other => other.into(),
                    },
                )
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let engine = Engine::with_cache(args.limits.limits(), cache)?;
    let format = args.trace_format.map(|f| match f {
        TraceFormatArg::Philly => TraceFormatName::Philly,
        TraceFormatArg::Helios | TraceFormatArg::Acme => TraceFormatName::Helios,
        TraceFormatArg::AlibabaPai => TraceFormatName::AlibabaPai,
        TraceFormatArg::Gavel => TraceFormatName::Gavel,
    });
    let mut parsed = wsched::trace::read_as(&args.trace, format)?;
    let Model {
        table,
        restart_cost,
        colocation,
        spread_penalty,
    } = args.model.resolve(parsed.in_steps, args.quiet)?;
    if let Some(table) = &table {
        parsed.resolve_steps(&args.trace.display().to_string(), table, &args.model.reference_gpu)?;
    }
    if !args.quiet {
        for (why, count) in &parsed.skipped {
            eprintln!("note: {count} rows of {} skipped ({why})", args.trace.display());
        }
    }
    let trace = parsed.jobs;
    let loads = if args.load_scales.is_empty() {
        vec![1.0]
    } else {
        args.load_scales.clone()
    };
    // Checked before any replay starts.
    let traces = loads
        .iter()
        .map(|&scale| sim::scale_load(&trace, scale))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.config.is_some() && args.policies.len() > 1 {
        bail!("--config applies to a single policy; with several, write each as PLUGIN@CONFIG");
    }
    let policies = args
        .policies
        .iter()
        .map(|spec| match &args.config {
            Some(config) => load_policy(&engine, spec, config),
            None => {
                let (path, config) = spec.split_once('@').unwrap_or((spec, ""));
                load_policy(&engine, path, config)
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut swaps = args
        .swaps
        .iter()
        .map(|s| parse_swap(&engine, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    swaps.sort_by(|a, b| a.at.total_cmp(&b.at));
    let bar =
        (!args.quiet && args.policies.len() * clusters.len() * loads.len() == 1).then(|| progress_bar(trace.len()));
    // Every run: policy-major, then size, then load. Independent and
    // deterministic, so they run side by side on every core.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for p in 0..policies.len() {
        for c in 0..clusters.len() {
            for l in 0..loads.len() {
                runs.push((p, c, l));
            }
        }
    }
    let speed = table.map(|table| sim::SpeedModel {
        table: std::sync::Arc::new(table),
        reference: args.model.reference_gpu.clone(),
        seed: args.job_type_seed,
    });
    let config = SimConfig {
        cluster: clusters[0].clone(),
        restart_cost,
        colocation,
        spread_penalty,
        rounds: args.rounds,
        speed,
        reveal_durations: !args.hide_durations,
        // One bar for one replay; several would fight over the terminal.
        progress: bar.as_ref().map(|bar| {
            let bar = bar.clone();
            sim::ProgressHook(std::sync::Arc::new(move |n| bar.inc(n)))
        }),
        outages: args
            .outages
            .iter()
            .map(|o| parse_outage(o))
            .collect::<anyhow::Result<_>>()?,
    };
    let results = sim::parallel_map(&runs, sim::workers(), |&(p, c, l)| {
        let config = SimConfig {
            cluster: clusters[c].clone(),
            ..config.clone()
        };
        sim::simulate(&engine, policies[p].as_ref(), &swaps, &traces[l], &config)
    })
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let results = results?;
    if clusters.len() > 1 || loads.len() > 1 {
        let sweep: Vec<sim::SweepRun> = runs
            .iter()
            .zip(results)
            .map(|(&(_, c, l), result)| sim::SweepRun {
                gpus: clusters[c].gpus(),
                load: loads[l],
                result,
            })
            .collect();
        if args.json {
            let summaries: Vec<_> = sweep
                .iter()
                .map(|r| serde_json::json!({"gpus": r.gpus, "load_scale": r.load, "summary": r.result.summary}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&summaries)?);
        } else {
            print!("{}", sim::SweepTable(&sweep));
        }
        if let Some(dir) = &args.out {
            sim::write_sweep(dir, &sweep).context("writing results")?;
            if !args.json {
                println!(
                    "results written to {} (sweep.csv, sweep.svg, one directory per run)",
                    dir.display()
                );
            }
        }
        return Ok(());
    }
    let refs: Vec<&sim::SimResult> = results.iter().collect();
    if args.json {
        let summaries: Vec<_> = results.iter().map(|r| &r.summary).collect();
        match &summaries[..] {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            many => println!("{}", serde_json::to_string_pretty(many)?),
        }
    } else if let [one] = &refs[..] {
        print!("{}", sim::Table(one));
    } else {
        print!("{}", sim::Comparison(&refs));
    }
    if let Some(dir) = &args.out {
        match &refs[..] {
            [one] => sim::write_outputs(dir, one),
            many => sim::write_comparison(dir, many),
        }
        .context("writing results")?;
        if !args.json {
            println!("results written to {}", dir.display());
        }
    }
    Ok(())
}
