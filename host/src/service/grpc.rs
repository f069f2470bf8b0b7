//! The gRPC services: check who may call, check what was asked, and pass it
//! to the scheduler loop.
//!
//! Everything that can be checked without cluster state is checked here,
//! so a malformed request never reaches the loop and always gets
//! `INVALID_ARGUMENT` with the field's name first (`spec.gpus: ...`).
//! Anything that may block (compiling a plugin, reading a plugin file,
//! looking at the file system for a command job) runs on a blocking
//! thread, never on the async workers that answer every other call: the
//! server has one of those on two cores, and a stuck read there would
//! stop health checks too.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::core::{CoreHandle, ListFrom, ListQuery, LoadedPlugin, Request as CoreRequest};
use super::spec::{self, ServerChecks, shown};
use crate::proto;
use crate::proto::job_spec::Work;

/// Who may change things, and who may read: mutating calls must carry
/// `authorization: Bearer TOKEN`; reads may (and must, on a server that
/// requires it), and only a read with the token sees environment values.
#[derive(Clone)]
pub struct Auth {
    token: Arc<str>,
    reads_need_token: bool,
}

/// What a read without the token sees instead of an environment value.
pub const REDACTED: &str = "<redacted>";

impl Auth {
    /// Calls must present `token`.
    pub fn new(token: &str) -> Self {
        Auth {
            token: token.into(),
            reads_need_token: false,
        }
    }

    /// Make reads need the token too (`serve --auth-reads`).
    pub fn with_reads_needing_token(mut self, on: bool) -> Self {
        self.reads_need_token = on;
        self
    }

    /// Whether the request carries the token: `Ok(true)` if it does,
    /// `Ok(false)` if it carries none, UNAUTHENTICATED if it carries a
    /// wrong or malformed one.
    fn presented<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Ok(false);
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected `Bearer TOKEN`"))?;
        if constant_time_eq(presented.trim().as_bytes(), self.token.as_bytes()) {
            Ok(true)
        } else {
            // A wrong token is no identity at all: UNAUTHENTICATED, not
            // PERMISSION_DENIED, which is for a known caller lacking a right.
            Err(Status::unauthenticated("authorization: wrong token"))
        }
    }

    /// Refuse the call unless it carries the token.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.presented(request)? {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "this call changes the scheduler and needs `authorization: Bearer TOKEN` (the token is in the server's state directory)",
            ))
        }
    }

    /// Allow a read: `Ok(true)` when it carries the token (it may see
    /// secrets), `Ok(false)` when it carries none (it sees them redacted);
    /// refused when it carries a wrong one, or none on a server whose
    /// reads need the token.
    pub fn check_read<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        let authorized = self.presented(request)?;
        if self.reads_need_token && !authorized {
            return Err(Status::unauthenticated(
                "this server requires `authorization: Bearer TOKEN` for reads too (--auth-reads)",
            ));
        }
        Ok(authorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hide what a job's environment holds from a reader without the token:
/// every value becomes [`REDACTED`] (the names stay, they say what is set).
pub fn redact(job: &mut proto::Job) {
    if let Some(proto::JobSpec {
        work: Some(Work::Command(command)),
        ..
    }) = &mut job.spec
    {
        for value in command.env.values_mut() {
            REDACTED.clone_into(value);
        }
    }
}

fn redact_event(event: &mut proto::Event) {
    if let Some(proto::event::Kind::Job(job)) = &mut event.kind {
        redact(job);
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// Most jobs one `SubmitJobs` request may carry: enough for any sweep,
/// small enough that one request cannot stall the scheduler loop for long.
pub const MAX_SPECS_PER_REQUEST: usize = 10_000;

/// Largest `Jobs` request, in bytes (gRPC's default of 4 MiB is tight for
/// 10,000 specs with long command lines).
pub const MAX_JOBS_REQUEST_BYTES: usize = 16 << 20;

/// Jobs in a page of `ListJobs` when the request does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// Most jobs in a page of `ListJobs`.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Longest a plugin file named by path may take to read.
const PATH_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Check a job spec as far as it can be without the cluster (see
/// [`spec::validate`]); `field` is where it sits in the request.
pub fn validate_spec<'a>(spec: Option<&'a proto::JobSpec>, field: &str) -> Result<&'a proto::JobSpec, Status> {
    let spec = spec.ok_or_else(|| invalid(field, "required"))?;
    spec::validate(spec, field).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// Check command specs against the server's file system and settings, on
/// a blocking thread; gives the specs back. Synthetic jobs need no look.
async fn check_on_server(
    specs: Vec<proto::JobSpec>,
    field: impl Fn(usize) -> String + Send + 'static,
    checks: Arc<ServerChecks>,
) -> Result<Vec<proto::JobSpec>, Status> {
    if !specs.iter().any(|s| matches!(s.work, Some(Work::Command(_)))) {
        return Ok(specs);
    }
    tokio::task::spawn_blocking(move || {
        for (i, spec) in specs.iter().enumerate() {
            spec::check_on_server(spec, &field(i), &checks).map_err(|e| {
                if checks.no_command_jobs && e.field.ends_with(".command") {
                    Status::failed_precondition(e.to_string())
                } else {
                    Status::invalid_argument(e.to_string())
                }
            })?;
        }
        Ok(specs)
    })
    .await
    .map_err(|e| Status::internal(format!("checking the specs panicked: {e}")))?
}

/// What the services share: the loop, who may call, and the settings that
/// shape requests.
#[derive(Clone)]
pub struct Services {
    core: CoreHandle,
    auth: Auth,
    checks: Arc<ServerChecks>,
    max_plugin_bytes: usize,
    /// Where `LoadPolicy` may read plugin files by path (canonical), if
    /// anywhere.
    policy_dir: Option<Arc<Path>>,
    /// One load by path at a time: a stuck read (a hung network file
    /// system) holds one blocking thread, never more.
    path_reads: Arc<tokio::sync::Semaphore>,
    /// Set when the server shuts down: watch streams end.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Services {
    /// Services over `core`, guarded by `auth`. Plugins over
    /// `max_plugin_bytes` are refused; plugin files may be named by path
    /// only inside `policy_dir`; watch streams end when `shutdown` turns
    /// true.
    pub fn new(
        core: CoreHandle,
        auth: Auth,
        checks: ServerChecks,
        max_plugin_bytes: usize,
        policy_dir: Option<PathBuf>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Services {
            core,
            auth,
            checks: Arc::new(checks),
            max_plugin_bytes,
            policy_dir: policy_dir.map(Arc::from),
            path_reads: Arc::new(tokio::sync::Semaphore::new(1)),
            shutdown,
        }
    }

    /// The `Jobs` service.
    pub fn jobs(&self) -> JobsApi {
        JobsApi(self.clone())
    }

    /// The `Policies` service.
    pub fn policies(&self) -> PoliciesApi {
        PoliciesApi(self.clone())
    }

    /// The `Cluster` service.
    pub fn cluster(&self) -> ClusterApi {
        ClusterApi(self.clone())
    }
}

/// The `Jobs` service.
#[derive(Clone)]
pub struct JobsApi(Services);

/// The `Policies` service.
#[derive(Clone)]
pub struct PoliciesApi(Services);

/// The `Cluster` service.
#[derive(Clone)]
pub struct ClusterApi(Services);

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

fn event_job(event: &proto::Event) -> Option<u64> {
    match &event.kind {
        Some(proto::event::Kind::Job(job)) => Some(job.id),
        Some(proto::event::Kind::JobDeleted(id)) => Some(*id),
        _ => None,
    }
}

/// A page token: where the next page starts, and a digest of the filters
/// it was made for (a token reused with other filters is refused rather
/// than giving a page of something else).
fn page_token(next: u64, query: &ListQuery) -> String {
    format!("p1.{next}.{:08x}", filter_digest(query))
}

fn filter_digest(query: &ListQuery) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for state in &query.states {
        hasher.update(&(*state as i32).to_le_bytes());
    }
    hasher.update(&[0xff]);
    hasher.update(query.user.as_bytes());
    hasher.finalize()
}

fn parse_page_token(token: &str, query: &ListQuery) -> Result<u64, Status> {
    let bad = || {
        invalid(
            "page_token",
            format!("{} is not a token this server gave out", shown(token)),
        )
    };
    let mut parts = token.split('.');
    let (Some("p1"), Some(next), Some(digest), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let next: u64 = next.parse().map_err(|_| bad())?;
    let digest = u32::from_str_radix(digest, 16).map_err(|_| bad())?;
    if digest != filter_digest(query) {
        return Err(invalid(
            "page_token",
            "made for other filters: keep states and user the same while paging",
        ));
    }
    Ok(next)
}

#[tonic::async_trait]
impl proto::jobs_server::Jobs for JobsApi {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let api = &self.0;
        api.auth.check(&request)?;
        let request = request.into_inner();
        validate_spec(request.spec.as_ref(), "spec")?;
        let specs = request.spec.into_iter().collect();
        let mut specs = check_on_server(specs, |_| "spec".into(), api.checks.clone()).await?;
        let spec = specs.pop().unwrap_or_default();
        let id = api.core.ask(|reply| CoreRequest::Submit(spec, reply)).await?;
        Ok(Response::new(proto::SubmitJobResponse { id }))
    }

    async fn submit_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<proto::SubmitJobsResponse>, Status> {
        let api = &self.0;
        api.auth.check(&request)?;
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
        let specs = check_on_server(specs, |i| format!("specs[{i}]"), api.checks.clone()).await?;
        let ids = api.core.ask(|reply| CoreRequest::SubmitMany(specs, reply)).await?;
        Ok(Response::new(proto::SubmitJobsResponse { ids }))
    }

    async fn get_job(&self, request: Request<proto::GetJobRequest>) -> Result<Response<proto::Job>, Status> {
        let api = &self.0;
        let authorized = api.auth.check_read(&request)?;
        let id = request.into_inner().id;
        let mut job = api.core.ask(|reply| CoreRequest::Get(id, reply)).await?;
        if !authorized {
            redact(&mut job);
        }
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let api = &self.0;
        let authorized = api.auth.check_read(&request)?;
        let request = request.into_inner();
        let mut states = Vec::with_capacity(request.states.len());
        for (i, &state) in request.states.iter().enumerate() {
            match proto::JobState::try_from(state) {
                Ok(proto::JobState::Unspecified) | Err(_) => {
                    return Err(invalid(&format!("states[{i}]"), format!("unknown job state {state}")));
                }
                Ok(state) => states.push(state),
            }
        }
        states.sort_unstable();
        states.dedup();
        spec::check_name(&request.user, false).map_err(|why| invalid("user", why))?;
        let size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut query = ListQuery {
            states,
            user: request.user,
            from: ListFrom::Oldest,
            size: size as usize,
        };
        if !request.page_token.is_empty() {
            query.from = ListFrom::After(parse_page_token(&request.page_token, &query)?);
        } else if request.limit > 0 {
            query.from = ListFrom::Newest;
            query.size = request.limit.min(MAX_PAGE_SIZE) as usize;
        }
        let newest = matches!(query.from, ListFrom::Newest);
        let page = api.core.ask(|reply| CoreRequest::List(query.clone(), reply)).await?;
        let mut jobs = page.jobs;
        if !authorized {
            jobs.iter_mut().for_each(redact);
        }
        let next_page_token = match page.next {
            Some(next) if !newest => page_token(next, &query),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(&self, request: Request<proto::CancelJobRequest>) -> Result<Response<proto::Job>, Status> {
        let api = &self.0;
        api.auth.check(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(
            api.core.ask(|reply| CoreRequest::Cancel(id, reply)).await?,
        ))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let api = &self.0;
        let authorized = api.auth.check_read(&request)?;
        let request = request.into_inner();
        let (current, rx) = api
            .core
            .ask(|reply| CoreRequest::Watch(request.include_current, reply))
            .await?;
        let only = request.job_id;
        let wanted = move |event: &proto::Event| only.is_none_or(|id| event_job(event) == Some(id));
        let shown = move |mut event: proto::Event| {
            if !authorized {
                redact_event(&mut event);
            }
            Ok(event)
        };
        let current = tokio_stream::iter(current.into_iter().filter(wanted).map(shown));
        let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| match item {
            Ok(event) => wanted(&event).then(|| shown((*event).clone())),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(
                format!("this watcher fell {n} events behind and was cut off; watch again with include_current"),
            ))),
        });
        // The stream ends when the server shuts down (or the scheduler
        // loop stops), with a status that says so: a graceful shutdown
        // must not wait for watchers that would never hang up.
        let stopping = tokio_stream::wrappers::WatchStream::new(api.shutdown.clone())
            .filter(|&stopping| stopping)
            .map(|_| None);
        let farewell = tokio_stream::iter(std::iter::once_with(|| {
            Err(Status::unavailable(
                "the server is shutting down; watch again (with include_current) once it is back",
            ))
        }));
        // A lagged watcher gets one error and the stream ends.
        let live = live
            .map(Some)
            .merge(stopping)
            .map_while(|item| item)
            .chain(farewell)
            .take_while_inclusive_ok();
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

/// Longest name a plugin may be loaded under.
const MAX_PLUGIN_NAME: usize = 64;

fn check_plugin_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_PLUGIN_NAME {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_PLUGIN_NAME} characters, got {}", name.len()),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "name",
            format!("{}: use letters, digits, '-', '_' and '.' only", shown(name)),
        ));
    }
    Ok(())
}

/// Read a plugin file named by a client: only inside the policy directory
/// (symbolic links resolved first), only a regular file, bounded, on a
/// blocking thread, within a time limit. Returns the bytes and the file
/// stem (the default name).
async fn read_policy_path(api: &Services, requested: String) -> Result<(Vec<u8>, String), Status> {
    let Some(dir) = api.policy_dir.clone() else {
        return Err(Status::failed_precondition(
            "path: this server does not read plugins from its own file system; send the component's bytes (`wsched policy load FILE` does), or start the server with --policy-dir DIR",
        ));
    };
    let permit = api
        .path_reads
        .clone()
        .try_acquire_owned()
        .map_err(|_| Status::resource_exhausted("path: another load by path is still reading; try again"))?;
    let max = api.max_plugin_bytes;
    let read = tokio::task::spawn_blocking(move || {
        let _permit = permit; // held until the read itself is over
        let joined = dir.join(&requested);
        let real = joined
            .canonicalize()
            .map_err(|e| invalid("path", format!("{}: {e}", shown(&requested))))?;
        if !real.starts_with(&*dir) {
            return Err(Status::permission_denied(format!(
                "path: {} is outside the policy directory {}",
                shown(&requested),
                dir.display()
            )));
        }
        let bytes = crate::files::read_regular_file(&real, max)
            .map_err(|why| invalid("path", format!("{}: {why}", shown(&requested))))?;
        let stem = real
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        Ok((bytes, stem))
    });
    match tokio::time::timeout(PATH_READ_TIMEOUT, read).await {
        Ok(joined) => joined.map_err(|e| Status::internal(format!("reading the plugin panicked: {e}")))?,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "path: reading the file took longer than {} s",
            PATH_READ_TIMEOUT.as_secs()
        ))),
    }
}

#[tonic::async_trait]
impl proto::policies_server::Policies for PoliciesApi {
    async fn load_policy(&self, request: Request<proto::LoadPolicyRequest>) -> Result<Response<proto::Policy>, Status> {
        let api = &self.0;
        api.auth.check(&request)?;
        let request = request.into_inner();
        let max = api.max_plugin_bytes;
        if !request.name.is_empty() {
            check_plugin_name(&request.name)?;
        }
        let (bytes, default_name, field) = match request.source {
            None => return Err(invalid("source", "set either wasm or path")),
            Some(proto::load_policy_request::Source::Wasm(bytes)) => (bytes, String::new(), "wasm"),
            Some(proto::load_policy_request::Source::Path(path)) => {
                let (bytes, stem) = read_policy_path(api, path).await?;
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
        let engine = api.core.engine.clone();
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
        let policy = api
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
        let api = &self.0;
        api.auth.check(&request)?;
        let request = request.into_inner();
        check_plugin_name(&request.name)?;
        if request.config.len() > 1 << 20 {
            return Err(invalid("config", "longer than 1 MiB"));
        }
        let response = api
            .core
            .ask(|reply| CoreRequest::Swap(request.name, request.config, reply))
            .await?;
        Ok(Response::new(response))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        let api = &self.0;
        api.auth.check_read(&request)?;
        Ok(Response::new(api.core.ask(CoreRequest::ListPolicies).await?))
    }

    async fn unload_policy(
        &self,
        request: Request<proto::UnloadPolicyRequest>,
    ) -> Result<Response<proto::UnloadPolicyResponse>, Status> {
        let api = &self.0;
        api.auth.check(&request)?;
        let name = request.into_inner().name;
        check_plugin_name(&name)?;
        api.core.ask(|reply| CoreRequest::Unload(name, reply)).await?;
        Ok(Response::new(proto::UnloadPolicyResponse {}))
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for ClusterApi {
    async fn get_cluster(
        &self,
        request: Request<proto::GetClusterRequest>,
    ) -> Result<Response<proto::ClusterState>, Status> {
        let api = &self.0;
        api.auth.check_read(&request)?;
        Ok(Response::new(api.core.ask(CoreRequest::Cluster).await?))
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
            ("spec.synthetic.seconds", synthetic(1, 1e20)),
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

    #[test]
    fn page_tokens_round_trip_and_bind_their_filters() {
        let query = ListQuery {
            states: vec![proto::JobState::Pending],
            user: "alice".into(),
            from: ListFrom::Oldest,
            size: 10,
        };
        let token = page_token(1234, &query);
        assert_eq!(parse_page_token(&token, &query).unwrap(), 1234);
        let other = ListQuery {
            user: "bob".into(),
            ..query.clone()
        };
        assert!(parse_page_token(&token, &other).is_err());
        for bad in ["", "p1", "p1.x.0", "p2.1.0", &"p1.1.".repeat(1_000_000)] {
            let error = parse_page_token(bad, &query).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
            assert!(error.message().len() < 200);
        }
    }

    #[test]
    fn reads_without_the_token_see_no_secret() {
        let mut job = proto::Job {
            spec: Some(proto::JobSpec {
                work: Some(Work::Command(proto::Command {
                    argv: vec!["train".into()],
                    env: [("API_KEY".to_string(), "s3cret".to_string())].into(),
                    workdir: String::new(),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        redact(&mut job);
        let Some(Work::Command(c)) = job.spec.and_then(|s| s.work) else {
            panic!("command")
        };
        assert_eq!(c.env["API_KEY"], REDACTED);
    }
}
