//! GPUs that exist only in the cluster model.
//!
//! A job declares its work (seconds on its full gang); while it runs, the
//! model credits progress at its rate (GPUs held times share, over the gang
//! size), and the job finishes when the work is done. With the wall clock
//! driving the model, that is a cluster of N GPUs that behaves like real
//! jobs in time, on any machine: for trying the service, a policy or a
//! client without a GPU. Preemption keeps progress; migration and resizing
//! take effect at once.

use super::{Backend, BackendError, Ending};
use crate::cluster::Cluster;
use crate::wit::JobId;

/// The emulated backend: nothing to carry out, completions from the model.
#[derive(Debug, Default)]
pub struct EmulatedBackend;

impl Backend for EmulatedBackend {
    fn name(&self) -> &'static str {
        "emulated"
    }

    fn reconcile(&mut self, _cluster: &Cluster, _id: JobId) -> Result<(), BackendError> {
        Ok(())
    }

    fn ended(&mut self, cluster: &Cluster) -> Vec<(JobId, Ending)> {
        cluster.work_completed().into_iter().map(|id| (id, Ok(()))).collect()
    }

    fn next_end(&self, cluster: &Cluster) -> Option<f64> {
        cluster.next_completion()
    }
}
