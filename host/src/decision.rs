//! The one decision loop: a policy deciding for a backend that runs the
//! work.
//!
//! Time is given from outside (`step(now)`), so the same loop serves the
//! simulator, which jumps a virtual clock from event to event over the
//! emulated backend; a service that wakes on requests and timers; a
//! command-line run that sleeps until the next thing is due; and tests
//! that step a hand-held clock. One step brings
//! everything up to `now`, in the order the simulator uses: the model's
//! clock moves, jobs that ended on the backend are booked (freeing their
//! GPUs), a due tick or wake-up is raised, and the policy decides; every
//! action it got applied is then carried out on the backend, which brings
//! the job's work in line with the model ([`Backend::reconcile`]).
//!
//! A step is two phases, so that whoever drives it can put what arrived at
//! this instant between them: [`DecisionLoop::begin`] (the clock, the endings)
//! and [`DecisionLoop::decide`] (timers, decisions, the watchdog). The service
//! submits the turn's requests in between, so that, as in the simulator,
//! completions free GPUs before arrivals are seen.

use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, Ending};
use crate::cluster::JobSpec;
use crate::scheduler::{Outcome, PolicyHost};
use crate::wit::{GpuId, JobId};

/// Decisions one step may make: a backend failure (a command that would
/// not start) is a `job-failed` event the policy must hear, which may lead
/// to another decision. Bounded so that a backend failing every start
/// cannot spin a step forever.
const MAX_DECISIONS_PER_STEP: usize = 8;

/// The least time between two decisions prompted by the policy's own
/// tick or wake-up, in seconds: here time is real, so a policy asking for
/// a 1 ms tick would otherwise take a core. Caps those calls at 100 a
/// second; decisions prompted by events (arrivals, endings) are not held.
pub const MIN_TIMER_GAP: f64 = 0.01;

/// What one step did.
#[derive(Debug, Default)]
pub struct Step {
    /// Jobs that ended on the backend, and how.
    pub ended: Vec<(JobId, Ending)>,
    /// The decisions made, in order.
    pub outcomes: Vec<Outcome>,
    /// Changes the backend could not carry out; each job was marked failed.
    pub backend_errors: Vec<BackendError>,
    /// What happened to the policies during the step: strikes,
    /// ejections, log lines dropped.
    pub notices: Vec<crate::scheduler::PolicyNotice>,
}

/// A policy host and the backend that carries out its decisions.
pub struct DecisionLoop<B: Backend> {
    host: PolicyHost,
    backend: B,
    next_tick: Option<f64>,
    /// When the last tick or wake-up was raised.
    last_timer: Option<f64>,
    /// Least time between two timer-prompted decisions (see [`MIN_TIMER_GAP`]).
    timer_gap: f64,
}

impl<B: Backend> DecisionLoop<B> {
    /// Drive `backend` with the decisions of `host`'s policy.
    pub fn new(host: PolicyHost, backend: B) -> Self {
        DecisionLoop {
            host,
            backend,
            next_tick: None,
            last_timer: None,
            timer_gap: MIN_TIMER_GAP,
        }
    }

    /// Use `gap` seconds as the least time between two decisions prompted
    /// by ticks or wake-ups ([`MIN_TIMER_GAP`] by default).
    pub fn set_timer_gap(&mut self, gap: f64) {
        self.timer_gap = if gap.is_finite() { gap.max(0.0) } else { MIN_TIMER_GAP };
    }

    /// The policy host (cluster model, active policy, statistics).
    pub fn host(&self) -> &PolicyHost {
        &self.host
    }

    /// The policy host, to swap policies or change GPUs.
    pub fn host_mut(&mut self) -> &mut PolicyHost {
        &mut self.host
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, to register work for a job.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Accept a job; the policy hears of it at the next step.
    pub fn submit(&mut self, spec: JobSpec) -> Result<JobId, crate::cluster::SubmitError> {
        self.host.submit(spec)
    }

    /// Cancel a live job: it fails with reason "cancelled" (the policy hears
    /// `job-failed` at the next step) and its work is stopped. Returns false
    /// if the job is unknown or already ended.
    pub fn cancel(&mut self, id: JobId) -> bool {
        let live = self.host.cluster().job(id).is_some_and(|j| !j.is_done());
        if !live {
            return false;
        }
        self.host.fail(id, "cancelled");
        if let Err(e) = self.backend.reconcile(self.host.cluster(), id) {
            tracing::warn!(job = id, why = %e, "cannot stop a cancelled job's work");
        }
        true
    }

    /// Forget an ended job: drop it from the model and what the backend
    /// keeps of it (logs). False, changing nothing, if it is unknown or
    /// still live.
    pub fn forget(&mut self, id: JobId) -> bool {
        if !self.host.forget(id) {
            return false;
        }
        self.backend.forget(id);
        true
    }

    /// A GPU went away or came back. The jobs it held are suspended (the
    /// policy hears `job-preempted` for each, then `gpu-changed`) and their
    /// work is suspended on the backend. Returns the suspended jobs.
    pub fn set_gpu_online(&mut self, gpu: GpuId, online: bool) -> Vec<JobId> {
        let suspended = self.host.set_gpu_online(gpu, online);
        for &id in &suspended {
            if let Err(e) = self.backend.reconcile(self.host.cluster(), id) {
                tracing::warn!(job = id, why = %e, "cannot suspend the work of a job whose GPU went away");
            }
        }
        suspended
    }

    /// Bring everything up to `now` (seconds on the model's clock; a time
    /// in the past counts as the model's present): [`DecisionLoop::begin`], then
    /// [`DecisionLoop::decide`].
    pub fn step(&mut self, now: f64) -> Step {
        let mut step = self.begin(now);
        self.decide(&mut step);
        step
    }

    /// The first phase of a step: move the clock to `now` and book what
    /// ended on the backend (freeing its GPUs), its progress and GPU
    /// samples. What arrives at this instant goes in after this.
    pub fn begin(&mut self, now: f64) -> Step {
        self.host.advance(now);
        let mut step = Step::default();
        // Progress before endings: a job's last report must land while it
        // is still live.
        let ended = self.backend.ended(self.host.cluster());
        for (id, iterations, iteration_time) in self.backend.progress() {
            self.host.report_progress(id, iterations, iteration_time);
        }
        for (id, ending) in ended {
            match &ending {
                Ok(()) => self.host.finish(id),
                Err(why) => self.host.fail(id, why),
            }
            step.ended.push((id, ending));
        }
        for (gpu, measured) in self.backend.measure() {
            self.host.report_measurement(gpu, measured);
        }
        for gpu in self.backend.broken_gpus() {
            tracing::warn!(gpu, backend = self.backend.name(), "GPU broken: taking it offline");
            self.set_gpu_online(gpu, false);
        }
        step
    }

    /// The second phase of a step: raise a due tick or wake-up, let the
    /// policy decide (again while events keep coming, up to a bound),
    /// carry out what it got applied, and let the watchdog look.
    pub fn decide(&mut self, step: &mut Step) {
        let now = self.host.cluster().now();
        let live = self.host.cluster().live_jobs() > 0;
        let timer_allowed = now >= self.timer_floor();
        let mut timer = false;
        match self.host.tick_interval() {
            Some(interval) if live => {
                let due = *self.next_tick.get_or_insert(now + interval);
                if now >= due && timer_allowed {
                    self.next_tick = Some(now + interval);
                    timer = true;
                }
            }
            _ => self.next_tick = None,
        }
        if live && timer_allowed && self.host.wakeup().is_some_and(|w| w <= now) {
            timer = true;
        }
        if timer {
            // One `tick` event, whether the tick, the wake-up or both are due.
            self.host.tick();
            self.last_timer = Some(now);
        }

        for _ in 0..MAX_DECISIONS_PER_STEP {
            // Nothing left to decide: the watchdog looks whether the policy
            // stalled; if it ejected it, the fallback has a decision due.
            if !self.host.has_events() && !self.host.check_stall() {
                break;
            }
            let outcome = self.host.decide();
            for (action, _) in &outcome.applied {
                if let Err(e) = self.backend.reconcile(self.host.cluster(), action.job()) {
                    tracing::warn!(job = e.job, backend = self.backend.name(), op = e.op.name(), why = %e, "cannot carry out {}", action.kind());
                    self.host.fail(e.job, &e.reason);
                    step.backend_errors.push(e);
                }
            }
            step.outcomes.push(outcome);
        }
        step.notices.extend(self.host.take_notices());
    }

    /// The next time a step has something to do that the loop can
    /// foresee: a predicted job end, the policy's wake-up or its tick.
    /// Backends that cannot predict ends (processes) must be polled too.
    pub fn next_due(&self) -> Option<f64> {
        let live = self.host.cluster().live_jobs() > 0;
        let floor = self.timer_floor();
        [
            self.backend.next_end(self.host.cluster()),
            self.host.wakeup().filter(|_| live).map(|t| t.max(floor)),
            self.next_tick.filter(|_| live).map(|t| t.max(floor)),
        ]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp)
    }

    /// The soonest the next tick or wake-up may be raised.
    fn timer_floor(&self) -> f64 {
        self.last_timer.map_or(f64::NEG_INFINITY, |t| t + self.timer_gap)
    }

    /// Step on the wall clock until no job is live, sleeping until the next
    /// due time but at most `poll` between steps. The model's clock goes on
    /// from where it is. Returns false if `timeout` passed first.
    pub fn run_until_idle(&mut self, timeout: Duration, poll: Duration) -> bool {
        let started = Instant::now();
        let origin = self.host.cluster().now();
        loop {
            let now = origin + started.elapsed().as_secs_f64();
            self.step(now);
            if self.host.cluster().live_jobs() == 0 {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            let until_due = self
                .next_due()
                .map(|t| crate::bounds::duration((t - now).min(poll.as_secs_f64())))
                .unwrap_or(poll);
            std::thread::sleep(until_due.max(Duration::from_millis(1)));
        }
    }
}
