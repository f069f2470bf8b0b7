//! The command line's side of the service: `wsched job ...`, `wsched
//! policy load|swap|list|unload` and `wsched gpu list`, talking to a
//! running `wsched serve` over gRPC.
//!
//! Output is a table for people by default and JSON (`-o json`) for
//! scripts; errors are the server's own messages, which name the field.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use wsched::proto;
use wsched::proto::job_spec::Work;
use wsched::service::core::unix_now;

/// How to reach the server.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Server address [default: $WSCHED_SERVER, else the address the local
    /// server wrote to its state directory, else 127.0.0.1:50051].
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Bearer token [default: the --token-file, else $WSCHED_TOKEN, else
    /// the token file in the state directory]. Visible to every user in
    /// `ps`: prefer --token-file or $WSCHED_TOKEN.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// File holding the bearer token (kept private: mode 0600).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The local server's state directory [default: $XDG_STATE_HOME/wsched
    /// or ~/.local/state/wsched].
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (one object, or one per line for `watch`).
    Json,
}

/// `wsched job ...`
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job: from a YAML file (-f), or from flags with a synthetic
    /// workload (--seconds) or a command after `--`.
    Submit(SubmitArgs),
    /// List jobs, oldest first.
    List {
        /// Only jobs in this state (repeatable): pending, running, suspended, finished, failed.
        #[arg(long = "state", value_enum)]
        states: Vec<StateArg>,
        /// Only this user's jobs.
        #[arg(long)]
        user: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Show one job.
    Get {
        /// Job id.
        id: u64,
    },
    /// Cancel a live job.
    Cancel {
        /// Job id.
        id: u64,
    },
    /// Print events as they happen, until interrupted.
    Watch {
        /// Only this job's events.
        id: Option<u64>,
        /// Print the live jobs' current state first.
        #[arg(long)]
        current: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Job states, as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Never started.
    Pending,
    /// Holding GPUs.
    Running,
    /// Preempted.
    Suspended,
    /// Ended successfully.
    Finished,
    /// Ended with an error or cancelled.
    Failed,
}

impl StateArg {
    fn proto(self) -> proto::JobState {
        match self {
            StateArg::Pending => proto::JobState::Pending,
            StateArg::Running => proto::JobState::Running,
            StateArg::Suspended => proto::JobState::Suspended,
            StateArg::Finished => proto::JobState::Finished,
            StateArg::Failed => proto::JobState::Failed,
        }
    }
}

/// `wsched job submit`
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// YAML file with one or more jobs (`-` for stdin); the other flags are then not used.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Job name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// User or tenant [default: $USER].
    #[arg(long)]
    pub user: Option<String>,
    /// GPUs (gang size).
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// Share of one GPU that is enough, in (0, 1].
    #[arg(long)]
    pub gpu_fraction: Option<f64>,
    /// Its type in the server's throughput table (`serve --throughputs`),
    /// e.g. "ResNet-50 (batch size 64)".
    #[arg(long)]
    pub job_type: Option<String>,
    /// Initial priority weight.
    #[arg(long)]
    pub priority: Option<f64>,
    /// Expected duration in seconds (for policies such as SJF).
    #[arg(long)]
    pub expected_duration: Option<f64>,
    /// Iterations in total.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// A synthetic job of this many seconds of work (on real GPUs: running
    /// time, unless --iterations says how many iterations to run).
    #[arg(long, conflicts_with = "command")]
    pub seconds: Option<f64>,
    /// Synthetic jobs on real GPUs: work per GPU per iteration, in GFLOP.
    #[arg(long, requires = "seconds")]
    pub gflops_per_iteration: Option<f64>,
    /// Device memory per GPU, e.g. 1Gi, 512Mi or bytes.
    #[arg(long)]
    pub memory: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `wsched policy load|swap|list|unload`
#[derive(Subcommand, Debug)]
pub enum PolicyRemoteCommand {
    /// Upload a plugin to the server (compiled and checked there; not yet active).
    Load {
        /// The .wasm component.
        plugin: PathBuf,
        /// Name to load it under [default: the file name without .wasm].
        #[arg(long)]
        name: Option<String>,
    },
    /// Make a loaded plugin (or builtin-fifo) the active policy.
    Swap {
        /// The name it was loaded under.
        name: String,
        /// Config string for its init.
        #[arg(long, default_value = "")]
        config: String,
    },
    /// List loaded plugins with their statistics.
    List,
    /// Forget a loaded plugin that is not active.
    Unload {
        /// The name it was loaded under.
        name: String,
    },
}

/// `wsched gpu ...`
#[derive(Subcommand, Debug)]
pub enum GpuCommand {
    /// Every GPU with its state, residents and allocation.
    List,
}

struct Client {
    channel: Channel,
    token: Option<String>,
    output: Output,
}

impl ConnectArgs {
    fn state_dir(&self) -> Option<PathBuf> {
        self.state_dir.clone().or_else(wsched::service::default_state_dir)
    }

    fn address(&self) -> String {
        let address = self
            .server
            .clone()
            .or_else(|| std::env::var("WSCHED_SERVER").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                let dir = self.state_dir()?;
                let text = std::fs::read_to_string(dir.join("serve.addr")).ok()?;
                Some(text.trim().to_string())
            })
            .unwrap_or_else(|| wsched::service::DEFAULT_LISTEN.to_string());
        if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        }
    }

    /// The token given explicitly: `--token`, `--token-file` or
    /// `$WSCHED_TOKEN`, in that order (none: the caller's default).
    pub fn given_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            tracing::warn!(
                "--token is visible to every user of this machine in `ps`; prefer --token-file or $WSCHED_TOKEN"
            );
            return Ok(Some(token.clone()));
        }
        if let Some(path) = &self.token_file {
            return wsched::service::read_token_file(path).map(Some);
        }
        Ok(std::env::var("WSCHED_TOKEN").ok().filter(|s| !s.is_empty()))
    }

    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = self.given_token()? {
            return Ok(Some(token));
        }
        // The local server's own token, when this user may read it.
        Ok(self.state_dir().and_then(|dir| {
            let text = std::fs::read_to_string(wsched::service::token_path(&dir)).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        }))
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let address = self.address();
        let channel = Channel::from_shared(address.clone())
            .with_context(|| format!("--server: {address} is not an address"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach a wsched server at {address} (is `wsched serve` running?)"))?;
        Ok(Client {
            channel,
            token: self.token()?,
            output: self.output,
        })
    }
}

impl Client {
    fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .context("the token contains characters not allowed in a header")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    fn jobs(&self) -> proto::jobs_client::JobsClient<Channel> {
        proto::jobs_client::JobsClient::new(self.channel.clone())
    }

    fn policies(&self) -> proto::policies_client::PoliciesClient<Channel> {
        proto::policies_client::PoliciesClient::new(self.channel.clone()).max_encoding_message_size(usize::MAX)
    }

    fn print(&self, value: &Value, table: impl FnOnce() -> String) {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
            Output::Table => print!("{}", table()),
        }
    }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(status.code()), status.message())
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        FailedPrecondition => "refused",
        Unauthenticated => "not authenticated",
        PermissionDenied => "permission denied",
        Unavailable => "unavailable",
        _ => "error",
    }
}

/// A state's name, lower case.
pub fn state_name(state: i32) -> &'static str {
    match proto::JobState::try_from(state) {
        Ok(proto::JobState::Pending) => "pending",
        Ok(proto::JobState::Running) => "running",
        Ok(proto::JobState::Suspended) => "suspended",
        Ok(proto::JobState::Finished) => "finished",
        Ok(proto::JobState::Failed) => "failed",
        _ => "unknown",
    }
}

/// A job as JSON (states by name, times as Unix seconds).
pub fn job_json(job: &proto::Job) -> Value {
    let spec = job.spec.clone().unwrap_or_default();
    let work = match &spec.work {
        Some(Work::Command(c)) => json!({"command": c.argv, "env": c.env, "workdir": c.workdir}),
        Some(Work::Synthetic(s)) => json!({"synthetic": {
            "seconds": s.seconds,
            "gflops_per_iteration": s.gflops_per_iteration,
            "fault_at_iteration": s.fault_at_iteration,
        }}),
        None => Value::Null,
    };
    json!({
        "id": job.id,
        "name": spec.name,
        "user": spec.user,
        "gpus": spec.gpus,
        "gpu_fraction": spec.gpu_fraction,
        "job_type": spec.job_type,
        "expected_duration_seconds": spec.expected_duration_seconds,
        "iterations": spec.iterations,
        "memory_per_gpu_bytes": spec.memory_per_gpu_bytes,
        "work": work,
        "state": state_name(job.state),
        "submit_time": job.submit_time,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "placement": job.placement,
        "fraction": job.fraction,
        "progress": job.progress,
        "attained_gpu_seconds": job.attained_gpu_seconds,
        "preemptions": job.preemptions,
        "migrations": job.migrations,
        "iterations_done": job.iterations_done,
        "iteration_time_seconds": job.iteration_time_seconds,
        "failure": job.failure,
        "recoveries": job.recoveries,
        "priority": job.priority,
        "process_group": job.process_group,
        "notes": job.notes.iter().map(|n| json!({"time": n.time, "text": n.text})).collect::<Vec<_>>(),
    })
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn ago(t: f64) -> String {
    let s = (unix_now() - t).max(0.0);
    match s {
        s if s < 120.0 => format!("{s:.0}s ago"),
        s if s < 7200.0 => format!("{:.0}m ago", s / 60.0),
        s => format!("{:.1}h ago", s / 3600.0),
    }
}

fn job_row(job: &proto::Job) -> Vec<String> {
    let spec = job.spec.clone().unwrap_or_default();
    let work = match &spec.work {
        Some(Work::Command(c)) => c.argv.join(" "),
        Some(Work::Synthetic(s)) => format!("synthetic {}s", s.seconds),
        None => String::new(),
    };
    let work: String = if work.chars().count() > 40 {
        work.chars().take(39).chain(['…']).collect()
    } else {
        work
    };
    let gpus = job.placement.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    vec![
        job.id.to_string(),
        spec.name,
        spec.user,
        state_name(job.state).to_string(),
        spec.gpus.to_string(),
        if gpus.is_empty() { "-".into() } else { gpus },
        job.progress
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_else(|| "-".into()),
        ago(job.submit_time),
        work,
    ]
}

const JOB_HEADER: [&str; 9] = [
    "ID",
    "NAME",
    "USER",
    "STATE",
    "GPUS",
    "ON",
    "PROGRESS",
    "SUBMITTED",
    "WORK",
];

/// Run `wsched job ...`.
pub async fn job(command: JobCommand, connect: &ConnectArgs) -> anyhow::Result<()> {
    let client = connect.connect().await?;
    match command {
        JobCommand::Submit(args) => {
            let mut specs = submit_specs(&args)?;
            // One job through SubmitJob; several (a file of documents) all
            // or none through SubmitJobs, in requests of at most its limit.
            let ids = if specs.len() == 1 {
                let request = client.request(proto::SubmitJobRequest { spec: specs.pop() })?;
                vec![
                    client
                        .jobs()
                        .submit_job(request)
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .id,
                ]
            } else {
                let mut ids = Vec::with_capacity(specs.len());
                for chunk in request_chunks(&specs) {
                    let first = ids.len() + 1;
                    let request = client.request(proto::SubmitJobsRequest { specs: chunk.to_vec() })?;
                    let response = client.jobs().submit_jobs(request).await.map_err(|status| {
                        let error = status_error(status);
                        match &args.file {
                            Some(file) => error.context(format!(
                                "{}: documents {first}-{}, none submitted{} (specs[i] is document {first}+i)",
                                file.display(),
                                first + chunk.len() - 1,
                                match (ids.first(), ids.last()) {
                                    (Some(low), Some(high)) => {
                                        format!("; documents 1-{} were, as jobs {low} to {high}", first - 1)
                                    }
                                    _ => String::new(),
                                }
                            )),
                            None => error,
                        }
                    })?;
                    ids.extend(response.into_inner().ids);
                }
                ids
            };
            client.print(&json!({ "ids": ids }), || {
                ids.iter().map(|id| format!("job {id} submitted\n")).collect()
            });
        }
        JobCommand::List { states, user, limit } => {
            // Page by page: a server of many jobs answers in bounded pages.
            let mut jobs = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = client.request(proto::ListJobsRequest {
                    states: states.iter().map(|s| s.proto() as i32).collect(),
                    user: user.clone().unwrap_or_default(),
                    limit,
                    page_size: wsched::service::grpc::MAX_PAGE_SIZE,
                    page_token: std::mem::take(&mut page_token),
                })?;
                let page = client
                    .jobs()
                    .list_jobs(request)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            client.print(&Value::Array(jobs.iter().map(job_json).collect()), || {
                table(&JOB_HEADER, &jobs.iter().map(job_row).collect::<Vec<_>>())
            });
        }
        JobCommand::Get { id } => {
            let request = client.request(proto::GetJobRequest { id })?;
            let job = client.jobs().get_job(request).await.map_err(status_error)?.into_inner();
            client.print(&job_json(&job), || job_details(&job));
        }
        JobCommand::Cancel { id } => {
            let request = client.request(proto::CancelJobRequest { id })?;
            let job = client
                .jobs()
                .cancel_job(request)
                .await
                .map_err(status_error)?
                .into_inner();
            client.print(&job_json(&job), || format!("job {id} cancelled\n"));
        }
        JobCommand::Watch { id, current, count } => {
            let request = client.request(proto::WatchRequest {
                job_id: id,
                include_current: current,
            })?;
            let mut stream = client.jobs().watch(request).await.map_err(status_error)?.into_inner();
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(event) = stream.message().await.map_err(status_error)? else {
                    break;
                };
                seen += 1;
                match client.output {
                    Output::Json => println!("{}", event_json(&event)),
                    Output::Table => println!("{}", event_line(&event)),
                }
            }
        }
    }
    Ok(())
}

/// Split specs into `SubmitJobs` requests within the server's limits on
/// count and size (half the byte limit, leaving room for the framing).
fn request_chunks(specs: &[proto::JobSpec]) -> Vec<&[proto::JobSpec]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, spec) in specs.iter().enumerate() {
        let len = prost::Message::encoded_len(spec) + 4;
        if i > start
            && (i - start == wsched::service::grpc::MAX_SPECS_PER_REQUEST
                || bytes + len > wsched::service::grpc::MAX_JOBS_REQUEST_BYTES / 2)
        {
            chunks.push(&specs[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < specs.len() {
        chunks.push(&specs[start..]);
    }
    chunks
}

fn submit_specs(args: &SubmitArgs) -> anyhow::Result<Vec<proto::JobSpec>> {
    let user = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "default".into());
    if let Some(file) = &args.file {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
        };
        return wsched::service::manifest::parse(&text, &user).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()));
    }
    let work = match (&args.seconds, args.command.is_empty()) {
        (Some(seconds), true) => Work::Synthetic(proto::Synthetic {
            seconds: *seconds,
            gflops_per_iteration: args.gflops_per_iteration,
            fault_at_iteration: None,
        }),
        (None, false) => Work::Command(proto::Command {
            argv: args.command.clone(),
            ..Default::default()
        }),
        _ => bail!("give a job file (-f), a synthetic workload (--seconds N), or a command after `--`"),
    };
    Ok(vec![proto::JobSpec {
        name: args.name.clone(),
        user,
        gpus: args.gpus,
        gpu_fraction: args.gpu_fraction,
        priority: args.priority,
        expected_duration_seconds: args.expected_duration,
        iterations: args.iterations,
        memory_per_gpu_bytes: match &args.memory {
            Some(text) => wsched::service::manifest::memory_bytes("--memory", text).map_err(|e| anyhow::anyhow!(e))?,
            None => 0,
        },
        work: Some(work),
        job_type: args.job_type.clone(),
    }])
}

fn job_details(job: &proto::Job) -> String {
    let json = job_json(job);
    let mut out = String::new();
    if let Value::Object(map) = json {
        for (key, value) in map {
            if value.is_null() || value == json!("") || value == json!([]) {
                continue;
            }
            if key == "notes" {
                continue; // below, one a line
            }
            out.push_str(&format!("{key:<26} {value}\n"));
        }
    }
    for note in &job.notes {
        out.push_str(&format!("{:<26} {}: {}\n", "note", ago(note.time), note.text));
    }
    out
}

/// An event as one JSON line.
pub fn event_json(event: &proto::Event) -> Value {
    match &event.kind {
        Some(proto::event::Kind::Job(job)) => json!({"time": event.time, "job": job_json(job)}),
        Some(proto::event::Kind::Policy(p)) => json!({
            "time": event.time,
            "policy": {"from": p.from, "to": p.to, "reason": p.reason, "state_handed_over": p.state_handed_over}
        }),
        Some(proto::event::Kind::Gpu(g)) => json!({"time": event.time, "gpu": {"id": g.gpu, "online": g.online}}),
        Some(proto::event::Kind::JobDeleted(id)) => json!({"time": event.time, "job_deleted": id}),
        None => json!({"time": event.time}),
    }
}

fn event_line(event: &proto::Event) -> String {
    match &event.kind {
        Some(proto::event::Kind::Job(job)) => {
            let name = job.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
            let on = if job.placement.is_empty() {
                String::new()
            } else {
                format!(" on GPUs {:?}", job.placement)
            };
            let failure = if job.failure.is_empty() {
                String::new()
            } else {
                format!(" ({})", job.failure)
            };
            format!("job {} {name} {}{on}{failure}", job.id, state_name(job.state))
        }
        Some(proto::event::Kind::Policy(p)) => format!("policy {} -> {} ({})", p.from, p.to, p.reason),
        Some(proto::event::Kind::Gpu(g)) => format!("gpu {} {}", g.gpu, if g.online { "online" } else { "offline" }),
        Some(proto::event::Kind::JobDeleted(id)) => format!("job {id} deleted (retention time over)"),
        None => "(empty event)".into(),
    }
}

/// Run `wsched policy load|swap|list|unload`.
pub async fn policy(command: PolicyRemoteCommand, connect: &ConnectArgs) -> anyhow::Result<()> {
    let client = connect.connect().await?;
    match command {
        PolicyRemoteCommand::Load { plugin, name } => {
            let wasm = std::fs::read(&plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
            let name = name.unwrap_or_else(|| {
                plugin
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string()
            });
            let request = client.request(proto::LoadPolicyRequest {
                name,
                source: Some(proto::load_policy_request::Source::Wasm(wasm)),
            })?;
            let policy = client
                .policies()
                .load_policy(request)
                .await
                .map_err(status_error)?
                .into_inner();
            client.print(&policy_json(&policy), || {
                format!(
                    "loaded {} ({} bytes, sha256 {}); activate it with `wsched policy swap {}`\n",
                    policy.name,
                    policy.size_bytes,
                    &policy.sha256[..policy.sha256.len().min(12)],
                    policy.name
                )
            });
        }
        PolicyRemoteCommand::Swap { name, config } => {
            let request = client.request(proto::SwapPolicyRequest { name, config })?;
            let swap = client
                .policies()
                .swap_policy(request)
                .await
                .map_err(status_error)?
                .into_inner();
            client.print(
                &json!({"from": swap.from, "to": swap.to, "state_handed_over": swap.state_handed_over, "note": swap.note}),
                || {
                    let mut line = format!(
                        "active policy: {} -> {}{}\n",
                        swap.from,
                        swap.to,
                        if swap.state_handed_over {
                            " (state handed over)"
                        } else {
                            ""
                        }
                    );
                    if !swap.note.is_empty() {
                        line.push_str(&format!("note: {}\n", swap.note));
                    }
                    line
                },
            );
        }
        PolicyRemoteCommand::List => {
            let list = client
                .policies()
                .list_policies(client.request(proto::ListPoliciesRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "active": list.active,
                "swaps": list.swaps,
                "ejections": list.ejections,
                "strikes": list.strikes,
                "policies": list.policies.iter().map(policy_json).collect::<Vec<_>>(),
            });
            client.print(&value, || {
                let rows: Vec<Vec<String>> = list
                    .policies
                    .iter()
                    .map(|p| {
                        let s = p.stats.unwrap_or_default();
                        vec![
                            format!("{}{}", if p.active { "* " } else { "  " }, p.name),
                            p.plugin_name.clone(),
                            if p.size_bytes > 0 {
                                p.size_bytes.to_string()
                            } else {
                                "-".into()
                            },
                            s.calls.to_string(),
                            format!("{:.1}", s.p50_seconds * 1e6),
                            format!("{:.1}", s.p99_seconds * 1e6),
                            s.strikes.to_string(),
                            s.ejections.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "PLUGIN",
                        "BYTES",
                        "CALLS",
                        "P50_US",
                        "P99_US",
                        "STRIKES",
                        "EJECTIONS",
                    ],
                    &rows,
                )
            });
        }
        PolicyRemoteCommand::Unload { name } => {
            let request = client.request(proto::UnloadPolicyRequest { name: name.clone() })?;
            client.policies().unload_policy(request).await.map_err(status_error)?;
            client.print(&json!({"unloaded": name}), || format!("unloaded {name}\n"));
        }
    }
    Ok(())
}

fn policy_json(p: &proto::Policy) -> Value {
    let s = p.stats.unwrap_or_default();
    json!({
        "name": p.name,
        "plugin_name": p.plugin_name,
        "size_bytes": p.size_bytes,
        "sha256": p.sha256,
        "active": p.active,
        "config": p.config,
        "stats": {
            "calls": s.calls,
            "p50_seconds": s.p50_seconds,
            "p99_seconds": s.p99_seconds,
            "actions_applied": s.actions_applied,
            "actions_rejected": s.actions_rejected,
            "strikes": s.strikes,
            "ejections": s.ejections,
        },
    })
}

/// Run `wsched gpu list`.
pub async fn gpu(command: GpuCommand, connect: &ConnectArgs) -> anyhow::Result<()> {
    let client = connect.connect().await?;
    match command {
        GpuCommand::List => {
            let state = proto::cluster_client::ClusterClient::new(client.channel.clone())
                .get_cluster(client.request(proto::GetClusterRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "backend": state.backend,
                "policy": state.policy,
                "nodes": state.nodes,
                "utilisation": state.utilisation,
                "pending_jobs": state.pending_jobs,
                "running_jobs": state.running_jobs,
                "suspended_jobs": state.suspended_jobs,
                "gpus": state.gpus.iter().map(|g| json!({
                    "id": g.id, "node": g.node, "kind": g.kind, "online": g.online,
                    "memory_total_bytes": g.memory_total_bytes, "memory_used_bytes": g.memory_used_bytes,
                    "allocated": g.allocated,
                    "uuid": g.uuid, "compute_capability": g.compute_capability,
                    "measured_utilisation": g.measured_utilisation,
                    "measured_memory_used_bytes": g.measured_memory_used_bytes,
                    "residents": g.residents.iter().map(|r| json!({"job": r.job, "fraction": r.fraction})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            client.print(&value, || {
                let rows: Vec<Vec<String>> = state
                    .gpus
                    .iter()
                    .map(|g| {
                        let jobs: Vec<String> = g
                            .residents
                            .iter()
                            .map(|r| {
                                if r.fraction < 1.0 {
                                    format!("{}({:.2})", r.job, r.fraction)
                                } else {
                                    r.job.to_string()
                                }
                            })
                            .collect();
                        vec![
                            g.id.to_string(),
                            g.node.to_string(),
                            g.kind.clone(),
                            if g.online { "online".into() } else { "offline".into() },
                            format!("{:.0}%", g.allocated * 100.0),
                            format!(
                                "{:.1}/{:.1}",
                                g.memory_used_bytes as f64 / 1e9,
                                g.memory_total_bytes as f64 / 1e9
                            ),
                            if jobs.is_empty() { "-".into() } else { jobs.join(",") },
                        ]
                    })
                    .collect();
                let mut out = table(&["GPU", "NODE", "KIND", "STATE", "ALLOCATED", "MEM_GB", "JOBS"], &rows);
                for g in state.gpus.iter().filter(|g| !g.uuid.is_empty()) {
                    let measured = match (g.measured_utilisation, g.measured_memory_used_bytes) {
                        (Some(u), Some(m)) => {
                            format!("; measured: {:.0}% busy, {:.1} GB used", u * 100.0, m as f64 / 1e9)
                        }
                        _ => String::new(),
                    };
                    out.push_str(&format!(
                        "GPU {}: {}, compute capability {}{measured}\n",
                        g.id, g.uuid, g.compute_capability
                    ));
                }
                out.push_str(&format!(
                    "\nbackend {}, policy {}, utilisation {:.0}%, jobs: {} pending, {} running, {} suspended\n",
                    state.backend,
                    state.policy,
                    state.utilisation * 100.0,
                    state.pending_jobs,
                    state.running_jobs,
                    state.suspended_jobs
                ));
                out
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(bytes: usize) -> proto::JobSpec {
        proto::JobSpec {
            name: "x".repeat(bytes),
            user: "u".into(),
            gpus: 1,
            ..Default::default()
        }
    }

    #[test]
    fn batches_stay_within_the_servers_count_and_size_limits() {
        let many = vec![sized(10); 25_000];
        let lens: Vec<usize> = request_chunks(&many).iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![10_000, 10_000, 5_000]);

        let big = vec![sized(1 << 20); 20];
        let chunks = request_chunks(&big);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 20);
        for chunk in &chunks {
            let bytes: usize = chunk.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= wsched::service::grpc::MAX_JOBS_REQUEST_BYTES / 2, "{bytes}");
        }

        // A single spec over the limit still goes (the server says it is too large).
        let huge = vec![sized(9 << 20), sized(1)];
        let lens: Vec<usize> = request_chunks(&huge).iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![1, 1]);
        assert!(request_chunks(&[]).is_empty());
    }
}
