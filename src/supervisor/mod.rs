//! The supervisor: reconcile loop, instance lifecycle, home provisioning, processes.

pub mod health;
pub mod watcher;
// Declared once the topology, proxy, process and admin modules have landed:
// pub mod instance; pub mod metrics; pub mod run;
