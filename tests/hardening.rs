//! The service against hostile clients and bad days: poison-pill jobs,
//! stored records it can no longer run, a dying scheduler loop, plugin
//! files that are FIFOs or devices, shutdowns with streams open, listings
//! of many jobs, secrets in job environments, malformed input to every
//! RPC, and a stalled plugin. Each test drives a real `wsched serve`.

mod common;

use common::server::*;

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wsched::proto;
use wsched::proto::job_spec::Work;

fn command(argv: &[&str]) -> proto::JobSpec {
    proto::JobSpec {
        name: "cmd".into(),
        user: "alice".into(),
        gpus: 1,
        work: Some(Work::Command(proto::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn submit_request(spec: proto::JobSpec) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest { spec: Some(spec) }
}

/// A synthetic job of `seconds` under a short name, whatever `seconds` is.
fn lasting(seconds: f64) -> proto::JobSpec {
    proto::JobSpec {
        name: "poison".into(),
        user: "eve".into(),
        gpus: 1,
        work: Some(Work::Synthetic(proto::Synthetic {
            seconds,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The server still answers reads and takes a job.
async fn still_serving(server: &Server) {
    let mut jobs = server.jobs().await;
    let id = server.submit(&mut jobs, synthetic("alive", 1, 0.01)).await;
    jobs.get_job(proto::GetJobRequest { id })
        .await
        .expect("the server answers");
}

/// What health says of `service`; an error if it cannot be asked (the
/// server is gone) or refuses.
async fn health_of(server: &Server, service: &str) -> Result<i32, String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.address))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pill_jobs_are_refused_at_the_edge_and_the_scheduler_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    for seconds in [1e20, 1e300, f64::INFINITY, f64::NAN, -1.0] {
        let status = jobs
            .submit_job(server.authed(submit_request(lasting(seconds))))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}: {status:?}");
        assert!(
            status.message().starts_with("spec.synthetic.seconds:"),
            "{seconds}: {status:?}"
        );
    }
    // The largest accepted job starts without harm, and can be cancelled.
    let big = server
        .submit(&mut jobs, submit_request(lasting(wsched::bounds::MAX_JOB_SECONDS)))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&all_jobs(&mut jobs).await[&big]) != proto::JobState::Running {
        assert!(Instant::now() < deadline, "the long job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id: big }))
        .await
        .expect("cancel");
    still_serving(&server).await;
    assert_eq!(
        health_of(&server, "").await.expect("health"),
        ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_job_that_cannot_run_any_more_fails_saying_why_and_the_start_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    // Records as an older, laxer server could have stored them: a live job
    // of 1e20 seconds, one with a NaN priority and no spec, and a good one.
    {
        let mut store = wsched::store::Store::open(&state_dir.join("wsched.redb")).expect("store");
        store
            .set_clock_origin(wsched::service::core::unix_now())
            .expect("clock origin");
        let spec = |seconds: f64| proto::JobSpec {
            user: "old".into(),
            gpus: 1,
            work: Some(Work::Synthetic(proto::Synthetic {
                seconds,
                ..Default::default()
            })),
            ..Default::default()
        };
        let job = |id: u64, spec: Option<proto::JobSpec>| proto::Job {
            id,
            spec,
            state: proto::JobState::Pending as i32,
            submit_time: wsched::service::core::unix_now(),
            priority: f64::NAN,
            attained_gpu_seconds: f64::INFINITY,
            ..Default::default()
        };
        store
            .commit(&wsched::store::Batch {
                jobs: vec![job(0, Some(spec(1e20))), job(1, None), job(2, Some(spec(0.05)))],
                ..Default::default()
            })
            .expect("commit");
    }
    let server = Server::start(&state_dir, &["--emulate-gpus", "2"]);
    let mut jobs = server.jobs().await;
    let ended = wait_ended(&mut jobs, &[0, 1, 2], Duration::from_secs(20)).await;
    assert_eq!(state(&ended[0]), proto::JobState::Failed);
    assert!(
        ended[0].failure.contains("spec.synthetic.seconds"),
        "{}",
        ended[0].failure
    );
    assert_eq!(state(&ended[1]), proto::JobState::Failed);
    assert!(ended[1].failure.contains("no spec"), "{}", ended[1].failure);
    assert_eq!(state(&ended[2]), proto::JobState::Finished, "the good job runs");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_scheduler_loop_turns_health_false_and_the_process_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_env(
        &dir.path().join("state"),
        &["--emulate-gpus", "2"],
        &[(wsched::service::core::PANIC_ON_JOB_NAME, "boom")],
    );
    still_serving(&server).await;
    let mut jobs = server.jobs().await;
    let mut spec = synthetic("eve", 1, 1.0);
    if let Some(s) = &mut spec.spec {
        s.name = "boom".into();
    }
    let status = jobs.submit_job(server.authed(spec)).await.expect_err("the loop died");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Health, while the process is still there, says NOT_SERVING; then the
    // process goes with a non-zero status for a supervisor to restart it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match health_of(&server, "wsched.v1.Jobs").await {
            Ok(status) if status == ServingStatus::Serving as i32 => {
                assert!(Instant::now() < deadline, "health still says SERVING");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // NOT_SERVING, or the server is already gone.
            _ => break,
        }
    }
    let exit = server.wait_exit(Duration::from_secs(20)).expect("the server exits");
    assert!(!exit.success(), "{exit:?}");
    let log = server.log();
    assert!(log.contains("the scheduler loop died"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_by_path_only_from_the_policy_directory_and_only_regular_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("dir");
    std::fs::copy(common::plugin_path("fifo"), policies.join("fifo.wasm")).expect("copy");
    let fifo = policies.join("stuck.wasm");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink("/dev/zero", policies.join("zero.wasm")).expect("symlink");

    let load = |path: &str| proto::LoadPolicyRequest {
        name: String::new(),
        source: Some(proto::load_policy_request::Source::Path(path.into())),
    };
    // Without --policy-dir, no path is read at all.
    let plain = Server::start(&dir.path().join("plain"), &["--emulate-gpus", "1"]);
    let status = plain
        .policies()
        .await
        .load_policy(plain.authed(load(policies.join("fifo.wasm").to_str().expect("utf-8"))))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let dir_flag = policies.to_str().expect("utf-8");
    let server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "1", "--policy-dir", dir_flag],
    );
    let mut client = server.policies().await;
    let started = Instant::now();
    let status = client
        .load_policy(server.authed(load("stuck.wasm")))
        .await
        .expect_err("a FIFO is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not a regular file"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "a FIFO held the call");
    for outside in ["zero.wasm", "/dev/zero", "../plain/token", "/etc/passwd"] {
        let status = client
            .load_policy(server.authed(load(outside)))
            .await
            .expect_err("outside the directory");
        assert_eq!(status.code(), Code::PermissionDenied, "{outside}: {status:?}");
    }
    let status = client
        .load_policy(server.authed(load(&"x".repeat(10 << 20))))
        .await
        .expect_err("a 10 MB path");
    assert!(status.message().len() < 1024, "{}", status.message().len());
    let loaded = client
        .load_policy(server.authed(load("fifo.wasm")))
        .await
        .expect("a plugin in the directory loads")
        .into_inner();
    assert_eq!(loaded.name, "fifo");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_watch_streams_and_the_server_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "2", "--shutdown-grace", "5"],
    );
    let mut jobs = server.jobs().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(watch_all(&mut jobs).await);
    }
    let mut one = jobs
        .watch(proto::WatchRequest {
            job_id: Some(0),
            include_current: true,
        })
        .await
        .expect("watch")
        .into_inner();
    server.submit(&mut jobs, synthetic("w", 1, 600.0)).await;
    next_event(&mut one).await;
    // A health watch too, as a load balancer keeps one open.
    let mut health = HealthClient::new(server.channel().await)
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health watch")
        .into_inner();
    health.message().await.expect("health").expect("a status");
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    for mut stream in streams.into_iter().chain([one]) {
        // Events may still be in flight; the stream then ends with a status
        // that says the server is going.
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("the stream ends in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        let status = end.expect("a final status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    // The health stream says NOT_SERVING, then ends; at the latest the
    // grace time (5 s here) ends it.
    while let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(10), health.message())
        .await
        .expect("the health stream ends in time")
    {
        assert_ne!(status.status, ServingStatus::Serving as i32);
    }
    let exit = server.wait_exit(Duration::from_secs(15)).expect("the server exits");
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(9), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_in_bounded_pages_that_cover_every_job_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    // 2,500 jobs that wait (one long job holds the only GPU); every tenth
    // is bob's.
    let specs: Vec<proto::JobSpec> = (0..2500)
        .map(|i| {
            let mut spec = synthetic(if i % 10 == 0 { "bob" } else { "alice" }, 1, 3600.0)
                .spec
                .expect("spec");
            spec.name = format!("job-{i}");
            spec
        })
        .collect();
    let ids = jobs
        .submit_jobs(server.authed(proto::SubmitJobsRequest { specs }))
        .await
        .expect("submit")
        .into_inner()
        .ids;
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut request = proto::ListJobsRequest {
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = jobs.list_jobs(request.clone()).await.expect("page").into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 1000);
        seen.extend(page.jobs.iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every job once, oldest first");
    // The default page is 500; page_size above the maximum is capped.
    let page = jobs
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.jobs.len(), 500);
    assert!(!page.next_page_token.is_empty());
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            page_size: u32::MAX,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.jobs.len(), 1000);
    // Filters, across pages.
    let bobs = list_all(
        &mut jobs,
        proto::ListJobsRequest {
            user: "bob".into(),
            page_size: 100,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(bobs.len(), 250);
    assert!(bobs.iter().all(|j| j.spec.as_ref().is_some_and(|s| s.user == "bob")));
    let running = list_all(
        &mut jobs,
        proto::ListJobsRequest {
            states: vec![proto::JobState::Running as i32],
            ..Default::default()
        },
    )
    .await;
    assert!(running.len() <= 1);
    // The newest few.
    let newest = jobs
        .list_jobs(proto::ListJobsRequest {
            limit: 3,
            ..Default::default()
        })
        .await
        .expect("newest")
        .into_inner();
    assert_eq!(
        newest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[ids.len() - 3..]
    );
    assert!(newest.next_page_token.is_empty());
    // A token is tied to its filters, and a forged one is refused.
    let first = jobs
        .list_jobs(proto::ListJobsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    for (token, user) in [
        (first.next_page_token.as_str(), "bob"),
        ("p1.5.zz", ""),
        ("garbage", ""),
    ] {
        let status = jobs
            .list_jobs(proto::ListJobsRequest {
                page_token: token.into(),
                user: user.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().starts_with("page_token:"), "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_without_the_token_never_see_environment_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    let mut watch = jobs
        .watch(proto::WatchRequest {
            job_id: None,
            include_current: true,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut spec = command(&["sleep", "30"]);
    if let Some(Work::Command(c)) = &mut spec.work {
        c.env.insert("API_KEY".into(), "s3cret".into());
    }
    let id = server.submit(&mut jobs, submit_request(spec)).await;
    let env_of = |job: &proto::Job| match job.spec.as_ref().and_then(|s| s.work.as_ref()) {
        Some(Work::Command(c)) => c.env["API_KEY"].clone(),
        _ => panic!("a command job"),
    };
    let open = jobs
        .get_job(proto::GetJobRequest { id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(env_of(&open), "<redacted>");
    let listed = all_jobs(&mut jobs).await;
    assert_eq!(env_of(&listed[&id]), "<redacted>");
    let event = next_event(&mut watch).await;
    let Some(proto::event::Kind::Job(job)) = event.kind else {
        panic!("{event:?}")
    };
    assert_eq!(env_of(&job), "<redacted>");
    let owner = jobs
        .get_job(server.authed(proto::GetJobRequest { id }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(env_of(&owner), "s3cret", "the token holder sees it");
    let status = jobs
        .get_job(with_token(proto::GetJobRequest { id }, "wrong"))
        .await
        .expect_err("a wrong token is not anonymous");
    assert_eq!(status.code(), Code::Unauthenticated);
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id }))
        .await
        .expect("cancel");

    // The state directory and what is in it are the server user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&server.state), 0o700);
    for name in ["token", "wsched.redb", "wsched.wal0", "wsched.wal1", "serve.addr"] {
        assert_eq!(mode(&server.state.join(name)), 0o600, "{name}");
    }

    // With --auth-reads, a read needs the token.
    let strict = Server::start(&dir.path().join("strict"), &["--emulate-gpus", "1", "--auth-reads"]);
    let mut strict_jobs = strict.jobs().await;
    let status = strict_jobs
        .get_job(proto::GetJobRequest { id: 0 })
        .await
        .expect_err("needs the token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = strict_jobs
        .get_job(strict.authed(proto::GetJobRequest { id: 0 }))
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_are_checked_at_submission_and_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    let with = |f: &dyn Fn(&mut proto::Command)| {
        let mut spec = command(&["/bin/true"]);
        if let Some(Work::Command(c)) = &mut spec.work {
            f(c);
        }
        submit_request(spec)
    };
    let cases: Vec<(&str, proto::SubmitJobRequest)> = vec![
        ("spec.command.workdir", with(&|c| c.workdir = "/no/such/dir".into())),
        ("spec.command.workdir", with(&|c| c.workdir = "/tmp\0x".into())),
        ("spec.command.workdir", with(&|c| c.workdir = "relative".into())),
        (
            "spec.command.argv[0]",
            with(&|c| c.argv = vec!["/no/such/program".into()]),
        ),
        (
            "spec.command.argv[0]",
            with(&|c| c.argv = vec!["no-such-program-anywhere".into()]),
        ),
        ("spec.command.argv[1]", with(&|c| c.argv.push("y".repeat(3 << 20)))),
        (
            "spec.command.argv",
            with(&|c| c.argv.extend((0..20).map(|_| "z".repeat(100_000)))),
        ),
    ];
    for (field, request) in cases {
        let status = jobs.submit_job(server.authed(request)).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {status:?}"
        );
        assert!(status.message().len() < 1024, "{field}: the status echoes its input");
    }
    let ok = server.submit(&mut jobs, with(&|c| c.workdir = "/".into())).await;
    wait_ended(&mut jobs, &[ok], Duration::from_secs(20)).await;

    let off = Server::start(&dir.path().join("off"), &["--emulate-gpus", "1", "--no-command-jobs"]);
    let mut off_jobs = off.jobs().await;
    let status = off_jobs
        .submit_job(off.authed(submit_request(command(&["/bin/true"]))))
        .await
        .expect_err("no command jobs here");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().starts_with("spec.command:"), "{status:?}");
    still_serving(&off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_starts_nothing_is_ejected_as_stalled_and_every_job_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "2", "--stall-timeout", "1"],
    );
    server.load("hostile").await;
    let mut policies = server.policies().await;
    policies
        .swap_policy(server.authed(proto::SwapPolicyRequest {
            name: "hostile".into(),
            config: "mode=idle".into(),
        }))
        .await
        .expect("swap");
    let mut jobs = server.jobs().await;
    let mut watch = watch_all(&mut jobs).await;
    let ids = [
        server.submit(&mut jobs, synthetic("s", 1, 0.05)).await,
        server.submit(&mut jobs, synthetic("s", 2, 0.05)).await,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        assert!(Instant::now() < deadline, "no ejection");
        if let Some(proto::event::Kind::Policy(change)) = next_event(&mut watch).await.kind
            && change.reason == "ejected"
        {
            break change.detail;
        }
    };
    assert!(detail.contains("stall"), "{detail}");
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(20)).await;
    assert!(ended.iter().all(|j| state(j) == proto::JobState::Finished));
    let list = policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.active, "builtin-fifo");
    assert_eq!(list.ejections, 1);
    assert!(server.scrape().contains("wsched_plugin_ejections_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_zero_can_be_watched_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    let mut only_zero = jobs
        .watch(proto::WatchRequest {
            job_id: Some(0),
            include_current: false,
        })
        .await
        .expect("watch")
        .into_inner();
    let zero = server.submit(&mut jobs, synthetic("z", 1, 0.05)).await;
    let one = server.submit(&mut jobs, synthetic("z", 1, 0.05)).await;
    assert_eq!((zero, one), (0, 1));
    wait_ended(&mut jobs, &[zero, one], Duration::from_secs(20)).await;
    let mut states = Vec::new();
    while states.last() != Some(&proto::JobState::Finished) {
        let event = next_event(&mut only_zero).await;
        let Some(proto::event::Kind::Job(job)) = event.kind else {
            panic!("{event:?}")
        };
        assert_eq!(job.id, 0, "only job 0's events");
        states.push(state(&job));
    }
}

#[test]
fn server_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    server.kill();
    let raw = std::fs::read_to_string(server.state.with_extension("log")).expect("log");
    assert!(raw.contains("gRPC service listening"), "{raw}");
    assert!(!raw.contains('\u{1b}'), "escape codes in a log file");
}

/// Whether a status is a clean answer to a bad request: the client's fault
/// named, never the server's (INTERNAL, UNKNOWN) nor an outage (UNAVAILABLE).
fn clean(result: Result<(), tonic::Status>) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(status) => {
            let ok = matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::NotFound
                    | Code::PermissionDenied
                    | Code::ResourceExhausted
                    | Code::Unauthenticated
                    | Code::OutOfRange
            );
            if !ok {
                return Err(format!("{:?}: {}", status.code(), status.message()));
            }
            if status.message().len() > 2048 {
                return Err(format!("a {}-byte status message", status.message().len()));
            }
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_hostile_requests_get_clean_answers_and_the_scheduler_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies_dir = dir.path().join("policies");
    std::fs::create_dir(&policies_dir).expect("dir");
    let fifo = policies_dir.join("fifo.wasm");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let server = Server::start(
        &dir.path().join("state"),
        &[
            "--emulate-gpus",
            "2",
            "--policy-dir",
            policies_dir.to_str().expect("utf-8"),
        ],
    );
    let mut jobs = server.jobs().await;
    let mut policies = server.policies().await;
    let mut cluster = proto::cluster_client::ClusterClient::new(server.channel().await);
    let huge = "h".repeat(10 << 20);
    let floats = [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e20,
        1e300,
        5e-324,
    ];
    let base = || lasting(1.0);
    let mut specs: Vec<(String, proto::JobSpec)> = Vec::new();
    for &v in &floats {
        let mut s = base();
        s.gpu_fraction = Some(v);
        specs.push((format!("gpu_fraction={v}"), s));
        let mut s = base();
        s.priority = Some(v);
        specs.push((format!("priority={v}"), s));
        let mut s = base();
        s.expected_duration_seconds = Some(v);
        specs.push((format!("expected_duration={v}"), s));
        specs.push((format!("seconds={v}"), lasting(v)));
        let mut s = base();
        if let Some(Work::Synthetic(w)) = &mut s.work {
            w.gflops_per_iteration = Some(v);
        }
        specs.push((format!("gflops={v}"), s));
    }
    for v in [0, 1, u64::MAX, 1 << 63] {
        let mut s = base();
        s.iterations = Some(v);
        specs.push((format!("iterations={v}"), s));
        let mut s = base();
        s.memory_per_gpu_bytes = v;
        specs.push((format!("memory={v}"), s));
        let mut s = base();
        if let Some(Work::Synthetic(w)) = &mut s.work {
            w.fault_at_iteration = Some(v);
        }
        specs.push((format!("fault_at={v}"), s));
    }
    for v in [0, 3, u32::MAX] {
        let mut s = base();
        s.gpus = v;
        specs.push((format!("gpus={v}"), s));
    }
    for field in ["name", "user", "argv", "env-name", "env-value", "workdir"] {
        let mut s = if field == "name" || field == "user" {
            base()
        } else {
            command(&["/bin/true"])
        };
        match (field, &mut s.work) {
            ("name", _) => s.name = huge.clone(),
            ("user", _) => s.user = huge.clone(),
            ("argv", Some(Work::Command(c))) => c.argv.push(huge.clone()),
            ("env-name", Some(Work::Command(c))) => {
                c.env.insert(huge.clone(), "v".into());
            }
            ("env-value", Some(Work::Command(c))) => {
                c.env.insert("K".into(), huge.clone());
            }
            ("workdir", Some(Work::Command(c))) => c.workdir = huge.clone(),
            _ => unreachable!(),
        }
        specs.push((format!("10 MB {field}"), s));
    }
    let mut answered = 0;
    let mut failures = Vec::new();
    for (what, spec) in &specs {
        let result = jobs
            .submit_job(server.authed(submit_request(spec.clone())))
            .await
            .map(|_| ());
        if let Err(e) = clean(result) {
            failures.push(format!("SubmitJob {what}: {e}"));
        }
        // The same spec alone in a batch, and second in one: all or none,
        // the field named.
        for specs in [vec![spec.clone()], vec![base(), spec.clone()]] {
            let batch = proto::SubmitJobsRequest { specs };
            let result = jobs.submit_jobs(server.authed(batch)).await.map(|_| ());
            if let Err(e) = clean(result) {
                failures.push(format!("SubmitJobs {what}: {e}"));
            }
        }
        answered += 3;
    }
    let mut other: Vec<(String, Result<(), tonic::Status>)> = Vec::new();
    for id in [0, 1, u64::MAX] {
        other.push((
            format!("GetJob {id}"),
            jobs.get_job(proto::GetJobRequest { id }).await.map(|_| ()),
        ));
        other.push((
            format!("CancelJob {id}"),
            jobs.cancel_job(server.authed(proto::CancelJobRequest { id }))
                .await
                .map(|_| ()),
        ));
    }
    for states in [vec![-1], vec![99], vec![i32::MAX], vec![0]] {
        let request = proto::ListJobsRequest {
            states: states.clone(),
            ..Default::default()
        };
        other.push((
            format!("ListJobs {states:?}"),
            jobs.list_jobs(request).await.map(|_| ()),
        ));
    }
    for request in [
        proto::ListJobsRequest {
            page_size: u32::MAX,
            limit: u32::MAX,
            ..Default::default()
        },
        proto::ListJobsRequest {
            page_token: huge.clone(),
            ..Default::default()
        },
        proto::ListJobsRequest {
            user: huge.clone(),
            ..Default::default()
        },
    ] {
        other.push(("ListJobs edge".into(), jobs.list_jobs(request).await.map(|_| ())));
    }
    other.push((
        "SubmitJobs empty".into(),
        jobs.submit_jobs(server.authed(proto::SubmitJobsRequest { specs: vec![] }))
            .await
            .map(|_| ()),
    ));
    other.push((
        "SubmitJobs 10,001".into(),
        jobs.submit_jobs(server.authed(proto::SubmitJobsRequest {
            specs: vec![base(); 10_001],
        }))
        .await
        .map(|_| ()),
    ));
    other.push((
        "Watch u64::MAX".into(),
        jobs.watch(proto::WatchRequest {
            job_id: Some(u64::MAX),
            include_current: true,
        })
        .await
        .map(|_| ()),
    ));
    use proto::load_policy_request::Source;
    let fifo_path = fifo.to_str().expect("utf-8").to_string();
    for (name, source) in [
        (huge.clone(), Some(Source::Wasm(vec![0; 16]))),
        (String::new(), Some(Source::Wasm(huge.clone().into_bytes()))),
        (String::new(), Some(Source::Path(huge.clone()))),
        (String::new(), Some(Source::Path("/dev/zero".into()))),
        (String::new(), Some(Source::Path(fifo_path.clone()))),
        (String::new(), Some(Source::Path("fifo.wasm".into()))),
        (String::new(), Some(Source::Path(String::new()))),
        ("x".into(), None),
    ] {
        other.push((
            format!("LoadPolicy {}", &name.chars().take(8).collect::<String>()),
            policies
                .load_policy(server.authed(proto::LoadPolicyRequest { name, source }))
                .await
                .map(|_| ()),
        ));
    }
    for (name, config) in [
        (huge.clone(), String::new()),
        ("builtin-fifo".to_string(), huge.clone()),
        ("nobody".to_string(), String::new()),
        (String::new(), String::new()),
    ] {
        other.push((
            "SwapPolicy".into(),
            policies
                .swap_policy(server.authed(proto::SwapPolicyRequest { name, config }))
                .await
                .map(|_| ()),
        ));
    }
    for name in [huge.clone(), "builtin-fifo".into(), "nobody".into(), String::new()] {
        other.push((
            "UnloadPolicy".into(),
            policies
                .unload_policy(server.authed(proto::UnloadPolicyRequest { name }))
                .await
                .map(|_| ()),
        ));
    }
    other.push((
        "GetCluster".into(),
        cluster.get_cluster(proto::GetClusterRequest {}).await.map(|_| ()),
    ));
    for (what, result) in other {
        answered += 1;
        if let Err(e) = clean(result) {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(answered >= 200, "only {answered} requests");
    still_serving(&server).await;
    assert_eq!(
        health_of(&server, "").await.expect("health"),
        ServingStatus::Serving as i32
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Pids of live (not zombie) processes whose environment holds `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|var| var == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_jobs_leftovers_are_killed_after_a_crash_and_it_runs_once_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let mut server = Server::start(&state_dir, &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    // A job with a child, a grandchild in its group and one that left it.
    let id = server
        .submit(
            &mut jobs,
            submit_request(command(&[
                "sh",
                "-c",
                "sleep 600 & (setsid sleep 600 &); sh -c 'sleep 600 & wait' & wait",
            ])),
        )
        .await;
    let socket = state_dir
        .canonicalize()
        .expect("state dir")
        .join(format!("jobs/job-{id}/control.sock"));
    let marker = format!("WSCHED_CONTROL={}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with(&marker).len() < 5 {
        assert!(Instant::now() < deadline, "the job's tree never grew");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let group = all_jobs(&mut jobs).await[&id].process_group;
    assert!(group.is_some(), "the process group is in the job's record");
    server.kill();
    let orphans = processes_with(&marker);
    assert!(!orphans.is_empty(), "the crash left nothing behind: nothing to test");

    let server = Server::start(&state_dir, &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = processes_with(&marker);
        let old = now.iter().filter(|pid| orphans.contains(pid)).count();
        if old == 0 && now.len() == 5 {
            break; // one tree: the new run's, none of the old
        }
        assert!(Instant::now() < deadline, "old {old} of {:?}, now {now:?}", orphans);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = jobs
        .get_job(server.authed(proto::GetJobRequest { id }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(job.recoveries, 1);
    assert!(
        job.notes
            .iter()
            .any(|n| n.text.contains("killed") && n.text.contains("earlier run")),
        "{:?}",
        job.notes
    );
    jobs.cancel_job(server.authed(proto::CancelJobRequest { id }))
        .await
        .expect("cancel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "a cancel leaves processes behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_run_as_the_user_the_server_is_told() {
    // SAFETY: geteuid(2) only reads our effective user id.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: starting jobs as another user needs root");
        return;
    }
    let nobody = wsched::backend::process::Credentials::of_user("nobody").expect("the user nobody");
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    // The job must be able to pass through the directories above its own.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let server = Server::start(
        &dir.path().join("state"),
        &["--emulate-gpus", "1", "--run-as", "nobody"],
    );
    let mut jobs = server.jobs().await;
    let id = server
        .submit(
            &mut jobs,
            submit_request(command(&[
                "sh",
                "-c",
                "id -u; echo $HOME; test -w \"$WSCHED_CONTROL\" && echo reachable",
            ])),
        )
        .await;
    let done = wait_ended(&mut jobs, &[id], Duration::from_secs(20)).await;
    assert_eq!(state(&done[0]), proto::JobState::Finished, "{:?}", done[0]);
    let log = std::fs::read_to_string(server.state.join(format!("jobs/job-{id}/stdout.log"))).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{log}");
    assert_eq!(lines[1], nobody.home.display().to_string(), "{log}");
    assert_eq!(lines.get(2), Some(&"reachable"), "{log}");
    // Others may pass through the state directory, not list or read it.
    let mode = std::fs::metadata(&server.state).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o711);
    let token_mode = std::fs::metadata(server.state.join("token"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(token_mode, 0o600);

    // A server that is not root cannot start jobs as someone else: here,
    // a user that does not exist is refused at start.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wsched"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
            "--run-as",
            "no-such-user-anywhere",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--run-as") && stderr.contains("no-such-user-anywhere"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_without_the_right_token_is_unauthenticated_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("state"), &["--emulate-gpus", "1"]);
    let mut jobs = server.jobs().await;
    let mut policies = server.policies().await;
    let plugin = std::fs::read(common::plugin_path("fifo")).expect("plugin");
    fn as_with<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
        match token {
            None => tonic::Request::new(message),
            Some(token) => with_token(message, token),
        }
    }
    for token in [None, Some("wrong"), Some(""), Some("Bearer")] {
        let statuses = [
            jobs.submit_job(as_with(token, synthetic("eve", 1, 1.0)))
                .await
                .map(|_| ()),
            jobs.submit_jobs(as_with(
                token,
                proto::SubmitJobsRequest {
                    specs: vec![lasting(1.0)],
                },
            ))
            .await
            .map(|_| ()),
            jobs.cancel_job(as_with(token, proto::CancelJobRequest { id: 0 }))
                .await
                .map(|_| ()),
            policies
                .load_policy(as_with(
                    token,
                    proto::LoadPolicyRequest {
                        name: "x".into(),
                        source: Some(proto::load_policy_request::Source::Wasm(plugin.clone())),
                    },
                ))
                .await
                .map(|_| ()),
            policies
                .swap_policy(as_with(
                    token,
                    proto::SwapPolicyRequest {
                        name: "builtin-fifo".into(),
                        config: String::new(),
                    },
                ))
                .await
                .map(|_| ()),
            policies
                .unload_policy(as_with(token, proto::UnloadPolicyRequest { name: "x".into() }))
                .await
                .map(|_| ()),
        ];
        for (i, status) in statuses.into_iter().enumerate() {
            let status = status.expect_err("refused");
            assert_eq!(status.code(), Code::Unauthenticated, "{token:?} #{i}: {status:?}");
        }
    }
    assert!(all_jobs(&mut jobs).await.is_empty(), "nothing was accepted");
    let list = policies
        .list_policies(proto::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.policies.len(), 1, "nothing was loaded: {list:?}");
    assert_eq!(list.swaps, 0);
}
