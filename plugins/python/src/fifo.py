"""Strict first-in-first-out, in Python: a line-for-line port of
`plugins/fifo/src/policy.rs`.

Jobs start in submission order; the oldest waiting job that does not fit
blocks every job behind it, even ones that would fit (no backfilling).
Suspended jobs (left by a previous policy after a hot swap) wait in the same
queue by submission order and are resumed rather than started.

Build: `plugins/python/build.sh` (-> target/plugins/py-fifo.wasm).
"""

from bisect import bisect_left, insort
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.host import ClusterView
from wit_world.imports.types import (
    Action,
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
    JobState,
    Level,
    Placement,
    PolicyInfo,
)

from wsched_util import log, rust_trim, take_gpus


class Fifo:
    """The FIFO model: the waiting jobs by id (ids grow with submission
    order), each with the gang size it needs and its state.

    Rust keeps them in a `BTreeMap`; here a dict gives the lookups and a
    sorted list of ids gives the order. Ids almost always arrive in
    ascending order, so `insort` appends at the end; only a job the host
    suspended itself lands in the middle.
    """

    def __init__(self) -> None:
        self.waiting: Dict[int, Tuple[int, JobState]] = {}
        self.order: List[int] = []  # the keys of `waiting`, ascending

    def _insert(self, id: int, gpus: int, state: JobState) -> None:
        if id not in self.waiting:
            insort(self.order, id)
        self.waiting[id] = (gpus, state)

    def _remove(self, id: int) -> None:
        if self.waiting.pop(id, None) is not None:
            del self.order[bisect_left(self.order, id)]

    def decide(self, view: ClusterView, events: List[Event]) -> Decision:
        for event in events:
            match event:
                case Event_JobArrived(value=job):
                    if job.state == JobState.PENDING or job.state == JobState.SUSPENDED:
                        self._insert(job.id, job.gpus_requested, job.state)
                    else:
                        self._remove(job.id)
                case Event_JobFinished(value=id):
                    self._remove(id)
                case Event_JobFailed(value=(id, _)):
                    self._remove(id)
                case Event_ActionRejected(value=r):
                    log(Level.WARN, f"fifo: action rejected: {r.reason}")
                case Event_JobPreempted(value=id):
                    info = view.job(id)
                    if info is not None:
                        self._insert(info.id, info.gpus_requested, info.state)
                case Event_Tick() | Event_GpuChanged():
                    pass

        actions: List[Action] = []
        if not self.waiting:
            return Decision(actions, None)
        free = view.free_gpus()
        order = self.order
        head = 0  # the next waiting job; popped from `order` in one go below
        while head < len(order):
            id = order[head]
            gpus, state = self.waiting[id]
            placement = take_gpus(free, gpus)
            if placement is None:
                break  # head-of-line blocking
            p = Placement(id, placement)
            actions.append(Action_Resume(p) if state == JobState.SUSPENDED else Action_Start(p))
            del self.waiting[id]
            head += 1
        del order[:head]
        return Decision(actions, None)


# The component's state: the host calls `init` once, then `decide` many times.
_policy: Optional[Fifo] = None


class Policy(exports.Policy):
    """The exported `policy` interface of `wit/policy.wit` (componentize-py
    looks for a class named after the interface)."""

    def init(self, config: str) -> PolicyInfo:
        global _policy
        if rust_trim(config) != "":
            raise Err(f"fifo takes no configuration, got `{config}`")
        _policy = Fifo()
        return PolicyInfo("fifo", None)

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
