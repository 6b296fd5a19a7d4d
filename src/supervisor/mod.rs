//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod provision;
