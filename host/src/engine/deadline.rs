//! The per-call time limit: CPU time, confirmed before a strike, under a
//! wall-clock ceiling.
//!
//! Why CPU time: a deadline on wall-clock time strikes a well-behaved
//! plugin whose thread was merely descheduled (other processes busy on the
//! same cores), which is not the plugin's fault. Why not read the CPU clock
//! at every call: a thread's CPU clock is a system call (about 0.4 µs, more
//! than an empty plugin call), so it is read only once a call has already
//! run for a whole deadline of wall-clock time, which a normal call never
//! does.
//!
//! How: the engine's epoch (a tick per millisecond) first interrupts the
//! call after `deadline` of wall time. The callback notes the thread's CPU
//! clock and lets the call go on; it looks again as the epoch runs on. The
//! call is struck once it has used a further `deadline` of CPU time since
//! that note (so it has certainly used more than its deadline in all), or
//! once its wall time reaches [`WALL_CEILING_FACTOR`] times the deadline,
//! whatever it was doing. A spinning plugin is therefore stopped after
//! about twice its deadline on an idle machine.

use std::time::Duration;

/// How often the epoch ticks; deadlines are whole multiples of it.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A call is stopped at this many deadlines of wall-clock time, however
/// little CPU it used (it may be blocked, or starved by the machine).
pub const WALL_CEILING_FACTOR: u32 = 10;

/// Which limit a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overrun {
    /// It used more CPU time than its deadline.
    Cpu,
    /// It reached the wall-clock ceiling.
    Wall,
}

/// The time limit of the call in progress in one store.
#[derive(Debug)]
pub(crate) struct CallBudget {
    deadline: Duration,
    /// Epoch ticks granted since the call was armed (its wall time so far).
    spent_ticks: u64,
    /// Ticks granted by the last extension, not yet counted in `spent_ticks`.
    granted: u64,
    /// The thread's CPU clock when the wall deadline first passed.
    cpu_mark: Option<Duration>,
    /// Set when a call is stopped, so the error can say why.
    pub(crate) overrun: Option<Overrun>,
}

impl CallBudget {
    pub(crate) fn new(deadline: Duration) -> Self {
        CallBudget {
            deadline,
            spent_ticks: 0,
            granted: 0,
            cpu_mark: None,
            overrun: None,
        }
    }

    /// The call's limit.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Start a call: returns the epoch ticks until the first look.
    pub(crate) fn arm(&mut self) -> u64 {
        self.spent_ticks = 0;
        self.cpu_mark = None;
        self.overrun = None;
        self.granted = ticks(self.deadline);
        self.granted
    }

    fn ceiling_ticks(&self) -> u64 {
        ticks(self.deadline).saturating_mul(u64::from(WALL_CEILING_FACTOR))
    }

    /// The epoch reached the call's deadline: `Some(ticks)` to let it run
    /// that much longer, `None` to stop it (`overrun` says why).
    pub(crate) fn on_deadline(&mut self) -> Option<u64> {
        self.spent_ticks = self.spent_ticks.saturating_add(self.granted);
        if self.spent_ticks >= self.ceiling_ticks() {
            self.overrun = Some(Overrun::Wall);
            return None;
        }
        let cpu = thread_cpu_time();
        let used = match self.cpu_mark {
            None => {
                self.cpu_mark = Some(cpu);
                Duration::ZERO
            }
            Some(mark) => cpu.saturating_sub(mark),
        };
        if used >= self.deadline {
            self.overrun = Some(Overrun::Cpu);
            return None;
        }
        let left = ticks(self.deadline.saturating_sub(used));
        self.granted = left.min(self.ceiling_ticks().saturating_sub(self.spent_ticks)).max(1);
        Some(self.granted)
    }
}

/// Whole epoch ticks in `d`, at least one.
pub(crate) fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_micros() / EPOCH_TICK.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999);
    Duration::new(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_burns_cpu_is_stopped_after_its_deadline_of_cpu() {
        let mut budget = CallBudget::new(Duration::from_millis(5));
        assert_eq!(budget.arm(), 5);
        // The first look only takes a note of the CPU clock.
        assert!(budget.on_deadline().is_some());
        let started = std::time::Instant::now();
        let mut n = 0u64;
        let stopped = loop {
            n = std::hint::black_box(n.wrapping_add(1));
            if n.is_multiple_of(10_000) && budget.on_deadline().is_none() {
                break budget.overrun;
            }
            assert!(started.elapsed() < Duration::from_secs(30));
        };
        // Spinning a whole deadline of CPU time ends it on CPU, unless the
        // machine is so slow the wall ceiling came first.
        assert!(matches!(stopped, Some(Overrun::Cpu | Overrun::Wall)));
    }

    #[test]
    fn a_call_that_waits_is_stopped_at_the_wall_ceiling() {
        let mut budget = CallBudget::new(Duration::from_millis(3));
        budget.arm();
        let mut looks = 0;
        while budget.on_deadline().is_some() {
            looks += 1;
            assert!(looks < 1000);
        }
        assert_eq!(budget.overrun, Some(Overrun::Wall));
        // Re-arming starts afresh.
        budget.arm();
        assert_eq!(budget.overrun, None);
        assert!(budget.on_deadline().is_some());
    }
}
