//! The gRPC services: check who may call, check what was asked, and pass it
//! to the scheduler loop.
//!
//! Everything that can be checked without cluster state is checked here,
//! so a malformed request never reaches the loop and always gets
//! `INVALID_ARGUMENT` with the field's name first (`spec.gpus: ...`).
//! Compiling a plugin happens here too, on a blocking thread, so that a
//! slow compile never delays a decision.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::core::{CoreHandle, LoadedPlugin, Request as CoreRequest};
use crate::proto;
use crate::proto::job_spec::Work;

/// Longest job name, user name or plugin name accepted.
const MAX_NAME: usize = 256;

/// Who may change things: mutating calls must carry `authorization:
/// Bearer TOKEN`.
#[derive(Clone)]
pub struct Auth {
    token: Arc<str>,
}

impl Auth {
    /// Calls must present `token`.
    pub fn new(token: &str) -> Self {
        Auth { token: token.into() }
    }

    /// Refuse the call unless it carries the token.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this call changes the scheduler and needs `authorization: Bearer TOKEN` (the token is in the server's state directory)",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer TOKEN`"))?;
        if constant_time_eq(presented.trim().as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            // A wrong token is no identity at all: UNAUTHENTICATED, not
            // PERMISSION_DENIED, which is for a known caller lacking a right.
            Err(Status::unauthenticated("authorization: wrong token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// What is wrong with a name or user field, if anything.
fn check_name(value: &str, required: bool) -> Result<(), String> {
    if required && value.trim().is_empty() {
        return Err("required".into());
    }
    if value.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// Most jobs one `SubmitJobs` request may carry: enough for any sweep,
/// small enough that one request cannot stall the scheduler loop for long.
pub const MAX_SPECS_PER_REQUEST: usize = 10_000;

/// Largest `Jobs` request, in bytes (gRPC's default of 4 MiB is tight for
/// 10,000 specs with long command lines).
pub const MAX_JOBS_REQUEST_BYTES: usize = 16 << 20;

/// Largest synthetic iteration accepted: about a minute on today's GPUs.
const MAX_GFLOPS_PER_ITERATION: f64 = 1.0e6;

/// What is wrong with a number of seconds, if anything.
fn check_seconds(value: f64) -> Result<(), String> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("must be a finite number of seconds >= 0, got {value}"));
    }
    Ok(())
}

/// Check a job spec as far as it can be without the cluster (the loop
/// checks the GPU count and memory against the GPUs it has). `field` is
/// where the spec sits in the request (`spec`, `specs[3]`), so that an
/// error names the field as the client wrote it.
pub fn validate_spec<'a>(spec: Option<&'a proto::JobSpec>, field: &str) -> Result<&'a proto::JobSpec, Status> {
    // The field's full name is only spelled out for an error.
    let at = |name: &str| format!("{field}.{name}");
    let spec = spec.ok_or_else(|| invalid(field, "required"))?;
    check_name(&spec.name, false).map_err(|why| invalid(&at("name"), why))?;
    check_name(&spec.user, true).map_err(|why| invalid(&at("user"), why))?;
    if spec.gpus == 0 {
        return Err(invalid(&at("gpus"), "must be at least 1"));
    }
    if let Some(f) = spec.gpu_fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(invalid(&at("gpu_fraction"), format!("must be in (0, 1], got {f}")));
        }
        if spec.gpus != 1 {
            return Err(invalid(&at("gpu_fraction"), "only for jobs of 1 GPU"));
        }
    }
    if let Some(p) = spec.priority
        && !(p.is_finite() && p > 0.0)
    {
        return Err(invalid(
            &at("priority"),
            format!("must be a finite number > 0, got {p}"),
        ));
    }
    if let Some(d) = spec.expected_duration_seconds {
        check_seconds(d).map_err(|why| invalid(&at("expected_duration_seconds"), why))?;
    }
    match &spec.work {
        None => return Err(invalid(&at("work"), "set either command or synthetic")),
        Some(Work::Command(c)) => {
            let Some(program) = c.argv.first() else {
                return Err(invalid(&at("command.argv"), "empty: give at least the program"));
            };
            if program.is_empty() {
                return Err(invalid(&at("command.argv[0]"), "the program is empty"));
            }
            if c.argv
                .iter()
                .chain(c.env.keys())
                .chain(c.env.values())
                .any(|s| s.contains('\0'))
            {
                return Err(invalid(&at("command"), "contains a NUL byte"));
            }
            if c.env.keys().any(|k| k.is_empty() || k.contains('=')) {
                return Err(invalid(&at("command.env"), "names must be non-empty and without '='"));
            }
        }
        Some(Work::Synthetic(s)) => {
            check_seconds(s.seconds).map_err(|why| invalid(&at("synthetic.seconds"), why))?;
            if let Some(g) = s.gflops_per_iteration
                && !(g.is_finite() && g > 0.0 && g <= MAX_GFLOPS_PER_ITERATION)
            {
                return Err(invalid(
                    &at("synthetic.gflops_per_iteration"),
                    format!("must be in (0, {MAX_GFLOPS_PER_ITERATION}], got {g}"),
                ));
            }
            if s.fault_at_iteration == Some(0) {
                return Err(invalid(&at("synthetic.fault_at_iteration"), "iterations count from 1"));
            }
        }
    }
    Ok(spec)
}

/// The `Jobs` service.
#[derive(Clone)]
pub struct JobsApi {
    core: CoreHandle,
    auth: Auth,
}

/// The `Policies` service.
#[derive(Clone)]
pub struct PoliciesApi {
    core: CoreHandle,
    auth: Auth,
    max_plugin_bytes: usize,
}

/// The `Cluster` service.
#[derive(Clone)]
pub struct ClusterApi {
    core: CoreHandle,
}

impl JobsApi {
    /// Jobs served by `core`, mutations guarded by `auth`.
    pub fn new(core: CoreHandle, auth: Auth) -> Self {
        JobsApi { core, auth }
    }
}

impl PoliciesApi {
    /// Policies served by `core`; plugins over `max_plugin_bytes` are refused.
    pub fn new(core: CoreHandle, auth: Auth, max_plugin_bytes: usize) -> Self {
        PoliciesApi {
            core,
            auth,
            max_plugin_bytes,
        }
    }
}

impl ClusterApi {
    /// The cluster view of `core`.
    pub fn new(core: CoreHandle) -> Self {
        ClusterApi { core }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

fn event_job(event: &proto::Event) -> Option<u64> {
    match &event.kind {
        Some(proto::event::Kind::Job(job)) => Some(job.id),
        Some(proto::event::Kind::JobDeleted(id)) => Some(*id),
        _ => None,
    }
}

#[tonic::async_trait]
impl proto::jobs_server::Jobs for JobsApi {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        self.auth.check(&request)?;
        let request = request.into_inner();
        validate_spec(request.spec.as_ref(), "spec")?;
        let spec = request.spec.unwrap_or_default();
        let id = self.core.ask(|reply| CoreRequest::Submit(spec, reply)).await?;
        Ok(Response::new(proto::SubmitJobResponse { id }))
    }

    async fn submit_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<proto::SubmitJobsResponse>, Status> {
        self.auth.check(&request)?;
        let specs = request.into_inner().specs;
        if specs.is_empty() {
            return Err(invalid("specs", "empty: give at least one job"));
        }
        if specs.len() > MAX_SPECS_PER_REQUEST {
            return Err(invalid(
                "specs",
                format!(
                    "{} jobs in one request, at most {MAX_SPECS_PER_REQUEST}: split them",
                    specs.len()
                ),
            ));
        }
        for (i, spec) in specs.iter().enumerate() {
            validate_spec(Some(spec), &format!("specs[{i}]"))?;
        }
        let ids = self.core.ask(|reply| CoreRequest::SubmitMany(specs, reply)).await?;
        Ok(Response::new(proto::SubmitJobsResponse { ids }))
    }

    async fn get_job(&self, request: Request<proto::GetJobRequest>) -> Result<Response<proto::Job>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(self.core.ask(|reply| CoreRequest::Get(id, reply)).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let filter = request.into_inner();
        for (i, &state) in filter.states.iter().enumerate() {
            match proto::JobState::try_from(state) {
                Ok(proto::JobState::Unspecified) | Err(_) => {
                    return Err(invalid(&format!("states[{i}]"), format!("unknown job state {state}")));
                }
                Ok(_) => {}
            }
        }
        check_name(&filter.user, false).map_err(|why| invalid("user", why))?;
        let jobs = self.core.ask(|reply| CoreRequest::List(filter, reply)).await?;
        Ok(Response::new(proto::ListJobsResponse { jobs }))
    }

    async fn cancel_job(&self, request: Request<proto::CancelJobRequest>) -> Result<Response<proto::Job>, Status> {
        self.auth.check(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(
            self.core.ask(|reply| CoreRequest::Cancel(id, reply)).await?,
        ))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let (current, rx) = self
            .core
            .ask(|reply| CoreRequest::Watch(request.include_current, reply))
            .await?;
        let only = request.job_id;
        let wanted = move |event: &proto::Event| only == 0 || event_job(event) == Some(only);
        let current = tokio_stream::iter(current.into_iter().filter(wanted).map(Ok));
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| match item {
            Ok(event) => wanted(&event).then(|| Ok((*event).clone())),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(
                format!("this watcher fell {n} events behind and was cut off; watch again with include_current"),
            ))),
        });
        // A lagged watcher gets one error and the stream ends.
        let live = live.take_while_inclusive_ok();
        Ok(Response::new(Box::pin(current.chain(live))))
    }
}

/// Ends a stream after its first error (included).
trait TakeWhileInclusiveOk: Stream + Sized {
    fn take_while_inclusive_ok(self) -> Pin<Box<dyn Stream<Item = Self::Item> + Send>>;
}

impl<S, T> TakeWhileInclusiveOk for S
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    fn take_while_inclusive_ok(self) -> Pin<Box<dyn Stream<Item = Self::Item> + Send>> {
        let mut failed = false;
        Box::pin(self.map_while(move |item| {
            if failed {
                return None;
            }
            failed = item.is_err();
            Some(item)
        }))
    }
}

/// Whether `bytes` start like a WebAssembly component (not a core module).
fn component_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header)".into());
    }
    // Bytes 4..8: version and layer; layer 1 is a component.
    if bytes[6..8] != [1, 0] {
        return Err("a core WebAssembly module, not a component: wrap it with `wasm-tools component new`".into());
    }
    Ok(())
}

fn check_plugin_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("name", "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "name",
            format!("{name:?}: use letters, digits, '-', '_' and '.' only"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl proto::policies_server::Policies for PoliciesApi {
    async fn load_policy(&self, request: Request<proto::LoadPolicyRequest>) -> Result<Response<proto::Policy>, Status> {
        self.auth.check(&request)?;
        let request = request.into_inner();
        let max = self.max_plugin_bytes;
        let (bytes, default_name, field) = match request.source {
            None => return Err(invalid("source", "set either wasm or path")),
            Some(proto::load_policy_request::Source::Wasm(bytes)) => (bytes, String::new(), "wasm"),
            Some(proto::load_policy_request::Source::Path(path)) => {
                let path = Path::new(&path);
                let meta = std::fs::metadata(path).map_err(|e| invalid("path", format!("{}: {e}", path.display())))?;
                if meta.len() > max as u64 {
                    return Err(invalid(
                        "path",
                        format!("{}: {} bytes, over the limit of {max}", path.display(), meta.len()),
                    ));
                }
                let bytes = std::fs::read(path).map_err(|e| invalid("path", format!("{}: {e}", path.display())))?;
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                (bytes, stem, "path")
            }
        };
        if bytes.len() > max {
            return Err(invalid(
                field,
                format!("{} bytes, over the limit of {max}", bytes.len()),
            ));
        }
        component_header(&bytes).map_err(|why| invalid(field, why))?;
        let given = if request.name.is_empty() {
            default_name
        } else {
            request.name
        };
        if !given.is_empty() {
            check_plugin_name(&given)?;
        }
        let engine = self.core.engine.clone();
        let compile_name = if given.is_empty() {
            "plugin".to_string()
        } else {
            given.clone()
        };
        let (plugin, bytes) = tokio::task::spawn_blocking(move || {
            LoadedPlugin::compile(&engine, &compile_name, &bytes).map(|plugin| (plugin, bytes))
        })
        .await
        .map_err(|e| Status::internal(format!("compiling the plugin panicked: {e}")))?
        .map_err(|e| invalid(field, e))?;
        // No name given: the one the plugin gives itself.
        let name = if given.is_empty() {
            plugin.self_name().to_string()
        } else {
            given
        };
        if name.is_empty() {
            return Err(invalid(
                "name",
                "required: the plugin does not start without its config, so it cannot name itself",
            ));
        }
        check_plugin_name(&name)?;
        let policy = self
            .core
            .ask(|reply| CoreRequest::AddPlugin {
                name,
                plugin,
                bytes,
                reply,
            })
            .await?;
        Ok(Response::new(policy))
    }

    async fn swap_policy(
        &self,
        request: Request<proto::SwapPolicyRequest>,
    ) -> Result<Response<proto::SwapPolicyResponse>, Status> {
        self.auth.check(&request)?;
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(invalid("name", "required"));
        }
        if request.config.len() > 1 << 20 {
            return Err(invalid("config", "longer than 1 MiB"));
        }
        let response = self
            .core
            .ask(|reply| CoreRequest::Swap(request.name, request.config, reply))
            .await?;
        Ok(Response::new(response))
    }

    async fn list_policies(
        &self,
        _request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        Ok(Response::new(self.core.ask(CoreRequest::ListPolicies).await?))
    }

    async fn unload_policy(
        &self,
        request: Request<proto::UnloadPolicyRequest>,
    ) -> Result<Response<proto::UnloadPolicyResponse>, Status> {
        self.auth.check(&request)?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(invalid("name", "required"));
        }
        self.core.ask(|reply| CoreRequest::Unload(name, reply)).await?;
        Ok(Response::new(proto::UnloadPolicyResponse {}))
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for ClusterApi {
    async fn get_cluster(
        &self,
        _request: Request<proto::GetClusterRequest>,
    ) -> Result<Response<proto::ClusterState>, Status> {
        Ok(Response::new(self.core.ask(CoreRequest::Cluster).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(gpus: u32, seconds: f64) -> proto::JobSpec {
        proto::JobSpec {
            user: "alice".into(),
            gpus,
            work: Some(Work::Synthetic(proto::Synthetic {
                seconds,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn field_of(status: Status) -> String {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().split(':').next().unwrap_or_default().to_string()
    }

    #[test]
    fn every_malformed_spec_is_refused_naming_its_field() {
        assert_eq!(field_of(validate_spec(None, "spec").unwrap_err()), "spec");
        let cases: Vec<(&str, proto::JobSpec)> = vec![
            ("spec.gpus", synthetic(0, 1.0)),
            (
                "spec.user",
                proto::JobSpec {
                    user: String::new(),
                    ..synthetic(1, 1.0)
                },
            ),
            ("spec.synthetic.seconds", synthetic(1, f64::NAN)),
            ("spec.synthetic.seconds", synthetic(1, -1.0)),
            (
                "spec.work",
                proto::JobSpec {
                    work: None,
                    ..synthetic(1, 1.0)
                },
            ),
            (
                "spec.gpu_fraction",
                proto::JobSpec {
                    gpu_fraction: Some(1.5),
                    ..synthetic(1, 1.0)
                },
            ),
            (
                "spec.gpu_fraction",
                proto::JobSpec {
                    gpu_fraction: Some(0.5),
                    ..synthetic(2, 1.0)
                },
            ),
            (
                "spec.priority",
                proto::JobSpec {
                    priority: Some(0.0),
                    ..synthetic(1, 1.0)
                },
            ),
            (
                "spec.expected_duration_seconds",
                proto::JobSpec {
                    expected_duration_seconds: Some(f64::INFINITY),
                    ..synthetic(1, 1.0)
                },
            ),
            (
                "spec.name",
                proto::JobSpec {
                    name: "x".repeat(300),
                    ..synthetic(1, 1.0)
                },
            ),
            (
                "spec.command.argv",
                proto::JobSpec {
                    work: Some(Work::Command(proto::Command::default())),
                    ..synthetic(1, 1.0)
                },
            ),
        ];
        for (field, spec) in cases {
            assert_eq!(
                field_of(validate_spec(Some(&spec), "spec").unwrap_err()),
                field,
                "{spec:?}"
            );
        }
        assert!(validate_spec(Some(&synthetic(2, 10.0)), "spec").is_ok());
    }

    #[test]
    fn only_components_pass_the_header_check() {
        assert!(component_header(b"hello world").is_err());
        assert!(
            component_header(b"\0asm\x01\0\0\0")
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        assert!(component_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
