"""Discretised two-dimensional least-attained-service (2D-LAS), preempting,
in Python: a line-for-line port of `plugins/las/src/lib.rs`, whose module
doc describes the algorithm. The Rust code is authoritative; this port makes
the same decisions with the same float expressions evaluated in the same
order, so a replay gives byte-identical results.

The algorithm, on every decision:
1. Fold the events into the policy's own model of live jobs.
2. If nothing waits, do nothing.
3. Rank every live job by (queue, id): the queue is the number of
   thresholds its attained GPU-seconds have reached.
4. Walk that ranking with the online GPU count as capacity: a job that
   fits keeps its GPUs (running) or is admitted (waiting); a running job
   that no longer fits is a victim. Waiting jobs that do not fit are
   skipped (backfilling).
5. If nothing is admitted, preempt nobody. Otherwise preempt the victims,
   then start or resume the admitted jobs in rank order on the
   lowest-numbered free GPUs.
6. While anything waits, ask to be woken when the first running job
   reaches its next threshold.

Configuration: empty for thresholds of 3,600 and 36,000 GPU-seconds, or
`thresholds=A,B,...` (GPU-seconds, positive, strictly ascending).

Build: `plugins/python/build.sh` (-> target/plugins/py-las.wasm).
"""

import math
import re
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.host import ClusterView
from wit_world.imports.types import (
    Action,
    Action_Preempt,
    Action_Resume,
    Action_Start,
    Decision,
    Event,
    Event_ActionRejected,
    Event_GpuChanged,
    Event_JobArrived,
    Event_JobFailed,
    Event_JobFinished,
    Event_JobPreempted,
    Event_Tick,
    JobInfo,
    JobState,
    Level,
    Placement,
    PolicyInfo,
)

from wsched_util import log, rust_trim, take_gpus


class Job:
    """What the policy remembers about one live job."""

    # Slots: thousands of these live at once and are read on every call.
    __slots__ = ("gpus", "attained", "since", "rate", "running", "started", "placement")

    def __init__(
        self,
        gpus: int,
        attained: float,
        since: float,
        rate: float,
        running: bool,
        started: bool,
        placement: List[int],
    ) -> None:
        self.gpus = gpus  # GPUs needed (waiting) or held (running)
        self.attained = attained  # GPU-seconds as of `since` (running) or in total (waiting)
        self.since = since  # when the job last started or resumed (running only)
        self.rate = rate  # GPU-seconds gained per second while running: GPUs x share
        self.running = running
        self.started = started  # has run before, so it resumes rather than starts
        self.placement = placement  # GPUs held (running only)

    def attained_at(self, now: float) -> float:
        """GPU-seconds attained by `now` (same expression as the Rust)."""
        if self.running:
            return self.attained + self.rate * (now - self.since)
        return self.attained


class Las:
    """Thresholds and the model of live jobs, by id.

    Rust keeps the jobs in a `BTreeMap`; a dict (insertion order) is enough
    here because nothing depends on the iteration order: the ranking is
    sorted by (queue, id), and the rest are order-free scans (`any`, the
    earliest crossing, whose candidates are all strictly after `now`).
    """

    def __init__(self, thresholds: List[float]) -> None:
        self.thresholds = thresholds
        self.jobs: Dict[int, Job] = {}
        self.capacity: Optional[int] = None  # online GPUs; recounted after a GPU change

    def queue(self, attained: float) -> int:
        """How many thresholds `attained` GPU-seconds reached. The thresholds
        ascend, so stop at the first one not reached; the count equals
        Rust's `filter(|t| attained >= t).count()` (NaN reaches none)."""
        q = 0
        for t in self.thresholds:
            if attained >= t:
                q += 1
            else:
                break
        return q

    def note(self, job: JobInfo, now: float) -> None:
        """Bring the model in line with a job's record, as of `now`."""
        state = job.state
        if state == JobState.PENDING or state == JobState.SUSPENDED:
            self.jobs[job.id] = Job(
                job.gpus_requested,
                job.attained_gpu_seconds,
                now,
                0.0,
                False,
                state == JobState.SUSPENDED,
                [],
            )
        elif state == JobState.RUNNING:
            gpus = len(job.placement)
            self.jobs[job.id] = Job(
                gpus,
                job.attained_gpu_seconds,
                now,
                float(gpus) * job.fraction,
                True,
                True,
                list(job.placement),
            )
        else:  # finished or failed
            self.jobs.pop(job.id, None)

    def refresh(self, view: ClusterView, id: int, now: float) -> None:
        """Re-read one job from the host (after the host suspended it, or
        refused an action about it)."""
        job = view.job(id)
        if job is not None:
            self.note(job, now)
        else:
            self.jobs.pop(id, None)

    def next_crossing(self, now: float) -> Optional[float]:
        """The earliest time a running job reaches its next threshold, while
        anything waits (otherwise no reason to wake up)."""
        jobs = self.jobs.values()
        if all(j.running for j in jobs):
            return None
        thresholds = self.thresholds
        earliest: Optional[float] = None
        for job in jobs:
            if not job.running or job.rate <= 0.0:
                continue
            attained = job.attained_at(now)
            q = self.queue(attained)
            if q >= len(thresholds):
                continue  # in the last queue: never moves down
            at = now + (thresholds[q] - attained) / job.rate
            if earliest is None or at < earliest:
                earliest = at
        return earliest

    def decide(self, view: ClusterView, events: List[Event]) -> Decision:
        now = view.now()
        for event in events:
            match event:
                case Event_JobArrived(value=job):
                    self.note(job, now)
                case Event_JobFinished(value=id):
                    self.jobs.pop(id, None)
                case Event_JobFailed(value=(id, _)):
                    self.jobs.pop(id, None)
                case Event_JobPreempted(value=id):
                    self.refresh(view, id, now)
                case Event_ActionRejected(value=r):
                    log(Level.WARN, f"las: action rejected: {r.reason}")
                    self.refresh(view, r.job, now)
                case Event_GpuChanged():
                    self.capacity = None
                case Event_Tick():
                    pass

        capacity = self.capacity
        if capacity is None:
            capacity = sum(1 for g in view.gpus() if g.online)
            self.capacity = capacity
        actions: List[Action] = []
        jobs = self.jobs
        if all(j.running for j in jobs.values()):
            return Decision(actions, None)

        queue = self.queue
        ranking: List[Tuple[int, int]] = [(queue(job.attained_at(now)), id) for id, job in jobs.items()]
        ranking.sort()
        cap = capacity
        admit: List[int] = []
        victims: List[int] = []
        for _, id in ranking:
            job = jobs[id]
            if job.gpus > 0 and job.gpus <= cap:
                cap -= job.gpus
                if not job.running:
                    admit.append(id)
            elif job.running:
                victims.append(id)
        if not admit:
            return Decision(actions, self.next_crossing(now))

        free = view.free_gpus()
        for id in victims:
            actions.append(Action_Preempt(id))
            job = jobs[id]
            job.attained = job.attained_at(now)
            job.running = False
            job.rate = 0.0
            free.extend(job.placement)
            job.placement = []
        free.sort()
        for id in admit:
            job = jobs[id]
            gpus = take_gpus(free, job.gpus)
            if gpus is None:
                continue  # not actually free (shared GPUs): try next time
            placement = Placement(id, gpus)
            actions.append(Action_Resume(placement) if job.started else Action_Start(placement))
            job.running = True
            job.started = True
            job.since = now
            job.rate = float(job.gpus)
            job.placement = list(gpus)  # a copy: the host gets `gpus` in the placement
        return Decision(actions, self.next_crossing(now))


# Rust's `f64::from_str` grammar: an optional sign, then inf / infinity / nan
# (any case) or decimal digits with an optional point and exponent. Python's
# `float()` accepts more (underscores, non-ASCII digits), so check first.
_RUST_F64 = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)",
    re.IGNORECASE | re.ASCII,
)


def parse_config(config: str) -> List[float]:
    """The thresholds, or an `Err` with the Rust policy's message."""
    config = rust_trim(config)
    if config == "":
        return [3600.0, 36000.0]
    if not config.startswith("thresholds="):
        raise Err(f"las: unknown configuration `{config}` (expected thresholds=A,B,...)")
    thresholds: List[float] = []
    for item in config[len("thresholds=") :].split(","):
        text = rust_trim(item)
        if _RUST_F64.fullmatch(text) is None:
            raise Err(f"las: thresholds: `{item}` is not a number")
        t = float(text)
        if not (math.isfinite(t) and t > 0.0):
            raise Err(f"las: thresholds: `{item}` must be positive")
        if thresholds and t <= thresholds[-1]:
            raise Err("las: thresholds must be strictly ascending")
        thresholds.append(t)
    return thresholds


# The component's state: the host calls `init` once, then `decide` many times.
_policy: Optional[Las] = None


class Policy(exports.Policy):
    """The exported `policy` interface of `wit/policy.wit` (componentize-py
    looks for a class named after the interface)."""

    def init(self, config: str) -> PolicyInfo:
        global _policy
        _policy = Las(parse_config(config))
        return PolicyInfo("las", None)

    def decide(self, view: ClusterView, events: List[Event]) -> Decision:
        if _policy is None:
            # The host always calls init first; answer nothing rather than trap.
            return Decision([], None)
        return _policy.decide(view, events)

    def snapshot(self) -> Optional[bytes]:
        return None

    def restore(self, state: bytes) -> None:
        if _policy is None:
            raise Err("restore called before init")
        raise Err("this policy does not restore state")
