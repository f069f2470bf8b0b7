//! The real-time loop over its backends: emulated GPUs on a hand-held
//! clock (exact times), and local processes on the wall clock, including a
//! Wasm policy preempting a cooperating job that checkpoints and resumes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use wsched::backend::emulated::EmulatedBackend;
use wsched::backend::process::ProcessSpec;
use wsched::backend::processes::ProcessBackend;
use wsched::cluster::{Cluster, JobSpec};
use wsched::decision::DecisionLoop;
use wsched::engine::Limits;
use wsched::scheduler::PolicyHost;
use wsched::wit::{Action, JobState};

fn gpus(n: u32) -> Cluster {
    Cluster::homogeneous(n, n, "H100", 80 << 30)
}

fn builtin_fifo(n: u32) -> PolicyHost {
    PolicyHost::new(common::engine(), gpus(n))
}

fn plugin(name: &str, config: &str, n: u32) -> PolicyHost {
    let engine = common::engine_with(Limits::default());
    let plugin = common::load(&engine, name);
    let instance = engine.instantiate(&plugin, config, 0.0).expect("instantiate");
    PolicyHost::with_plugin(engine, gpus(n), instance)
}

fn state(rt: &DecisionLoop<impl wsched::backend::Backend>, id: u64) -> JobState {
    rt.host().cluster().job(id).expect("job").state
}

#[test]
fn emulated_jobs_finish_when_their_work_is_done() {
    let mut rt = DecisionLoop::new(builtin_fifo(2), EmulatedBackend);
    let ids: Vec<u64> = (0..3)
        .map(|_| rt.submit(JobSpec::new("t", 1, 10.0)).expect("submit"))
        .collect();
    rt.step(0.0);
    assert_eq!(rt.host().cluster().running_ids().len(), 2);
    assert_eq!(rt.next_due(), Some(10.0), "the emulated backend predicts the ends");

    let step = rt.step(10.0);
    assert_eq!(step.ended, vec![(ids[0], Ok(())), (ids[1], Ok(()))]);
    assert_eq!(state(&rt, ids[2]), JobState::Running, "the third starts on a freed GPU");
    assert_eq!(rt.next_due(), Some(20.0));

    rt.step(20.0);
    assert_eq!(state(&rt, ids[2]), JobState::Finished);
    assert_eq!(rt.host().cluster().job(ids[2]).and_then(|j| j.end_time), Some(20.0));
    assert_eq!(rt.next_due(), None);
}

#[test]
fn emulated_preemption_keeps_progress() {
    // LAS with a 5 GPU-second threshold on one GPU.
    let mut rt = DecisionLoop::new(plugin("las", "thresholds=5", 1), EmulatedBackend);
    let long = rt.submit(JobSpec::new("t", 1, 20.0)).expect("submit");
    rt.step(0.0);
    assert_eq!(state(&rt, long), JobState::Running);

    rt.step(8.0);
    let short = rt.submit(JobSpec::new("t", 1, 2.0)).expect("submit");
    let step = rt.step(8.0);
    let actions: Vec<&Action> = step
        .outcomes
        .iter()
        .flat_map(|o| o.applied.iter().map(|(a, _)| a))
        .collect();
    assert!(matches!(actions[0], Action::Preempt(id) if *id == long), "{actions:?}");
    assert_eq!(state(&rt, short), JobState::Running);
    assert_eq!(rt.next_due(), Some(10.0));

    rt.step(10.0);
    assert_eq!(state(&rt, short), JobState::Finished);
    assert_eq!(state(&rt, long), JobState::Running, "resumed");
    assert_eq!(rt.next_due(), Some(22.0), "8 s done before, 12 s left");
    rt.step(22.0);
    let job = rt.host().cluster().job(long).expect("job");
    assert_eq!((job.state, job.preemptions), (JobState::Finished, 1));
}

fn shell(script: &str) -> ProcessSpec {
    ProcessSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..ProcessSpec::default()
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn process_jobs_run_on_their_gpus_and_report_how_they_ended() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut rt = DecisionLoop::new(builtin_fifo(2), ProcessBackend::new(root.path()));
    let mut ids = Vec::new();
    for script in [
        "echo \"gpus=$CUDA_VISIBLE_DEVICES\"; sleep 0.2",
        "echo \"gpus=$CUDA_VISIBLE_DEVICES\"; sleep 0.2",
        "echo \"gpus=$CUDA_VISIBLE_DEVICES\"; echo broken >&2; exit 3",
    ] {
        let id = rt.submit(process_spec()).expect("submit");
        rt.backend_mut().register(id, shell(script));
        ids.push(id);
    }
    let unregistered = rt.submit(JobSpec::new("t", 1, 1.0)).expect("submit");

    assert!(rt.run_until_idle(Duration::from_secs(30), Duration::from_millis(20)));
    let cluster = rt.host().cluster();
    assert_eq!(cluster.job(ids[0]).map(|j| j.state), Some(JobState::Finished));
    assert_eq!(cluster.job(ids[1]).map(|j| j.state), Some(JobState::Finished));
    let failed = cluster.job(ids[2]).expect("job");
    assert_eq!(
        (failed.state, failed.failure.as_deref()),
        (JobState::Failed, Some("exit code 3"))
    );
    let lost = cluster.job(unregistered).expect("job");
    assert_eq!(lost.state, JobState::Failed);
    assert!(
        lost.failure
            .as_deref()
            .is_some_and(|f| f.contains("no command registered")),
        "{:?}",
        lost.failure
    );
    let dir = rt.backend().job_dir(ids[0]);
    assert_eq!(log(&dir, "stdout.log"), "gpus=0\n", "the first job got GPU 0");
    assert_eq!(log(&rt.backend().job_dir(ids[1]), "stdout.log"), "gpus=1\n");
    assert_eq!(log(&rt.backend().job_dir(ids[2]), "stderr.log"), "broken\n");
}

#[test]
fn wasm_policy_preempts_a_cooperating_process_which_checkpoints_and_resumes() {
    let root = tempfile::tempdir().expect("tempdir");
    // LAS on one GPU with a 0.3 GPU-second threshold: a newcomer displaces
    // a job that has run longer than that.
    let mut rt = DecisionLoop::new(
        plugin("las", "thresholds=0.3", 1),
        ProcessBackend::new(root.path()).with_suspend_deadline(Duration::from_secs(5)),
    );
    let train = common::root().join("examples/jobs/train.py");
    let long = rt.submit(process_spec()).expect("submit");
    rt.backend_mut().register(
        long,
        ProcessSpec {
            command: vec![
                "python3".into(),
                train.display().to_string(),
                "--iterations".into(),
                "40".into(),
                "--step-seconds".into(),
                "0.05".into(),
            ],
            ..ProcessSpec::default()
        },
    );

    // Step on the wall clock by hand, to submit the newcomer once the long
    // job is cooperating and past the threshold.
    let started = Instant::now();
    let now = || started.elapsed().as_secs_f64();
    let mut short = None;
    while rt.host().cluster().live_jobs() > 0 {
        assert!(now() < 60.0, "timed out");
        rt.step(now());
        let cooperating = rt
            .backend()
            .progress(long)
            .is_some_and(|p| p.iterations.unwrap_or(0) >= 2);
        if short.is_none() && cooperating && now() > 0.5 {
            let id = rt.submit(process_spec()).expect("submit");
            rt.backend_mut().register(id, shell("echo short; sleep 0.2"));
            short = Some(id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let short = short.expect("the newcomer was submitted");
    let cluster = rt.host().cluster();
    let (long_job, short_job) = (cluster.job(long).expect("job"), cluster.job(short).expect("job"));
    assert_eq!((long_job.state, long_job.preemptions), (JobState::Finished, 1));
    assert_eq!(short_job.state, JobState::Finished);
    assert!(
        short_job.end_time < long_job.end_time,
        "the newcomer ran while the long job waited"
    );
    let stdout = log(&rt.backend().job_dir(long), "stdout.log");
    assert!(stdout.contains("checkpoint after iteration"), "{stdout}");
    assert!(stdout.contains("resumed after iteration"), "{stdout}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
    assert_eq!(rt.backend().restarts(long), 0, "resumed on the same GPU, same process");
    let info = rt.host().cluster().job_info(long).expect("job");
    assert_eq!(info.iterations_done, Some(40), "the policy sees what the job reported");
    assert!(
        info.iteration_time.is_some_and(|t| t > 0.0 && t < 5.0),
        "{:?}",
        info.iteration_time
    );
}

/// A job whose work is a process: no declared duration (it ends when the
/// process exits).
fn process_spec() -> JobSpec {
    let mut spec = JobSpec::new("t", 1, 0.0);
    spec.work = None;
    spec.expected_duration = None;
    spec
}

#[test]
fn cancelling_a_process_job_kills_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut rt = DecisionLoop::new(builtin_fifo(1), ProcessBackend::new(root.path()));
    let id = rt.submit(process_spec()).expect("submit");
    rt.backend_mut().register(id, shell("echo started; sleep 30"));
    rt.step(0.0);
    let dir = rt.backend().job_dir(id);
    common::wait_for("the job to start", || !log(&dir, "stdout.log").is_empty());
    assert!(rt.cancel(id));
    assert!(!rt.cancel(id), "already ended");
    let job = rt.host().cluster().job(id).expect("job");
    assert_eq!(
        (job.state, job.failure.as_deref()),
        (JobState::Failed, Some("cancelled"))
    );
    assert!(rt.run_until_idle(Duration::from_secs(5), Duration::from_millis(10)));
    assert!(rt.backend().progress(id).is_none(), "no process left");
}

#[test]
fn a_job_whose_gpu_goes_away_is_suspended_and_restarted_elsewhere() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut rt = DecisionLoop::new(builtin_fifo(2), ProcessBackend::new(root.path()));
    let id = rt.submit(process_spec()).expect("submit");
    rt.backend_mut().register(
        id,
        shell("echo \"gpus=$CUDA_VISIBLE_DEVICES restarts=$WSCHED_RESTARTS\"; sleep 0.5"),
    );
    rt.step(0.0);
    assert_eq!(rt.host().cluster().job(id).map(|j| j.placement.clone()), Some(vec![0]));
    let dir = rt.backend().job_dir(id);
    common::wait_for("the job to start", || !log(&dir, "stdout.log").is_empty());
    assert_eq!(rt.set_gpu_online(0, false), vec![id]);
    assert!(rt.run_until_idle(Duration::from_secs(30), Duration::from_millis(20)));
    let job = rt.host().cluster().job(id).expect("job");
    assert_eq!((job.state, job.placement.clone()), (JobState::Finished, vec![]));
    assert_eq!(rt.backend().restarts(id), 1);
    assert_eq!(
        log(&dir, "stdout.log"),
        "gpus=0 restarts=0\ngpus=1 restarts=1\n",
        "both runs in one log: on GPU 0, then again on GPU 1"
    );
}
