//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod health;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod provision;
pub mod run;
pub mod shared_tree;
pub mod watcher;
