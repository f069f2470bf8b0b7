//! The FIFO policy itself, without the component export.
//!
//! Kept apart from `lib.rs` (which adds `export_policy!`) so that another
//! plugin can compile this file into itself (`#[path]`) and delegate to
//! [`Fifo`]: depending on this crate's rlib instead would link FIFO's
//! component exports next to the other plugin's own, and the Wasm linker
//! refuses the duplicate symbols (Cargo's feature unification rules out a
//! feature that turns them off for one dependent only).

use std::collections::BTreeMap;
use wsched_sdk::*;

/// The FIFO policy: a queue of waiting jobs keyed by id (ids grow with
/// submission order) with the gang size each needs.
#[derive(Debug, Default)]
pub struct Fifo {
    waiting: BTreeMap<JobId, (u32, JobState)>,
    /// Kept from events: reading the view's free list at every decision
    /// would cost the cluster's size.
    free: FreeGpus,
}

impl Policy for Fifo {
    fn init(config: &str) -> Result<(Self, PolicyInfo), String> {
        if !config.trim().is_empty() {
            return Err(format!("fifo takes no configuration, got `{config}`"));
        }
        let info = PolicyInfo {
            name: "fifo".into(),
            tick_interval: None,
        };
        Ok((Fifo::default(), info))
    }

    fn decide(&mut self, view: &impl View, events: Vec<Event>) -> Decision {
        for event in &events {
            self.free.observe(event);
        }
        for event in events {
            match event {
                Event::JobArrived(job) => match job.state {
                    JobState::Pending | JobState::Suspended => {
                        self.waiting.insert(job.id, (job.gpus_requested, job.state));
                    }
                    _ => {
                        self.waiting.remove(&job.id);
                    }
                },
                Event::JobFinished(id) | Event::JobFailed((id, _)) => {
                    self.waiting.remove(&id);
                }
                Event::ActionRejected(r) => {
                    log(Level::Warn, &format!("fifo: action rejected: {}", r.reason));
                }
                Event::JobPreempted(id) => {
                    if let Some(job) = view.job(id) {
                        self.waiting.insert(job.id, (job.gpus_requested, job.state));
                    }
                }
                Event::Tick | Event::GpuChanged(_) => {}
            }
        }
        let mut actions = Vec::new();
        if self.waiting.is_empty() {
            return Decision { actions, wakeup: None };
        }
        self.free.sync(view);
        while let Some((&id, &(gpus, state))) = self.waiting.first_key_value() {
            let Some(placement) = self.free.take(id, gpus) else {
                break; // head-of-line blocking
            };
            let placement = Placement {
                job: id,
                gpus: placement,
            };
            actions.push(match state {
                JobState::Suspended => Action::Resume(placement),
                _ => Action::Start(placement),
            });
            self.waiting.pop_first();
        }
        Decision { actions, wakeup: None }
    }
}
