//! The decision loop: the cluster model, the active policy, and the rules
//! that keep a bad policy from hurting the cluster.
//!
//! [`PolicyHost`] is what every front end drives (the simulator now, live
//! backends and the service later): it collects events as the mechanism
//! reports them, asks the active policy for a decision at each decision
//! point, validates and applies the answer, and hands back what changed
//! for the backend to carry out.
//!
//! Fault handling follows Linux's sched_ext. A plugin that traps, runs
//! past its deadline, hits its memory cap or answers outside the contract
//! earns a strike; its instance is replaced by a fresh one (told the whole
//! live state again) and the decision is retried, so no decision point is
//! ever skipped. After `max_strikes` the plugin is ejected and the built-in
//! FIFO takes over. Hot swaps happen between two decisions: the next policy
//! is instantiated off the decision path, given the old one's snapshot, and
//! switched in. If it cannot start, the old policy stays; if it starts but
//! cannot take the old one's state (a refusal, a fault, a snapshot too big
//! or too slow), it is switched in anyway, fresh and without the state, so
//! that the policy being replaced cannot veto its replacement.

use crate::cluster::{Applied, Cluster, JobSpec};
use crate::engine::{Engine, Fault, LoadError, MAX_TEXT, PluginInstance, bounded};
use crate::latency::Latencies;
use crate::native::{Fifo, NativePolicy};
use crate::wit::{Action, Decision, Event, GpuId, JobId, Rejection};
use serde::Serialize;
use std::time::Instant;

/// The soonest a policy can ask to be woken, in seconds after now.
pub const MIN_WAKEUP_DELAY: f64 = 1e-3;

/// Calls in a row, each prompted only by the policy's own tick or wake-up,
/// that changed nothing: after this many the policy is stalled. It is
/// spending calls (and, in the simulator, the clock) without progress; a
/// 1 ms tick reaches it in 100 s, a 6-minute round in over a year.
pub const MAX_FRUITLESS_WAKEUPS: u32 = 100_000;

/// When the watchdog calls a policy stalled because the cluster sits idle
/// while work waits that could run (nothing running, a waiting job fits
/// in the free GPUs). The rule is the same for the simulator and the
/// service; only the numbers differ, because a simulated second costs
/// nothing and a real one keeps people waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallRule {
    /// Seconds on the model's clock the idle spell must last (stretched to
    /// two tick intervals for a policy that decides in rounds).
    pub idle_seconds: f64,
    /// Decisions the policy must have made during the spell: it had its
    /// chances and let them pass.
    pub idle_decisions: u32,
}

impl StallRule {
    /// The simulator's rule: 1,000 decisions in a row, whatever time they span.
    pub const SIMULATION: StallRule = StallRule {
        idle_seconds: 0.0,
        idle_decisions: 1000,
    };
    /// The service's rule: 10 seconds and at least one decision.
    pub const SERVICE: StallRule = StallRule {
        idle_seconds: 10.0,
        idle_decisions: 1,
    };
}

/// A spell of the cluster idling with work waiting: since when, and how
/// many decisions the policy made during it.
#[derive(Debug, Clone, Copy)]
struct IdleSpell {
    since: f64,
    decisions: u32,
}

/// The policy making decisions now.
pub enum ActivePolicy {
    /// A Wasm plugin.
    Plugin(Box<PluginInstance>),
    /// A policy built into the host.
    Native(Box<dyn NativePolicy>),
}

impl ActivePolicy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        match self {
            ActivePolicy::Plugin(p) => &p.info().name,
            ActivePolicy::Native(p) => p.name(),
        }
    }
}

/// Counters about the policies' behaviour.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HostStats {
    /// Decision calls made (retries after a fault included).
    pub calls: u64,
    /// Actions applied.
    pub actions_applied: u64,
    /// Actions refused by validation.
    pub actions_rejected: u64,
    /// Faults counted against plugins.
    pub strikes: u64,
    /// Plugins ejected in favour of the built-in policy.
    pub ejections: u64,
    /// Hot swaps completed.
    pub swaps: u64,
    /// Swaps in which the old policy's state was handed over.
    pub state_handovers: u64,
    /// Each fault, in order: "policy: fault".
    pub faults: Vec<String>,
    /// Plugin log lines dropped over the log budget.
    pub log_lines_dropped: u64,
    /// Wall time of the decision calls.
    #[serde(skip)]
    pub call_times: Latencies,
}

/// What one decision changed.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Actions carried out on the model, in order, with what each did.
    pub applied: Vec<(Action, Applied)>,
    /// Actions refused, each with its rejection (also sent to the policy).
    pub rejected: Vec<(Action, Rejection)>,
    /// What the decision answered, for metrics: `job_arrived`,
    /// `job_ended`, `gpu_changed`, `tick`, `action_rejected` or
    /// `takeover` (the first of these that the events contained).
    pub decision_point: &'static str,
    /// Wall time of each policy call the decision took, in nanoseconds
    /// (more than one when a fault forced a retry).
    pub call_nanos: Vec<u64>,
}

/// The kind of decision point a batch of events makes, for metrics.
fn decision_point(events: &[Event]) -> &'static str {
    let has = |f: fn(&Event) -> bool| events.iter().any(f);
    if has(|e| matches!(e, Event::JobArrived(_))) {
        "job_arrived"
    } else if has(|e| matches!(e, Event::JobFinished(_) | Event::JobFailed(_))) {
        "job_ended"
    } else if has(|e| matches!(e, Event::GpuChanged(_) | Event::JobPreempted(_))) {
        "gpu_changed"
    } else if has(|e| matches!(e, Event::Tick)) {
        "tick"
    } else if has(|e| matches!(e, Event::ActionRejected(_))) {
        "action_rejected"
    } else {
        "takeover"
    }
}

/// A plugin thrown out for good (until the next swap): who, who took over,
/// and the fault that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    /// The plugin's name.
    pub policy: String,
    /// The policy that took over (the built-in FIFO).
    pub to: String,
    /// The last fault, as "policy: fault".
    pub fault: String,
}

/// What the policy host tells its front end as it happens (the service
/// turns these into metrics, logs and events), so that nobody has to find
/// them by diffing counters.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyNotice {
    /// A fault counted against a plugin (a strike).
    Strike {
        /// The plugin's name.
        policy: String,
        /// The fault.
        fault: String,
    },
    /// A plugin was thrown out.
    Ejection(Ejection),
    /// Lines a plugin logged over its log budget, dropped.
    LogLinesDropped {
        /// The plugin's name.
        policy: String,
        /// How many.
        lines: u64,
    },
}

/// The result of a successful hot swap.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapReport {
    /// The policy that was replaced.
    pub from: String,
    /// The policy now active.
    pub to: String,
    /// Whether the old policy's snapshot was restored into the new one.
    pub state_handed_over: bool,
    /// Why the state was not handed over, when there was state to hand.
    pub note: Option<String>,
}

/// Why a hot swap was refused; the old policy stays active.
#[derive(Debug, Clone, PartialEq)]
pub enum SwapError {
    /// The next policy faulted restoring the old one's state, and could
    /// not start again afresh.
    RestartFailed {
        /// The policy that stays.
        from: String,
        /// The policy that was refused.
        to: String,
        /// Its fault while restoring.
        fault: Fault,
        /// Why it could not start again.
        start: LoadError,
    },
}

impl std::fmt::Display for SwapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwapError::RestartFailed { from, to, fault, start } => write!(
                f,
                "{to} faulted restoring the state of {from} ({fault}) and could not start again ({start}); {from} stays active"
            ),
        }
    }
}

impl std::error::Error for SwapError {}

/// The cluster model plus the policy that decides for it.
pub struct PolicyHost {
    engine: Engine,
    cluster: Cluster,
    active: ActivePolicy,
    events: Vec<Event>,
    /// Send every live job as `job-arrived` in the next call.
    takeover: bool,
    wakeup: Option<f64>,
    strikes: u32,
    stats: HostStats,
    stall_rule: StallRule,
    idle: Option<IdleSpell>,
    /// Decisions since the watchdog last looked.
    decided_since_check: u32,
    /// Tick-only calls in a row that applied nothing.
    fruitless_wakeups: u32,
    /// Notices not yet taken by the front end (see [`PolicyHost::take_notices`]).
    notices: Vec<PolicyNotice>,
}

impl PolicyHost {
    /// A host over `cluster` decided by the built-in FIFO until a plugin is swapped in.
    pub fn new(engine: Engine, cluster: Cluster) -> Self {
        PolicyHost {
            engine,
            cluster,
            active: ActivePolicy::Native(Box::new(Fifo)),
            events: Vec::new(),
            takeover: true,
            wakeup: None,
            strikes: 0,
            stats: HostStats::default(),
            stall_rule: StallRule::SERVICE,
            idle: None,
            decided_since_check: 0,
            fruitless_wakeups: 0,
            notices: Vec::new(),
        }
    }

    /// What happened to the policies since the last call (strikes,
    /// ejections, dropped log lines), oldest first: how a front end learns
    /// of it (to tell operators) without diffing counters.
    pub fn take_notices(&mut self) -> Vec<PolicyNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Count the log lines the active plugin dropped since last asked.
    fn count_log_dropped(&mut self) {
        let ActivePolicy::Plugin(p) = &mut self.active else {
            return;
        };
        let lines = p.take_log_lines_dropped();
        if lines > 0 {
            let policy = p.info().name.clone();
            self.stats.log_lines_dropped += lines;
            self.notices.push(PolicyNotice::LogLinesDropped { policy, lines });
        }
    }

    /// Use `rule` to tell a stalled policy (the service's by default).
    pub fn set_stall_rule(&mut self, rule: StallRule) {
        self.stall_rule = rule;
    }

    /// A host over `cluster` decided by `plugin`.
    pub fn with_plugin(engine: Engine, cluster: Cluster, plugin: PluginInstance) -> Self {
        let mut host = PolicyHost::new(engine, cluster);
        host.active = ActivePolicy::Plugin(Box::new(plugin));
        host
    }

    /// A host over `cluster` decided by a policy built into the host.
    pub fn with_native(engine: Engine, cluster: Cluster, policy: Box<dyn NativePolicy>) -> Self {
        let mut host = PolicyHost::new(engine, cluster);
        host.active = ActivePolicy::Native(policy);
        host
    }

    /// The cluster model (read-only: change it through the host so the
    /// policy hears about it).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The engine plugins run on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The policy deciding now.
    pub fn active(&self) -> &ActivePolicy {
        &self.active
    }

    /// Counters so far.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// The active policy's periodic tick, if it asked for one.
    pub fn tick_interval(&self) -> Option<f64> {
        match &self.active {
            ActivePolicy::Plugin(p) => p.info().tick_interval,
            ActivePolicy::Native(_) => None,
        }
    }

    /// When the active policy asked to be woken, if it did.
    pub fn wakeup(&self) -> Option<f64> {
        self.wakeup
    }

    /// Move the clock forward (running jobs accrue progress and service).
    pub fn advance(&mut self, t: f64) {
        self.cluster.advance(t);
    }

    /// Accept a job now; the policy hears of it at the next decision.
    pub fn submit(&mut self, spec: JobSpec) -> Result<JobId, crate::cluster::SubmitError> {
        let id = self.cluster.submit(spec)?;
        if let Some(info) = self.cluster.job_info(id) {
            self.events.push(Event::JobArrived(info));
        }
        Ok(id)
    }

    /// Put back a job known from before a restart (see
    /// [`Cluster::restore`]). The active policy is told every live job
    /// again at the next decision, as when a policy takes over.
    pub fn restore(&mut self, job: crate::cluster::Job) -> Result<(), crate::cluster::RestoreError> {
        self.cluster.restore(job)?;
        self.takeover = true;
        Ok(())
    }

    /// Never give out a job id below `floor` (see [`Cluster::reserve_ids_below`]).
    pub fn reserve_ids_below(&mut self, floor: JobId) {
        self.cluster.reserve_ids_below(floor);
    }

    /// Drop an ended job from the model (see [`Cluster::forget`]); policies
    /// were told it ended already. False if unknown or still live.
    pub fn forget(&mut self, id: JobId) -> bool {
        self.cluster.forget(id)
    }

    /// A job completed.
    pub fn finish(&mut self, id: JobId) {
        if self.cluster.finish(id) {
            self.events.push(Event::JobFinished(id));
        }
    }

    /// A job failed on its backend.
    pub fn fail(&mut self, id: JobId, reason: &str) {
        if self.cluster.fail(id, reason) {
            self.events.push(Event::JobFailed((id, reason.to_string())));
        }
    }

    /// A backend measured a job's progress: iterations done and the time of
    /// the last one. Policies see it in the job's record; no event.
    pub fn report_progress(&mut self, id: JobId, iterations: Option<u64>, iteration_time: Option<f64>) {
        self.cluster.report_progress(id, iterations, iteration_time);
    }

    /// A backend sampled a GPU's own counters; policies read them through
    /// `cluster-view.measured`; no event.
    pub fn report_measurement(&mut self, gpu: GpuId, measured: crate::wit::GpuMeasurement) {
        self.cluster.set_measured(gpu, measured);
    }

    /// A GPU went away or came back; the jobs it held are suspended and the
    /// policy hears of each (`job-preempted`), then of the GPU.
    pub fn set_gpu_online(&mut self, gpu: GpuId, online: bool) -> Vec<JobId> {
        let suspended = self.cluster.set_gpu_online(gpu, online);
        self.events.extend(suspended.iter().map(|&id| Event::JobPreempted(id)));
        self.events.push(Event::GpuChanged(gpu));
        suspended
    }

    /// A periodic tick or requested wake-up is due.
    pub fn tick(&mut self) {
        if self.wakeup.is_some_and(|w| w <= self.cluster.now()) {
            self.wakeup = None;
        }
        self.events.push(Event::Tick);
    }

    /// Whether a decision is due (events are waiting, or a policy just took over).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.takeover
    }

    /// Run one decision: ask the policy about the pending events, validate
    /// and apply its actions. Does nothing when no decision is due.
    pub fn decide(&mut self) -> Outcome {
        if !self.has_events() {
            return Outcome::default();
        }
        let base = std::mem::take(&mut self.events);
        let decision_point = decision_point(&base);
        let mut call_nanos = Vec::new();
        let decision = loop {
            let events = self.compose(&base);
            let started = Instant::now();
            let result = match &mut self.active {
                ActivePolicy::Native(p) => Ok(p.decide(&self.cluster, &events)),
                ActivePolicy::Plugin(p) => p.decide(&mut self.cluster, &events),
            };
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.count_log_dropped();
            self.stats.call_times.record(nanos);
            call_nanos.push(nanos);
            self.stats.calls += 1;
            match result.and_then(|d| self.check_output(d)) {
                Ok(d) => break d,
                // The instance may be in any state now: replace it and retry
                // with the whole live state, so the decision point is not lost.
                Err(fault) => self.strike(fault, true),
            }
        };
        let mut outcome = self.apply(decision);
        self.decided_since_check = self.decided_since_check.saturating_add(1);
        let only_ticks = !base.is_empty() && base.iter().all(|e| matches!(e, Event::Tick));
        self.fruitless_wakeups = if only_ticks && outcome.applied.is_empty() {
            self.fruitless_wakeups.saturating_add(1)
        } else {
            0
        };
        outcome.decision_point = decision_point;
        outcome.call_nanos = call_nanos;
        outcome
    }

    /// The watchdog: eject the active plugin if it has stalled, and say so.
    /// Call it when nothing is left to decide (after the decisions of a
    /// step, and on steps without any). Stalled means the cluster has sat
    /// idle while waiting work fits in the free GPUs for as long as the
    /// [`StallRule`] allows, or the policy was woken
    /// [`MAX_FRUITLESS_WAKEUPS`] times in a row by its own ticks and did
    /// nothing. Returns true if it ejected the plugin: the built-in FIFO
    /// then has a decision due.
    pub fn check_stall(&mut self) -> bool {
        let decided = std::mem::take(&mut self.decided_since_check);
        if !matches!(self.active, ActivePolicy::Plugin(_)) {
            self.idle = None;
            self.fruitless_wakeups = 0;
            return false;
        }
        let now = self.cluster.now();
        let stalled = if self.fruitless_wakeups >= MAX_FRUITLESS_WAKEUPS {
            Some(format!(
                "{} calls in a row, each prompted only by its own tick or wake-up, changed nothing (at t={now}s)",
                self.fruitless_wakeups
            ))
        } else if self.cluster.idles_with_work() {
            let needed = self
                .stall_rule
                .idle_seconds
                .max(2.0 * self.tick_interval().unwrap_or(0.0));
            let spell = self.idle.get_or_insert(IdleSpell {
                since: now,
                decisions: 0,
            });
            spell.decisions = spell.decisions.saturating_add(decided);
            let spell = *spell;
            (now - spell.since >= needed && spell.decisions >= self.stall_rule.idle_decisions).then(|| {
                let stats = self.cluster.stats();
                format!(
                    "{} job(s) waited {:.3}s on {} idle GPU(s) while nothing ran, through {} decision(s) that started nothing",
                    stats.pending + stats.suspended,
                    now - spell.since,
                    stats.free_gpus,
                    spell.decisions
                )
            })
        } else {
            self.idle = None;
            None
        };
        match stalled {
            Some(why) => {
                self.eject(Fault::Stall(why));
                true
            }
            None => false,
        }
    }

    /// The events a call gets: as queued, or, right after a takeover, the
    /// completions, then every live job as `job-arrived`, then the rest
    /// (rejections of an old policy's actions are dropped).
    fn compose(&mut self, base: &[Event]) -> Vec<Event> {
        if !std::mem::take(&mut self.takeover) {
            return base.to_vec();
        }
        let ended = base
            .iter()
            .filter(|e| matches!(e, Event::JobFinished(_) | Event::JobFailed(_)));
        let others = base.iter().filter(|e| matches!(e, Event::Tick | Event::GpuChanged(_)));
        let live = self.cluster.live_job_infos().into_iter().map(Event::JobArrived);
        ended.cloned().chain(live).chain(others.cloned()).collect()
    }

    fn check_output(&mut self, mut d: Decision) -> Result<Decision, Fault> {
        let max = self.engine.limits().max_actions;
        if d.actions.len() > max {
            return Err(Fault::InvalidOutput(format!(
                "{} actions in one decision, the limit is {max}",
                d.actions.len()
            )));
        }
        if let Some(w) = d.wakeup {
            if !(w.is_finite() && w <= crate::bounds::MAX_TIME) {
                d.wakeup = None;
                self.strike(
                    Fault::InvalidOutput(format!(
                        "wakeup must be a finite time up to {:e} s, got {w}",
                        crate::bounds::MAX_TIME
                    )),
                    false,
                );
            } else if w <= self.cluster.now() {
                d.wakeup = None; // already due: the policy is being called now
            } else {
                // A wake-up a hair after now, asked again and again, would
                // stall the clock; none comes sooner than MIN_WAKEUP_DELAY.
                d.wakeup = Some(w.max(self.cluster.now() + MIN_WAKEUP_DELAY));
            }
        }
        Ok(d)
    }

    fn apply(&mut self, decision: Decision) -> Outcome {
        let mut outcome = Outcome::default();
        for (index, action) in decision.actions.into_iter().enumerate() {
            match self.cluster.apply(&action) {
                Ok(applied) => outcome.applied.push((action, applied)),
                Err(reason) => {
                    tracing::warn!(policy = self.active.name(), action = action.kind(), job = action.job(), %reason, "action rejected");
                    let rejection = Rejection {
                        index: index as u32,
                        job: action.job(),
                        reason: reason.to_string(),
                    };
                    outcome.rejected.push((action, rejection));
                }
            }
        }
        self.stats.actions_applied += outcome.applied.len() as u64;
        self.stats.actions_rejected += outcome.rejected.len() as u64;
        self.wakeup = decision.wakeup;
        if let Some((action, first)) = outcome.rejected.first() {
            let n = outcome.rejected.len();
            let fault = Fault::InvalidOutput(format!(
                "{n} action(s) rejected; first: {} of job {}: {}",
                action.kind(),
                first.job,
                first.reason
            ));
            self.events
                .extend(outcome.rejected.iter().map(|(_, r)| Event::ActionRejected(r.clone())));
            if matches!(self.active, ActivePolicy::Plugin(_)) {
                self.strike(fault, false);
            }
        }
        outcome
    }

    /// Count a fault against the active plugin; eject it at the limit,
    /// otherwise (when `refresh`) replace its instance with a fresh one.
    fn strike(&mut self, mut fault: Fault, refresh: bool) {
        let ActivePolicy::Plugin(instance) = &self.active else {
            return;
        };
        let plugin = instance.plugin().clone();
        let config = instance.config().to_string();
        let name = instance.info().name.clone();
        loop {
            self.strikes += 1;
            self.stats.strikes += 1;
            self.stats.faults.push(format!("{name}: {fault}"));
            self.notices.push(PolicyNotice::Strike {
                policy: name.clone(),
                fault: fault.to_string(),
            });
            tracing::warn!(policy = %name, strike = self.strikes, %fault, "plugin fault");
            if self.strikes >= self.engine.limits().max_strikes {
                self.eject_named(&name, fault);
                return;
            }
            if !refresh {
                return;
            }
            // The faulted instance goes before its replacement is made, so
            // that a plugin never holds two instances' memory at once.
            self.retire_active();
            match self.engine.instantiate(&plugin, &config, self.cluster.now()) {
                Ok(fresh) => {
                    self.active = ActivePolicy::Plugin(Box::new(fresh));
                    self.takeover = true;
                    self.wakeup = None;
                    return;
                }
                Err(LoadError::InitFault(f)) => fault = f,
                Err(other) => fault = Fault::Trap(bounded(&other.to_string(), MAX_TEXT)),
            }
        }
    }

    /// Drop the active policy, leaving the built-in FIFO in its place, and
    /// count what its log dropped.
    fn retire_active(&mut self) {
        self.count_log_dropped();
        self.active = ActivePolicy::Native(Box::new(Fifo));
    }

    /// Replace the active plugin with the built-in FIFO, for good (until
    /// the next swap).
    pub fn eject(&mut self, fault: Fault) {
        let name = match &self.active {
            ActivePolicy::Plugin(p) => Some(p.info().name.clone()),
            ActivePolicy::Native(_) => None,
        };
        match name {
            Some(name) => self.eject_named(&name, fault),
            None => self.eject_unnamed(),
        }
    }

    fn eject_named(&mut self, name: &str, fault: Fault) {
        tracing::error!(policy = %name, %fault, "plugin ejected; the built-in FIFO takes over");
        if matches!(fault, Fault::Stall(_)) {
            self.stats.faults.push(format!("{name}: {fault}"));
        }
        self.eject_unnamed();
        self.notices.push(PolicyNotice::Ejection(Ejection {
            policy: name.to_string(),
            to: self.active.name().to_string(),
            fault: format!("{name}: {fault}"),
        }));
    }

    fn eject_unnamed(&mut self) {
        self.retire_active();
        self.stats.ejections += 1;
        self.takeover = true;
        self.wakeup = None;
        self.strikes = 0;
        self.idle = None;
        self.fruitless_wakeups = 0;
    }

    /// Switch to a policy built into the host between two decisions, as an
    /// operator's choice (not an ejection). No state is handed over.
    pub fn swap_native(&mut self, next: Box<dyn NativePolicy>) -> SwapReport {
        let from = self.active.name().to_string();
        let to = next.name().to_string();
        self.active = ActivePolicy::Native(next);
        self.takeover = true;
        self.wakeup = None;
        self.strikes = 0;
        self.idle = None;
        self.fruitless_wakeups = 0;
        self.stats.swaps += 1;
        tracing::info!(%from, %to, "policy swapped");
        SwapReport {
            from,
            to,
            state_handed_over: false,
            note: None,
        }
    }

    /// Instantiate `plugin` for a swap; call this off the decision path
    /// (it compiles nothing, but runs the plugin's `init`).
    pub fn prepare(&self, plugin: &crate::engine::Plugin, config: &str) -> Result<PluginInstance, LoadError> {
        self.engine.instantiate(plugin, config, self.cluster.now())
    }

    /// Switch to `next` between two decisions, handing over the old
    /// policy's snapshot when it has one and `next` accepts it. Without
    /// the state when the snapshot fails or is too big, or `next` refuses
    /// it; when `next` faults restoring it, `next` is started afresh and
    /// switched in without it (the contract's promise for a restore
    /// error). Only when that fresh start fails too does the old policy
    /// stay.
    pub fn swap(&mut self, mut next: PluginInstance) -> Result<SwapReport, SwapError> {
        let now = self.cluster.now();
        let from = self.active.name().to_string();
        let to = next.info().name.clone();
        let mut state_handed_over = false;
        let mut note = None;
        if let ActivePolicy::Plugin(old) = &mut self.active {
            // What the old policy logged over its budget is counted as it
            // retires, below (or later, if it stays).
            match old.snapshot(now) {
                Ok(Some(state)) => match next.restore(&state, now) {
                    Ok(Ok(())) => state_handed_over = true,
                    Ok(Err(why)) => note = Some(format!("{to} declined the state of {from}: {why}")),
                    Err(fault) => {
                        // The fault may have left `next` in any state.
                        let (plugin, config) = (next.plugin().clone(), next.config().to_string());
                        drop(next);
                        next = self.engine.instantiate(&plugin, &config, now).map_err(|start| {
                            SwapError::RestartFailed {
                                from: from.clone(),
                                to: to.clone(),
                                fault: fault.clone(),
                                start,
                            }
                        })?;
                        note = Some(format!(
                            "{to} faulted restoring the state of {from} ({fault}); it starts afresh without it"
                        ));
                    }
                },
                Ok(None) => {}
                Err(fault) => {
                    note = Some(format!(
                        "{from} could not give its state ({fault}); {to} starts without it"
                    ))
                }
            }
        }
        if let Some(note) = &note {
            tracing::warn!(%from, %to, %note, "swapping without state");
        }
        self.retire_active();
        self.active = ActivePolicy::Plugin(Box::new(next));
        self.takeover = true;
        self.wakeup = None;
        self.strikes = 0;
        self.idle = None;
        self.fruitless_wakeups = 0;
        self.stats.swaps += 1;
        self.stats.state_handovers += u64::from(state_handed_over);
        tracing::info!(%from, %to, state_handed_over, "policy swapped");
        Ok(SwapReport {
            from,
            to,
            state_handed_over,
            note,
        })
    }
}
