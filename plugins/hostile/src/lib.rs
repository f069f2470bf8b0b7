//! A deliberately misbehaving policy, for the host's fault-isolation tests.
//!
//! A plugin is untrusted code: the host must survive one that never
//! returns, eats all its memory, traps, refuses to load, or answers with
//! nonsense, and must keep the cluster consistent while it does. This
//! plugin does each of those on demand, so the host's tests can show it.
//! Until it misbehaves (and in `mode=ok`) it is strict FIFO, by delegating
//! to FIFO's own code (`plugins/fifo/src/policy.rs`, compiled in), so the host can also show a well-behaved
//! plugin turning bad mid-run (`after=N`).
//!
//! Config (`key=value;...`):
//! - `mode=ok|loop|oom|escape|idle|trap|invalid|init-fail|loop-init|bad-wakeup|
//!   sleep|sleep-forever|clock-wait|far-wakeup|busy-wakeup|tiny-share|log-flood|
//!   slow-restore|slow-snapshot` (default `ok`):
//!   - `ok`: strict FIFO;
//!   - `loop`: spins forever in `decide`;
//!   - `oom`: allocates and touches 1 MiB chunks in `decide` without
//!     bound (the allocator aborts when the host's cap refuses memory);
//!   - `escape`: tries to read files, the environment, the network and
//!     the real clock, and traps naming any that worked; else FIFO;
//!   - `idle`: never starts anything (jobs would wait forever);
//!   - `trap`: panics in `decide` (a Wasm trap);
//!   - `invalid`: answers with a batch of invalid actions (unknown job, more
//!     GPUs than exist, starting a running job, a partial gang, a GPU held
//!     by another job) followed by the valid FIFO actions;
//!   - `init-fail`: `init` returns an error;
//!   - `loop-init`: spins forever in `init`;
//!   - `bad-wakeup`: FIFO actions with a NaN wake-up time;
//!   - `sleep`: sleeps 5 s of WASI time (monotonic-clock subscribe and
//!     poll) in `decide`, `snapshot`, `restore` and `init`, then FIFO;
//!   - `sleep-forever`: sleeps without end the same way;
//!   - `clock-wait`: busy-waits for the WASI clock to move a second;
//!   - `far-wakeup`: FIFO actions with a wake-up at 1e30 s, then reads the
//!     WASI clocks;
//!   - `busy-wakeup`: starts nothing and asks to be woken 1 ns later, every
//!     time (time moves, nothing progresses);
//!   - `tiny-share`: places the first pending single-GPU job on GPU 0 at a
//!     share of 1e-300, then starts nothing else;
//!   - `log-flood`: logs 10 MiB in one message and 1,000 lines through
//!     `host.log`, and as much through stderr, in every `decide`; then FIFO;
//!   - `slow-restore`: spins forever in `restore`; otherwise FIFO;
//!   - `slow-snapshot`: spins forever in `snapshot`; otherwise FIFO.
//! - `after=N`: behave as `ok` for the first `N` `decide` calls, then as
//!   `mode` (default 0). Has no effect on the `init` modes.
//! - `tick=SECONDS`: the tick interval it asks for (default none; any
//!   number, even 5e-324, is passed on for the host to judge).
//! - `name-bytes=N`: a policy name of `N` bytes (default: `hostile`).
//! - `error-bytes=N`: with `init-fail`, an error of `N` bytes.
//! - `snapshot-bytes=N`: hand over a snapshot of `N` bytes (default none).
//! - `work=N`: spin `N` iterations in every `decide` before deciding, as a
//!   policy with real work to do (default 0).

// FIFO's policy code, compiled into this crate rather than linked from the
// `wsched-fifo` rlib: that rlib also carries FIFO's component exports, which
// would clash with this plugin's own at link time (see that file's docs).
#[path = "../../fifo/src/policy.rs"]
mod fifo;

use fifo::Fifo;
use wsched_sdk::*;

/// What the plugin does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Strict FIFO.
    Ok,
    /// Spin forever in decide.
    Loop,
    /// Allocate without bound (a memory bomb).
    Oom,
    /// Try to reach files, environment, network and the real clock.
    Escape,
    /// Never start anything.
    Idle,
    /// Panic in decide.
    Trap,
    /// Invalid actions, then valid FIFO ones.
    Invalid,
    /// init returns an error.
    InitFail,
    /// Spin forever in init.
    LoopInit,
    /// A NaN wake-up.
    BadWakeup,
    /// Sleep 5 s on the WASI clock in every export.
    Sleep,
    /// Sleep without end on the WASI clock.
    SleepForever,
    /// Busy-wait for the WASI clock to move.
    ClockWait,
    /// A wake-up at 1e30 s.
    FarWakeup,
    /// A wake-up 1 ns later each time, and nothing else.
    BusyWakeup,
    /// A share of 1e-300.
    TinyShare,
    /// Flood the log.
    LogFlood,
    /// Spin forever in restore.
    SlowRestore,
    /// Spin forever in snapshot.
    SlowSnapshot,
}

/// Everything the config sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    mode: Mode,
    after: u64,
    tick: Option<f64>,
    name_bytes: Option<usize>,
    error_bytes: Option<usize>,
    snapshot_bytes: Option<usize>,
    work: u64,
}

/// The hostile policy.
#[derive(Debug)]
pub struct Hostile {
    mode: Mode,
    after: u64,
    calls: u64,
    snapshot_bytes: Option<usize>,
    work: u64,
    fifo: Fifo,
}

fn parse_config(config: &str) -> Result<Config, String> {
    let (mut mode, mut after) = (Mode::Ok, 0);
    let (mut tick, mut name_bytes, mut error_bytes, mut snapshot_bytes) = (None, None, None, None);
    let mut work = 0;
    let bytes = |key: &str, value: &str| {
        value
            .parse::<usize>()
            .map_err(|_| format!("hostile: {key}: `{value}` is not a whole number"))
    };
    for pair in config.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("hostile: `{pair}` is not key=value"));
        };
        let value = value.trim();
        match key.trim() {
            "mode" => {
                mode = match value {
                    "ok" => Mode::Ok,
                    "loop" => Mode::Loop,
                    "oom" => Mode::Oom,
                    "escape" => Mode::Escape,
                    "idle" => Mode::Idle,
                    "trap" => Mode::Trap,
                    "invalid" => Mode::Invalid,
                    "init-fail" => Mode::InitFail,
                    "loop-init" => Mode::LoopInit,
                    "bad-wakeup" => Mode::BadWakeup,
                    "sleep" => Mode::Sleep,
                    "sleep-forever" => Mode::SleepForever,
                    "clock-wait" => Mode::ClockWait,
                    "far-wakeup" => Mode::FarWakeup,
                    "busy-wakeup" => Mode::BusyWakeup,
                    "tiny-share" => Mode::TinyShare,
                    "log-flood" => Mode::LogFlood,
                    "slow-restore" => Mode::SlowRestore,
                    "slow-snapshot" => Mode::SlowSnapshot,
                    other => return Err(format!("hostile: mode: unknown mode `{other}`")),
                }
            }
            "after" => {
                after = value
                    .parse()
                    .map_err(|_| format!("hostile: after: `{value}` is not a whole number"))?;
            }
            "tick" => {
                tick = Some(
                    value
                        .parse::<f64>()
                        .map_err(|_| format!("hostile: tick: `{value}` is not a number"))?,
                );
            }
            "name-bytes" => name_bytes = Some(bytes("name-bytes", value)?),
            "error-bytes" => error_bytes = Some(bytes("error-bytes", value)?),
            "snapshot-bytes" => snapshot_bytes = Some(bytes("snapshot-bytes", value)?),
            "work" => work = bytes("work", value)? as u64,
            other => {
                return Err(format!(
                    "hostile: unknown config key `{other}` (known: mode, after, tick, name-bytes, error-bytes, snapshot-bytes, work)"
                ));
            }
        }
    }
    Ok(Config {
        mode,
        after,
        tick,
        name_bytes,
        error_bytes,
        snapshot_bytes,
        work,
    })
}

/// Sleep on the WASI monotonic clock (std's sleep is `subscribe-duration`
/// and `poll`): a policy must not be able to make the host wait.
fn sleep(forever: bool) {
    let d = if forever {
        std::time::Duration::from_secs(u64::MAX / 4)
    } else {
        std::time::Duration::from_secs(5)
    };
    std::thread::sleep(d);
}

/// Wait for the WASI clock to move a second, reading it in a loop: under
/// a virtual clock that stands still during a call, forever.
fn clock_wait() {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(1) {
        std::hint::black_box(());
    }
}

/// Say far too much, through `host.log` and through stderr.
fn flood_log() {
    log(Level::Info, &"x".repeat(10 << 20));
    for i in 0..1000 {
        log(Level::Info, &format!("hostile: line {i}"));
        eprintln!("hostile: stderr line {i}");
    }
    eprintln!("{}", "y".repeat(10 << 20));
}

/// Spin without end; `black_box` keeps the optimiser from removing the loop.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocate and write 1 MiB chunks forever: a memory bomb. When the host's
/// cap refuses to grow memory, the allocator aborts, which is a trap.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(std::hint::black_box(vec![0xA5; CHUNK])); // touch every byte
    }
}

/// Try every way out of the sandbox; trap naming the first that works.
/// A policy must see no files, no environment, no network and only the
/// host's virtual clock.
fn try_escape(view: &impl View) {
    let mut escapes = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/") {
        escapes.push(format!("listed / ({} entries)", entries.count()));
    }
    if std::fs::read("/etc/passwd").is_ok() {
        escapes.push("read /etc/passwd".to_string());
    }
    if std::fs::write("escape.txt", b"x").is_ok() {
        escapes.push("wrote a file".to_string());
    }
    if std::env::vars().next().is_some() {
        escapes.push("saw environment variables".to_string());
    }
    if std::env::args().next().is_some() {
        escapes.push("saw arguments".to_string());
    }
    if std::net::TcpStream::connect("127.0.0.1:22").is_ok() {
        escapes.push("opened a TCP connection".to_string());
    }
    if std::net::UdpSocket::bind("0.0.0.0:0").is_ok_and(|s| s.send_to(b"x", "127.0.0.1:53").is_ok()) {
        escapes.push("sent a UDP datagram".to_string());
    }
    // The wall clock is the host's virtual clock: it must read `now`.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(-1.0);
    if (wall - view.now()).abs() > 1e-3 {
        escapes.push(format!("read a real clock ({wall}, host time {})", view.now()));
    }
    if !escapes.is_empty() {
        panic!("hostile: escaped the sandbox: {}", escapes.join("; "));
    }
}

/// The invalid actions of `mode=invalid`, each refused for its own reason.
fn invalid_actions(view: &impl View) -> Vec<Action> {
    let start = |job, gpus| Action::Start(Placement { job, gpus });
    let stats = view.stats();
    let pending = view.jobs(JobState::Pending);
    let running = view.running();
    let free = view.free_gpus();
    let mut actions = vec![start(u64::MAX, vec![0])]; // unknown job
    if let Some(&first) = pending.first() {
        // More GPUs than the cluster has.
        actions.push(start(first, (0..=stats.gpus + 1000).collect()));
    }
    if let Some(r) = running.first() {
        // Starting a job that is already running.
        let gpus = if free.is_empty() { vec![0] } else { free.clone() };
        actions.push(start(r.id, gpus));
    }
    let mut infos = pending.iter().take(64).filter_map(|&id| view.job(id));
    if let Some(big) = infos.clone().find(|j| j.gpus_requested > 1) {
        // A partial gang.
        actions.push(start(big.id, vec![free.first().copied().unwrap_or(0)]));
    }
    let held = running
        .first()
        .and_then(|r| view.job(r.id))
        .and_then(|j| j.placement.first().copied());
    if let (Some(held), Some(job)) = (held, infos.next()) {
        // A GPU held by a running job, within a gang of the right size.
        let mut gpus = vec![held];
        gpus.extend(
            (0..stats.gpus)
                .filter(|&g| g != held)
                .take((job.gpus_requested as usize).saturating_sub(1)),
        );
        actions.push(start(job.id, gpus));
    }
    actions
}

impl Hostile {
    /// The behaviour this `decide` call (the `calls`-th, 0-based) shows.
    fn current_mode(&self) -> Mode {
        if self.calls < self.after { Mode::Ok } else { self.mode }
    }
}

impl Policy for Hostile {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let c = parse_config(config)?;
        match c.mode {
            Mode::InitFail => {
                return Err(match c.error_bytes {
                    Some(n) => "e".repeat(n),
                    None => "hostile: init refused on purpose".into(),
                });
            }
            Mode::LoopInit => spin(),
            Mode::Sleep | Mode::SleepForever => sleep(c.mode == Mode::SleepForever),
            _ => {}
        }
        let (fifo, _) = Fifo::init("")?;
        let policy = Hostile {
            mode: c.mode,
            after: c.after,
            calls: 0,
            snapshot_bytes: c.snapshot_bytes,
            work: c.work,
            fifo,
        };
        let name = match c.name_bytes {
            Some(n) => "n".repeat(n),
            None => "hostile".into(),
        };
        Ok((
            policy,
            PolicyInfo {
                name,
                tick_interval: c.tick,
            },
        ))
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        match self.mode {
            Mode::SlowSnapshot => spin(),
            Mode::Sleep | Mode::SleepForever => sleep(self.mode == Mode::SleepForever),
            _ => {}
        }
        self.snapshot_bytes.map(|n| vec![0x5a; n])
    }

    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        match self.mode {
            Mode::SlowRestore => spin(),
            Mode::Sleep | Mode::SleepForever => sleep(self.mode == Mode::SleepForever),
            _ => {}
        }
        Ok(())
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        let mode = self.current_mode();
        self.calls += 1;
        let mut n: u64 = 0;
        for _ in 0..self.work {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        match mode {
            Mode::Loop => spin(),
            Mode::Oom => exhaust_memory(),
            Mode::Idle => Decision {
                actions: Vec::new(),
                wakeup: None,
            },
            Mode::Escape => {
                try_escape(view);
                self.fifo.decide(view, events)
            }
            Mode::Trap => panic!("hostile: trap on purpose"),
            Mode::Invalid => {
                let mut actions = invalid_actions(view);
                actions.extend(self.fifo.decide(view, events).actions);
                Decision { actions, wakeup: None }
            }
            Mode::BadWakeup => {
                let d = self.fifo.decide(view, events);
                Decision {
                    actions: d.actions,
                    wakeup: Some(f64::NAN),
                }
            }
            Mode::Sleep | Mode::SleepForever => {
                sleep(mode == Mode::SleepForever);
                self.fifo.decide(view, events)
            }
            Mode::ClockWait => {
                clock_wait();
                self.fifo.decide(view, events)
            }
            Mode::FarWakeup => {
                let d = self.fifo.decide(view, events);
                // Reading the clocks after the far wake-up must not hurt the host.
                let _ = std::hint::black_box(std::time::SystemTime::now());
                let _ = std::hint::black_box(std::time::Instant::now());
                Decision {
                    actions: d.actions,
                    wakeup: Some(1e30),
                }
            }
            Mode::BusyWakeup => Decision {
                actions: Vec::new(),
                wakeup: Some(view.now() + 1e-9),
            },
            Mode::TinyShare => {
                let job = view
                    .jobs(JobState::Pending)
                    .into_iter()
                    .filter_map(|id| view.job(id))
                    .find(|j| j.gpus_requested == 1);
                Decision {
                    actions: job
                        .map(|j| {
                            vec![Action::Share(SharedPlacement {
                                job: j.id,
                                gpus: vec![0],
                                fraction: 1e-300,
                            })]
                        })
                        .unwrap_or_default(),
                    wakeup: None,
                }
            }
            Mode::LogFlood => {
                flood_log();
                self.fifo.decide(view, events)
            }
            Mode::Ok | Mode::InitFail | Mode::LoopInit | Mode::SlowRestore | Mode::SlowSnapshot => {
                self.fifo.decide(view, events)
            }
        }
    }
}

export_policy!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    fn arrivals(view: &FakeView) -> Vec<Event> {
        view.jobs.iter().cloned().map(Event::JobArrived).collect()
    }

    #[test]
    fn config_modes_and_errors() {
        assert_eq!(Hostile::init("").unwrap().0.mode, Mode::Ok);
        let h = Hostile::init("mode=trap; after=3").unwrap().0;
        assert_eq!((h.mode, h.after), (Mode::Trap, 3));
        let (h, info) = Hostile::init("mode=ok;tick=5e-324;name-bytes=300;snapshot-bytes=7").unwrap();
        assert_eq!((info.tick_interval, info.name.len()), (Some(5e-324), 300));
        assert_eq!(h.snapshot().map(|s| s.len()), Some(7));
        assert_eq!(
            Hostile::init("mode=init-fail;error-bytes=1000").err().unwrap().len(),
            1000
        );
        assert_eq!(
            Hostile::init("mode=init-fail").err().unwrap(),
            "hostile: init refused on purpose"
        );
        for bad in [
            "mode=nice",
            "after=-1",
            "colour=red",
            "mode",
            "tick=soon",
            "name-bytes=-1",
        ] {
            assert!(Hostile::init(bad).err().unwrap().starts_with("hostile:"), "{bad}");
        }
    }

    #[test]
    fn ok_mode_is_fifo() {
        let mut view = FakeView::new(2, 2);
        view.add_job(1);
        view.add_job(2);
        view.add_job(1);
        let d = Hostile::init("mode=ok").unwrap().0.decide(&view, arrivals(&view));
        // Job 1 (2 GPUs) blocks job 2 behind it.
        assert!(matches!(&d.actions[..], [Action::Start(p)] if p.job == 0));
    }

    #[test]
    fn after_n_calls_it_turns_bad() {
        let mut view = FakeView::new(1, 1);
        view.add_job(1);
        let mut h = Hostile::init("mode=bad-wakeup;after=1").unwrap().0;
        assert_eq!(h.decide(&view, arrivals(&view)).wakeup, None);
        assert!(h.decide(&view, vec![Event::Tick]).wakeup.is_some_and(f64::is_nan));
    }

    #[test]
    #[should_panic(expected = "trap on purpose")]
    fn trap_mode_panics() {
        let view = FakeView::new(1, 1);
        Hostile::init("mode=trap").unwrap().0.decide(&view, vec![]);
    }

    #[test]
    fn invalid_mode_sends_bad_actions_then_valid_fifo_ones() {
        let mut view = FakeView::new(4, 4);
        let r = view.add_job(1).id;
        view.place(r, &[0], 1.0);
        let big = view.add_job(2).id;
        let d = Hostile::init("mode=invalid").unwrap().0.decide(&view, arrivals(&view));
        let start = |job, gpus: Vec<GpuId>| Action::Start(Placement { job, gpus });
        let all: Vec<GpuId> = (0..=1004).collect();
        assert_eq!(
            format!("{:?}", d.actions),
            format!(
                "{:?}",
                vec![
                    start(u64::MAX, vec![0]),
                    start(big, all),
                    start(r, vec![1, 2, 3]),
                    start(big, vec![1]),
                    start(big, vec![0, 1]),
                    start(big, vec![1, 2]), // the valid FIFO start
                ]
            )
        );
    }
}
