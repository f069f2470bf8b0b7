//! A real `wsched serve` process on a loopback port, and the gRPC helpers
//! the service tests drive it with.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Request;
use tonic::transport::Channel;
use wsched::proto;
use wsched::proto::jobs_client::JobsClient;
use wsched::proto::policies_client::PoliciesClient;

/// A `wsched serve` child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub state: PathBuf,
    pub address: String,
    pub metrics: Option<String>,
    pub token: String,
}

impl Server {
    /// Start a server with its state in `state` and these extra flags.
    pub fn start(state: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(state, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let _ = std::fs::remove_file(state.join("serve.addr"));
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))
            .expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_wsched"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("log"))
            .spawn()
            .expect("start wsched serve");
        let addr_file = state.join("serve.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && text.ends_with('\n')
            {
                break text.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start; see {}",
                state.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The metrics address is only in the log.
        let metrics = (0..100).find_map(|_| {
            let log = std::fs::read_to_string(state.with_extension("log")).unwrap_or_default();
            let found = log
                .lines()
                .rev()
                .map(strip_ansi)
                .find(|l| l.contains("metrics at /metrics"))
                .and_then(|l| l.split("address=").nth(1).map(|a| a.trim().to_string()));
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            found
        });
        let token = std::fs::read_to_string(state.join("token"))
            .expect("token file")
            .trim()
            .to_string();
        Server {
            child,
            state: state.to_path_buf(),
            address,
            metrics,
            token,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .expect("address")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn jobs(&self) -> JobsClient<Channel> {
        JobsClient::new(self.channel().await)
    }

    pub async fn policies(&self) -> PoliciesClient<Channel> {
        PoliciesClient::new(self.channel().await).max_encoding_message_size(usize::MAX)
    }

    /// Load the example plugin `name` under its own name.
    pub async fn load(&self, name: &str) {
        let request = self.authed(proto::LoadPolicyRequest {
            name: name.into(),
            source: Some(proto::load_policy_request::Source::Wasm(plugin_bytes(name))),
        });
        self.policies().await.load_policy(request).await.expect("load");
    }

    /// Submit with this server's token; the acknowledged id.
    pub async fn submit(&self, jobs: &mut JobsClient<Channel>, request: proto::SubmitJobRequest) -> u64 {
        jobs.submit_job(self.authed(request))
            .await
            .expect("submit")
            .into_inner()
            .id
    }

    /// `message` with this server's token.
    pub fn authed<T>(&self, message: T) -> Request<T> {
        with_token(message, &self.token)
    }

    /// The /metrics page (status line, headers and body).
    pub fn scrape(&self) -> String {
        self.scrape_accepting(None)
    }

    /// The /metrics page (status line, headers and body), asked for with
    /// this `Accept` header (none: no header).
    pub fn scrape_accepting(&self, accept: Option<&str>) -> String {
        let address = self.metrics.clone().expect("metrics address in the log");
        let mut stream = std::net::TcpStream::connect(&address).expect("connect to /metrics");
        let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\n{accept}Connection: close\r\n\r\n"
        )
        .expect("request");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("response");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    /// The value of the metric sample named exactly `name` (labels
    /// included, as the page spells them); 0 when absent.
    #[allow(dead_code)] // not every test binary reads one
    pub fn metric(&self, name: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The server's log so far, without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default())
    }

    /// Wait up to `timeout` for the server process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the server a signal (SIGTERM to stop it gracefully).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
    }

    /// Call `path` (`/package.Service/Method`) with `message` as the
    /// message's bytes, as they are: requests no generated client makes.
    pub async fn call_raw(&self, path: &'static str, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel().await);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        grpc.unary(
            Request::new(message),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

pub fn synthetic(user: &str, gpus: u32, seconds: f64) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        spec: Some(proto::JobSpec {
            name: format!("{user}-{gpus}x{seconds}"),
            user: user.into(),
            gpus,
            work: Some(proto::job_spec::Work::Synthetic(proto::Synthetic {
                seconds,
                ..Default::default()
            })),
            ..Default::default()
        }),
    }
}

pub fn state(job: &proto::Job) -> proto::JobState {
    proto::JobState::try_from(job.state).expect("known state")
}

/// Every job the server has, by id.
pub async fn all_jobs(jobs: &mut JobsClient<Channel>) -> BTreeMap<u64, proto::Job> {
    list_all(jobs, proto::ListJobsRequest::default())
        .await
        .into_iter()
        .map(|j| (j.id, j))
        .collect()
}

/// Every job matching `request`'s filters, following the pages.
pub async fn list_all(jobs: &mut JobsClient<Channel>, mut request: proto::ListJobsRequest) -> Vec<proto::Job> {
    let mut all = Vec::new();
    loop {
        let page = jobs.list_jobs(request.clone()).await.expect("list jobs").into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

/// Wait until every job in `ids` has ended; returns them.
pub async fn wait_ended(jobs: &mut JobsClient<Channel>, ids: &[u64], timeout: Duration) -> Vec<proto::Job> {
    let deadline = Instant::now() + timeout;
    loop {
        let by_id = all_jobs(jobs).await;
        let ended = ids
            .iter()
            .filter(|id| {
                by_id
                    .get(id)
                    .is_some_and(|j| matches!(state(j), proto::JobState::Finished | proto::JobState::Failed))
            })
            .count();
        if ended == ids.len() {
            return ids.iter().filter_map(|id| by_id.get(id).cloned()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{ended} of {} jobs ended in {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event from now on.
pub async fn watch_all(jobs: &mut JobsClient<Channel>) -> tonic::Streaming<proto::Event> {
    jobs.watch(proto::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner()
}

/// The next event, within 10 s.
pub async fn next_event(watch: &mut tonic::Streaming<proto::Event>) -> proto::Event {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
}

pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(super::plugin_path(name)).expect("plugin")
}

/// A codec that sends and receives a message's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let length = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, length).to_vec()))
    }
}
