//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod logs;
pub mod process;
