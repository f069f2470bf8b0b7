//! Discretised two-dimensional least-attained-service (2D-LAS), preempting.
//!
//! The plain, portable form of the Tiresias idea, written to be ported
//! line for line: `plugins/c`, `plugins/python` and `plugins/js` implement
//! this very algorithm, and a test checks that all four give identical
//! metrics on the bundled trace. `plugins/tiresias` is the optimised
//! Rust-only version (incremental indexes, topology-aware gangs).
//!
//! The algorithm, on every decision:
//! 1. Fold the events into the policy's own model of live jobs (GPUs,
//!    GPU-seconds attained as of `since`, running or waiting, placement).
//! 2. If nothing waits, do nothing.
//! 3. Rank every live job by (queue, id): the queue is the number of
//!    thresholds its attained GPU-seconds (2D: time x GPUs) have reached,
//!    so jobs that have received little service come first, and within a
//!    queue the older submission wins (ids grow with submission).
//! 4. Walk that ranking with the online GPU count as capacity: a job that
//!    fits keeps its GPUs (running) or is admitted (waiting); a running job
//!    that no longer fits is a victim. Waiting jobs that do not fit are
//!    skipped, so smaller ones behind them may start (backfilling).
//! 5. If nothing is admitted, preempt nobody (it would only waste work).
//!    Otherwise preempt the victims, then start or resume the admitted jobs
//!    in rank order on the lowest-numbered free GPUs.
//! 6. While anything waits, ask to be woken when the first running job
//!    reaches its next threshold, when the ranking may change.
//!
//! Configuration: empty for thresholds of 3,600 and 36,000 GPU-seconds, or
//! `thresholds=A,B,...` (GPU-seconds, positive, strictly ascending).

use std::collections::BTreeMap;
use wsched_sdk::*;

/// What the policy remembers about one live job.
#[derive(Debug, Clone)]
struct Job {
    /// GPUs the job needs (waiting) or holds (running).
    gpus: u32,
    /// GPU-seconds attained as of `since` (running) or in total (waiting).
    attained: f64,
    /// When the job last started or resumed (running only).
    since: f64,
    /// GPU-seconds gained per second while running: GPUs held x share.
    rate: f64,
    running: bool,
    /// Whether the job has run before, so that it resumes rather than starts.
    started: bool,
    /// GPUs held (running only).
    placement: Vec<GpuId>,
}

impl Job {
    /// GPU-seconds attained by `now`.
    fn attained_at(&self, now: f64) -> f64 {
        if self.running {
            self.attained + self.rate * (now - self.since)
        } else {
            self.attained
        }
    }
}

/// The LAS policy: thresholds and the model of live jobs, by id.
#[derive(Debug)]
pub struct Las {
    thresholds: Vec<f64>,
    jobs: BTreeMap<JobId, Job>,
    /// Online GPUs; recounted after a GPU change.
    capacity: Option<u32>,
}

impl Las {
    /// The queue for `attained` GPU-seconds: how many thresholds it reached.
    fn queue(&self, attained: f64) -> u32 {
        self.thresholds.iter().filter(|&&t| attained >= t).count() as u32
    }

    /// Bring the model in line with a job's record, as of `now`.
    fn note(&mut self, job: &JobInfo, now: f64) {
        match job.state {
            JobState::Pending | JobState::Suspended => {
                self.jobs.insert(
                    job.id,
                    Job {
                        gpus: job.gpus_requested,
                        attained: job.attained_gpu_seconds,
                        since: now,
                        rate: 0.0,
                        running: false,
                        started: job.state == JobState::Suspended,
                        placement: Vec::new(),
                    },
                );
            }
            JobState::Running => {
                let gpus = job.placement.len() as u32;
                self.jobs.insert(
                    job.id,
                    Job {
                        gpus,
                        attained: job.attained_gpu_seconds,
                        since: now,
                        rate: f64::from(gpus) * job.fraction,
                        running: true,
                        started: true,
                        placement: job.placement.clone(),
                    },
                );
            }
            JobState::Finished | JobState::Failed => {
                self.jobs.remove(&job.id);
            }
        }
    }

    /// Re-read one job from the host (after the host suspended it, or
    /// refused an action about it).
    fn refresh(&mut self, view: &impl View, id: JobId, now: f64) {
        match view.job(id) {
            Some(job) => self.note(&job, now),
            None => {
                self.jobs.remove(&id);
            }
        }
    }

    /// The earliest time a running job reaches its next threshold, while
    /// anything waits (otherwise no reason to wake up).
    fn next_crossing(&self, now: f64) -> Option<f64> {
        if self.jobs.values().all(|j| j.running) {
            return None;
        }
        let mut earliest: Option<f64> = None;
        for job in self.jobs.values() {
            if !job.running || job.rate <= 0.0 {
                continue;
            }
            let attained = job.attained_at(now);
            let Some(&threshold) = self.thresholds.get(self.queue(attained) as usize) else {
                continue; // in the last queue: never moves down
            };
            let at = now + (threshold - attained) / job.rate;
            if earliest.is_none_or(|e| at < e) {
                earliest = Some(at);
            }
        }
        earliest
    }
}

fn parse_config(config: &str) -> Result<Vec<f64>, String> {
    let config = config.trim();
    if config.is_empty() {
        return Ok(vec![3600.0, 36000.0]);
    }
    let Some(list) = config.strip_prefix("thresholds=") else {
        return Err(format!(
            "las: unknown configuration `{config}` (expected thresholds=A,B,...)"
        ));
    };
    let mut thresholds = Vec::new();
    for item in list.split(',') {
        let t: f64 = item
            .trim()
            .parse()
            .map_err(|_| format!("las: thresholds: `{item}` is not a number"))?;
        if !(t.is_finite() && t > 0.0) {
            return Err(format!("las: thresholds: `{item}` must be positive"));
        }
        if thresholds.last().is_some_and(|&last| t <= last) {
            return Err("las: thresholds must be strictly ascending".to_string());
        }
        thresholds.push(t);
    }
    Ok(thresholds)
}

impl Policy for Las {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        let thresholds = parse_config(config)?;
        let policy = Las {
            thresholds,
            jobs: BTreeMap::new(),
            capacity: None,
        };
        let info = PolicyInfo {
            name: "las".into(),
            tick_interval: None,
        };
        Ok((policy, info))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        let now = view.now();
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(&job, now),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => {
                    self.jobs.remove(&id);
                }
                Event::JobPreempted(id) => self.refresh(view, id, now),
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("las: action rejected: {}", r.reason));
                    self.refresh(view, r.job, now);
                }
                Event::GpuChanged(_) => self.capacity = None,
                Event::Tick => {}
            }
        }
        let capacity = match self.capacity {
            Some(c) => c,
            None => {
                let c = view.gpus().iter().filter(|g| g.online).count() as u32;
                self.capacity = Some(c);
                c
            }
        };
        let mut actions = Vec::new();
        if self.jobs.values().all(|j| j.running) {
            return Decision { actions, wakeup: None };
        }

        let mut ranking: Vec<(u32, JobId)> = self
            .jobs
            .iter()
            .map(|(&id, job)| (self.queue(job.attained_at(now)), id))
            .collect();
        ranking.sort_unstable();
        let mut cap = capacity;
        let (mut admit, mut victims) = (Vec::new(), Vec::new());
        for &(_, id) in &ranking {
            let job = &self.jobs[&id];
            if job.gpus > 0 && job.gpus <= cap {
                cap -= job.gpus;
                if !job.running {
                    admit.push(id);
                }
            } else if job.running {
                victims.push(id);
            }
        }
        if admit.is_empty() {
            return Decision {
                actions,
                wakeup: self.next_crossing(now),
            };
        }

        let mut free = view.free_gpus();
        for id in victims {
            actions.push(Action::Preempt(id));
            if let Some(job) = self.jobs.get_mut(&id) {
                job.attained = job.attained_at(now);
                job.running = false;
                job.rate = 0.0;
                free.append(&mut job.placement);
            }
        }
        free.sort_unstable();
        for id in admit {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            let Some(gpus) = take_gpus(&mut free, job.gpus) else {
                continue; // not actually free (shared GPUs): try next time
            };
            let placement = Placement {
                job: id,
                gpus: gpus.clone(),
            };
            actions.push(if job.started {
                Action::Resume(placement)
            } else {
                Action::Start(placement)
            });
            job.running = true;
            job.started = true;
            job.since = now;
            job.rate = f64::from(job.gpus);
            job.placement = gpus;
        }
        Decision {
            actions,
            wakeup: self.next_crossing(now),
        }
    }
}

export_policy!(Las);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::FakeView;

    fn starts(d: &Decision) -> Vec<(JobId, Vec<GpuId>)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(p) | Action::Resume(p) => Some((p.job, p.gpus.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn preempts_a_job_past_its_threshold_for_a_new_arrival() {
        let mut view = FakeView::new(2, 2);
        let long = view.add_job(2);
        let mut las = Las::init("thresholds=100").unwrap().0;
        let d = las.decide(&view, vec![Event::JobArrived(long.clone())]);
        assert_eq!(starts(&d), vec![(long.id, vec![0, 1])]);
        view.place(long.id, &[0, 1], 1.0);

        // 60 s on 2 GPUs = 120 GPU-seconds: past the 100 threshold.
        view.now = 60.0;
        let new = view.add_job(1);
        let d = las.decide(&view, vec![Event::JobArrived(new.clone())]);
        assert!(
            matches!(d.actions[0], Action::Preempt(id) if id == long.id),
            "the long job makes way"
        );
        assert_eq!(starts(&d), vec![(new.id, vec![0])]);
    }

    #[test]
    fn keeps_a_job_below_its_threshold_and_wakes_at_the_crossing() {
        let mut view = FakeView::new(1, 1);
        let first = view.add_job(1);
        let mut las = Las::init("thresholds=100").unwrap().0;
        las.decide(&view, vec![Event::JobArrived(first.clone())]);
        view.place(first.id, &[0], 1.0);
        view.now = 30.0;
        let second = view.add_job(1);
        let d = las.decide(&view, vec![Event::JobArrived(second)]);
        assert!(d.actions.is_empty(), "same queue: the older job keeps its GPU");
        assert_eq!(
            d.wakeup,
            Some(100.0),
            "woken when the first job reaches 100 GPU-seconds"
        );
    }

    #[test]
    fn backfills_a_small_job_past_a_big_one_that_does_not_fit() {
        let mut view = FakeView::new(4, 4);
        let running = view.add_job(2);
        let mut las = Las::init("").unwrap().0;
        las.decide(&view, vec![Event::JobArrived(running.clone())]);
        view.place(running.id, &[0, 1], 1.0);
        let big = view.add_job(4);
        let small = view.add_job(1);
        let d = las.decide(&view, vec![Event::JobArrived(big), Event::JobArrived(small.clone())]);
        assert_eq!(starts(&d), vec![(small.id, vec![2])]);
    }

    #[test]
    fn config_is_checked() {
        assert!(Las::init("").is_ok());
        assert!(Las::init("thresholds=10,20").is_ok());
        assert!(Las::init("thresholds=20,10").is_err());
        assert!(Las::init("thresholds=x").is_err());
        assert!(Las::init("queues=2").is_err());
    }
}
