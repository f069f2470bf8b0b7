#!/usr/bin/env python3
# Copied from the project's shared tools (../shared/tools/ref_fifo.py),
# unchanged but for this header: an independent strict-FIFO replay written
# outside this code base. The
# scale benchmark (host/benches/scale.rs) uses it as a correctness
# reference and as a speed floor.
"""Independent reference for strict-FIFO replay of a Philly-style trace.

Semantics (the replay rules of the README):
- jobs sorted by submit time, ties by row order in the file;
- GPUs are fungible; a job needing more GPUs than the cluster has is rejected;
- at one instant, completions free GPUs before arrivals join the queue;
- strict FIFO: the queue head starts as soon as it fits; nobody passes it;
- a job that starts at t with duration d finishes at t + d.
Prints JSON: jobs, rejected, mean/median/p99 JCT, mean queueing delay, makespan.
"""
import csv, heapq, json, sys
from datetime import datetime


def load(path):
    jobs = []
    with open(path) as f:
        for i, r in enumerate(csv.DictReader(f)):
            t = datetime.strptime(r["timestamp"], "%Y-%m-%d %H:%M:%S").timestamp()
            jobs.append((t, i, float(r["duration"]), int(r["num_gpus"])))
    jobs.sort()
    t0 = jobs[0][0]
    return [(t - t0, i, d, g) for t, i, d, g in jobs]


def simulate(jobs, gpus):
    free = gpus
    queue, running, done, rejected = [], [], [], 0
    qi = 0  # head of queue in list form
    arrivals = iter(jobs)
    nxt = next(arrivals, None)
    now = 0.0
    while nxt is not None or running or qi < len(queue):
        t_arr = nxt[0] if nxt is not None else float("inf")
        t_fin = running[0][0] if running else float("inf")
        now = min(t_arr, t_fin)
        while running and running[0][0] == now:
            _, g, sub, start = heapq.heappop(running)
            free += g
            done.append((now - sub, start - sub))
        while nxt is not None and nxt[0] == now:
            if nxt[3] > gpus:
                rejected += 1
            else:
                queue.append(nxt)
            nxt = next(arrivals, None)
        while qi < len(queue) and queue[qi][3] <= free:
            sub, _, d, g = queue[qi]
            qi += 1
            free -= g
            heapq.heappush(running, (now + d, g, sub, now))
    jct = sorted(j for j, _ in done)
    n = len(jct)
    return {
        "jobs": n,
        "rejected": rejected,
        "mean_jct_s": sum(jct) / n,
        "median_jct_s": jct[n // 2] if n % 2 else (jct[n // 2 - 1] + jct[n // 2]) / 2,
        "p99_jct_s": jct[min(n - 1, int(0.99 * n))],
        "mean_queue_s": sum(q for _, q in done) / n,
        "makespan_s": now,
    }


if __name__ == "__main__":
    path, gpus = sys.argv[1], int(sys.argv[2])
    print(json.dumps(simulate(load(path), gpus)))
