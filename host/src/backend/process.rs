//! A user's command run as a job: its GPUs, its logs, its exit status, and
//! how it is suspended and resumed.
//!
//! Time-slicing a GPU between jobs (Gandiva, Tiresias) needs jobs that can
//! stop. The clean way is the job's own help: told to suspend, it finishes
//! its current iteration, checkpoints and waits, so nothing is lost and the
//! host learns where it stopped. Not every job will take part, so the
//! fallback is the kernel's: SIGSTOP to the job's process group, SIGCONT to
//! resume it (its device memory stays allocated meanwhile).
//!
//! # The cooperative protocol (version 1)
//!
//! The job finds everything in its environment:
//!
//! - `CUDA_VISIBLE_DEVICES`: its GPUs, comma-separated (the placement).
//! - `WSCHED_JOB_ID`: its job id.
//! - `WSCHED_CONTROL`: the path of a Unix stream socket. Connecting is
//!   optional; a job that never connects is suspended with SIGSTOP.
//!
//! Over that connection both sides write newline-terminated UTF-8 lines:
//!
//! | from | line | meaning |
//! |---|---|---|
//! | job | `hello 1` | speaks version 1; must come first |
//! | job | `iteration N SECONDS` | finished iteration N (a running count); it took SECONDS |
//! | job | `suspended N` | after a `suspend`: checkpointed after iteration N, now waiting |
//! | host | `suspend DEADLINE` | checkpoint at the next iteration boundary within DEADLINE seconds, answer `suspended N`, then wait for `resume` |
//! | host | `resume` | carry on |
//!
//! A job that does not answer `suspend` within the deadline is stopped
//! with SIGSTOP anyway; on resume it gets SIGCONT and then `resume`, so a
//! late `suspended` costs it nothing. Unknown lines are ignored (logged),
//! so later versions can add messages. `examples/jobs/train.py` is a
//! complete cooperating job in a few lines of Python.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::leftovers;

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest path a Unix socket address can hold on Linux (108 bytes with
/// the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment variables, on top of the host's own and wsched's.
    pub env: HashMap<String, String>,
    /// Working directory; the host's own when none.
    pub workdir: Option<PathBuf>,
}

/// How jobs are started, beyond what each asks for: the server's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Run jobs as this user instead of the server's (`serve --run-as`).
    pub run_as: Option<Credentials>,
    /// The file mode mask jobs start with (the server's own is stricter).
    pub umask: Option<libc::mode_t>,
}

/// A user jobs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's name.
    pub name: String,
    /// User id.
    pub uid: libc::uid_t,
    /// Primary group id (the job gets no other group).
    pub gid: libc::gid_t,
    /// Home directory (the job's `HOME`).
    pub home: PathBuf,
}

impl Credentials {
    /// Look `name` up in the user database.
    pub fn of_user(name: &str) -> anyhow::Result<Credentials> {
        let c_name = std::ffi::CString::new(name).context("a user name cannot hold a NUL byte")?;
        let mut size = 16 * 1024;
        loop {
            let mut buf = vec![0 as libc::c_char; size];
            // SAFETY: an all-zero passwd is a valid value to be filled in.
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is to memory we own, sized as passed;
            // the strings the entry points to live in `buf`, read below
            // while `buf` lives.
            let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
            if rc == libc::ERANGE && size < 1 << 20 {
                size *= 4;
                continue;
            }
            if rc != 0 {
                bail!(
                    "cannot look up user {name:?}: {}",
                    std::io::Error::from_raw_os_error(rc)
                );
            }
            if found.is_null() {
                bail!("no user {name:?} on this machine");
            }
            // SAFETY: pw_dir is a NUL-terminated string inside `buf`.
            let home = unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) }
                .to_string_lossy()
                .into_owned();
            return Ok(Credentials {
                name: name.to_string(),
                uid: entry.pw_uid,
                gid: entry.pw_gid,
                home: PathBuf::from(home),
            });
        }
    }
}

/// How a `suspend` ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Suspension {
    /// The job checkpointed after this many iterations and waits for `resume`.
    Cooperative {
        /// Iterations completed when it stopped.
        iteration: u64,
    },
    /// The job did not answer in time (or does not speak the protocol): its
    /// process group was stopped with SIGSTOP.
    Stopped,
    /// The job had already ended.
    Exited(ExitStatus),
}

/// What the job has reported about its progress (all `None` for a job that
/// does not speak the protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Whether the job said `hello`.
    pub cooperative: bool,
    /// Iterations completed.
    pub iterations: Option<u64>,
    /// Seconds the last iteration took.
    pub iteration_time: Option<f64>,
}

/// Where the job is, as the host last left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    SuspendedCooperatively,
    Stopped,
}

/// What the control thread learns from the job.
#[derive(Debug, Default)]
struct Control {
    progress: Progress,
    /// Iteration of the last `suspended` answer not yet consumed.
    suspended_ack: Option<u64>,
    /// The job hung up (or never connected and the job ended).
    closed: bool,
    /// The connection, for the host's messages.
    stream: Option<UnixStream>,
}

#[derive(Debug, Default)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
    shutting_down: AtomicBool,
}

/// How long to wait, after the job exited, for its last lines to be read.
const LAST_WORDS: Duration = Duration::from_millis(500);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Control> {
        // A panic in the control thread must not take the job with it: the
        // data is plain counters, still meaningful.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A user's command running (or ended) as a job.
///
/// Dropping the handle kills the job's process group: a job must not
/// outlive the host that accounts for its GPUs.
#[derive(Debug)]
pub struct ProcessJob {
    id: u64,
    child: Child,
    pgid: i32,
    dir: PathBuf,
    socket: PathBuf,
    shared: Arc<Shared>,
    state: RunState,
    exit: Option<ExitStatus>,
}

impl ProcessJob {
    /// Start `spec` as job `id` on `gpus`, with its logs and control socket
    /// in `dir` (created if needed): `dir/stdout.log`, `dir/stderr.log`
    /// (appended to), `dir/control.sock`.
    pub fn spawn(id: u64, spec: &ProcessSpec, gpus: &[u32], dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(id, spec, gpus, dir, &Launch::default())
    }

    /// [`ProcessJob::spawn`], started as `launch` says (as another user,
    /// with another umask).
    pub fn spawn_with(id: u64, spec: &ProcessSpec, gpus: &[u32], dir: &Path, launch: &Launch) -> anyhow::Result<Self> {
        let Some((program, args)) = spec.command.split_first() else {
            bail!("job {id}: the command is empty");
        };
        std::fs::create_dir_all(dir).with_context(|| format!("job {id}: cannot create {}", dir.display()))?;
        let socket = control_socket(dir);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "job {id}: control socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket allows; use a shorter job directory",
                socket.display()
            );
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("job {id}: cannot remove stale {}", socket.display())),
        }
        let listener =
            UnixListener::bind(&socket).with_context(|| format!("job {id}: cannot listen on {}", socket.display()))?;
        // Appended to, not truncated: a job restarted on other GPUs keeps
        // the history of its earlier runs in one place.
        let log = |name: &str| {
            let path = dir.join(name);
            File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("job {id}: cannot open {}", path.display()))
        };
        let (stdout, stderr) = (log("stdout.log")?, log("stderr.log")?);
        if let Some(user) = &launch.run_as {
            // The job's own directory, logs and socket are its user's: it
            // must reach its control socket, and may read its logs.
            for path in [
                dir.to_path_buf(),
                dir.join("stdout.log"),
                dir.join("stderr.log"),
                socket.clone(),
            ] {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("job {id}: cannot give {} to {}", path.display(), user.name))?;
            }
        }

        let visible: Vec<String> = gpus.iter().map(u32::to_string).collect();
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(&spec.env)
            .env("CUDA_VISIBLE_DEVICES", visible.join(","))
            .env("WSCHED_JOB_ID", id.to_string())
            .env("WSCHED_CONTROL", &socket)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so that a signal reaches the whole job
            // (a launcher script and its workers), not only the first process.
            .process_group(0);
        // If the host dies (even by SIGKILL), the job's first process dies
        // with it rather than running on unsupervised: a restarted host
        // re-queues every live job and would otherwise run it twice. Its
        // children are not reached by this; a restarted host kills them
        // by their `WSCHED_CONTROL` before it starts the job again
        // ([`leftovers`]). (The signal fires when the thread that spawned
        // the job exits, so spawn from a thread that lives as long as the
        // backend.)
        if let Some(user) = &launch.run_as {
            for (name, value) in [("USER", &user.name), ("LOGNAME", &user.name)] {
                if !spec.env.contains_key(name) {
                    command.env(name, value);
                }
            }
            if !spec.env.contains_key("HOME") {
                command.env("HOME", &user.home);
            }
        }
        let credentials = launch.run_as.as_ref().map(|u| (u.uid, u.gid));
        let umask = launch.umask;
        // SAFETY: umask, setgroups, setgid, setuid and prctl are
        // async-signal-safe system calls that touch no memory of ours but
        // the one group id on this closure's stack.
        unsafe {
            command.pre_exec(move || {
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                if let Some((uid, gid)) = credentials {
                    // Groups, then group, then user: after setuid the
                    // others can no longer be changed.
                    if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // After the credentials: changing them clears this setting.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(workdir) = &spec.workdir {
            command.current_dir(workdir);
        }
        let child = command
            .spawn()
            .with_context(|| format!("job {id}: cannot start `{program}`"))?;
        let pgid = i32::try_from(child.id()).context("process id out of range")?;

        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("wsched-job-{id}"))
            .spawn(move || serve_control(id, listener, thread_shared))
            .context("cannot start the control thread")?;

        Ok(ProcessJob {
            id,
            child,
            pgid,
            dir: dir.to_path_buf(),
            socket,
            shared,
            state: RunState::Running,
            exit: None,
        })
    }

    /// The job's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The process group the job was started in (its first process's pid).
    pub fn process_group(&self) -> i32 {
        self.pgid
    }

    /// The directory holding the job's logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the job is suspended (cooperatively or stopped).
    pub fn is_suspended(&self) -> bool {
        self.state != RunState::Running
    }

    /// What the job has reported so far.
    pub fn progress(&self) -> Progress {
        self.shared.lock().progress
    }

    /// What the job reported, including lines it wrote just before it
    /// exited: waits briefly for the control connection to drain. Call it
    /// once the job has ended.
    pub fn final_progress(&self) -> Progress {
        self.shared
            .changed
            .wait_timeout_while(self.shared.lock(), LAST_WORDS, |c| c.progress.cooperative && !c.closed)
            .unwrap_or_else(|e| e.into_inner())
            .0
            .progress
    }

    /// The exit status, once the job has ended (reaps it; never blocks).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("job {}: cannot poll the process", self.id))?;
        }
        Ok(self.exit)
    }

    /// Wait up to `timeout` for the job to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Suspend the job: ask it to checkpoint within `deadline`, and stop it
    /// with SIGSTOP if it does not (or cannot) answer in time.
    pub fn suspend(&mut self, deadline: Duration) -> anyhow::Result<Suspension> {
        if let Some(status) = self.try_wait()? {
            return Ok(Suspension::Exited(status));
        }
        match self.state {
            RunState::SuspendedCooperatively | RunState::Stopped => bail!("job {}: already suspended", self.id),
            RunState::Running => {}
        }
        let mut control = self.shared.lock();
        control.suspended_ack = None;
        if control.progress.cooperative && send(&mut control, &format!("suspend {}", deadline.as_secs_f64())).is_ok() {
            control = self
                .shared
                .changed
                .wait_timeout_while(control, deadline, |c| c.suspended_ack.is_none())
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if let Some(iteration) = control.suspended_ack.take() {
                drop(control);
                self.state = RunState::SuspendedCooperatively;
                return Ok(Suspension::Cooperative { iteration });
            }
        }
        drop(control);
        if let Some(status) = self.try_wait()? {
            return Ok(Suspension::Exited(status));
        }
        self.signal(libc::SIGSTOP)?;
        self.state = RunState::Stopped;
        Ok(Suspension::Stopped)
    }

    /// Resume a suspended job where it stopped.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        match self.state {
            RunState::Running => bail!("job {}: not suspended", self.id),
            RunState::Stopped => self.signal(libc::SIGCONT)?,
            RunState::SuspendedCooperatively => {}
        }
        let mut control = self.shared.lock();
        if control.progress.cooperative {
            // Also after SIGCONT: a job stopped before it could answer will
            // still act on the pending `suspend`, and must not wait forever.
            send(&mut control, "resume").with_context(|| format!("job {}: cannot send resume", self.id))?;
        }
        drop(control);
        self.state = RunState::Running;
        Ok(())
    }

    /// Kill the job's whole process group, and the processes that left
    /// the group but carry the job's marker ([`leftovers`]); reap it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // SIGKILL ends stopped processes too; ESRCH only means it is gone.
        let _ = self.signal(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("job {}: cannot reap the process", self.id))?;
        self.exit = Some(status);
        // A grandchild that called setsid is out of reach of the group's
        // signal, and would hold on to the GPUs the job is leaving.
        let target = leftovers::Target {
            control_socket: self.socket.clone(),
            recorded_group: None,
        };
        match leftovers::kill_one(target, leftovers::DEFAULT_DEADLINE) {
            Ok(found) if !found.is_clean() => {
                tracing::warn!(job = self.id, pids = ?found.survivors, "processes of the killed job are still alive")
            }
            Ok(found) if !found.killed.is_empty() => {
                tracing::info!(job = self.id, pids = ?found.killed, "killed processes that had left the job's process group")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(job = self.id, error = %e, "cannot look for processes that left the job's process group")
            }
        }
        Ok(status)
    }

    fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // job was started in (`process_group(0)` made its pgid its pid); it
        // touches no memory of ours.
        let rc = unsafe { libc::kill(-self.pgid, signal) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            bail!("job {}: cannot send signal {signal}: {err}", self.id);
        }
        Ok(())
    }
}

impl Drop for ProcessJob {
    fn drop(&mut self) {
        let _ = self.kill();
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // Wake the control thread if it still waits for the job to connect.
        let _ = UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The control socket of the job whose directory is `dir`, as its
/// processes are told it in `WSCHED_CONTROL`: with the directory's
/// canonical path when it exists, so that it names the same job however
/// the state directory was spelled (relative, through a link), and a
/// restarted server recognises the job's processes by it
/// ([`leftovers`]).
pub fn control_socket(dir: &Path) -> PathBuf {
    let dir = dir
        .canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    dir.join("control.sock")
}

/// Exit code, or the signal that ended the process, for logs and records.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

fn send(control: &mut Control, line: &str) -> std::io::Result<()> {
    let Some(stream) = control.stream.as_mut() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "job not connected",
        ));
    };
    stream.write_all(format!("{line}\n").as_bytes())
}

/// Accept the job's connection (only the first) and fold its lines into
/// the shared state until it hangs up.
fn serve_control(id: u64, listener: UnixListener, shared: Arc<Shared>) {
    let stream = match listener.accept() {
        Ok((stream, _)) => stream,
        Err(e) => {
            tracing::warn!(job = id, error = %e, "control socket: accept failed");
            return;
        }
    };
    if shared.shutting_down.load(Ordering::SeqCst) {
        return;
    }
    drop(listener); // one connection per job
    let reader = match stream.try_clone() {
        Ok(r) => BufReader::new(r),
        Err(e) => {
            tracing::warn!(job = id, error = %e, "control socket: cannot read");
            return;
        }
    };
    shared.lock().stream = Some(stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let mut control = shared.lock();
        match parse_line(&line) {
            Some(Message::Hello(version)) if version >= 1 => control.progress.cooperative = true,
            Some(Message::Hello(version)) => {
                tracing::warn!(job = id, version, "control: unsupported protocol version");
            }
            Some(Message::Iteration(n, seconds)) => {
                control.progress.iterations = Some(n);
                control.progress.iteration_time = Some(seconds);
            }
            Some(Message::Suspended(n)) => {
                control.progress.iterations = Some(n);
                control.suspended_ack = Some(n);
            }
            None => tracing::debug!(job = id, line = %line, "control: ignoring unknown line"),
        }
        drop(control);
        shared.changed.notify_all();
    }
    let mut control = shared.lock();
    control.stream = None;
    control.closed = true;
    drop(control);
    shared.changed.notify_all();
}

#[derive(Debug, PartialEq)]
enum Message {
    Hello(u32),
    Iteration(u64, f64),
    Suspended(u64),
}

fn parse_line(line: &str) -> Option<Message> {
    let mut words = line.split_ascii_whitespace();
    let message = match words.next()? {
        "hello" => Message::Hello(words.next()?.parse().ok()?),
        "iteration" => {
            let n = words.next()?.parse().ok()?;
            let seconds: f64 = words.next()?.parse().ok()?;
            if !(seconds.is_finite() && seconds >= 0.0) {
                return None;
            }
            Message::Iteration(n, seconds)
        }
        "suspended" => Message::Suspended(words.next()?.parse().ok()?),
        _ => return None,
    };
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol_lines() {
        assert_eq!(parse_line("hello 1"), Some(Message::Hello(1)));
        assert_eq!(parse_line("iteration 7 0.25"), Some(Message::Iteration(7, 0.25)));
        assert_eq!(parse_line("suspended 7"), Some(Message::Suspended(7)));
        assert_eq!(parse_line("iteration 7 -1"), None, "negative time");
        assert_eq!(parse_line("iteration 7 NaN"), None);
        assert_eq!(parse_line("iteration x 1"), None);
        assert_eq!(parse_line("progress 50%"), None, "unknown lines are ignored");
        assert_eq!(parse_line(""), None);
    }
}
