//! What a command job's earlier run left behind, found and killed before
//! the job starts again.
//!
//! A job's first process gets SIGKILL when the server dies
//! (`PR_SET_PDEATHSIG`), but only that process: its children and
//! grandchildren are reparented and run on. A restarted server re-queues
//! the job, and would start it a second time beside them.
//!
//! What proves that a process belongs to a job is the environment entry
//! every process of the job inherits, `WSCHED_CONTROL=<job directory>/
//! control.sock`: the path names one job of one state directory. It stays
//! with a grandchild that left the job's process group (`setsid`), and
//! unlike a process group id it is not taken over by an unrelated process
//! once the group died or the machine rebooted. So every process is checked
//! for that exact entry before it is killed; a recorded process group only
//! points out members that do *not* carry it, which are reported and left
//! alone. The server itself and its ancestors are never touched.
//!
//! Killing cannot hit a reused pid where the kernel has pidfds (Linux 5.3):
//! each process is opened, then checked, then signalled through the pidfd.
//! It goes in rounds until a scan finds nothing, so that children forked
//! while their parent was being killed fall in the next round, all within
//! one deadline; what still carries the entry then is reported as
//! surviving. A zombie has given up its memory, environment included, so
//! it counts as gone.
//!
//! Not recognised: a process that dropped the entry (`env -i`) or made
//! itself undumpable (its environment cannot be read). A cgroup per job
//! would catch those too, where the machine delegates cgroups to the
//! server; that is not done here.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long leftovers get to die after SIGKILL, by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The environment variable whose value names a job (its control socket).
const MARKER_NAME: &[u8] = b"WSCHED_CONTROL=";

/// Most of a process's environment read: the kernel caps a program's
/// arguments and environment together at 6 MiB.
const ENVIRON_LIMIT: u64 = 8 << 20;

/// Longest chain of parents followed from this process (pid_max is 2^22).
const MAX_ANCESTORS: usize = 1 << 12;

/// How often a killed process is checked for being gone.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// A job whose leftovers to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The job's control socket, as its processes were told it in
    /// `WSCHED_CONTROL` ([`super::process::control_socket`]).
    pub control_socket: PathBuf,
    /// The process group the job's earlier run was started in, when
    /// recorded: its members that do not carry the job's marker are
    /// reported in [`Leftovers::spared`].
    pub recorded_group: Option<i32>,
}

/// What was left of a job's earlier run, and what became of it (pids in
/// ascending order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes carrying the job's marker that were sent SIGKILL.
    pub killed: Vec<i32>,
    /// Processes carrying the job's marker still alive at the deadline, or
    /// that could not be signalled.
    pub survivors: Vec<i32>,
    /// Members of the recorded process group without the job's marker: not
    /// provably the job's, so left alone.
    pub spared: Vec<i32>,
}

impl Leftovers {
    /// Whether nothing of the earlier run is alive any more.
    pub fn is_clean(&self) -> bool {
        self.survivors.is_empty()
    }
}

/// Kill what is left of each target's earlier run, waiting up to
/// `deadline` for it to be gone; one [`Leftovers`] per target, in order.
/// Fails only when `/proc` cannot be listed.
pub fn kill(targets: &[Target], deadline: Duration) -> io::Result<Vec<Leftovers>> {
    let until = Instant::now().checked_add(deadline);
    let markers = Markers::new(targets);
    let protected = self_and_ancestors();
    let mut found = vec![Leftovers::default(); targets.len()];
    let mut refused = HashSet::new();
    let mut environ = Vec::new();
    // Whether the last scan found nothing after earlier ones had.
    let mut settling = false;
    loop {
        let scan = markers.scan(&protected, &refused, &mut environ)?;
        for &(target, pid) in &scan.spared {
            found[target].spared.push(pid);
        }
        if scan.marked.is_empty() {
            // A child forked by a process just killed shows no environment
            // while it is in the middle of exec(2): once something was
            // found, only a second empty scan a moment later ends it.
            let found_any = found.iter().any(|f| !f.killed.is_empty() || !f.survivors.is_empty());
            if !found_any || settling {
                break;
            }
            settling = true;
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        settling = false;
        if until.is_some_and(|until| Instant::now() >= until) {
            for &(target, pid) in &scan.marked {
                found[target].survivors.push(pid);
            }
            break;
        }
        let mut victims = Vec::new();
        for &(target, pid) in &scan.marked {
            match markers.kill_if_marked(pid, target, &mut environ) {
                Signalled::Killed(victim) => {
                    found[target].killed.push(pid);
                    victims.push(victim);
                }
                Signalled::Gone => {}
                Signalled::Refused(error) => {
                    tracing::warn!(pid, %error, "cannot kill a process left from a job's earlier run");
                    found[target].survivors.push(pid);
                    refused.insert(pid);
                }
            }
        }
        wait_until_gone(&victims, until);
    }
    for leftovers in &mut found {
        for pids in [&mut leftovers.killed, &mut leftovers.survivors, &mut leftovers.spared] {
            pids.sort_unstable();
            pids.dedup();
        }
    }
    Ok(found)
}

/// [`kill`] for one job.
pub fn kill_one(target: Target, deadline: Duration) -> io::Result<Leftovers> {
    Ok(kill(std::slice::from_ref(&target), deadline)?.pop().unwrap_or_default())
}

/// The processes now carrying the marker of the job whose control socket
/// is `control_socket`, in ascending order (zombies are not counted).
pub fn processes_of(control_socket: &Path) -> io::Result<Vec<i32>> {
    let target = Target {
        control_socket: control_socket.to_path_buf(),
        recorded_group: None,
    };
    let scan =
        Markers::new(std::slice::from_ref(&target)).scan(&self_and_ancestors(), &HashSet::new(), &mut Vec::new())?;
    let mut pids: Vec<i32> = scan.marked.into_iter().map(|(_, pid)| pid).collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The environment entries that name the targets, and their recorded
/// process groups.
struct Markers {
    by_entry: HashMap<Vec<u8>, usize>,
    by_group: HashMap<i32, usize>,
}

/// Processes found by one pass over `/proc`, with the target each belongs
/// to.
struct Scan {
    marked: Vec<(usize, i32)>,
    spared: Vec<(usize, i32)>,
}

/// What signalling a process came to.
enum Signalled {
    Killed(Victim),
    /// Gone already, or no longer the job's (its pid was reused).
    Gone,
    Refused(io::Error),
}

/// A process sent SIGKILL, held by its pidfd where the kernel has them.
struct Victim {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Markers {
    fn new(targets: &[Target]) -> Self {
        let by_entry = targets
            .iter()
            .enumerate()
            .map(|(i, target)| ([MARKER_NAME, target.control_socket.as_os_str().as_bytes()].concat(), i))
            .collect();
        let by_group = targets
            .iter()
            .enumerate()
            .filter_map(|(i, target)| Some((target.recorded_group.filter(|&group| group > 0)?, i)))
            .collect();
        Markers { by_entry, by_group }
    }

    /// The target whose marker is among the NUL-separated `environ`.
    fn owner(&self, environ: &[u8]) -> Option<usize> {
        environ
            .split(|&b| b == 0)
            .filter(|entry| entry.starts_with(MARKER_NAME))
            .find_map(|entry| self.by_entry.get(entry).copied())
    }

    /// The target that process `pid` belongs to, read into `environ`.
    fn owner_of(&self, pid: i32, environ: &mut Vec<u8>) -> Option<usize> {
        read_environ(pid, environ).then(|| self.owner(environ)).flatten()
    }

    /// One pass over `/proc`; processes that vanish or cannot be read
    /// along the way are skipped.
    fn scan(&self, protected: &HashSet<i32>, refused: &HashSet<i32>, environ: &mut Vec<u8>) -> io::Result<Scan> {
        let mut scan = Scan {
            marked: Vec::new(),
            spared: Vec::new(),
        };
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry
                .ok()
                .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| pid > 0 && !protected.contains(&pid) && !refused.contains(&pid))
            else {
                continue;
            };
            if let Some(target) = self.owner_of(pid, environ) {
                scan.marked.push((target, pid));
            } else if !self.by_group.is_empty()
                && let Some(stat) = stat(pid).filter(|s| !s.is_dead())
                && let Some(&target) = self.by_group.get(&stat.group)
            {
                scan.spared.push((target, pid));
            }
        }
        Ok(scan)
    }

    /// SIGKILL to `pid` if it still carries `target`'s marker: checked
    /// after the pidfd is open, so the process checked is the one signalled.
    fn kill_if_marked(&self, pid: i32, target: usize, environ: &mut Vec<u8>) -> Signalled {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Signalled::Gone,
            // No pidfds (an old kernel, a seccomp filter): plain kill(2).
            Err(_) => None,
        };
        if self.owner_of(pid, environ) != Some(target) {
            return Signalled::Gone;
        }
        let sent = match &pidfd {
            Some(fd) => pidfd_kill(fd),
            None => kill_pid(pid),
        };
        match sent {
            Ok(()) => Signalled::Killed(Victim { pid, pidfd }),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Signalled::Gone,
            Err(e) => Signalled::Refused(e),
        }
    }
}

impl Victim {
    fn is_gone(&self) -> bool {
        self.pidfd.as_ref().is_some_and(has_exited) || stat(self.pid).is_none_or(|s| s.is_dead())
    }
}

/// Wait until every victim is gone, or until `until`.
fn wait_until_gone(victims: &[Victim], until: Option<Instant>) {
    while victims.iter().any(|v| !v.is_gone()) && until.is_none_or(|until| Instant::now() < until) {
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Read process `pid`'s environment into `environ`; false when it cannot
/// be read (gone, another user's, undumpable).
fn read_environ(pid: i32, environ: &mut Vec<u8>) -> bool {
    environ.clear();
    File::open(format!("/proc/{pid}/environ"))
        .and_then(|file| file.take(ENVIRON_LIMIT).read_to_end(environ))
        .is_ok()
}

/// What `/proc/PID/stat` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: u8,
    parent: i32,
    group: i32,
}

impl Stat {
    /// A zombie, or a process on its way out.
    fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parse a `/proc/PID/stat` line: `pid (comm) state ppid pgrp ...`, where
/// comm may itself hold spaces and parentheses.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some(Stat { state, parent, group })
}

/// This process and its parents up to init: never killed, even should they
/// carry a job's marker (a server run as a job of another).
fn self_and_ancestors() -> HashSet<i32> {
    let mut pids = HashSet::new();
    let mut pid = i32::try_from(std::process::id()).unwrap_or(0);
    while pid > 0 && pids.len() < MAX_ANCESTORS && pids.insert(pid) {
        pid = stat(pid).map_or(0, |s| s.parent);
    }
    pids
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and touches no memory of
    // ours; its descriptor is close-on-exec.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just opened this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with no siginfo reads no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn kill_pid(pid: i32) -> io::Result<()> {
    // SAFETY: kill(2) to one positive pid touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind `pidfd` has exited (a zombie included).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, ours, for the duration of the call; no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents != 0
}

/// Processes to find and kill in tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command, ExitStatus};
    use std::time::{Duration, Instant};

    use super::read_environ;

    /// A `sleep` child, killed when dropped should the test not get to it.
    pub(crate) struct Sleeper(pub(crate) Child);

    impl Sleeper {
        /// `sleep 600` carrying `WSCHED_CONTROL=control_socket` (or no
        /// marker), in process group `group` (0: a group of its own).
        pub(crate) fn start(control_socket: Option<&Path>, group: i32) -> Self {
            let mut command = Command::new("sleep");
            command.arg("600").env_remove("WSCHED_CONTROL").process_group(group);
            if let Some(socket) = control_socket {
                command.env("WSCHED_CONTROL", socket);
            }
            let sleeper = Sleeper(command.spawn().expect("start sleep"));
            // Until exec(2) has set its environment up, a process shows none.
            let pid = sleeper.pid();
            let until = Instant::now() + Duration::from_secs(20);
            let mut environ = Vec::new();
            while !read_environ(pid, &mut environ) || environ.is_empty() {
                assert!(Instant::now() < until, "sleep {pid} never showed its environment");
                std::thread::sleep(Duration::from_millis(1));
            }
            sleeper
        }

        pub(crate) fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).expect("pid")
        }

        /// Reaped by now, with how it ended, or None while it runs.
        pub(crate) fn ended(&mut self) -> Option<ExitStatus> {
            self.0.try_wait().expect("try_wait")
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::testing::Sleeper;
    use super::*;

    fn markers(sockets: &[&str]) -> Markers {
        let targets: Vec<Target> = sockets
            .iter()
            .map(|s| Target {
                control_socket: PathBuf::from(s),
                recorded_group: None,
            })
            .collect();
        Markers::new(&targets)
    }

    #[test]
    fn only_the_exact_marker_names_a_job() {
        let markers = markers(&["/s/jobs/job-1/control.sock", "/s/jobs/job-2/control.sock"]);
        let owner = |environ: &str| markers.owner(environ.as_bytes());
        assert_eq!(owner("A=1\0WSCHED_CONTROL=/s/jobs/job-1/control.sock\0B=2\0"), Some(0));
        assert_eq!(
            owner("WSCHED_CONTROL=/s/jobs/job-2/control.sock"),
            Some(1),
            "last entry without NUL"
        );
        assert_eq!(owner("WSCHED_CONTROL=/s/jobs/job-10/control.sock\0"), None);
        assert_eq!(owner("WSCHED_CONTROL=/s/jobs/job-1/control.sock.old\0"), None);
        assert_eq!(
            owner("WSCHED_CONTROL=/t/jobs/job-1/control.sock\0"),
            None,
            "another state directory"
        );
        assert_eq!(owner("X_WSCHED_CONTROL=/s/jobs/job-1/control.sock\0"), None);
        assert_eq!(owner("A=WSCHED_CONTROL=/s/jobs/job-1/control.sock\0"), None);
        assert_eq!(
            owner("WSCHED_CONTROL=/elsewhere\0WSCHED_CONTROL=/s/jobs/job-2/control.sock\0"),
            Some(1),
            "a duplicated variable still names the job"
        );
        assert_eq!(owner(""), None);
    }

    #[test]
    fn stat_lines_are_parsed_past_odd_command_names() {
        let parsed = parse_stat("4242 (a (b) c) S 17 4240 4240 0 -1 4194560 ...").expect("parsed");
        assert_eq!(
            parsed,
            Stat {
                state: b'S',
                parent: 17,
                group: 4240
            }
        );
        assert!(parse_stat("4242 (x) Z 1 4242 4242").expect("zombie").is_dead());
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        let own = stat(i32::try_from(std::process::id()).expect("pid")).expect("own stat");
        assert!(own.parent > 0 && !own.is_dead());
    }

    #[test]
    fn this_process_and_its_parents_are_protected() {
        let protected = self_and_ancestors();
        let own = i32::try_from(std::process::id()).expect("pid");
        let parent = stat(own).expect("stat").parent;
        assert!(protected.contains(&own) && protected.contains(&parent), "{protected:?}");
    }

    #[test]
    fn only_processes_with_the_jobs_marker_are_killed_whatever_the_recorded_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("job-1/control.sock");
        let other_job = dir.path().join("job-10/control.sock");
        let mut leftover = Sleeper::start(Some(&socket), 0);
        // A group that took the recorded number over: another job's process
        // leading it, and a process without any marker in it.
        let mut other = Sleeper::start(Some(&other_job), 0);
        let mut unmarked = Sleeper::start(None, other.pid());
        let target = Target {
            control_socket: socket.clone(),
            recorded_group: Some(other.pid()),
        };

        assert_eq!(processes_of(&socket).expect("scan"), vec![leftover.pid()]);
        let found = kill_one(target, DEFAULT_DEADLINE).expect("kill");
        let mut spared = vec![other.pid(), unmarked.pid()];
        spared.sort_unstable();
        assert_eq!(
            found,
            Leftovers {
                killed: vec![leftover.pid()],
                survivors: vec![],
                spared,
            }
        );
        assert!(found.is_clean());
        let status = leftover.0.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(other.ended(), None, "another job's process runs on");
        assert_eq!(unmarked.ended(), None, "an unmarked process runs on");
        assert_eq!(processes_of(&other_job).expect("scan"), vec![other.pid()]);
    }

    #[test]
    fn what_is_still_alive_at_the_deadline_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("job-1/control.sock");
        let mut leftover = Sleeper::start(Some(&socket), 0);
        let targets = [socket, dir.path().join("job-2/control.sock")].map(|control_socket| Target {
            control_socket,
            recorded_group: None,
        });
        let found = kill(&targets, Duration::ZERO).expect("scan");
        let expected = Leftovers {
            survivors: vec![leftover.pid()],
            ..Leftovers::default()
        };
        assert_eq!(found, vec![expected, Leftovers::default()]);
        assert!(!found[0].is_clean() && found[1].is_clean());
        assert_eq!(leftover.ended(), None);
    }
}
