#!/usr/bin/env python3
"""Event-exact strict FIFO on a Gavel .trace, homogeneous cluster.

Not Gavel code: a small cross-check of what a simulator without rounds gives
on the same jobs. Each job runs for total_steps / throughput, where the
throughput is Gavel's simulation_throughputs.json entry
[worker_type][(job_type, scale_factor)]['null'] (steps/s of the whole job on
scale_factor GPUs). GPUs are fungible; at one instant completions free GPUs
before arrivals join the queue; the queue head starts as soon as it fits and
nobody passes it (no backfilling), no preemption.

Usage: exact_fifo.py TRACE NUM_GPUS [THROUGHPUTS_JSON] [WORKER_TYPE]
Prints the average JCT in seconds on the last line.
"""
import heapq
import json
import sys


def load_throughputs(path, worker_type):
    with open(path) as f:
        raw = json.load(f)[worker_type]
    out = {}
    for key, v in raw.items():
        # key looks like "('ResNet-50 (batch size 64)', 4)"
        model, sf = key[2:-1].rsplit("', ", 1)
        out[(model, int(sf))] = v["null"]
    return out


def main():
    trace, gpus = sys.argv[1], int(sys.argv[2])
    tp_file = sys.argv[3] if len(sys.argv) > 3 else "simulation_throughputs.json"
    wt = sys.argv[4] if len(sys.argv) > 4 else "v100"
    tp = load_throughputs(tp_file, wt)
    jobs = []
    with open(trace) as f:
        for i, line in enumerate(f):
            c = line.rstrip("\n").split("\t")
            job_type, total_steps, sf, arrival = c[0], int(c[5]), int(c[6]), float(c[9])
            jobs.append((arrival, i, total_steps / tp[(job_type, sf)], sf))
    jobs.sort()
    free, queue, running, jct = gpus, [], [], []
    nxt = 0
    while nxt < len(jobs) or queue or running:
        t_arr = jobs[nxt][0] if nxt < len(jobs) else float("inf")
        t_fin = running[0][0] if running else float("inf")
        now = min(t_arr, t_fin)
        while running and running[0][0] == now:
            _, g, arr = heapq.heappop(running)
            free += g
            jct.append(now - arr)
        while nxt < len(jobs) and jobs[nxt][0] == now:
            queue.append(jobs[nxt])
            nxt += 1
        while queue and queue[0][3] <= free:
            arr, _, d, g = queue.pop(0)
            free -= g
            heapq.heappush(running, (now + d, g, arr))
    print("jobs: %d, makespan: %.3f s" % (len(jct), now))
    print("%.3f" % (sum(jct) / len(jct)))


if __name__ == "__main__":
    main()
