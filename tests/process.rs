//! Process jobs with real processes: the environment a job sees, its logs
//! and exit status, suspension both ways (the cooperative protocol with
//! `examples/jobs/train.py`, and SIGSTOP/SIGCONT for jobs that do not take
//! part or answer too late), and what a server killed with SIGKILL leaves
//! of a job that forks, killed before the job runs again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsched::backend::leftovers::{self, Leftovers};
use wsched::backend::process::{ProcessJob, ProcessSpec, Suspension, control_socket, describe_exit};
use wsched::backend::processes::ProcessBackend;
use wsched::cluster::{Cluster, JobSpec};
use wsched::decision::DecisionLoop;
use wsched::scheduler::PolicyHost;

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
    assert_eq!(
        job.progress().iterations,
        Some(iteration),
        "the checkpoint is at the iteration reported"
    );
    // No iteration while suspended: the job says which iteration it
    // resumed after (checked below), which must be the checkpoint's.

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
    // Stopped means every process of the job is in the stopped state, past
    // any write it had started: nothing can move the count until resumed.
    common::wait_for("every process of the job stopped", || {
        group_stopped(job.process_group())
    });
    let frozen = count(dir.path());
    assert!(frozen < 100, "stopped before the end: {frozen}");
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
    common::wait_for("every process of the job stopped", || {
        group_stopped(job.process_group())
    });
    let frozen = count(dir.path());
    assert!(frozen < 100, "stopped before the end: {frozen}");
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

/// Names the state directory in a helper process that stands in for the
/// server: it starts [`FORK_TREE`] and waits to be killed.
const CRASH_HELPER: &str = "WSCHED_TEST_CRASH_HELPER";

/// Names the job the helper starts.
const CRASH_HELPER_JOB: &str = "WSCHED_TEST_CRASH_HELPER_JOB";

/// A job that forks: a child, a grandchild in its process group, and a
/// grandchild that left the group (`setsid`). Five processes: two `sh`,
/// three `sleep`.
const FORK_TREE: &str = "sleep 600 & (setsid sleep 600 &); sh -c 'sleep 600 & wait' & wait";

/// Not a test: the server that `crash_a_server_running` kills, run in a
/// process of its own; it does nothing unless [`CRASH_HELPER`] is set.
#[test]
fn crash_helper_starts_a_job_and_waits_to_be_killed() {
    let (Some(root), Some(id)) = (std::env::var_os(CRASH_HELPER), std::env::var(CRASH_HELPER_JOB).ok()) else {
        return;
    };
    let id: u64 = id.parse().expect("job id");
    let dir = ProcessBackend::new(PathBuf::from(root)).job_dir(id);
    std::fs::create_dir_all(&dir).expect("job directory");
    // Spawned from this thread, which never exits: only the process's death
    // ends the job's first process (PR_SET_PDEATHSIG), as in the server.
    let job = ProcessJob::spawn(id, &shell(FORK_TREE, &dir), &[0], &dir).expect("spawn");
    std::fs::write(dir.join("group.new"), job.process_group().to_string()).expect("write group");
    std::fs::rename(dir.join("group.new"), dir.join("group")).expect("publish group");
    loop {
        std::thread::park();
    }
}

/// The crash helper, killed (with what is left of its job) should a test
/// fail before it does so itself.
struct Server {
    process: Child,
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let target = leftovers::Target {
            control_socket: self.socket.clone(),
            recorded_group: None,
        };
        let _ = leftovers::kill_one(target, leftovers::DEFAULT_DEADLINE);
    }
}

/// Whether every process in group `group` is stopped (state `T` in
/// `/proc/PID/stat`; a child that exited just before, a zombie, runs no
/// more either), and there is at least one stopped.
fn group_stopped(group: i32) -> bool {
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // pid (comm) state ppid pgrp ...: comm may hold anything, so
        // read from its closing parenthesis.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(group) {
            continue;
        }
        match fields.first() {
            Some(&"T") | Some(&"t") => seen += 1,
            Some(&"Z") | Some(&"X") => {}
            _ => return false,
        }
    }
    seen > 0
}

/// The command names of the processes carrying the marker of the job with
/// control socket `socket`, by pid.
fn job_processes(socket: &Path) -> Vec<(i32, String)> {
    leftovers::processes_of(socket)
        .expect("scan /proc")
        .into_iter()
        .map(|pid| (pid, read(Path::new(&format!("/proc/{pid}/comm"))).trim().to_string()))
        .collect()
}

/// Whether the processes are exactly one [`FORK_TREE`], settled.
fn is_one_fork_tree(processes: &[(i32, String)]) -> bool {
    let count = |name: &str| processes.iter().filter(|(_, comm)| comm == name).count();
    processes.len() == 5 && count("sh") == 2 && count("sleep") == 3
}

fn pids(processes: &[(i32, String)]) -> Vec<i32> {
    processes.iter().map(|(pid, _)| *pid).collect()
}

/// A server whose job `id` runs [`FORK_TREE`], with its state under
/// `root`, killed with SIGKILL: returns it (already dead) with the job's
/// recorded process group and the processes left running.
fn crash_a_server_running(root: &Path, id: u64) -> (Server, i32, Vec<(i32, String)>) {
    let dir = ProcessBackend::new(root).job_dir(id);
    let mut server = Server {
        process: Command::new(std::env::current_exe().expect("test binary"))
            .args(["crash_helper_starts_a_job_and_waits_to_be_killed", "--exact"])
            .env(CRASH_HELPER, root)
            .env(CRASH_HELPER_JOB, id.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the helper"),
        socket: control_socket(&dir),
    };
    common::wait_for("the job's whole tree", || {
        dir.join("group").exists() && is_one_fork_tree(&job_processes(&server.socket))
    });
    let group: i32 = read(&dir.join("group")).parse().expect("process group");
    let tree = job_processes(&server.socket);
    assert!(
        tree.iter().any(|&(pid, _)| {
            let stat = read(Path::new(&format!("/proc/{pid}/stat")));
            stat.rsplit(") ").next().and_then(|rest| rest.split(' ').nth(2)) != Some(group.to_string().as_str())
        }),
        "a grandchild left the job's process group: {tree:?}"
    );

    server.process.kill().expect("kill -9 the server");
    server.process.wait().expect("reap the server");
    common::wait_for("the job's first process to die with the server", || {
        !pids(&job_processes(&server.socket)).contains(&group)
    });
    let left = job_processes(&server.socket);
    assert_eq!(left.len(), 4, "all but the first process outlive the server: {left:?}");
    (server, group, left)
}

/// A server with one GPU whose job runs [`FORK_TREE`]; not started yet.
fn restarted_server(root: &Path) -> (DecisionLoop<ProcessBackend>, u64) {
    let host = PolicyHost::new(common::engine(), Cluster::homogeneous(1, 1, "H100", 80 << 30));
    let mut rt = DecisionLoop::new(host, ProcessBackend::new(root));
    let mut spec = JobSpec::new("t", 1, 0.0);
    spec.work = None;
    spec.expected_duration = None;
    let id = rt.submit(spec).expect("submit");
    let dir = rt.backend().job_dir(id);
    rt.backend_mut().register(id, shell(FORK_TREE, &dir));
    (rt, id)
}

/// Start the job again and check that it runs once: one tree, none of it
/// from before; stopping the server then leaves nothing of it.
fn start_again_and_check_it_runs_once(mut rt: DecisionLoop<ProcessBackend>, id: u64, before: &[i32]) {
    let socket = control_socket(&rt.backend().job_dir(id));
    rt.step(0.0);
    assert!(
        rt.backend().process_group(id).is_some(),
        "not started: {:?}",
        rt.host().cluster().job(id).map(|j| (j.state, j.failure.clone()))
    );
    common::wait_for("the new tree", || is_one_fork_tree(&job_processes(&socket)));
    let now = pids(&job_processes(&socket));
    assert!(
        !now.iter().any(|pid| before.contains(pid)),
        "before {before:?}, now {now:?}"
    );
    drop(rt);
    assert_eq!(
        job_processes(&socket),
        vec![],
        "stopping the server kills the job, the grandchild outside its group included"
    );
}

#[test]
fn leftovers_of_a_crashed_server_are_killed_and_the_job_runs_once_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let (rt, id) = restarted_server(root.path());
    let (_server, group, left) = crash_a_server_running(root.path(), id);

    let found = rt
        .backend()
        .clean_up_after_crash(&[(id, Some(group))])
        .expect("clean up");
    let expected = Leftovers {
        killed: pids(&left),
        ..Leftovers::default()
    };
    assert_eq!(found, vec![(id, expected)]);
    assert_eq!(job_processes(&control_socket(&rt.backend().job_dir(id))), vec![]);
    start_again_and_check_it_runs_once(rt, id, &pids(&left));
}

#[test]
fn a_job_is_never_started_beside_what_a_crashed_server_left_of_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (rt, id) = restarted_server(root.path());
    let (_server, _, left) = crash_a_server_running(root.path(), id);
    start_again_and_check_it_runs_once(rt, id, &pids(&left));
}
