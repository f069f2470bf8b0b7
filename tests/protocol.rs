//! The conventions a standard gRPC or Prometheus client expects of
//! `wsched serve`, checked against a real server: both reflection
//! versions, the health protocol (Check and Watch, including unknown
//! services), the status codes of requests that are too big or no
//! protobuf at all, capped status messages, UNAUTHENTICATED for a wrong
//! token, and /metrics in the classic or OpenMetrics format by `Accept`.

mod common;

use common::server::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use wsched::proto;

const SERVICES: [&str; 3] = ["wsched.v1.Jobs", "wsched.v1.Policies", "wsched.v1.Cluster"];

fn start(dir: &tempfile::TempDir) -> Server {
    Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"])
}

/// The services a reflection client of version `$version` lists.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let request = tonic_reflection::pb::$version::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect(concat!("reflection ", stringify!($version)))
            .into_inner();
        let response = responses.message().await.expect("ok").expect("a response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("{response:?}")
        };
        list.service.into_iter().map(|s| s.name).collect::<BTreeSet<String>>()
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    let channel = server.channel().await;
    let v1 = list_services!(v1, channel.clone());
    let v1alpha = list_services!(v1alpha, channel);
    for name in SERVICES.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]) {
        assert!(v1.contains(name), "v1 lacks {name}: {v1:?}");
        assert!(v1alpha.contains(name), "v1alpha lacks {name}: {v1alpha:?}");
    }
}

fn status_of(response: HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).expect("a known status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_knows_the_services_and_not_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    let mut health = HealthClient::new(server.channel().await);
    for service in [""].into_iter().chain(SERVICES) {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e:?}"));
        assert_eq!(status_of(answer.into_inner()), ServingStatus::Serving, "{service:?}");
    }
    for service in ["wsched.v1.Nope", "grpc.health.v1.Health", &"x".repeat(1 << 20)] {
        let error = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(error.code(), Code::NotFound, "{error:?}");
        assert!(error.message().len() < 300, "{}", error.message().len());
    }
}

async fn watch(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    health
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("watch")
        .into_inner()
}

async fn next_status(stream: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time");
    status_of(message.expect("stream ok").expect("stream open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_keeps_an_unknown_service_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    let mut health = HealthClient::new(server.channel().await);
    let mut unknown = watch(&mut health, "wsched.v1.Nope").await;
    assert_eq!(next_status(&mut unknown).await, ServingStatus::ServiceUnknown);
    let mut jobs = watch(&mut health, "wsched.v1.Jobs").await;
    assert_eq!(next_status(&mut jobs).await, ServingStatus::Serving);
    // Open and silent: the next message has not come (a closed stream
    // would answer at once), and the connection still answers.
    let waiting = tokio::time::timeout(Duration::from_millis(500), unknown.message()).await;
    assert!(waiting.is_err(), "the stream answered: {waiting:?}");
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("the server still answers");
    let waiting = tokio::time::timeout(Duration::from_millis(100), unknown.message()).await;
    assert!(waiting.is_err(), "the stream answered: {waiting:?}");
}

/// A message whose field 1 claims 5 bytes and has 1.
const TRUNCATED_MESSAGE: [u8; 3] = [0x0a, 0x05, 0x01];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_codes_the_spec_gives_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    let mut jobs = server.jobs().await;

    // Over the 16 MiB limit of the Jobs service.
    let mut huge = synthetic("big", 1, 1.0);
    huge.spec.as_mut().expect("spec").name = "n".repeat(17 << 20);
    let error = jobs.submit_job(server.authed(huge)).await.expect_err("over the limit");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("too large"), "{}", error.message());

    for bytes in [TRUNCATED_MESSAGE.to_vec(), vec![0xff; 16], vec![0x0f]] {
        for path in [
            "/wsched.v1.Jobs/SubmitJob",
            "/wsched.v1.Jobs/ListJobs",
            "/grpc.health.v1.Health/Check",
        ] {
            let error = server.call_raw(path, bytes.clone()).await.expect_err("undecodable");
            assert_eq!(error.code(), Code::InvalidArgument, "{path} {bytes:?}: {error:?}");
            assert!(
                error.message().starts_with("failed to decode Protobuf message"),
                "{}",
                error.message()
            );
        }
    }
    // A server-streaming call's request is decoded the same way.
    let error = server
        .call_raw("/wsched.v1.Jobs/Watch", TRUNCATED_MESSAGE.to_vec())
        .await
        .expect_err("undecodable");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    runs_a_job(&server).await;
}

/// Submit a job and wait for it to end: the server still works.
async fn runs_a_job(server: &Server) {
    let mut jobs = server.jobs().await;
    let id = server.submit(&mut jobs, synthetic("after", 1, 0.05)).await;
    wait_ended(&mut jobs, &[id], Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_never_echoes_a_huge_field_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = dir.path().join("policies");
    std::fs::create_dir(&allowed).expect("policy dir");
    let server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "2", "--policy-dir", allowed.to_str().expect("utf-8")],
    );
    let mut policies = server.policies().await;
    // The error names the path it could not read: 10 MB of it.
    let path = format!("nonexistent/{}", "p".repeat(10 << 20));
    let error = policies
        .load_policy(server.authed(proto::LoadPolicyRequest {
            name: String::new(),
            source: Some(proto::load_policy_request::Source::Path(path)),
        }))
        .await
        .expect_err("no such file");
    assert_eq!(error.code(), Code::InvalidArgument, "{:?}", error.code());
    assert!(error.message().len() <= 1024, "{} bytes", error.message().len());
    assert!(
        error.message().starts_with("path: \"nonexistent/ppp"),
        "{}",
        error.message()
    );

    // The server answers normally afterwards, on the same channel too.
    let list = policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("policies")
        .into_inner();
    assert_eq!(list.active, "builtin-fifo");
    runs_a_job(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    let mut jobs = server.jobs().await;
    for token in ["not-the-token", "", &"x".repeat(4096)] {
        let error = jobs
            .submit_job(with_token(synthetic("eve", 1, 1.0), token))
            .await
            .expect_err("wrong token");
        assert_eq!(error.code(), Code::Unauthenticated, "{token:.16}: {error:?}");
    }
}

/// A scrape's `Content-Type` and body.
fn split_response(response: &str) -> (String, &str) {
    let (head, body) = response.split_once("\r\n\r\n").expect("headers and body");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .expect("a content type");
    (content_type, body)
}

/// The series (name and labels) of every sample in an exposition.
fn series(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').expect("name and value").0)
        .collect()
}

/// Check a classic (0.0.4) exposition the way Prometheus's parser reads
/// it: every sample belongs to a family declared once by a TYPE line of a
/// classic type, before its samples; a counter's samples carry its name,
/// which ends in `_total`; histogram buckets have `le`; every HELP names a
/// declared family; values are numbers; no OpenMetrics-only lines.
fn check_classic(text: &str) -> Result<(), String> {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                return Err(format!("not a classic type: {line}"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("a counter without _total: {line}"));
            }
            if types.insert(name, kind).is_some() {
                return Err(format!("TYPE twice: {line}"));
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !helps.insert(name) {
                return Err(format!("HELP twice: {line}"));
            }
        } else if line.starts_with('#') {
            return Err(format!("a comment that is no HELP or TYPE: {line}"));
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            value.parse::<f64>().map_err(|e| format!("{line}: {e}"))?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let family = [("_bucket", "histogram"), ("_sum", ""), ("_count", "")]
                .into_iter()
                .find_map(|(suffix, only)| {
                    let base = name.strip_suffix(suffix)?;
                    let kind = types.get(base)?;
                    (matches!(*kind, "histogram" | "summary") && (only.is_empty() || *kind == only)).then_some(base)
                })
                .unwrap_or(name);
            let kind = types.get(family).ok_or(format!("a sample before its TYPE: {line}"))?;
            if name.ends_with("_bucket") && *kind == "histogram" && !labels.contains("le=\"") {
                return Err(format!("a bucket without le: {line}"));
            }
        }
    }
    match helps.iter().find(|name| !types.contains_key(*name)) {
        Some(name) => Err(format!("HELP for an undeclared family {name}")),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_in_the_format_the_scraper_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir);
    // Run one job so that every histogram has something in it.
    runs_a_job(&server).await;

    const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";
    const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    for (accept, expected) in [
        (None, CLASSIC),
        (Some("text/plain"), CLASSIC),
        (Some("*/*"), CLASSIC),
        (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), CLASSIC),
        (Some("application/openmetrics-text"), OPEN_METRICS),
        (Some(prometheus), OPEN_METRICS),
    ] {
        let (content_type, _) = split_response(&server.scrape_accepting(accept));
        assert_eq!(content_type, expected, "Accept: {accept:?}");
    }

    let classic_page = server.scrape_accepting(Some("text/plain"));
    let (_, classic) = split_response(&classic_page);
    let open_page = server.scrape_accepting(Some(prometheus));
    let (_, open_metrics) = split_response(&open_page);
    if let Err(why) = check_classic(classic) {
        panic!("{why}\n{classic}");
    }
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
    assert!(open_metrics.ends_with("# EOF\n"), "{open_metrics}");
    for line in [
        "# TYPE wsched_jobs_submitted_total counter\n",
        "wsched_jobs_submitted_total 1\n",
        "# TYPE wsched_job_completion_seconds histogram\n",
        "wsched_job_completion_seconds_count 1\n",
        "# TYPE wsched_pending_jobs gauge\n",
    ] {
        assert!(classic.contains(line), "{line:?} missing from:\n{classic}");
    }
    assert!(open_metrics.contains("# TYPE wsched_jobs_submitted counter\n"));
    // The same series in both, but OpenMetrics' `_created`.
    let open_series: BTreeSet<&str> = series(open_metrics)
        .into_iter()
        .filter(|s| !s.split('{').next().unwrap_or_default().ends_with("_created"))
        .collect();
    assert_eq!(series(classic), open_series);
}

#[test]
fn the_classic_check_catches_what_prometheus_rejects() {
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a_total counter\n# TYPE a_total counter\na_total 1\n",
        "# TYPE a info\na_info 1\n",
        "a 1\n",
        "# TYPE a gauge\na 1\n# EOF\n",
        "# HELP b b\n# TYPE a gauge\na 1\n",
        "# TYPE h histogram\nh_bucket 1\n",
        "# TYPE a gauge\na one\n",
    ] {
        assert!(check_classic(bad).is_err(), "{bad}");
    }
    check_classic("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 2\nh_count 1\n# TYPE g gauge\ng NaN\n")
        .expect("valid");
}
