//! The plugin contract, generated from `wit/policy.wit`.
//!
//! The WIT file is the one source of truth for what a policy sees and
//! returns; every other module of the host speaks in these generated types
//! (`Action`, `Event`, `JobInfo`, ...) so that the contract cannot drift
//! from what the host implements.

// Generated, and documented by the WIT file's own comments where it has
// them; the lint for the rest is off here only.
#[allow(missing_docs)]
mod generated {
    pub use super::ViewToken;

    wasmtime::component::bindgen!({
        path: "../wit",
        world: "scheduler",
        with: {
            "wsched:policy/host.cluster-view": ViewToken,
        },
        additional_derives: [PartialEq],
    });
}

pub use generated::*;

pub use wsched::policy::types::{
    Action, ClusterStats, Decision, Event, GpuId, GpuInfo, GpuMeasurement, JobId, JobInfo, JobState, Level, Placement,
    PolicyInfo, Rejection, Resident, RunningJob, SharedPlacement,
};

/// The host side of a `cluster-view` handle. It carries nothing: there is
/// one view, of the cluster the plugin's store holds during the call.
#[derive(Debug)]
pub struct ViewToken;

/// The export interface of a policy (`wsched:policy/policy`).
pub const POLICY_EXPORT: &str = "wsched:policy/policy@0.1.0";
/// The host interface a policy may import.
pub const HOST_IMPORT: &str = "wsched:policy/host@0.1.0";
/// The shared types interface a policy may import.
pub const TYPES_IMPORT: &str = "wsched:policy/types@0.1.0";

impl Action {
    /// The job an action is about.
    pub fn job(&self) -> JobId {
        match self {
            Action::Start(p) | Action::Resume(p) | Action::Migrate(p) | Action::Resize(p) => p.job,
            Action::Preempt(id) => *id,
            Action::Share(s) => s.job,
            Action::SetPriority((id, _)) => *id,
        }
    }

    /// The action's name as written in the WIT file.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Start(_) => "start",
            Action::Preempt(_) => "preempt",
            Action::Resume(_) => "resume",
            Action::Migrate(_) => "migrate",
            Action::Resize(_) => "resize",
            Action::Share(_) => "share",
            Action::SetPriority(_) => "set-priority",
        }
    }
}

impl JobState {
    /// The state's name as written in the WIT file.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Suspended => "suspended",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
        }
    }
}
