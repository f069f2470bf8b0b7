//! A test aid for policy authors: [`FakeView`], a [`View`] over plain data.
//!
//! It lets a policy's unit tests show one decision at a time, natively,
//! without a host: build a cluster, add jobs, place some of them, call
//! `decide` and look at the actions. It only reads what it holds: it applies
//! no action and validates nothing, so a test moves state along itself
//! (with [`FakeView::place`], [`FakeView::suspend`] or the public fields).
//!
//! ```
//! use wsched_sdk::testing::FakeView;
//! use wsched_sdk::{JobState, View};
//!
//! let mut view = FakeView::new(4, 2); // 4 GPUs, 2 per node
//! let job = view.add_job(2);
//! view.place(job.id, &[0, 1], 1.0);
//! assert_eq!(view.free_gpus(), vec![2, 3]);
//! assert_eq!(view.jobs(JobState::Running), vec![job.id]);
//! ```

use crate::{
    Action, ClusterStats, Decision, Event, GpuId, GpuInfo, JobId, JobInfo, JobState, Resident, RunningJob, View,
};

/// The jobs a decision starts or resumes, in its order.
pub fn placed(decision: &Decision) -> Vec<JobId> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(p) | Action::Resume(p) => Some(p.job),
            _ => None,
        })
        .collect()
}

/// A small deterministic random stream (xorshift) for randomised tests,
/// which then need no dependency and repeat a failing seed exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream for `seed` (any value, zero too).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    /// One of `items`, or `None` when there is none.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

/// A cluster held as plain data, read through [`View`].
#[derive(Debug, Clone, Default)]
pub struct FakeView {
    /// The clock returned by [`View::now`].
    pub now: f64,
    /// Every GPU, indexed by id.
    pub gpus: Vec<GpuInfo>,
    /// Every job, in submission (id) order.
    pub jobs: Vec<JobInfo>,
    /// The performance model the view answers from ([`View::throughput`]
    /// and the rest); empty: no model, as a host without a throughput table.
    pub model: FakeModel,
}

/// What [`FakeView`]'s performance accessors answer, as plain data.
#[derive(Debug, Clone, Default)]
pub struct FakeModel {
    /// (job, GPU kind, GPUs, spread over nodes) -> rate relative to the
    /// job's reference ([`View::throughput`]).
    pub throughputs: std::collections::BTreeMap<(JobId, String, u32, bool), f64>,
    /// (job a, job b, GPU kind, GPUs) -> their rates sharing those GPUs.
    pub pairs: std::collections::BTreeMap<(JobId, JobId, String, u32), (f64, f64)>,
    /// Job types by job.
    pub job_types: std::collections::BTreeMap<JobId, String>,
    /// Seconds of reference work left, by job.
    pub remaining: std::collections::BTreeMap<JobId, f64>,
}

impl FakeView {
    /// A cluster of `gpus` online, empty GPUs, `gpus_per_node` to a node
    /// (80 GB of memory each), at time 0.
    pub fn new(gpus: u32, gpus_per_node: u32) -> Self {
        let per_node = gpus_per_node.max(1);
        let gpus = (0..gpus)
            .map(|id| GpuInfo {
                id,
                node: id / per_node,
                kind: "fake".into(),
                memory_total: 80 << 30,
                memory_used: 0,
                online: true,
                residents: Vec::new(),
            })
            .collect();
        FakeView {
            now: 0.0,
            gpus,
            jobs: Vec::new(),
            model: FakeModel::default(),
        }
    }

    /// Submit a pending job asking for `gpus_requested` GPUs, at the current
    /// time, with the next id (0, 1, 2, ...). Returns its record, as a
    /// `job-arrived` event would carry it.
    pub fn add_job(&mut self, gpus_requested: u32) -> JobInfo {
        let job = JobInfo {
            id: self.jobs.len() as JobId,
            tenant: "test".into(),
            submit_time: self.now,
            gpus_requested,
            state: JobState::Pending,
            placement: Vec::new(),
            fraction: 1.0,
            attained_gpu_seconds: 0.0,
            attained_seconds: 0.0,
            iterations_done: None,
            iterations_total: None,
            iteration_time: None,
            expected_duration: None,
            memory_per_gpu: 0,
            share_requested: None,
            priority: 1.0,
            preemptions: 0,
        };
        self.jobs.push(job.clone());
        job
    }

    /// Say that job `job` runs at `rate` (relative to its reference) on
    /// `gpus` GPUs of kind `kind`, on one node and spread alike.
    pub fn set_throughput(&mut self, job: JobId, kind: &str, gpus: u32, rate: f64) {
        for spread in [false, true] {
            self.model.throughputs.insert((job, kind.into(), gpus, spread), rate);
        }
    }

    /// Make GPUs `gpus` of kind `kind`.
    pub fn set_kind(&mut self, gpus: std::ops::Range<GpuId>, kind: &str) {
        for g in gpus {
            if let Some(gpu) = self.gpus.get_mut(g as usize) {
                gpu.kind = kind.into();
            }
        }
    }

    /// A job's record, to change it in place (attained service, duration...).
    ///
    /// # Panics
    /// If the job was never added.
    pub fn job_mut(&mut self, id: JobId) -> &mut JobInfo {
        self.jobs
            .iter_mut()
            .find(|j| j.id == id)
            .expect("FakeView: unknown job")
    }

    /// Make a job running on `gpus` with `fraction` of each, moving it off
    /// whatever GPUs it held before.
    pub fn place(&mut self, job: JobId, gpus: &[GpuId], fraction: f64) {
        self.unplace(job);
        for &g in gpus {
            if let Some(gpu) = self.gpus.get_mut(g as usize) {
                gpu.residents.push(Resident { job, fraction });
            }
        }
        let j = self.job_mut(job);
        j.state = JobState::Running;
        j.placement = gpus.to_vec();
        j.fraction = fraction;
    }

    /// Make a running job suspended: it leaves its GPUs, keeping its progress.
    pub fn suspend(&mut self, job: JobId) {
        self.unplace(job);
        let j = self.job_mut(job);
        j.state = JobState::Suspended;
        j.preemptions += 1;
    }

    /// Make a job finished: it leaves its GPUs.
    pub fn finish(&mut self, job: JobId) {
        self.unplace(job);
        self.job_mut(job).state = JobState::Finished;
    }

    /// Make a job failed, as a host would (it leaves its GPUs); returns the
    /// event the policy hears.
    pub fn fail(&mut self, job: JobId, reason: &str) -> Event {
        self.finish(job);
        self.job_mut(job).state = JobState::Failed;
        Event::JobFailed((job, reason.into()))
    }

    /// Take GPU `gpu` offline, or bring it back, as a host would: the jobs
    /// on a GPU that goes away are suspended first. Returns the events the
    /// policy hears, in order (`job-preempted` for each, `gpu-changed`).
    pub fn toggle_gpu(&mut self, gpu: GpuId) -> Vec<Event> {
        let Some(info) = self.gpus.get(gpu as usize) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if info.online {
            let held: Vec<JobId> = info.residents.iter().map(|r| r.job).collect();
            for job in held {
                self.suspend(job);
                events.push(Event::JobPreempted(job));
            }
        }
        let info = &mut self.gpus[gpu as usize];
        info.online = !info.online;
        events.push(Event::GpuChanged(gpu));
        events
    }

    fn unplace(&mut self, job: JobId) {
        for gpu in &mut self.gpus {
            gpu.residents.retain(|r| r.job != job);
        }
        let j = self.job_mut(job);
        j.placement.clear();
        j.fraction = 1.0;
    }

    fn count(&self, state: JobState) -> u32 {
        self.jobs.iter().filter(|j| j.state == state).count() as u32
    }
}

impl View for FakeView {
    fn now(&self) -> f64 {
        self.now
    }
    fn stats(&self) -> ClusterStats {
        ClusterStats {
            gpus: self.gpus.len() as u32,
            free_gpus: self.free_gpus().len() as u32,
            pending: self.count(JobState::Pending),
            running: self.count(JobState::Running),
            suspended: self.count(JobState::Suspended),
        }
    }
    fn job(&self, id: JobId) -> Option<JobInfo> {
        self.jobs.iter().find(|j| j.id == id).cloned()
    }
    fn jobs(&self, state: JobState) -> Vec<JobId> {
        self.jobs.iter().filter(|j| j.state == state).map(|j| j.id).collect()
    }
    fn running(&self) -> Vec<RunningJob> {
        self.jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| RunningJob {
                id: j.id,
                gpus: j.placement.len() as u32,
                fraction: j.fraction,
                attained_gpu_seconds: j.attained_gpu_seconds,
                submit_time: j.submit_time,
                since: j.submit_time,
                priority: j.priority,
            })
            .collect()
    }
    fn gpus(&self) -> Vec<GpuInfo> {
        self.gpus.clone()
    }
    fn gpu(&self, id: GpuId) -> Option<GpuInfo> {
        self.gpus.get(id as usize).cloned()
    }
    fn free_gpus(&self) -> Vec<GpuId> {
        self.gpus
            .iter()
            .filter(|g| g.online && g.residents.is_empty())
            .map(|g| g.id)
            .collect()
    }
    fn throughput(&self, id: JobId, kind: &str, gpus: u32, spread: bool) -> Option<f64> {
        self.model
            .throughputs
            .get(&(id, kind.to_string(), gpus, spread))
            .copied()
    }
    fn co_located(&self, a: JobId, b: JobId, kind: &str, gpus: u32) -> Option<(f64, f64)> {
        let pairs = &self.model.pairs;
        pairs.get(&(a, b, kind.to_string(), gpus)).copied().or_else(|| {
            pairs
                .get(&(b, a, kind.to_string(), gpus))
                .map(|&(rate_b, rate_a)| (rate_a, rate_b))
        })
    }
    fn job_type(&self, id: JobId) -> Option<String> {
        self.model.job_types.get(&id).cloned()
    }
    fn remaining_work(&self, id: JobId) -> Option<f64> {
        self.model.remaining.get(&id).copied()
    }
}
