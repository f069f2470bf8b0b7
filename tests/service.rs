//! The scheduler service end to end: a real `wsched serve` process on a
//! loopback port, driven over gRPC by the generated client, the way an
//! operator's scripts would. Covers the job lifecycle, token enforcement,
//! malformed requests, hot swaps under load, the standard health and
//! reflection services, /metrics, the command line, and recovery after the
//! server is killed with SIGKILL.

mod common;

use common::server::*;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::{Code, Request};
use wsched::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_to_completion_and_every_change_is_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let mut watch = watch_all(&mut jobs).await;

    let mut ids = Vec::new();
    for (gpus, seconds) in [(1, 0.3), (2, 0.2), (1, 0.1)] {
        let id = server.submit(&mut jobs, synthetic("alice", gpus, seconds)).await;
        ids.push(id);
    }
    let mut weighted = synthetic("bob", 1, 3600.0);
    weighted.spec.as_mut().expect("spec").priority = Some(2.5);
    let long = server.submit(&mut jobs, weighted).await;
    let done = wait_ended(&mut jobs, &ids, Duration::from_secs(30)).await;
    for job in &done {
        assert_eq!(state(job), proto::JobState::Finished, "{job:?}");
        let (start, end) = (job.start_time.expect("started"), job.end_time.expect("ended"));
        let seconds = match job.spec.as_ref().and_then(|s| s.work.clone()) {
            Some(proto::job_spec::Work::Synthetic(s)) => s.seconds,
            other => panic!("{other:?}"),
        };
        assert!(
            end - start >= seconds * 0.9,
            "job {} ran {:.3}s for {seconds}s of work",
            job.id,
            end - start
        );
        assert_eq!(job.progress, Some(1.0));
    }

    // Filters.
    let bobs = jobs
        .list_jobs(proto::ListJobsRequest {
            user: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(bobs.iter().map(|j| j.id).collect::<Vec<_>>(), [long]);
    assert_eq!(bobs[0].priority, 2.5, "the submitted priority is the job's weight");
    let finished = jobs
        .list_jobs(proto::ListJobsRequest {
            states: vec![proto::JobState::Finished as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(finished.len(), 3);

    // Cancel the long one.
    let cancelled = jobs
        .cancel_job(server.authed(proto::CancelJobRequest { id: long }))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(state(&cancelled), proto::JobState::Failed);
    assert_eq!(cancelled.failure, "cancelled");
    let again = jobs
        .cancel_job(server.authed(proto::CancelJobRequest { id: long }))
        .await
        .expect_err("already ended");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // The watcher saw each job arrive, start and end, in that order.
    let mut seen: BTreeMap<u64, Vec<proto::JobState>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen
        .get(&long)
        .is_none_or(|s| s.last() != Some(&proto::JobState::Failed))
    {
        assert!(Instant::now() < deadline, "events so far: {seen:?}");
        let event = next_event(&mut watch).await;
        if let Some(proto::event::Kind::Job(job)) = event.kind {
            seen.entry(job.id).or_default().push(state(&job));
        }
    }
    for id in &ids {
        let states = &seen[id];
        assert_eq!(states.first(), Some(&proto::JobState::Pending), "job {id}: {states:?}");
        assert!(states.contains(&proto::JobState::Running), "job {id}: {states:?}");
        assert_eq!(states.last(), Some(&proto::JobState::Finished), "job {id}: {states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_and_reads_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let mode = std::fs::metadata(server.state.join("token"))
        .expect("token")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "token file mode"
    );
    let mut jobs = server.jobs().await;
    let mut policies = server.policies().await;

    let none = jobs
        .submit_job(Request::new(synthetic("eve", 1, 1.0)))
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let wrong = jobs
        .submit_job(with_token(synthetic("eve", 1, 1.0), "not-the-token"))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    for status in [
        jobs.cancel_job(Request::new(proto::CancelJobRequest { id: 0 }))
            .await
            .expect_err("cancel"),
        policies
            .swap_policy(Request::new(proto::SwapPolicyRequest {
                name: "builtin-fifo".into(),
                config: String::new(),
            }))
            .await
            .expect_err("swap"),
        policies
            .load_policy(Request::new(proto::LoadPolicyRequest {
                name: "x".into(),
                source: Some(proto::load_policy_request::Source::Wasm(plugin_bytes("fifo"))),
            }))
            .await
            .expect_err("load"),
        policies
            .unload_policy(Request::new(proto::UnloadPolicyRequest { name: "x".into() }))
            .await
            .expect_err("unload"),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // Nothing was accepted, and reads need no token.
    let all = jobs
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .expect("list without a token")
        .into_inner()
        .jobs;
    assert!(all.is_empty(), "{all:?}");
    policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("policies without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let mut policies = server.policies().await;

    let mut too_big = synthetic("a", 3, 1.0);
    let mut no_work = synthetic("a", 1, 1.0);
    no_work.spec.as_mut().expect("spec").work = None;
    let mut memory = synthetic("a", 1, 1.0);
    memory.spec.as_mut().expect("spec").memory_per_gpu_bytes = 1 << 50;
    let cases = [
        (proto::SubmitJobRequest { spec: None }, "spec"),
        (synthetic("a", 0, 1.0), "spec.gpus"),
        (synthetic("", 1, 1.0), "spec.user"),
        (synthetic("a", 1, -5.0), "spec.synthetic.seconds"),
        (no_work, "spec.work"),
        (std::mem::take(&mut too_big), "spec"),
        (memory, "spec"),
    ];
    for (request, field) in cases {
        let status = jobs.submit_job(server.authed(request)).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {status:?}"
        );
    }
    let status = jobs
        .list_jobs(proto::ListJobsRequest {
            states: vec![42],
            ..Default::default()
        })
        .await
        .expect_err("bad state");
    assert!(status.message().starts_with("states[0]:"), "{status:?}");
    let status = jobs
        .get_job(proto::GetJobRequest { id: 999 })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    let load = |source, name: &str| {
        server.authed(proto::LoadPolicyRequest {
            name: name.into(),
            source: Some(source),
        })
    };
    use proto::load_policy_request::Source;
    for (request, field, words) in [
        (
            load(Source::Wasm(b"not wasm at all".to_vec()), "x"),
            "wasm",
            "not a WebAssembly binary",
        ),
        (
            load(Source::Wasm(b"\0asm\x01\0\0\0".to_vec()), "x"),
            "wasm",
            "core WebAssembly module",
        ),
        (load(Source::Wasm(plugin_bytes("fifo")), "bad name!"), "name", "letters"),
        (
            server.authed(proto::LoadPolicyRequest {
                name: "x".into(),
                source: None,
            }),
            "source",
            "wasm or path",
        ),
    ] {
        let status = policies.load_policy(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(&format!("{field}:")), "{status:?}");
        assert!(status.message().contains(words), "{status:?}");
    }
    // A component of another world is refused at load, naming the problem.
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let status = policies
        .load_policy(load(Source::Wasm(empty_component), "empty"))
        .await
        .expect_err("empty component");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("wasm:"), "{status:?}");

    let status = policies
        .swap_policy(server.authed(proto::SwapPolicyRequest {
            name: "nothing-loaded".into(),
            config: String::new(),
        }))
        .await
        .expect_err("unknown plugin");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = policies
        .unload_policy(server.authed(proto::UnloadPolicyRequest {
            name: "builtin-fifo".into(),
        }))
        .await
        .expect_err("active");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_jobs_is_accepted_all_or_none_and_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let mut server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let batch = |specs: Vec<proto::SubmitJobRequest>| proto::SubmitJobsRequest {
        specs: specs.into_iter().filter_map(|r| r.spec).collect(),
    };

    let status = jobs
        .submit_jobs(Request::new(batch(vec![synthetic("a", 1, 1.0)])))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Refused as a whole, naming the spec: by the request checks, by the
    // cluster (3 GPUs on a 2-GPU cluster) and by size.
    let too_many = (0..=wsched::service::grpc::MAX_SPECS_PER_REQUEST)
        .map(|_| synthetic("a", 1, 1.0))
        .collect();
    for (request, field) in [
        (batch(vec![]), "specs:"),
        (
            batch(vec![
                synthetic("a", 1, 1.0),
                synthetic("a", 0, 1.0),
                synthetic("a", 1, 1.0),
            ]),
            "specs[1].gpus:",
        ),
        (
            batch(vec![synthetic("a", 1, 1.0), synthetic("", 1, 1.0)]),
            "specs[1].user:",
        ),
        (
            batch(vec![
                synthetic("a", 1, 1.0),
                synthetic("a", 2, 1.0),
                synthetic("a", 3, 1.0),
            ]),
            "specs[2]:",
        ),
        (batch(too_many), "specs:"),
    ] {
        let status = jobs.submit_jobs(server.authed(request)).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let all = all_jobs(&mut jobs).await;
    assert!(all.is_empty(), "a refused batch left jobs behind: {:?}", all.keys());

    // Accepted: ids in the order of the specs, each job as asked.
    let specs: Vec<proto::SubmitJobRequest> = (0..20)
        .map(|i| {
            let mut r = synthetic("sweep", 1 + i % 2, 0.02);
            r.spec.as_mut().expect("spec").name = format!("trial-{i}");
            r
        })
        .collect();
    let ids = jobs
        .submit_jobs(server.authed(batch(specs)))
        .await
        .expect("batch")
        .into_inner()
        .ids;
    assert_eq!(ids.len(), 20);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(30)).await;
    for (i, job) in ended.iter().enumerate() {
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.name, format!("trial-{i}"));
        assert_eq!(spec.gpus, 1 + i as u32 % 2);
        assert_eq!(state(job), proto::JobState::Finished, "{job:?}");
    }

    // A second batch, acknowledged, then SIGKILL: every job is there after a restart.
    let long: Vec<proto::SubmitJobRequest> = (0..30).map(|_| synthetic("sweep", 1, 600.0)).collect();
    let acked = jobs
        .submit_jobs(server.authed(batch(long)))
        .await
        .expect("batch")
        .into_inner()
        .ids;
    server.kill();
    let server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let after = all_jobs(&mut jobs).await;
    for id in ids.iter().chain(&acked) {
        assert!(after.contains_key(id), "job {id} lost in the crash");
    }
    assert_eq!(after.len(), 50, "{:?}", after.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_loses_and_duplicates_no_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "4"]);
    let mut policies = server.policies().await;
    for name in ["las", "fifo", "tiresias", "sjf"] {
        server.load(name).await;
    }
    let mut watch = watch_all(&mut server.jobs().await).await;

    // Four submitters and one operator swapping policies as fast as it can.
    let mut submitters = Vec::new();
    for s in 0..4u32 {
        let mut jobs = server.jobs().await;
        let token = server.token.clone();
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..60u32 {
                let request = with_token(
                    synthetic(&format!("user{s}"), 1 + (i % 2), 0.02 + f64::from(i % 5) * 0.01),
                    &token,
                );
                ids.push(jobs.submit_job(request).await.expect("submit").into_inner().id);
            }
            ids
        }));
    }
    let token = server.token.clone();
    let mut swapper = server.policies().await;
    let swaps = tokio::spawn(async move {
        let mut done = 0;
        for name in [
            "las",
            "fifo",
            "builtin-fifo",
            "tiresias",
            "sjf",
            "las",
            "fifo",
            "tiresias",
            "sjf",
            "las",
        ] {
            let request = with_token(
                proto::SwapPolicyRequest {
                    name: name.into(),
                    config: String::new(),
                },
                &token,
            );
            swapper.swap_policy(request).await.expect("swap");
            done += 1;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        done
    });
    let mut acked = Vec::new();
    for s in submitters {
        acked.extend(s.await.expect("submitter"));
    }
    assert_eq!(swaps.await.expect("swapper"), 10);

    let unique: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "an id was acknowledged twice");
    let mut jobs = server.jobs().await;
    let done = wait_ended(&mut jobs, &acked, Duration::from_secs(120)).await;
    assert!(
        done.iter().all(|j| state(j) == proto::JobState::Finished),
        "a job did not finish"
    );
    let all = all_jobs(&mut jobs).await;
    assert_eq!(
        all.keys().copied().collect::<BTreeSet<_>>(),
        unique,
        "the server has other jobs than were acknowledged"
    );

    // Each job finished exactly once on the event stream.
    let mut finished: BTreeMap<u64, u32> = BTreeMap::new();
    while finished.len() < unique.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("open");
        if let Some(proto::event::Kind::Job(job)) = event.kind
            && state(&job) == proto::JobState::Finished
        {
            *finished.entry(job.id).or_default() += 1;
        }
    }
    assert!(finished.values().all(|&n| n == 1), "{finished:?}");

    let list = policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.active, "las");
    assert_eq!(list.swaps, 10);
    assert_eq!(list.ejections, 0);
    let las = list.policies.iter().find(|p| p.name == "las").expect("las listed");
    assert!(las.stats.expect("stats").calls > 0);
    assert_eq!(las.plugin_name, "las");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let channel = server.channel().await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "wsched.v1.Jobs", "wsched.v1.Policies", "wsched.v1.Cluster"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "wsched.v1.Jobs",
        "wsched.v1.Policies",
        "wsched.v1.Cluster",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(name), "{names:?}");
    }

    // Run one job so that the histograms have something in them.
    let mut jobs = server.jobs().await;
    let id = server.submit(&mut jobs, synthetic("m", 1, 0.05)).await;
    wait_ended(&mut jobs, &[id], Duration::from_secs(20)).await;
    // The gauges are set at the end of the turn that ended the job: wait
    // for that, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut body = server.scrape();
    while !body.contains("wsched_job_completion_seconds_count 1") || !body.contains("wsched_pending_jobs 0") {
        assert!(
            Instant::now() < deadline,
            "the metrics never showed the ended job:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        body = server.scrape();
    }
    for name in [
        "wsched_schedule_attempts_total{result=\"scheduled\"} 1",
        "wsched_pending_jobs 0",
        "wsched_plugin_execution_duration_seconds_count{plugin=\"builtin-fifo\",decision_point=\"job_arrived\"}",
        "wsched_plugin_strikes_total{plugin=\"builtin-fifo\"} 0",
        "wsched_policy_swaps_total 0",
        "wsched_preemptions_total 0",
        "wsched_job_completion_seconds_count 1",
        "wsched_job_queueing_seconds_count 1",
        "wsched_jobs_submitted_total 1",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_run_as_processes_and_failures_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let command = |argv: &[&str]| proto::SubmitJobRequest {
        spec: Some(proto::JobSpec {
            user: "ops".into(),
            gpus: 1,
            work: Some(proto::job_spec::Work::Command(proto::Command {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
            ..Default::default()
        }),
    };
    let ok = server
        .submit(&mut jobs, command(&["sh", "-c", "echo on $CUDA_VISIBLE_DEVICES"]))
        .await;
    let bad = server.submit(&mut jobs, command(&["sh", "-c", "exit 3"])).await;
    // A program that is not there is refused at submission; one that is
    // there but cannot be run fails at its start, saying why.
    let status = jobs
        .submit_job(server.authed(command(&["/no/such/program"])))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("spec.command.argv[0]:"), "{status:?}");
    let missing = server.submit(&mut jobs, command(&["/etc/passwd"])).await;
    let done = wait_ended(&mut jobs, &[ok, bad, missing], Duration::from_secs(30)).await;
    assert_eq!(state(&done[0]), proto::JobState::Finished, "{:?}", done[0]);
    let log = std::fs::read_to_string(server.state.join(format!("jobs/job-{ok}/stdout.log"))).expect("log");
    assert!(log.starts_with("on "), "{log}");
    assert_eq!(state(&done[1]), proto::JobState::Failed);
    assert!(done[1].failure.contains('3'), "{:?}", done[1].failure);
    assert_eq!(state(&done[2]), proto::JobState::Failed);
    assert!(done[2].failure.contains("/etc/passwd"), "{:?}", done[2].failure);
}

/// Submit from three clients while a watcher streams, kill the server with
/// SIGKILL in the middle, and return every id that was acknowledged.
async fn acknowledged_until_killed(server: &mut Server, seconds: f64) -> Vec<u64> {
    let mut jobs = server.jobs().await;
    let mut watch = watch_all(&mut jobs).await;
    let (tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut submitters = Vec::new();
    for s in 0..3 {
        let mut jobs = server.jobs().await;
        let token = server.token.clone();
        let tx = tx.clone();
        submitters.push(tokio::spawn(async move {
            for i in 0u32.. {
                let gpus = 1 + (i + s) % 2;
                match jobs
                    .submit_job(with_token(synthetic("b", gpus, seconds + f64::from(i)), &token))
                    .await
                {
                    Ok(reply) => {
                        let _ = tx.send(reply.into_inner().id);
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    drop(tx);
    // Let the stream carry events, then kill.
    let mut events = 0;
    while events < 40 {
        if tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("events flow")
            .expect("stream ok")
            .is_some()
        {
            events += 1;
        }
    }
    server.kill();
    for s in submitters {
        s.await.expect("submitter ends when the server dies");
    }
    let mut acked = Vec::new();
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }
    assert!(acked.len() >= 10, "only {} submissions before the kill", acked.len());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_stream_twice_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let las = common::plugin_path("las");
    let las = las.to_str().expect("utf-8 path");
    let mut server = Server::start(&state_dir, &["--emulate-gpus", "4", "--policy", las, "--config", ""]);

    let mut jobs = server.jobs().await;
    // Short jobs that will be over before the crash.
    let mut short = Vec::new();
    for _ in 0..3 {
        short.push(server.submit(&mut jobs, synthetic("a", 1, 0.05)).await);
    }
    wait_ended(&mut jobs, &short, Duration::from_secs(20)).await;
    let before = all_jobs(&mut jobs).await;

    // Two crashes under load: what was acknowledged before either is back
    // after the second restart, live, counted once per restart it lived
    // through.
    let first = acknowledged_until_killed(&mut server, 300.0).await;
    let mut server = Server::start(&state_dir, &["--emulate-gpus", "4"]);
    let second = acknowledged_until_killed(&mut server, 600.0).await;
    let server = Server::start(&state_dir, &["--emulate-gpus", "4"]);
    let mut jobs = server.jobs().await;
    let after = all_jobs(&mut jobs).await;
    for (acked, recoveries) in [(&first, 2), (&second, 1)] {
        for id in acked {
            let job = after.get(id).unwrap_or_else(|| panic!("acknowledged job {id} lost"));
            assert!(
                matches!(
                    state(job),
                    proto::JobState::Pending | proto::JobState::Running | proto::JobState::Suspended
                ),
                "job {id} should be live again: {job:?}"
            );
            assert_eq!(job.recoveries, recoveries, "job {id}");
            assert!(
                job.notes.iter().any(|n| n.text.contains("restarted")),
                "job {id}: {:?}",
                job.notes
            );
        }
    }
    for (id, old) in &before {
        let job = &after[id];
        assert_eq!(state(job), proto::JobState::Finished, "finished job {id} kept");
        assert_eq!(job.end_time, old.end_time, "finished job {id} keeps its result");
        assert_eq!(job.recoveries, 0);
    }
    // The active policy and its config came back.
    let list = server
        .policies()
        .await
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("policies")
        .into_inner();
    assert_eq!(list.active, "las");
    // New ids do not reuse old ones.
    let next = server.submit(&mut jobs, synthetic("c", 1, 0.01)).await;
    assert!(after.keys().all(|&id| id < next), "id {next} reused");
    // And the re-queued jobs are scheduled again.
    let mut cluster = proto::cluster_client::ClusterClient::new(server.channel().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = cluster
            .get_cluster(proto::GetClusterRequest {})
            .await
            .expect("cluster")
            .into_inner();
        if state.running_jobs > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing runs after recovery: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_drives_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let _server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let wsched = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wsched"))
            .args(args)
            .arg("--state-dir")
            .arg(&state_dir)
            .env_remove("WSCHED_SERVER")
            .env_remove("WSCHED_TOKEN")
            .output()
            .expect("run wsched");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let manifest = dir.path().join("jobs.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: wsched.dev/v1\nkind: Job\nmetadata: {name: one, user: carol}\nspec: {gpus: 1, synthetic: {seconds: 0.1}}\n---\napiVersion: wsched.dev/v1\nkind: Job\nmetadata: {name: two, user: carol}\nspec: {gpus: 2, expectedDuration: 1s, synthetic: {seconds: 200ms}}\n",
    )
    .expect("manifest");
    let (ok, out, err) = wsched(&["job", "submit", "-f", manifest.to_str().expect("path")]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let (ok, _, err) = wsched(&[
        "policy",
        "load",
        common::plugin_path("tiresias").to_str().expect("path"),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = wsched(&["policy", "swap", "tiresias"]);
    assert!(ok, "{err}");
    assert!(out.contains("builtin-fifo -> tiresias"), "{out}");
    let (ok, out, _) = wsched(&["policy", "list", "-o", "json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["active"], "tiresias");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = wsched(&["job", "list", "--user", "carol", "-o", "json"]);
        assert!(ok, "{err}");
        let jobs: serde_json::Value = serde_json::from_str(&out).expect("json");
        let states: Vec<&str> = jobs
            .as_array()
            .expect("array")
            .iter()
            .map(|j| j["state"].as_str().expect("state"))
            .collect();
        assert_eq!(states.len(), 2);
        if states.iter().all(|s| *s == "finished") {
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = wsched(&["job", "list"]);
    assert!(ok && out.starts_with("ID") && out.contains("finished"), "{out}");
    let (ok, out, _) = wsched(&["job", "get", "1"]);
    assert!(ok && out.contains("\"two\""), "{out}");
    let (ok, out, _) = wsched(&["gpu", "list"]);
    assert!(ok && out.contains("policy tiresias"), "{out}");
    let (ok, out, _) = wsched(&["job", "watch", "--current", "--count", "0"]);
    assert!(ok, "{out}");

    // Bad input: a clear message and a non-zero exit.
    std::fs::write(&manifest, "apiVersion: wsched.dev/v1\nkind: Job\nspec: {gpu: 1}\n").expect("manifest");
    let (ok, _, err) = wsched(&["job", "submit", "-f", manifest.to_str().expect("path")]);
    assert!(!ok);
    assert!(err.contains("unknown field `gpu`"), "{err}");
    // A file of several jobs goes all or none: the second cannot fit, so
    // neither is submitted, and the error says which document.
    std::fs::write(
        &manifest,
        "apiVersion: wsched.dev/v1\nkind: Job\nmetadata: {name: fits}\nspec: {gpus: 1, synthetic: {seconds: 1}}\n---\napiVersion: wsched.dev/v1\nkind: Job\nmetadata: {name: too-big}\nspec: {gpus: 3, synthetic: {seconds: 1}}\n",
    )
    .expect("manifest");
    let (ok, _, err) = wsched(&["job", "submit", "-f", manifest.to_str().expect("path")]);
    assert!(!ok);
    assert!(
        err.contains("jobs.yaml: documents 1-2, none submitted (specs[i] is document 1+i)"),
        "{err}"
    );
    assert!(
        err.contains("specs[1]: job asks for 3 GPUs, the cluster has 2"),
        "{err}"
    );
    let (ok, out, _) = wsched(&["job", "list", "-o", "json"]);
    assert!(ok && !out.contains("fits"), "{out}");
    let (ok, _, err) = wsched(&["job", "submit", "--gpus", "5", "--seconds", "1"]);
    assert!(!ok);
    assert!(
        err.contains("invalid argument: spec: job asks for 5 GPUs, the cluster has 2"),
        "{err}"
    );
    let (ok, _, err) = wsched(&["job", "cancel", "77"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = wsched(&["job", "list", "--server", "127.0.0.1:1"]);
    assert!(!ok && err.contains("cannot reach a wsched server"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_client_submits_swaps_and_watches() {
    // scripts/test.sh runs examples/python/setup.sh first.
    let python = common::root().join("target/venv-grpc/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run examples/python/setup.sh (scripts/test.sh does)",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let _server = Server::start(&state_dir, &["--emulate-gpus", "4"]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(common::root().join("examples/python/client.py"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--policy"])
            .arg(common::plugin_path("las"))
            .args(["--jobs", "4", "--seconds", "0.5", "--json"])
            .env_remove("WSCHED_SERVER")
            .env_remove("WSCHED_TOKEN")
            .output()
            .expect("run the example")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["all_finished"], true, "{summary}");
    assert_eq!(summary["jobs"].as_array().map(Vec::len), Some(4), "{summary}");
    assert_eq!(summary["swap"]["from"], "builtin-fifo", "{summary}");
    assert_eq!(summary["swap"]["to"], "las", "{summary}");
}

#[test]
fn a_bad_retention_time_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["-1", "NaN", "inf"] {
        let output = Command::new(env!("CARGO_BIN_EXE_wsched"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-metrics",
                "--finished-ttl",
                bad,
            ])
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .expect("run wsched serve");
        assert!(!output.status.success(), "--finished-ttl {bad} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--finished-ttl"), "{bad}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_are_deleted_after_their_retention_time_and_stay_deleted() {
    const TTL: f64 = 6.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let ttl = TTL.to_string();
    let flags = ["--emulate-gpus", "2", "--finished-ttl", ttl.as_str()];
    let mut server = Server::start(&state_dir, &flags);
    let mut jobs = server.jobs().await;
    let long = server.submit(&mut jobs, synthetic("a", 1, 3600.0)).await;
    let short = server.submit(&mut jobs, synthetic("a", 1, 0.2)).await;
    let command = server
        .submit(
            &mut jobs,
            proto::SubmitJobRequest {
                spec: Some(proto::JobSpec {
                    user: "a".into(),
                    gpus: 1,
                    work: Some(proto::job_spec::Work::Command(proto::Command {
                        argv: vec!["sh".into(), "-c".into(), "echo hello".into()],
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            },
        )
        .await;
    let wide = server.submit(&mut jobs, synthetic("a", 2, 10.0)).await; // waits behind `long`
    let ended = wait_ended(&mut jobs, &[short, command], Duration::from_secs(30)).await;
    let ended_at = ended.iter().map(|j| j.end_time.expect("end time")).fold(0.0, f64::max);
    let job_dir = state_dir.join(format!("jobs/job-{command}"));
    assert!(
        job_dir.join("stdout.log").exists(),
        "the command's log is kept while the job is"
    );

    // Killed before the time is up: the retention runs on across the restart.
    server.kill();
    let mut server = Server::start(&state_dir, &flags);
    let mut jobs = server.jobs().await;
    let mut watch = watch_all(&mut jobs).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = all_jobs(&mut jobs).await;
        if !listed.contains_key(&short) && !listed.contains_key(&command) {
            break;
        }
        assert!(Instant::now() < deadline, "ended jobs not deleted: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deleted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        deleted_at - ended_at >= TTL - 0.5,
        "deleted {:.1} s after ending, before the {TTL} s retention",
        deleted_at - ended_at
    );
    for id in [short, command] {
        let status = jobs.get_job(proto::GetJobRequest { id }).await.expect_err("deleted");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert!(!job_dir.exists(), "the command's directory goes with it");
    let mut deleted = BTreeSet::new();
    while deleted.len() < 2 {
        let event = next_event(&mut watch).await;
        if let Some(proto::event::Kind::JobDeleted(id)) = event.kind {
            deleted.insert(id);
        }
    }
    assert_eq!(deleted, BTreeSet::from([short, command]), "watchers are told");
    let listed = all_jobs(&mut jobs).await;
    assert_eq!(
        state(&listed[&long]),
        proto::JobState::Running,
        "a live job is never deleted"
    );
    assert_eq!(
        state(&listed[&wide]),
        proto::JobState::Pending,
        "a live job is never deleted"
    );
    assert!(server.scrape().contains("wsched_jobs_expired_total 2"));

    // The newest job goes too (a cancelled one is ended as well).
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id: wide }))
        .await
        .expect("cancel");
    let newest = server.submit(&mut jobs, synthetic("a", 1, 0.1)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while all_jobs(&mut jobs).await.len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the cancelled and the newest job were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The deletion is durable once anything later is acknowledged (commits
    // are in order; loading a plugin is acknowledged after its commit): a
    // server that keeps ended jobs forever does not bring them back, and
    // gives none of their ids out again.
    server.load("fifo").await;
    server.kill();
    let server = Server::start(&state_dir, &["--emulate-gpus", "2", "--finished-ttl", "never"]);
    let mut jobs = server.jobs().await;
    let listed = all_jobs(&mut jobs).await;
    assert_eq!(listed.keys().copied().collect::<Vec<_>>(), [long]);
    let next = server.submit(&mut jobs, synthetic("a", 1, 0.1)).await;
    assert!(next > newest, "job id {next} given out again after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_no_longer_fits_after_a_restart_fails_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let mut server = Server::start(&state_dir, &["--emulate-gpus", "4"]);
    let mut jobs = server.jobs().await;
    let big = server.submit(&mut jobs, synthetic("a", 4, 3600.0)).await;
    let small = server.submit(&mut jobs, synthetic("a", 1, 3600.0)).await;
    server.kill();

    let server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let big = jobs
        .get_job(proto::GetJobRequest { id: big })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(state(&big), proto::JobState::Failed, "{big:?}");
    assert!(
        big.failure.contains("after a restart") && big.failure.contains("4 GPUs"),
        "{:?}",
        big.failure
    );
    let small = jobs
        .get_job(proto::GetJobRequest { id: small })
        .await
        .expect("get")
        .into_inner();
    assert_ne!(state(&small), proto::JobState::Failed, "{small:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulated_cluster_can_be_a_description_with_gpu_kinds_and_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let description = common::root().join("examples/clusters/dgx-8x8.yaml");
    let server = Server::start(&dir.path().join("state"), &["--cluster", description.to_str().unwrap()]);
    let cluster = proto::cluster_client::ClusterClient::new(server.channel().await)
        .get_cluster(proto::GetClusterRequest {})
        .await
        .expect("cluster")
        .into_inner();
    assert_eq!(cluster.gpus.len(), 80);
    let (first, last) = (&cluster.gpus[0], &cluster.gpus[79]);
    assert_eq!(
        (first.node, first.kind.as_str(), first.memory_total_bytes),
        (0, "A100-80GB", 80 << 30)
    );
    assert_eq!((cluster.gpus[63].node, cluster.gpus[64].node), (7, 8));
    assert_eq!(
        (last.node, last.kind.as_str(), last.memory_total_bytes),
        (11, "V100-32GB", 32 << 30)
    );
    // A job that needs more memory than a V100 has is accepted: the A100s have it.
    let mut jobs = server.jobs().await;
    let mut spec = synthetic("a", 8, 3600.0);
    if let Some(s) = spec.spec.as_mut() {
        s.memory_per_gpu_bytes = 40 << 30;
    }
    server.submit(&mut jobs, spec).await;
}

#[test]
fn a_cluster_description_goes_with_emulated_gpus_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let description = common::root().join("examples/clusters/dgx-8x8.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args([
            "serve",
            "--backend",
            "cpu-devices",
            "--cluster",
            description.to_str().unwrap(),
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run wsched serve");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("--cluster describes emulated GPUs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulting_plugin_is_ejected_and_no_job_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let server = Server::start(&state_dir, &["--emulate-gpus", "2", "--deadline-ms", "50"]);
    let mut policies = server.policies().await;
    server.load("hostile").await;
    // A plugin whose init fails is refused and the old policy stays.
    let refused = policies
        .swap_policy(server.authed(proto::SwapPolicyRequest {
            name: "hostile".into(),
            config: "mode=init-fail".into(),
        }))
        .await
        .expect_err("init fails");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("the active policy stays"), "{refused:?}");

    policies
        .swap_policy(server.authed(proto::SwapPolicyRequest {
            name: "hostile".into(),
            config: "mode=trap; after=2".into(),
        }))
        .await
        .expect("swap");
    let mut watch = watch_all(&mut server.jobs().await).await;
    let mut jobs = server.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(server.submit(&mut jobs, synthetic("z", 1, 0.05)).await);
    }
    let done = wait_ended(&mut jobs, &ids, Duration::from_secs(30)).await;
    assert!(done.iter().all(|j| state(j) == proto::JobState::Finished), "{done:?}");

    let list = policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.active, "builtin-fifo");
    assert_eq!(list.ejections, 1);
    assert_eq!(list.strikes, 3);
    let hostile = list.policies.iter().find(|p| p.name == "hostile").expect("listed");
    assert_eq!(hostile.stats.expect("stats").ejections, 1);

    // Watchers are told.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("an ejection event")
            .expect("ok")
            .expect("open");
        if let Some(proto::event::Kind::Policy(change)) = event.kind {
            assert_eq!(
                (change.from.as_str(), change.to.as_str(), change.reason.as_str()),
                ("hostile", "builtin-fifo", "ejected")
            );
            break;
        }
    }
    // The fallback is what comes back after a restart.
    drop(server);
    let server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let list = server
        .policies()
        .await
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.active, "builtin-fifo");
    assert!(
        list.policies.iter().any(|p| p.name == "hostile"),
        "the plugin stays loaded"
    );
}

/// A synthetic job that runs the device kernel: `iterations` small ones.
fn on_device(name: &str, iterations: u64, fault_at: Option<u64>) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        spec: Some(proto::JobSpec {
            name: name.into(),
            user: "a".into(),
            gpus: 1,
            iterations: Some(iterations),
            memory_per_gpu_bytes: 8 << 20,
            work: Some(proto::job_spec::Work::Synthetic(proto::Synthetic {
                seconds: 3600.0,
                gflops_per_iteration: Some(0.0005),
                fault_at_iteration: fault_at,
            })),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_jobs_run_kernels_are_preempted_and_survive_a_fault_and_a_restart() {
    // CPU stand-ins for GPUs do the kernel's arithmetic for real: the CUDA
    // backend's path above the driver, end to end through the service.
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let las = format!(
        "{}/target/plugins/las.wasm",
        env!("CARGO_MANIFEST_DIR").trim_end_matches("/host")
    );
    let flags = [
        "--backend",
        "cpu-devices",
        "--emulate-gpus",
        "1",
        "--policy",
        las.as_str(),
        "--config",
        // One boundary well above what the short job needs (about 0.3 s of
        // device time) and below what the long one has when it arrives, so
        // that a slow machine does not put both in the same queue.
        "thresholds=0.8",
        "--checkpoint-every",
        "0.1",
    ];
    let mut server = Server::start(&state_dir, &flags);
    let mut jobs = server.jobs().await;
    let cluster = proto::cluster_client::ClusterClient::new(server.channel().await)
        .get_cluster(proto::GetClusterRequest {})
        .await
        .expect("cluster")
        .into_inner();
    assert_eq!(cluster.backend, "cpu-devices");
    assert_eq!(cluster.gpus[0].uuid, "CPU-0");

    // The long job never ends by itself (it is cancelled below), so it is
    // still running when the short one arrives however fast the machine.
    let long = server.submit(&mut jobs, on_device("long", 100_000_000, None)).await;
    // The short job must arrive once the long one is past the 0.8
    // GPU-second boundary: wait for that (not for a fixed time).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = jobs
            .get_job(proto::GetJobRequest { id: long })
            .await
            .expect("get")
            .into_inner();
        if job.attained_gpu_seconds > 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the long job never ran: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let short = server.submit(&mut jobs, on_device("short", 50, None)).await;
    let short_job = &wait_ended(&mut jobs, &[short], Duration::from_secs(120)).await[0];
    assert_eq!(state(short_job), proto::JobState::Finished, "{short_job:?}");
    assert_eq!(short_job.iterations_done, Some(50), "every iteration counted");
    assert_eq!(short_job.progress, Some(1.0));
    let long_job = jobs
        .get_job(proto::GetJobRequest { id: long })
        .await
        .expect("get")
        .into_inner();
    assert!(long_job.preemptions >= 1, "LAS preempted the long job: {long_job:?}");
    assert!(
        long_job.end_time.is_none(),
        "LAS ran the short job first, the long one still runs: {short_job:?} {long_job:?}"
    );
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id: long }))
        .await
        .expect("cancel");
    // What the device measured of itself reached the model (and policies).
    let cluster = proto::cluster_client::ClusterClient::new(server.channel().await)
        .get_cluster(proto::GetClusterRequest {})
        .await
        .expect("cluster")
        .into_inner();
    let measured = cluster.gpus[0].measured_utilisation;
    assert!(
        measured.is_some_and(|u| (0.0..=1.0).contains(&u)),
        "{:?}",
        cluster.gpus[0]
    );

    // A device fault fails its job with the device's error; the GPU is
    // checked, reset and keeps running jobs.
    let faulty = server.submit(&mut jobs, on_device("faulty", 50, Some(3))).await;
    let faulty = &wait_ended(&mut jobs, &[faulty], Duration::from_secs(60)).await[0];
    assert_eq!(state(faulty), proto::JobState::Failed);
    assert!(
        faulty.failure.starts_with("GPU 0 (cpu): illegal memory access"),
        "{}",
        faulty.failure
    );
    let after = server.submit(&mut jobs, on_device("after", 20, None)).await;
    let after = &wait_ended(&mut jobs, &[after], Duration::from_secs(60)).await[0];
    assert_eq!(state(after), proto::JobState::Finished, "{after:?}");

    // A job killed with the server goes on counting after the restart.
    let survivor = server.submit(&mut jobs, on_device("survivor", 1_000_000, None)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_before = loop {
        // Progress reaches the database at checkpoints and at turns; wait
        // until some has been stored.
        let job = jobs
            .get_job(proto::GetJobRequest { id: survivor })
            .await
            .expect("get")
            .into_inner();
        if job.iterations_done.unwrap_or(0) > 0 && state(&job) == proto::JobState::Running {
            break job.iterations_done.unwrap_or(0);
        }
        assert!(Instant::now() < deadline, "the survivor never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A checkpoint taken from now on holds at least that progress: wait
    // until one is on disk.
    let taken = server.metric("wsched_store_checkpoints_taken_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("wsched_store_checkpoints_stored_total") < taken + 1.0 {
        assert!(Instant::now() < deadline, "no checkpoint stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let server = Server::start(&state_dir, &flags[..4]);
    let mut jobs = server.jobs().await;
    let job = jobs
        .get_job(proto::GetJobRequest { id: survivor })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(job.recoveries, 1);
    assert!(
        job.iterations_done.unwrap_or(0) >= done_before,
        "the count goes on from the last checkpoint: {job:?}"
    );
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id: survivor }))
        .await
        .expect("cancel");
}

#[test]
fn without_a_driver_cuda_is_one_clear_error_and_auto_falls_back_saying_so() {
    if wsched::backend::cuda::driver_present() {
        return; // a GPU machine: scripts/gpu-check.sh covers the CUDA side
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args([
            "serve",
            "--backend",
            "cuda",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--state-dir",
        ])
        .arg(dir.path().join("cuda"))
        .output()
        .expect("run wsched serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--backend cuda: no NVIDIA driver found"), "{stderr}");

    let state = dir.path().join("auto");
    let server = Server::start(&state, &[]);
    let log = strip_ansi(&std::fs::read_to_string(state.with_extension("log")).expect("log"));
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains("backend emulated") && first.contains("no NVIDIA driver found"),
        "{first}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_gpus_run_typed_jobs_at_their_measured_speed() {
    // One node of K80s; durations are measured on V100s. A typed job runs
    // at its type's K80 throughput, an untyped one as its duration says,
    // and a type the table lacks is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("k80.yaml");
    std::fs::write(
        &cluster,
        "apiVersion: wsched.dev/v1\nkind: Cluster\nmetadata:\n  name: k80\nspec:\n  nodeGroups:\n    \
         - nodes: 1\n      gpusPerNode: 2\n      gpuKind: K80\n      memoryPerGpu: 12Gi\n",
    )
    .expect("write the cluster");
    let server = Server::start(
        &dir.path().join("state"),
        &[
            "--cluster",
            cluster.to_str().expect("utf-8"),
            "--throughputs",
            "gavel",
            "--reference-gpu",
            "V100",
        ],
    );
    let mut jobs = server.jobs().await;
    let job_type = "ResNet-50 (batch size 64)";
    let table = wsched::speed::ThroughputTable::from_gavel_json(wsched::speed::GAVEL).expect("table");
    let t = table.types().iter().position(|n| n == job_type).expect("a Gavel type") as u16;
    let slower = table.throughput("v100", t, 1).expect("V100") / table.throughput("k80", t, 1).expect("K80");
    assert!(slower > 2.0, "{slower}");
    let mut typed = synthetic("alice", 1, 0.3);
    typed.spec.as_mut().expect("spec").job_type = Some(job_type.into());
    let typed = server.submit(&mut jobs, typed).await;
    let plain = server.submit(&mut jobs, synthetic("bob", 1, 0.3)).await;
    let mut unknown = synthetic("carol", 1, 0.3);
    unknown.spec.as_mut().expect("spec").job_type = Some("BERT (batch size 1)".into());
    let refused = jobs
        .submit_job(server.authed(unknown))
        .await
        .expect_err("an unknown type is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("spec.job_type"), "{}", refused.message());
    let done = wait_ended(&mut jobs, &[typed, plain], Duration::from_secs(60)).await;
    let ran = |job: &proto::Job| job.end_time.expect("ended") - job.start_time.expect("started");
    assert_eq!(
        done[0].spec.as_ref().and_then(|s| s.job_type.as_deref()),
        Some(job_type)
    );
    assert!(
        ran(&done[0]) >= 0.3 * slower * 0.9,
        "typed: {:.3} s, {slower:.2}x slower",
        ran(&done[0])
    );
    assert!(ran(&done[1]) < 0.3 * slower * 0.9, "untyped: {:.3} s", ran(&done[1]));
}
