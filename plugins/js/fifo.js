// Strict FIFO in JavaScript: a port of plugins/fifo/src/policy.rs, line for
// line, so that both give byte-identical replays.
//
// Waiting jobs (pending, or suspended by the host) are kept in id order (ids
// grow with submission order) with the gang size each needs. On every call
// the oldest waiting job is placed on the lowest-numbered free GPUs, then the
// next, until one does not fit: that job blocks every job behind it, even
// ones that would fit (head-of-line blocking is what makes it strict FIFO).

import { OrderedMap, rustTrim, takeGpus, toArray, warn } from './common.js';
// Entry module only: componentize-js binds WIT imports here (see common.js).
import { log, logEnabled } from 'wsched:policy/host@0.1.0';

const host = { log, logEnabled };

/// The policy's state; `null` until `init` (the host always calls it first).
let state = null;

function init(config) {
  if (rustTrim(config) !== '') {
    // A thrown string becomes the `err` of `result<policy-info, string>`.
    throw `fifo takes no configuration, got \`${config}\``;
  }
  // id (BigInt) -> { gpus, state } for jobs waiting to start or resume.
  state = { waiting: new OrderedMap() };
  return { name: 'fifo', tickInterval: undefined };
}

function decide(view, events) {
  if (state === null) {
    // As the Rust SDK does: answer nothing rather than trap.
    return { actions: [], wakeup: undefined };
  }
  const waiting = state.waiting;
  for (const event of events) {
    switch (event.tag) {
      case 'job-arrived': {
        const job = event.val;
        if (job.state === 'pending' || job.state === 'suspended') {
          waiting.set(job.id, { gpus: job.gpusRequested, state: job.state });
        } else {
          waiting.delete(job.id);
        }
        break;
      }
      case 'job-finished':
        waiting.delete(event.val);
        break;
      case 'job-failed':
        waiting.delete(event.val[0]);
        break;
      case 'action-rejected':
        warn(host, `fifo: action rejected: ${event.val.reason}`);
        break;
      case 'job-preempted': {
        // The host suspended it (its GPU went away): it waits again, in
        // whatever state the host now reports.
        const job = view.job(event.val);
        if (job !== undefined) {
          waiting.set(job.id, { gpus: job.gpusRequested, state: job.state });
        }
        break;
      }
      default: // tick, gpu-changed: nothing to fold in
        break;
    }
  }
  const actions = [];
  if (waiting.size === 0) {
    return { actions, wakeup: undefined };
  }
  // Lowest id first (the host's order), as an Array we can take from.
  const free = toArray(view.freeGpus());
  const ids = waiting.keys;
  const jobs = waiting.vals;
  let started = 0;
  while (started < ids.length) {
    const id = ids[started];
    const job = jobs[started];
    const gpus = takeGpus(free, job.gpus);
    if (gpus === undefined) {
      break; // head-of-line blocking
    }
    const placement = { job: id, gpus };
    actions.push(
      job.state === 'suspended'
        ? { tag: 'resume', val: placement }
        : { tag: 'start', val: placement },
    );
    started += 1;
  }
  // One splice for all the jobs placed rather than one per job.
  waiting.dropFirst(started);
  return { actions, wakeup: undefined };
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
