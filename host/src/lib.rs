//! wsched: a GPU cluster scheduler whose policies are sandboxed WebAssembly
//! components.
//!
//! The host is the mechanism and a plugin is the policy, as in Linux's
//! sched_ext. Dependencies run one way, and the modules read in that order:
//!
//! - [`wit`]: the plugin contract, generated from `wit/policy.wit`.
//! - [`bounds`]: the range of every number that enters from outside.
//! - [`cluster`]: the model of jobs and GPUs, and validation of actions.
//! - [`topology`]: what a cluster is made of (node groups, GPU kinds),
//!   from a description file or `--gpus` shorthand.
//! - [`speed`]: measured throughput per job type, GPU kind and gang size,
//!   which the model's job speeds come from when a table is given.
//! - [`files`]: reading files named from outside, bounded.
//! - [`engine`]: compiling, sandboxing, limiting and calling Wasm plugins.
//! - [`latency`]: call-time distributions in constant memory.
//! - [`native`]: policies built into the host (the FIFO fallback).
//! - [`scheduler`]: the policy host: events, calls, strikes, ejection and
//!   hot swap.
//! - [`backend`]: carrying out decisions on work that runs (emulated GPUs,
//!   local processes), behind one trait.
//! - [`decision`]: the one decision loop, a policy host driving a backend
//!   on a clock given from outside (virtual in `sim`, the wall in `serve`).
//! - [`trace`]: reading cluster traces.
//! - [`sim`]: discrete-event trace replay, metrics and reports.
//! - [`check`]: the conformance check for plugin authors.
//! - [`store`]: durable state for the service (jobs, plugins, policy).
//! - [`proto`]: the service contract, generated from `proto/`.
//! - [`service`]: `wsched serve` (gRPC, metrics, YAML job specs).
//!
//! The `wsched` binary is the command line over these, and holds all of
//! it: clap types, the gRPC client behind `wsched job|policy|gpu`
//! (`client.rs`), the choices as the command line spells them.

#![warn(missing_docs, unreachable_pub)]

pub mod backend;
pub mod bounds;
pub mod check;
pub mod cluster;
pub mod decision;
pub mod engine;
pub mod files;
pub mod latency;
pub mod native;
pub mod proto;
pub mod scheduler;
pub mod service;
pub mod sim;
pub mod speed;
pub mod store;
pub mod topology;
pub mod trace;
mod units;
pub mod wit;
