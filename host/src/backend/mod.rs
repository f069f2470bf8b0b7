//! Backends carry out a policy's decisions on real work.
//!
//! The simulator (`crate::sim`) advances a virtual clock; the backends here
//! run work for real. So far this holds the piece that the emulated and the
//! CUDA backends share: [`process`], a user's command run as a job on its
//! GPUs, with logs, exit status and suspension (cooperative checkpointing
//! at an iteration boundary, SIGSTOP/SIGCONT for jobs that do not take
//! part).

pub mod process;
