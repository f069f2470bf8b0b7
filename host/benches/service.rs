//! Load on the scheduler service: how many job submissions a second it
//! acknowledges (each stored durably before the reply) and how long each
//! takes, with 1,000 jobs already queued and a Wasm policy deciding.
//!
//! Run with `cargo bench -p wsched --bench service` (after
//! `scripts/build-plugins.sh`). It starts `wsched serve` in this process on
//! a loopback port with its state in a temporary directory, fills the queue
//! behind a job that holds every GPU (so the queue stays put and every
//! decision sees it), then submits from many concurrent clients over real
//! gRPC. Bounded in count and time: `WSCHED_BENCH_SUBMITS` (default 20,000)
//! jobs or 60 s, whichever comes first. Prints one table, one row per
//! policy, call and concurrency (`WSCHED_BENCH_POLICIES=fifo,tiresias,las`
//! by default: the trivial policy, the indexed preempting 2D-LAS, and the
//! portable 2D-LAS that re-ranks every live job on every decision, so its
//! cost grows with the queue): `SubmitJob` (one job per call), `SubmitJobs` with 16 jobs per
//! call (a sweep), and `GetJob` as the floor under a submission.
//! `WSCHED_BENCH_ROWS=submit:64,get:64` runs only the rows named by call
//! and clients (for profiling one of them).
//!
//! The server gets a runtime of its own, the one `wsched serve` runs on
//! ([`wsched::service::runtime`]; `WSCHED_BENCH_SERVER_THREADS` overrides
//! its workers), and the clients another (`WSCHED_BENCH_CLIENT_THREADS`
//! workers, 1 by default), so that the CPU each side spends is measured
//! apart (`server_us` against `cpu_us/job`): on one machine the load
//! generator's cost is not the server's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Request;
use tonic::transport::Channel;
use wsched::proto;
use wsched::service::{ServeConfig, serve_until};

const QUEUED: usize = 1_000;
const TIME_LIMIT: Duration = Duration::from_secs(60);
const CHANNELS: usize = 4;
/// The server's bearer token for the run.
const TOKEN: &str = "bench-token";
/// Jobs per `SubmitJobs` call in the batch rows.
const BATCH: usize = 16;

struct Row {
    rpc: String,
    policy: String,
    clients: usize,
    /// Jobs submitted (or read).
    jobs: usize,
    /// Calls made (latencies are per call).
    calls: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// CPU time of the whole process (server and clients) per job: steadier
    /// than jobs/s on a noisy VM, and 2 cores / this is the ceiling.
    cpu_per_job: Duration,
    /// The part of it spent by the server's threads.
    server_cpu_per_job: Duration,
}

/// Thread-name prefixes of the server's threads: its gRPC runtime, the
/// scheduler loop, the writer, the log's checkpoints and the epoch ticker.
const SERVER_THREADS: &str = "wsched";

/// CPU time used so far by each live thread of this process whose name
/// starts with `prefix`, by thread id (from /proc: 10 ms resolution, which
/// over a row of seconds is a percent or two).
fn threads_cpu(prefix: &str) -> std::collections::HashMap<u32, Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After the name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let tid = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        out.insert(tid, Duration::from_secs_f64((tick(11) + tick(12)) as f64 / ticks));
    }
    out
}

/// CPU time the threads named `prefix` used between two [`threads_cpu`]
/// readings (threads that ended in between are not counted).
fn threads_cpu_since(prefix: &str, before: &std::collections::HashMap<u32, Duration>) -> Duration {
    threads_cpu(prefix)
        .into_iter()
        .map(|(tid, now)| now.saturating_sub(before.get(&tid).copied().unwrap_or_default()))
        .sum()
}

/// CPU time this process has used, user and system, all threads.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn spec(gpus: u32) -> proto::JobSpec {
    proto::JobSpec {
        name: "bench".into(),
        user: "bench".into(),
        gpus,
        work: Some(proto::job_spec::Work::Synthetic(proto::Synthetic {
            seconds: 3600.0,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("token header");
    request.metadata_mut().insert("authorization", value);
    request
}

fn submit(token: &str, gpus: u32) -> Request<proto::SubmitJobRequest> {
    authed(token, proto::SubmitJobRequest { spec: Some(spec(gpus)) })
}

/// What the clients send.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// SubmitJob: validated, decided on, stored durably, acknowledged.
    Submit,
    /// SubmitJobs with this many jobs per call: the same, all or none.
    Batch(usize),
    /// GetJob: the same path through gRPC and the scheduler loop, without
    /// a write; the floor under the cost of a submission.
    Get,
}

/// One row: a fresh server with its queue filled, then `total` jobs from
/// `clients` concurrent clients.
fn run(
    policy: Option<&PathBuf>,
    clients: usize,
    total: usize,
    load: Load,
    client_threads: usize,
) -> anyhow::Result<Row> {
    let state = tempfile::tempdir()?;
    let mut config = ServeConfig::new(state.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.metrics_listen = None;
    config.emulated = wsched::topology::Topology::homogeneous(8, 8, wsched::service::EMULATED_KIND, 80 << 30)?;
    config.token = Some(TOKEN.into());
    config.initial_policy = policy.map(|p| (p.clone(), String::new()));
    // As `wsched serve` builds it, unless told otherwise.
    let server_workers = std::env::var("WSCHED_BENCH_SERVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(wsched::service::runtime_workers);
    let server_runtime = wsched::service::tokio_runtime_with_workers(server_workers)?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(serve_until(config, None, async {
        let _ = stop_rx.await;
    }));
    let row = client_runtime.block_on(load_server(state.path(), clients, total, load));
    let _ = stop_tx.send(());
    server_runtime.block_on(server)??;
    let mut row = row?;
    row.policy = policy
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "builtin-fifo".into());
    Ok(row)
}

/// The client side of a row, against the server whose state is in `state`.
async fn load_server(state: &std::path::Path, clients: usize, total: usize, load: Load) -> anyhow::Result<Row> {
    let addr_file = state.join("serve.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && text.ends_with('\n')
        {
            break text.trim().to_string();
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(Channel::from_shared(format!("http://{address}"))?.connect().await?);
    }

    // One job holding every GPU, then the queue behind it.
    let mut jobs = proto::jobs_client::JobsClient::new(channels[0].clone());
    jobs.submit_job(submit(TOKEN, 8)).await?;
    for _ in 0..QUEUED {
        jobs.submit_job(submit(TOKEN, 1)).await?;
    }

    let per_call = match load {
        Load::Batch(n) => n,
        _ => 1,
    };
    let calls = total / per_call;
    let started = Instant::now();
    let cpu_before = process_cpu();
    let server_before = threads_cpu(SERVER_THREADS);
    let connections = (0..clients)
        .map(|c| proto::jobs_client::JobsClient::new(channels[c % CHANNELS].clone()))
        .collect();
    let mut latencies = drive(connections, calls, load, started).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let server_cpu = threads_cpu_since(SERVER_THREADS, &server_before);
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let jobs = (latencies.len() * per_call).max(1) as u32;
    Ok(Row {
        rpc: match load {
            Load::Submit => "submit".into(),
            Load::Batch(n) => format!("submit{n}"),
            Load::Get => "get".into(),
        },
        policy: String::new(),
        clients,
        jobs: latencies.len() * per_call,
        calls: latencies.len(),
        seconds,
        p50: at(0.5),
        p99: at(0.99),
        max: *latencies.last().unwrap_or(&Duration::ZERO),
        cpu_per_job: cpu / jobs,
        server_cpu_per_job: server_cpu / jobs,
    })
}

/// Make `calls` calls from as many concurrent clients as given, each waiting
/// for its reply before the next; the latency of each call.
async fn drive(
    clients: Vec<proto::jobs_client::JobsClient<Channel>>,
    calls: usize,
    load: Load,
    started: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(calls));
    let mut tasks = Vec::new();
    for mut jobs in clients {
        let remaining = remaining.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
                && started.elapsed() < TIME_LIMIT
            {
                let sent = Instant::now();
                match load {
                    Load::Submit => {
                        jobs.submit_job(submit(TOKEN, 1)).await?;
                    }
                    Load::Batch(n) => {
                        let specs = (0..n).map(|_| spec(1)).collect();
                        jobs.submit_jobs(authed(TOKEN, proto::SubmitJobsRequest { specs }))
                            .await?;
                    }
                    Load::Get => {
                        jobs.get_job(proto::GetJobRequest { id: 1 }).await?;
                    }
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

fn main() -> anyhow::Result<()> {
    // Quiet: the server logs at info otherwise.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
        .try_init();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = std::env::var_os("WSCHED_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/plugins"));
    let total: usize = std::env::var("WSCHED_BENCH_SUBMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let only = std::env::var("WSCHED_BENCH_ROWS").ok();
    let wanted = |rpc: &str, clients: usize| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|row| row == format!("{rpc}:{clients}")))
    };
    let client_threads: usize = std::env::var("WSCHED_BENCH_CLIENT_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rows = Vec::new();
    let names = std::env::var("WSCHED_BENCH_POLICIES").unwrap_or_else(|_| "fifo,tiresias,las".into());
    for name in names.split(',') {
        let path = plugins.join(format!("{name}.wasm"));
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run scripts/build-plugins.sh",
            path.display()
        );
        for clients in [1, 16, 32, 48, 64] {
            if !wanted("submit", clients) {
                continue;
            }
            let count = if clients == 1 { total / 10 } else { total };
            rows.push(run(Some(&path), clients, count, Load::Submit, client_threads)?);
        }
        // As many jobs as the single-job rows, so that the queue the policy
        // sees grows alike.
        for clients in [1, 4, 16] {
            if !wanted(&format!("submit{BATCH}"), clients) {
                continue;
            }
            rows.push(run(Some(&path), clients, total, Load::Batch(BATCH), client_threads)?);
        }
        if wanted("get", 64) {
            rows.push(run(Some(&path), 64, total, Load::Get, client_threads)?);
        }
    }
    println!(
        "submissions with {QUEUED} jobs queued, acknowledged after a durable commit; loopback gRPC, {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("(submit: SubmitJob; submit{BATCH}: SubmitJobs of {BATCH} jobs; get: GetJob; latencies per call)");
    println!("(cpu_us/job: CPU of the whole process per job; server_us: the server's threads alone)");
    println!(
        "{:<8} {:<8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "rpc",
        "policy",
        "clients",
        "jobs",
        "jobs/s",
        "calls/s",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "cpu_us/job",
        "server_us"
    );
    for r in &rows {
        println!(
            "{:<8} {:<8} {:>7} {:>8} {:>8.0} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>10.1} {:>10.1}",
            r.rpc,
            r.policy,
            r.clients,
            r.jobs,
            r.jobs as f64 / r.seconds,
            r.calls as f64 / r.seconds,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            r.cpu_per_job.as_secs_f64() * 1e6,
            r.server_cpu_per_job.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
