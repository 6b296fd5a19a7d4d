//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod health;
pub mod logs;
pub mod process;
pub mod provision;
pub mod watcher;
// Declared once the topology module has landed:
// pub mod instance; pub mod metrics; pub mod run;
