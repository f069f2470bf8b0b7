//! Process jobs with real processes: the environment a job sees, its logs
//! and exit status, and suspension both ways (the cooperative protocol
//! with `examples/jobs/train.py`, and SIGSTOP/SIGCONT for jobs that do not
//! take part or answer too late).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use wsched::backend::process::{ProcessJob, ProcessSpec, Suspension, describe_exit};

fn spec(command: &[&str]) -> ProcessSpec {
    ProcessSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..ProcessSpec::default()
    }
}

fn shell(script: &str, workdir: &Path) -> ProcessSpec {
    ProcessSpec {
        workdir: Some(workdir.to_path_buf()),
        ..spec(&["sh", "-c", script])
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The counter a shell job writes after each step.
fn count(dir: &Path) -> u32 {
    read(&dir.join("count")).trim().parse().unwrap_or(0)
}

#[test]
fn cooperative_job_checkpoints_at_an_iteration_boundary_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let train = common::root().join("examples/jobs/train.py");
    let train = train.to_str().expect("utf-8 path");
    let mut job = ProcessJob::spawn(
        7,
        &spec(&["python3", train, "--iterations", "60", "--step-seconds", "0.02"]),
        &[2, 5],
        dir.path(),
    )
    .expect("spawn");
    common::wait_for("three iterations", || {
        let p = job.progress();
        p.cooperative && p.iterations.unwrap_or(0) >= 3
    });
    let time = job.progress().iteration_time.expect("iteration time reported");
    assert!(time > 0.0 && time < 5.0, "iteration time {time}");

    let Suspension::Cooperative { iteration } = job.suspend(Duration::from_secs(5)).expect("suspend") else {
        panic!("a cooperating job should checkpoint, not be stopped");
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        job.progress().iterations,
        Some(iteration),
        "no progress while suspended"
    );

    job.resume().expect("resume");
    let status = job.wait_timeout(Duration::from_secs(20)).expect("wait").expect("ended");
    assert!(status.success(), "{}", describe_exit(status));
    assert_eq!(job.progress().iterations, Some(60));
    let stdout = read(&dir.path().join("stdout.log"));
    assert!(stdout.contains("job 7 on GPUs 2,5"), "environment: {stdout}");
    assert!(
        stdout.contains(&format!("checkpoint after iteration {iteration}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("resumed after iteration {iteration}\n")),
        "{stdout}"
    );
    assert!(stdout.ends_with("done\n"), "{stdout}");
}

#[test]
fn job_that_does_not_take_part_is_stopped_and_continued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = ProcessJob::spawn(
        1,
        &shell(
            "i=0; while [ $i -lt 100 ]; do i=$((i+1)); echo $i > count; sleep 0.02; done",
            dir.path(),
        ),
        &[0],
        dir.path(),
    )
    .expect("spawn");
    common::wait_for("a few steps", || count(dir.path()) >= 3);
    assert!(!job.progress().cooperative);
    let started = Instant::now();
    assert_eq!(
        job.suspend(Duration::from_secs(5)).expect("suspend"),
        Suspension::Stopped
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a job that never said hello is stopped at once, without waiting for the deadline"
    );
    std::thread::sleep(Duration::from_millis(100)); // a write already in the kernel completes
    let frozen = count(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(dir.path()), frozen, "no progress while stopped");

    job.resume().expect("resume");
    let status = job.wait_timeout(Duration::from_secs(20)).expect("wait").expect("ended");
    assert!(status.success());
    assert_eq!(count(dir.path()), 100, "it carried on where it stopped");
}

#[test]
fn cooperative_job_that_misses_the_deadline_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Says hello, then never reads the socket.
    let script = "import os, socket, time\n\
                  s = socket.socket(socket.AF_UNIX); s.connect(os.environ['WSCHED_CONTROL']); s.sendall(b'hello 1\\n')\n\
                  for i in range(1, 101):\n    time.sleep(0.02); open('count', 'w').write(str(i))\n";
    let mut job = ProcessJob::spawn(
        2,
        &ProcessSpec {
            workdir: Some(dir.path().to_path_buf()),
            ..spec(&["python3", "-c", script])
        },
        &[0],
        dir.path(),
    )
    .expect("spawn");
    common::wait_for("hello and a few steps", || {
        job.progress().cooperative && count(dir.path()) >= 3
    });
    let started = Instant::now();
    assert_eq!(
        job.suspend(Duration::from_millis(200)).expect("suspend"),
        Suspension::Stopped
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "waited for the deadline first"
    );
    std::thread::sleep(Duration::from_millis(100));
    let frozen = count(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(dir.path()), frozen);
    job.resume().expect("resume");
    let status = job.wait_timeout(Duration::from_secs(20)).expect("wait").expect("ended");
    assert!(status.success());
    assert_eq!(count(dir.path()), 100);
}

#[test]
fn exit_code_and_logs_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = ProcessJob::spawn(
        3,
        &shell(
            "echo \"gpus=$CUDA_VISIBLE_DEVICES id=$WSCHED_JOB_ID\"; echo oops >&2; exit 3",
            dir.path(),
        ),
        &[1, 3],
        dir.path(),
    )
    .expect("spawn");
    let status = job.wait_timeout(Duration::from_secs(20)).expect("wait").expect("ended");
    assert_eq!(status.code(), Some(3));
    assert_eq!(describe_exit(status), "exit code 3");
    assert_eq!(read(&dir.path().join("stdout.log")), "gpus=1,3 id=3\n");
    assert_eq!(read(&dir.path().join("stderr.log")), "oops\n");
    assert_eq!(
        job.suspend(Duration::from_millis(10)).expect("suspend"),
        Suspension::Exited(status),
        "suspending an ended job says so"
    );
    assert!(job.resume().is_err(), "nothing to resume");
}

#[test]
fn kill_ends_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = ProcessJob::spawn(
        4,
        &shell("sleep 30 & echo $! > bg.pid; wait", dir.path()),
        &[0],
        dir.path(),
    )
    .expect("spawn");
    common::wait_for("the background process", || {
        !read(&dir.path().join("bg.pid")).is_empty()
    });
    let pid = read(&dir.path().join("bg.pid")).trim().to_string();
    let status = job.kill().expect("kill");
    assert_eq!(describe_exit(status), "killed by signal 9");
    common::wait_for("the background process to die", || {
        // Gone, or a zombie waiting for its new parent to reap it.
        let stat = read(Path::new(&format!("/proc/{pid}/stat")));
        stat.is_empty() || stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z'))
    });
}

#[test]
fn bad_commands_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ProcessJob::spawn(5, &spec(&[]), &[0], dir.path()).expect_err("empty command");
    assert_eq!(format!("{err:#}"), "job 5: the command is empty");

    let err = ProcessJob::spawn(5, &spec(&["/no/such/program"]), &[0], dir.path()).expect_err("missing program");
    let message = format!("{err:#}");
    assert!(
        message.starts_with("job 5: cannot start `/no/such/program`: "),
        "{message}"
    );

    let deep = dir.path().join("x".repeat(120));
    let err = ProcessJob::spawn(5, &spec(&["true"]), &[0], &deep).expect_err("socket path too long");
    assert!(
        format!("{err:#}").contains("longer than the 107 bytes a Unix socket allows"),
        "{err:#}"
    );
}
