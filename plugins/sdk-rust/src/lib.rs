//! Write a wsched scheduling policy in Rust.
//!
//! The contract lives in `wit/policy.wit`; this crate generates its Rust
//! types with `wit-bindgen` and hides the export boilerplate, so that a
//! policy is one type implementing [`Policy`] plus one
//! [`export_policy!`] line.
//!
//! Policies are written against the [`View`] trait rather than the
//! generated `cluster-view` resource directly. Inside a Wasm component the
//! two are the same thing; natively, a host can implement [`View`] over its
//! own state, which is how the benchmarks run the very same policy code
//! natively and in Wasm.
//!
//! ```ignore
//! use wsched_sdk::*;
//!
//! #[derive(Default)]
//! struct Greedy;
//!
//! impl Policy for Greedy {
//!     fn init(_config: &str) -> Result<(Self, PolicyInfo), String> {
//!         Ok((Greedy, PolicyInfo { name: "greedy".into(), tick_interval: None }))
//!     }
//!     fn decide(&mut self, view: &impl View, _events: Vec<Event>) -> Decision {
//!         let mut free = view.free_gpus();
//!         let mut actions = Vec::new();
//!         for id in view.jobs(JobState::Pending) {
//!             let Some(job) = view.job(id) else { continue };
//!             if let Some(gpus) = take_gpus(&mut free, job.gpus_requested) {
//!                 actions.push(Action::Start(Placement { job: id, gpus }));
//!             }
//!         }
//!         Decision { actions, wakeup: None }
//!     }
//! }
//!
//! export_policy!(Greedy);
//! ```

mod free;
mod helpers;
mod idmap;
pub mod testing;

pub use free::FreeGpus;
pub use helpers::*;
pub use idmap::{IdHasher, IdMap, IdSet};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "scheduler",
        pub_export_macro: true,
        default_bindings_module: "wsched_sdk::bindings",
    });
}

pub use bindings::wsched::policy::types::{
    Action, ClusterStats, Decision, Event, GpuId, GpuInfo, GpuMeasurement, JobId, JobInfo, JobState, Level, Placement,
    PolicyInfo, Rejection, Resident, RunningJob, SharedPlacement,
};

/// A read-only view of the cluster during one decision.
///
/// Inside a component it is the host's `cluster-view` resource; every
/// method is one call across the Wasm boundary, so read what you need once
/// per decision rather than in an inner loop.
pub trait View {
    /// The host's clock in seconds (virtual in the simulator).
    fn now(&self) -> f64;
    /// Cluster-wide counters.
    fn stats(&self) -> ClusterStats;
    /// One job, or `None` if the id is unknown.
    fn job(&self, id: JobId) -> Option<JobInfo>;
    /// Ids of the jobs in one state, oldest submission first.
    fn jobs(&self, state: JobState) -> Vec<JobId>;
    /// The jobs holding GPUs now, in compact form.
    fn running(&self) -> Vec<RunningJob>;
    /// Every GPU.
    fn gpus(&self) -> Vec<GpuInfo>;
    /// One GPU, or `None` if the id is unknown.
    fn gpu(&self, id: GpuId) -> Option<GpuInfo>;
    /// Online GPUs with no resident, lowest id first.
    fn free_gpus(&self) -> Vec<GpuId>;
    /// What GPU `id`'s own counters said at the last sample (real GPUs
    /// only; `None` on emulated GPUs, in the simulator and in fakes).
    fn measured(&self, _id: GpuId) -> Option<GpuMeasurement> {
        None
    }
    /// Job `id`'s rate alone on `gpus` GPUs of kind `kind` (on one node,
    /// or over several when `spread`), relative to its reference (1.0 on
    /// the gang it asked for on the kind its duration was measured on),
    /// from the host's throughput table; `None` when the host has no
    /// performance model or no figure.
    fn throughput(&self, _id: JobId, _kind: &str, _gpus: u32, _spread: bool) -> Option<f64> {
        None
    }
    /// The rates of jobs `a` and `b` sharing the same `gpus` GPUs of kind
    /// `kind`, each relative to its reference; `None` without a measured
    /// figure for the pair.
    fn co_located(&self, _a: JobId, _b: JobId, _kind: &str, _gpus: u32) -> Option<(f64, f64)> {
        None
    }
    /// The job's type (model and batch size) as the throughput table names it.
    fn job_type(&self, _id: JobId) -> Option<String> {
        None
    }
    /// Seconds of work job `id` has left on its reference; divide by
    /// [`View::throughput`] for the time left elsewhere. `None` when its
    /// duration is not known.
    fn remaining_work(&self, _id: JobId) -> Option<f64> {
        None
    }
}

impl View for bindings::wsched::policy::host::ClusterView {
    fn now(&self) -> f64 {
        ClusterView::now(self)
    }
    fn stats(&self) -> ClusterStats {
        ClusterView::stats(self)
    }
    fn job(&self, id: JobId) -> Option<JobInfo> {
        ClusterView::job(self, id)
    }
    fn jobs(&self, state: JobState) -> Vec<JobId> {
        ClusterView::jobs(self, state)
    }
    fn running(&self) -> Vec<RunningJob> {
        ClusterView::running(self)
    }
    fn gpus(&self) -> Vec<GpuInfo> {
        ClusterView::gpus(self)
    }
    fn gpu(&self, id: GpuId) -> Option<GpuInfo> {
        ClusterView::gpu(self, id)
    }
    fn free_gpus(&self) -> Vec<GpuId> {
        ClusterView::free_gpus(self)
    }
    fn measured(&self, id: GpuId) -> Option<GpuMeasurement> {
        ClusterView::measured(self, id)
    }
    fn throughput(&self, id: JobId, kind: &str, gpus: u32, spread: bool) -> Option<f64> {
        ClusterView::throughput(self, id, kind, gpus, spread)
    }
    fn co_located(&self, a: JobId, b: JobId, kind: &str, gpus: u32) -> Option<(f64, f64)> {
        ClusterView::co_located(self, a, b, kind, gpus)
    }
    fn job_type(&self, id: JobId) -> Option<String> {
        ClusterView::job_type(self, id)
    }
    fn remaining_work(&self, id: JobId) -> Option<f64> {
        ClusterView::remaining_work(self, id)
    }
}

use bindings::wsched::policy::host::ClusterView;

/// A scheduling policy. Only [`Policy::init`] and [`Policy::decide`] are
/// required; like sched_ext's callbacks, the rest have sensible defaults.
pub trait Policy: Sized {
    /// Build the policy from its configuration string (empty when none was
    /// given). An error refuses the load and is shown to the operator.
    fn init(config: &str) -> Result<(Self, PolicyInfo), String>;

    /// Decide what to do about `events` (everything since the last call).
    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision;

    /// State to hand to the next policy on a hot swap; `None` by default.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Take over state from [`Policy::snapshot`]; refuses by default, in
    /// which case the policy rebuilds its model from the `job-arrived`
    /// events that the host replays on every takeover.
    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("this policy does not restore state".to_string())
    }
}

/// Write to the host's log at `level` (dropped cheaply when the host
/// would not keep it). Natively, outside a component, does nothing.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    if bindings::wsched::policy::host::log_enabled(level) {
        bindings::wsched::policy::host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Export a [`Policy`] implementation as the component's `policy` interface.
///
/// Use once, at the top level of a `cdylib` crate built for `wasm32-wasip2`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __wsched_export {
            use super::*;
            use $crate::bindings::exports::wsched::policy::policy::Guest;
            use $crate::bindings::wsched::policy::host::ClusterView;
            use $crate::{Decision, Event, PolicyInfo};

            thread_local! {
                static STATE: ::core::cell::RefCell<Option<$policy>> =
                    const { ::core::cell::RefCell::new(None) };
            }

            struct Export;

            impl Guest for Export {
                fn init(config: String) -> Result<PolicyInfo, String> {
                    let (policy, info) = <$policy as $crate::Policy>::init(&config)?;
                    STATE.with(|s| *s.borrow_mut() = Some(policy));
                    Ok(info)
                }

                fn decide(view: &ClusterView, events: Vec<Event>) -> Decision {
                    STATE.with(|s| match s.borrow_mut().as_mut() {
                        Some(policy) => $crate::Policy::decide(policy, view, events),
                        // The host always calls init first; answer nothing rather than trap.
                        None => Decision { actions: Vec::new(), wakeup: None },
                    })
                }

                fn snapshot() -> Option<Vec<u8>> {
                    STATE.with(|s| s.borrow().as_ref().and_then($crate::Policy::snapshot))
                }

                fn restore(state: Vec<u8>) -> Result<(), String> {
                    STATE.with(|s| match s.borrow_mut().as_mut() {
                        Some(policy) => $crate::Policy::restore(policy, &state),
                        None => Err("restore called before init".to_string()),
                    })
                }
            }

            $crate::bindings::export!(Export with_types_in $crate::bindings);
        }
    };
}
