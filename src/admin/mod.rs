//! HTTP admin API server, its client, and metrics.

pub mod client;
mod layers;
pub mod logs;
pub mod metrics;
pub mod prom;
mod response;
mod routes;
pub mod server;

pub use server::{check_listen, serve, serve_with, AdminError, Limits};
