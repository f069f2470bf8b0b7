//! Shortest-job-first, non-preemptive, with backfilling.
//!
//! Waiting jobs are ordered by the time they are expected to take: the
//! work their submitter expects them to have left (`remaining-work`, else
//! `expected-duration`) over the best throughput the host's performance
//! model gives their gang on any GPU kind of the cluster (so a job that
//! runs three times faster on the cluster's fastest GPUs counts as a third
//! as long; without a model, every throughput is 1 and this is the plain
//! expected duration). Jobs without one sort last, ties go to the older
//! job (lower id). SJF minimises average completion time when durations
//! are known, which makes it the classic yardstick for duration-aware
//! policies. Once started a job runs to completion (no preemption), so a
//! wrong estimate costs only ordering, never wasted work. Unlike strict
//! FIFO it is work-conserving: a job that does not fit the free GPUs is
//! skipped and smaller ones behind it may start. Suspended jobs (left by a
//! previous policy after a hot swap) are resumed in the same order.
//!
//! Config: none (the empty string).

use std::collections::{BTreeMap, HashMap};
use wsched_sdk::*;

/// A sort key for an expected duration: known ones first, shortest first
/// (in `f64::total_cmp` order), then unknown ones.
type DurationKey = (bool, i64);

fn duration_key(expected: Option<f64>) -> DurationKey {
    match expected {
        Some(d) => {
            let bits = d.to_bits() as i64;
            // Same order as f64::total_cmp.
            (false, bits ^ ((((bits >> 63) as u64) >> 1) as i64))
        }
        None => (true, 0),
    }
}

/// The SJF policy: waiting jobs keyed by (duration, id).
#[derive(Debug, Default)]
pub struct Sjf {
    waiting: BTreeMap<(DurationKey, JobId), (u32, JobState)>,
    key_of: HashMap<JobId, DurationKey>,
    /// How many waiting jobs ask for each gang size: the backfilling walk
    /// stops when no waiting gang fits in what is left.
    gangs: BTreeMap<u32, usize>,
    /// Free GPUs kept from events (see `FreeGpus`).
    free: FreeGpus,
    /// The cluster's GPU kinds (read once).
    kinds: Option<Vec<String>>,
}

impl Sjf {
    fn forget(&mut self, id: JobId) {
        if let Some(k) = self.key_of.remove(&id)
            && let Some((gpus, _)) = self.waiting.remove(&(k, id))
            && let Some(n) = self.gangs.get_mut(&gpus)
        {
            *n -= 1;
            if *n == 0 {
                self.gangs.remove(&gpus);
            }
        }
    }

    /// The seconds job `job` is expected to take on the best GPUs for it.
    fn expected_time(&mut self, view: &impl View, job: &JobInfo) -> Option<f64> {
        let work = view.remaining_work(job.id).or(job.expected_duration)?;
        let kinds = self.kinds.get_or_insert_with(|| {
            let mut kinds: Vec<String> = view.gpus().into_iter().map(|g| g.kind).collect();
            kinds.sort();
            kinds.dedup();
            kinds
        });
        // Only sane figures count: a model's throughput is positive and finite.
        let best = kinds
            .iter()
            .filter_map(|kind| view.throughput(job.id, kind, job.gpus_requested, false))
            .filter(|t| t.is_finite() && *t > 0.0)
            .fold(None, |best: Option<f64>, t| Some(best.map_or(t, |b| b.max(t))));
        Some(match best {
            Some(t) => work / t,
            None => work,
        })
    }

    fn note(&mut self, view: &impl View, job: &JobInfo) {
        self.forget(job.id);
        if matches!(job.state, JobState::Pending | JobState::Suspended) {
            let k = duration_key(self.expected_time(view, job));
            self.key_of.insert(job.id, k);
            self.waiting.insert((k, job.id), (job.gpus_requested, job.state));
            *self.gangs.entry(job.gpus_requested).or_default() += 1;
        }
    }
}

impl Policy for Sjf {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        if let Some(pair) = config.split(';').map(str::trim).find(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
            return Err(format!("sjf: unknown config key `{key}` (sjf takes no configuration)"));
        }
        Ok((
            Sjf::default(),
            PolicyInfo {
                name: "sjf".into(),
                tick_interval: None,
            },
        ))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        for event in &events {
            self.free.observe(event);
        }
        for event in events {
            match event {
                Event::JobArrived(job) => self.note(view, &job),
                Event::JobFinished(id) | Event::JobFailed((id, _)) => self.forget(id),
                Event::JobPreempted(id) => {
                    if let Some(job) = view.job(id) {
                        self.note(view, &job);
                    }
                }
                Event::GpuChanged(_) => {} // the free pool reads the view again
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("sjf: action rejected: {}", r.reason));
                    match view.job(r.job) {
                        Some(job) => self.note(view, &job),
                        None => self.forget(r.job),
                    }
                }
                Event::Tick => {}
            }
        }
        let mut actions = Vec::new();
        if self.waiting.is_empty() {
            return Decision { actions, wakeup: None };
        }
        self.free.sync(view);
        // The smallest gang waiting (this decision's starts included: a
        // bound that is only ever too low).
        let smallest = self.gangs.keys().next().copied().unwrap_or(u32::MAX) as usize;
        let mut placed = Vec::new();
        for (&(_, id), &(gpus, state)) in &self.waiting {
            if self.free.len() < smallest.max(1) {
                break;
            }
            // Backfilling: a job that does not fit is skipped, not waited for.
            let Some(gpus) = self.free.take_gang(id, gpus) else {
                continue;
            };
            let placement = Placement { job: id, gpus };
            actions.push(match state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            });
            placed.push(id);
        }
        for id in placed {
            self.forget(id);
        }
        Decision { actions, wakeup: None }
    }
}

export_policy!(Sjf);

#[cfg(test)]
mod tests {
    use super::*;
    use wsched_sdk::testing::{FakeView, placed as started};

    fn arrive(view: &mut FakeView, gpus: u32, duration: Option<f64>) -> Event {
        let id = view.add_job(gpus).id;
        view.job_mut(id).expected_duration = duration;
        Event::JobArrived(view.job(id).unwrap())
    }

    #[test]
    fn starts_shortest_first_unknown_last() {
        let mut view = FakeView::new(2, 2);
        let events = vec![
            arrive(&mut view, 1, None),
            arrive(&mut view, 1, Some(500.0)),
            arrive(&mut view, 1, Some(10.0)),
            arrive(&mut view, 1, Some(10.0)),
        ];
        let mut p = Sjf::init("").unwrap().0;
        let d = p.decide(&view, events);
        assert_eq!(started(&d), vec![2, 3], "shortest first, ties by id");
        // Two GPUs free up: the 500 s job, then the one with no estimate.
        view.place(2, &[0], 1.0);
        view.place(3, &[1], 1.0);
        view.finish(2);
        view.finish(3);
        let d = p.decide(&view, vec![Event::JobFinished(2), Event::JobFinished(3)]);
        assert_eq!(started(&d), vec![1, 0]);
    }

    #[test]
    fn skips_a_job_that_does_not_fit() {
        let mut view = FakeView::new(4, 4);
        let busy = view.add_job(2).id;
        view.place(busy, &[0, 1], 1.0);
        let events = vec![arrive(&mut view, 4, Some(1.0)), arrive(&mut view, 2, Some(100.0))];
        let mut p = Sjf::init("").unwrap().0;
        let d = p.decide(&view, events);
        assert_eq!(
            started(&d),
            vec![2],
            "the shorter 4-GPU job cannot fit; the 2-GPU one backfills"
        );
        assert!(matches!(&d.actions[0], Action::Start(pl) if pl.gpus == vec![2, 3]));
    }

    #[test]
    fn resumes_suspended_in_the_same_order() {
        let mut view = FakeView::new(1, 1);
        let long = view.add_job(1).id;
        let short = view.add_job(1).id;
        view.job_mut(long).expected_duration = Some(100.0);
        view.job_mut(short).expected_duration = Some(1.0);
        view.job_mut(short).state = JobState::Suspended;
        let events = view.jobs.iter().cloned().map(Event::JobArrived).collect();
        let d = Sjf::init("").unwrap().0.decide(&view, events);
        assert!(matches!(&d.actions[..], [Action::Resume(p)] if p.job == short));
    }

    #[test]
    fn orders_by_expected_time_on_the_fastest_kind() {
        let mut view = FakeView::new(2, 1);
        view.set_kind(0..1, "V100");
        view.set_kind(1..2, "K80");
        // 100 s of work that runs 4x faster on a V100 (25 s) against 40 s
        // that gains nothing (40 s); a third job knows only its work left.
        let fast = arrive(&mut view, 1, Some(100.0));
        let flat = arrive(&mut view, 1, Some(40.0));
        let (Event::JobArrived(f), Event::JobArrived(g)) = (&fast, &flat) else {
            unreachable!()
        };
        view.set_throughput(f.id, "V100", 1, 4.0);
        view.set_throughput(f.id, "K80", 1, 0.5);
        view.set_throughput(g.id, "V100", 1, 1.0);
        view.set_throughput(g.id, "K80", 1, 1.0);
        let left = view.add_job(1).id;
        view.model.remaining.insert(left, 30.0);
        let events = vec![fast, flat, Event::JobArrived(view.job(left).unwrap())];
        let mut p = Sjf::init("").unwrap().0;
        // Fill the cluster so that the order shows one start at a time.
        let d = p.decide(&view, events);
        assert_eq!(started(&d), vec![0, 2], "25 s, then 30 s; the 40 s job waits");
        // Hostile throughputs are ignored, never a panic.
        let mut view = FakeView::new(1, 1);
        let e = arrive(&mut view, 1, Some(10.0));
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0, 5e-324] {
            view.set_throughput(0, "fake", 1, bad);
            let _ = Sjf::init("").unwrap().0.decide(&view, vec![e.clone()]);
        }
    }

    #[test]
    fn rejects_any_config() {
        let err = Sjf::init("order=desc").err().unwrap();
        assert!(err.starts_with("sjf:") && err.contains("order"), "{err}");
        assert!(Sjf::init(" ").is_ok());
    }
}
