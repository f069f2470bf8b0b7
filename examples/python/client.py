#!/usr/bin/env python3
"""A Python client for `wsched serve`, talking gRPC through stubs generated
from proto/wsched/v1/scheduler.proto.

It shows the three things a client usually does:

  1. watch: a server stream of events (Jobs.Watch), read in a background
     thread and printed one line per event;
  2. submit: synthetic jobs, half one by one (Jobs.SubmitJob) before and
     half as one all-or-none batch (Jobs.SubmitJobs, as for a sweep) after ...
  3. swap: ... loading a policy plugin (Policies.LoadPolicy) and making it the
     active policy while the first jobs run (Policies.SwapPolicy);

then it waits for every job to end (Jobs.GetJob) and prints a summary.

Set up once (a venv with grpcio in target/venv-grpc, stubs in
target/python-stubs), start a server, run:

    examples/python/setup.sh
    ./target/release/wsched serve &
    target/venv-grpc/bin/python examples/python/client.py --policy target/plugins/las.wasm

Exit status: 0 when every job finished, 1 when a job failed, the wait timed
out or a call failed, 2 for a usage or setup problem.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

# --- Finding the generated stubs ---------------------------------------------
# setup.sh generates them into target/python-stubs at the repository root;
# this file is examples/python/client.py, so the root is two folders up.
REPO_ROOT = Path(__file__).resolve().parents[2]
STUBS = REPO_ROOT / "target" / "python-stubs"

if not (STUBS / "wsched" / "v1" / "scheduler_pb2_grpc.py").is_file():
    print(f"error: no generated stubs in {STUBS}: run examples/python/setup.sh first", file=sys.stderr)
    sys.exit(2)
sys.path.insert(0, str(STUBS))
try:
    import grpc
    from wsched.v1 import scheduler_pb2 as pb
    from wsched.v1 import scheduler_pb2_grpc as pb_grpc
except ImportError as e:
    print(f"error: {e}: run examples/python/setup.sh first, then run this script with "
          "target/venv-grpc/bin/python", file=sys.stderr)
    sys.exit(2)

CALL_TIMEOUT = 10.0  # seconds, for each ordinary call
LOAD_TIMEOUT = 120.0  # LoadPolicy compiles the plugin, which can take a while
USER = "python-example"


class CallFailed(Exception):
    """A gRPC call failed; carries which call, for the error message."""

    def __init__(self, call, error):
        super().__init__(call)
        self.call = call
        self.error = error


def call(name, fn, *args, **kwargs):
    """Run one RPC, turning a grpc.RpcError into a CallFailed naming it."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise CallFailed(name, e) from None


# --- Output ------------------------------------------------------------------
# The watcher thread and the main thread both print; a lock keeps lines whole.
# With --json, progress goes to stderr so that stdout holds only the JSON.
_print_lock = threading.Lock()
_out = sys.stdout


def say(line):
    with _print_lock:
        print(line, file=_out, flush=True)


def err(line):
    """Errors always go to stderr."""
    with _print_lock:
        print(line, file=sys.stderr, flush=True)


def state_name(state):
    """JOB_STATE_RUNNING -> RUNNING."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


def clock(t):
    """Epoch seconds -> local HH:MM:SS.mmm."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def jct(job):
    """Job completion time (end - submit) in seconds, or None if not ended."""
    return job.end_time - job.submit_time if job.HasField("end_time") else None


def format_event(ev):
    """One line for an Event; `kind` is a oneof: job, policy, gpu or job_deleted."""
    kind = ev.WhichOneof("kind")
    head = f"  event {clock(ev.time)}"
    if kind == "job":
        j = ev.job
        line = f"{head} job {j.id:<4} {state_name(j.state):<9} {j.spec.name} ({j.spec.gpus} GPU)"
        if j.placement:
            line += f" on GPUs {list(j.placement)}"
        if j.HasField("progress"):
            line += f" progress {j.progress:.0%}"
        if jct(j) is not None:
            line += f" jct {jct(j):.2f}s"
        if j.failure:
            line += f" failure: {j.failure}"
        return line
    if kind == "policy":
        p = ev.policy
        # `from` is a Python keyword, hence getattr.
        handed = "yes" if p.state_handed_over else "no"
        return f"{head} policy {getattr(p, 'from')} -> {p.to} ({p.reason}, state handed over: {handed})"
    if kind == "gpu":
        return f"{head} gpu {ev.gpu.gpu} {'online' if ev.gpu.online else 'offline'}"
    if kind == "job_deleted":
        return f"{head} job {ev.job_deleted:<4} deleted (retention time over)"
    return f"{head} (unknown event kind)"


# --- Watching events ---------------------------------------------------------
def start_watcher(jobs_stub):
    """Open Jobs.Watch and print its events from a daemon thread.

    Returns the call (cancel it to stop) once the server has accepted the
    stream, so that no event of the jobs submitted afterwards is missed.
    """
    stream = jobs_stub.Watch(pb.WatchRequest(include_current=False))
    ready = threading.Event()

    def run():
        try:
            # The server sends its headers once it is subscribed to events.
            stream.initial_metadata()
            ready.set()
            for ev in stream:
                say(format_event(ev))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:  # CANCELLED: we stopped it
                say(f"  watch stream ended: {e.code().name}: {e.details()}")
        finally:
            ready.set()

    threading.Thread(target=run, name="watch", daemon=True).start()
    if not ready.wait(CALL_TIMEOUT):
        say("  (watch stream not confirmed yet; continuing)")
    return stream


# --- Policy ------------------------------------------------------------------
def resolve_policy(policy, name):
    """What to swap to: (name, wasm bytes) for a .wasm file, (name, None) for
    a policy the server already knows ("builtin-fifo" or a loaded plugin).
    Done before anything is submitted, so a typo fails early."""
    path = Path(policy)
    if path.is_file():
        return name or path.stem, path.read_bytes()
    if path.suffix == ".wasm" or os.sep in policy:
        raise FileNotFoundError(f"--policy {policy}: no such file (build the plugins with scripts/build-plugins.sh)")
    return name or policy, None


def load_and_swap(policies, auth, name, wasm, config):
    """Load the plugin bytes (if any) under `name`, then swap to `name`."""
    if wasm is not None:
        # Loading under the name of the active policy fails (the server asks
        # for a new name), so skip the load when these bytes are loaded already.
        listed = call("ListPolicies", policies.ListPolicies, pb.ListPoliciesRequest(), timeout=CALL_TIMEOUT)
        digest = hashlib.sha256(wasm).hexdigest()
        if any(p.name == name and p.sha256 == digest for p in listed.policies):
            say(f"policy {name!r} is already loaded with these bytes; not loading it again")
        else:
            loaded = call(
                "LoadPolicy",
                policies.LoadPolicy,
                pb.LoadPolicyRequest(name=name, wasm=wasm),  # `source` oneof: wasm bytes
                metadata=auth,
                timeout=LOAD_TIMEOUT,
            )
            say(f"loaded {loaded.name!r} (plugin {loaded.plugin_name!r}, {loaded.size_bytes} bytes, "
                f"sha256 {loaded.sha256[:12]}...)")
    resp = call(
        "SwapPolicy",
        policies.SwapPolicy,
        pb.SwapPolicyRequest(name=name, config=config),
        metadata=auth,
        timeout=CALL_TIMEOUT,
    )
    # `from` is a Python keyword, hence getattr.
    say(f"SwapPolicyResponse: from={getattr(resp, 'from')!r} to={resp.to!r} "
        f"state_handed_over={resp.state_handed_over}")
    return resp


# --- Jobs --------------------------------------------------------------------
def job_spec(i, seconds):
    """Synthetic job number i: `seconds` of work on 1 or 2 GPUs."""
    return pb.JobSpec(
        name=f"py-{i}",
        user=USER,
        gpus=1 + i % 2,
        synthetic=pb.Synthetic(seconds=seconds),  # sets the `work` oneof
        expected_duration_seconds=seconds,  # lets SJF-like policies plan
    )


def submit(jobs_stub, auth, i, seconds):
    """Submit synthetic job number i on its own; its id."""
    spec = job_spec(i, seconds)
    resp = call("SubmitJob", jobs_stub.SubmitJob, pb.SubmitJobRequest(spec=spec), metadata=auth, timeout=CALL_TIMEOUT)
    say(f"submitted job {resp.id} (py-{i}, {spec.gpus} GPU, {seconds:g}s)")
    return resp.id


def submit_batch(jobs_stub, auth, indices, seconds):
    """Submit several synthetic jobs in one call, all or none; their ids."""
    specs = [job_spec(i, seconds) for i in indices]
    if not specs:
        return []
    resp = call("SubmitJobs", jobs_stub.SubmitJobs, pb.SubmitJobsRequest(specs=specs), metadata=auth,
                timeout=CALL_TIMEOUT)
    say(f"submitted jobs {', '.join(map(str, resp.ids))} in one batch")
    return list(resp.ids)


def wait_for(jobs_stub, ids, timeout):
    """Poll GetJob until every job is FINISHED or FAILED, or `timeout` passes.

    (The events carry the same information; polling keeps this independent of
    the watch stream.) Returns the last Job of each id, in order."""
    ended = {pb.JOB_STATE_FINISHED, pb.JOB_STATE_FAILED}
    last = {}
    deadline = time.monotonic() + timeout
    while True:
        for i in ids:
            if i not in last or last[i].state not in ended:
                last[i] = call("GetJob", jobs_stub.GetJob, pb.GetJobRequest(id=i), timeout=CALL_TIMEOUT)
        if all(last[i].state in ended for i in ids) or time.monotonic() >= deadline:
            return [last[i] for i in ids]
        time.sleep(0.5)


def summary_rows(jobs):
    rows = []
    for j in jobs:
        rows.append(
            {
                "id": j.id,
                "name": j.spec.name,
                "gpus": j.spec.gpus,
                "state": state_name(j.state),
                "queued_seconds": round(j.start_time - j.submit_time, 3) if j.HasField("start_time") else None,
                "jct_seconds": round(jct(j), 3) if jct(j) is not None else None,
                "preemptions": j.preemptions,
                "failure": j.failure,
            }
        )
    return rows


def print_table(rows):
    def num(v):
        return "-" if v is None else f"{v:.2f}"

    fmt = "{:>5}  {:<6} {:>4}  {:<9} {:>8} {:>8} {:>6}  {}"
    say(fmt.format("id", "name", "gpus", "state", "queued_s", "jct_s", "preempt", "failure"))
    for r in rows:
        say(fmt.format(r["id"], r["name"], r["gpus"], r["state"], num(r["queued_seconds"]), num(r["jct_seconds"]), r["preemptions"], r["failure"]))


# --- Arguments ---------------------------------------------------------------
def default_state_dir():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "wsched")


def parse_args():
    ap = argparse.ArgumentParser(
        description="Submit synthetic jobs to `wsched serve`, swap the policy mid-run, watch the events.",
    )
    ap.add_argument("--state-dir", default=default_state_dir(),
                    help="the server's state directory, for serve.addr and token (default: %(default)s)")
    ap.add_argument("--server", help="server address HOST:PORT (default: $WSCHED_SERVER, "
                    "else STATE_DIR/serve.addr, else 127.0.0.1:50051)")
    ap.add_argument("--token", help="bearer token for changes (default: $WSCHED_TOKEN, else STATE_DIR/token)")
    ap.add_argument("--policy", default=str(REPO_ROOT / "target" / "plugins" / "las.wasm"),
                    help="plugin .wasm to load and swap to mid-run, or the name of a policy the server "
                    "already has, e.g. builtin-fifo (default: target/plugins/las.wasm)")
    ap.add_argument("--policy-name", help="name to load the plugin under (default: the file name without .wasm)")
    ap.add_argument("--policy-config", default="", help="config string for the plugin's init (default: empty)")
    ap.add_argument("--jobs", type=int, default=6, help="synthetic jobs to submit (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each synthetic job (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for all jobs to end (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (progress goes to stderr)")
    args = ap.parse_args()
    if args.jobs < 1 or args.seconds <= 0 or args.timeout <= 0:
        ap.error("--jobs must be at least 1, --seconds and --timeout positive")
    return args


def read_file(path):
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def main():
    global _out
    args = parse_args()
    if args.json:
        _out = sys.stderr

    try:
        policy_name, wasm = resolve_policy(args.policy, args.policy_name)
    except OSError as e:
        err(f"error: {e}")
        return 2

    state_dir = Path(args.state_dir).expanduser()
    addr = (args.server or os.environ.get("WSCHED_SERVER")
            or read_file(state_dir / "serve.addr") or "127.0.0.1:50051")
    token = args.token or os.environ.get("WSCHED_TOKEN") or read_file(state_dir / "token")
    if not token:
        err(f"error: no token: pass --token, set WSCHED_TOKEN, or point --state-dir at the server's "
            f"state directory ({state_dir / 'token'} not found)")
        return 2
    # Every mutating call carries this metadata; reads need none.
    auth = (("authorization", f"Bearer {token}"),)

    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
    except grpc.FutureTimeoutError:
        err(f"error: cannot reach a wsched server at {addr} (is `wsched serve` running? see --server, --state-dir)")
        return 1
    jobs_stub = pb_grpc.JobsStub(channel)
    policies = pb_grpc.PoliciesStub(channel)
    cluster = pb_grpc.ClusterStub(channel)

    watch = None
    try:
        c = call("GetCluster", cluster.GetCluster, pb.GetClusterRequest(), timeout=CALL_TIMEOUT)
        say(f"connected to {addr}: {len(c.gpus)} {c.backend} GPUs, active policy {c.policy!r}")
        if wasm is None:  # swapping by name: check the server has it
            listed = call("ListPolicies", policies.ListPolicies, pb.ListPoliciesRequest(), timeout=CALL_TIMEOUT)
            if policy_name not in {p.name for p in listed.policies}:
                err(f"error: --policy {policy_name}: not a file, and the server has no policy of that name "
                    f"(it has: {', '.join(p.name for p in listed.policies)})")
                return 2

        watch = start_watcher(jobs_stub)

        first = (args.jobs + 1) // 2
        ids = [submit(jobs_stub, auth, i, args.seconds) for i in range(first)]
        # Let the first jobs start, so that the swap happens mid-run.
        time.sleep(min(1.0, args.seconds / 2))
        swap = load_and_swap(policies, auth, policy_name, wasm, args.policy_config)
        ids += submit_batch(jobs_stub, auth, range(first, args.jobs), args.seconds)

        say(f"waiting for {len(ids)} jobs (at most {args.timeout:g}s)...")
        jobs = wait_for(jobs_stub, ids, args.timeout)
    except CallFailed as f:
        code = f.error.code()
        err(f"error: {f.call} failed: {code.name}: {f.error.details()}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            err("  (check --token / WSCHED_TOKEN: the server's token is in its STATE_DIR/token)")
        return 1
    finally:
        if watch is not None:
            time.sleep(0.2)  # let the watcher print the last events
            watch.cancel()

    rows = summary_rows(jobs)
    finished = sum(r["state"] == "FINISHED" for r in rows)
    all_finished = finished == len(rows)
    say("")
    if args.json:
        print(json.dumps({
            "server": addr,
            "swap": {"from": getattr(swap, "from"), "to": swap.to, "state_handed_over": swap.state_handed_over},
            "jobs": rows,
            "all_finished": all_finished,
        }, indent=2))
    else:
        print_table(rows)
    if not all_finished:
        ended = sum(r["state"] in ("FINISHED", "FAILED") for r in rows)
        if ended < len(rows):
            err(f"error: timed out after {args.timeout:g}s: {len(rows) - ended} of {len(rows)} jobs still live")
        err(f"error: {len(rows) - finished} of {len(rows)} jobs did not finish")
        return 1
    say(f"all {len(rows)} jobs finished")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; jobs already submitted keep running on the server "
              "(`wsched job cancel ID` cancels one)", file=sys.stderr)
        sys.exit(130)
