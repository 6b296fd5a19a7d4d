//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod health;
pub mod instance;
pub mod metrics;
pub mod run;
pub mod watcher;
