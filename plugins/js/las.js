// Discretised two-dimensional least-attained-service (2D-LAS), preempting,
// in JavaScript: a port of plugins/las/src/lib.rs (whose module doc explains
// the algorithm; the Rust code is authoritative). Same config, same ranking,
// same float expressions in the same order, same GPU choice, so that both
// give byte-identical replays.
//
// On every decision: fold the events into the model of live jobs; if nothing
// waits, stop; rank live jobs by (queue, id), the queue being how many
// thresholds their attained GPU-seconds reached; walk the ranking with the
// online GPU count as capacity, admitting waiting jobs that fit and marking
// running ones that no longer fit as victims; if anything is admitted,
// preempt the victims and start or resume the admitted on the
// lowest-numbered free GPUs; while anything waits, ask to be woken when the
// first running job reaches its next threshold.

import {
  OrderedMap,
  byNumber,
  parseRustF64,
  rustTrim,
  takeGpus,
  warn,
} from './common.js';
// Entry module only: componentize-js binds WIT imports here (see common.js).
import { log, logEnabled } from 'wsched:policy/host@0.1.0';

const host = { log, logEnabled };

/// The policy's state; `null` until `init` (the host always calls it first).
let state = null;

/// `Las::parse_config`: thresholds in GPU-seconds, or a thrown message.
function parseConfig(raw) {
  const config = rustTrim(raw);
  if (config === '') {
    return [3600.0, 36000.0];
  }
  if (!config.startsWith('thresholds=')) {
    throw `las: unknown configuration \`${config}\` (expected thresholds=A,B,...)`;
  }
  const list = config.slice('thresholds='.length);
  const thresholds = [];
  for (const item of list.split(',')) {
    const t = parseRustF64(rustTrim(item));
    if (t === undefined) {
      throw `las: thresholds: \`${item}\` is not a number`;
    }
    if (!(Number.isFinite(t) && t > 0.0)) {
      throw `las: thresholds: \`${item}\` must be positive`;
    }
    if (thresholds.length > 0 && t <= thresholds[thresholds.length - 1]) {
      throw 'las: thresholds must be strictly ascending';
    }
    thresholds.push(t);
  }
  return thresholds;
}

/// GPU-seconds a job has attained by `now`. The same expression, in the same
/// order, as `Job::attained_at`: f64 arithmetic is then bit-identical.
function attainedAt(job, now) {
  if (job.running) {
    return job.attained + job.rate * (now - job.since);
  }
  return job.attained;
}

/// The queue for `attained` GPU-seconds: how many thresholds it reached.
function queueOf(thresholds, attained) {
  let q = 0;
  for (let i = 0; i < thresholds.length; i++) {
    if (attained >= thresholds[i]) {
      q += 1;
    }
  }
  return q;
}

/// The model of live jobs, by id: `Las::jobs` plus a count of the waiting
/// ones, so that "does anything wait?" (asked up to twice a call) is O(1)
/// instead of a walk over every job.
class Jobs extends OrderedMap {
  constructor() {
    super();
    this.waiting = 0;
  }

  set(id, job) {
    const old = this.get(id);
    if (old !== undefined && !old.running) {
      this.waiting -= 1;
    }
    if (!job.running) {
      this.waiting += 1;
    }
    super.set(id, job);
  }

  delete(id) {
    const old = this.get(id);
    if (old !== undefined && !old.running) {
      this.waiting -= 1;
    }
    super.delete(id);
  }

  /// Whether every live job runs (nothing waits).
  allRunning() {
    return this.waiting === 0;
  }
}

/// Bring the model in line with a job's record (`Las::note`), as of `now`.
function note(jobs, job, now) {
  switch (job.state) {
    case 'pending':
    case 'suspended':
      jobs.set(job.id, {
        id: job.id,
        gpus: job.gpusRequested, // GPUs needed (waiting) or held (running)
        attained: job.attainedGpuSeconds, // as of `since` (running) or in total
        since: now, // when last started or resumed (running only)
        rate: 0.0, // GPU-seconds per second while running: GPUs x share
        running: false,
        started: job.state === 'suspended', // resumes rather than starts
        placement: [], // GPUs held (running only)
      });
      break;
    case 'running': {
      const placement = Array.from(job.placement);
      const gpus = placement.length;
      jobs.set(job.id, {
        id: job.id,
        gpus,
        attained: job.attainedGpuSeconds,
        since: now,
        rate: gpus * job.fraction,
        running: true,
        started: true,
        placement,
      });
      break;
    }
    default: // finished, failed
      jobs.delete(job.id);
      break;
  }
}

/// Re-read one job from the host (after the host suspended it, or refused an
/// action about it).
function refresh(jobs, view, id, now) {
  const job = view.job(id);
  if (job !== undefined) {
    note(jobs, job, now);
  } else {
    jobs.delete(id);
  }
}

/// The earliest time a running job reaches its next threshold, while anything
/// waits (otherwise no reason to wake up); `undefined` for none.
function nextCrossing(thresholds, jobs, now) {
  if (jobs.allRunning()) {
    return undefined;
  }
  let earliest;
  const all = jobs.vals;
  for (let i = 0; i < all.length; i++) {
    const job = all[i];
    if (!job.running || job.rate <= 0.0) {
      continue;
    }
    const attained = attainedAt(job, now);
    const q = queueOf(thresholds, attained);
    if (q >= thresholds.length) {
      continue; // in the last queue: never moves down
    }
    const at = now + (thresholds[q] - attained) / job.rate;
    if (earliest === undefined || at < earliest) {
      earliest = at;
    }
  }
  return earliest;
}

function init(config) {
  // A thrown string becomes the `err` of `result<policy-info, string>`.
  const thresholds = parseConfig(config);
  state = {
    thresholds,
    jobs: new Jobs(), // id (BigInt) -> job, as in `note`
    capacity: undefined, // online GPUs; recounted after a GPU change
  };
  return { name: 'las', tickInterval: undefined };
}

function decide(view, events) {
  if (state === null) {
    // As the Rust SDK does: answer nothing rather than trap.
    return { actions: [], wakeup: undefined };
  }
  const { thresholds, jobs } = state;
  const now = view.now();
  for (const event of events) {
    switch (event.tag) {
      case 'job-arrived':
        note(jobs, event.val, now);
        break;
      case 'job-finished':
        jobs.delete(event.val);
        break;
      case 'job-failed':
        jobs.delete(event.val[0]);
        break;
      case 'job-preempted':
        refresh(jobs, view, event.val, now);
        break;
      case 'action-rejected':
        warn(host, `las: action rejected: ${event.val.reason}`);
        refresh(jobs, view, event.val.job, now);
        break;
      case 'gpu-changed':
        state.capacity = undefined;
        break;
      default: // tick
        break;
    }
  }
  if (state.capacity === undefined) {
    let online = 0;
    for (const gpu of view.gpus()) {
      if (gpu.online) {
        online += 1;
      }
    }
    state.capacity = online;
  }
  const capacity = state.capacity;
  const actions = [];
  if (jobs.allRunning()) {
    return { actions, wakeup: undefined };
  }

  // Rank by (queue, id). Rust sorts (queue, id) pairs; bucketing the jobs by
  // queue while walking them in id order gives the very same order in
  // O(jobs), with no BigInt comparisons.
  const buckets = [];
  for (let q = 0; q <= thresholds.length; q++) {
    buckets.push([]);
  }
  const all = jobs.vals;
  for (let i = 0; i < all.length; i++) {
    const job = all[i];
    buckets[queueOf(thresholds, attainedAt(job, now))].push(job);
  }
  let cap = capacity;
  const admit = [];
  const victims = [];
  for (let q = 0; q < buckets.length; q++) {
    const bucket = buckets[q];
    for (let i = 0; i < bucket.length; i++) {
      const job = bucket[i];
      if (job.gpus > 0 && job.gpus <= cap) {
        cap -= job.gpus;
        if (!job.running) {
          admit.push(job);
        }
      } else if (job.running) {
        victims.push(job);
      }
    }
  }
  if (admit.length === 0) {
    // Preempting without admitting anyone would only waste work.
    return { actions, wakeup: nextCrossing(thresholds, jobs, now) };
  }

  const free = Array.from(view.freeGpus());
  for (let i = 0; i < victims.length; i++) {
    const job = victims[i];
    actions.push({ tag: 'preempt', val: job.id });
    job.attained = attainedAt(job, now);
    job.running = false;
    jobs.waiting += 1;
    job.rate = 0.0;
    for (let g = 0; g < job.placement.length; g++) {
      free.push(job.placement[g]);
    }
    job.placement = [];
  }
  // Numerically: the lowest-numbered GPUs go first, as in Rust.
  free.sort(byNumber);
  for (let i = 0; i < admit.length; i++) {
    const job = admit[i];
    const gpus = takeGpus(free, job.gpus);
    if (gpus === undefined) {
      continue; // not actually free (shared GPUs): try next time
    }
    const placement = { job: job.id, gpus };
    actions.push(
      job.started
        ? { tag: 'resume', val: placement }
        : { tag: 'start', val: placement },
    );
    job.running = true;
    jobs.waiting -= 1;
    job.started = true;
    job.since = now;
    job.rate = job.gpus; // f64::from(job.gpus): GPUs held, share 1
    job.placement = gpus;
  }
  return { actions, wakeup: nextCrossing(thresholds, jobs, now) };
}

function snapshot() {
  return undefined; // nothing worth handing over: the host replays live jobs
}

function restore(_state) {
  if (state === null) {
    throw 'restore called before init';
  }
  throw 'this policy does not restore state';
}

/// The `policy` interface of world `wsched:policy/scheduler`.
export const policy = { init, decide, snapshot, restore };
