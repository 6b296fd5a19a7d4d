//! HTTP admin API server, its client, and metrics.

pub mod client;
mod layers;
pub mod logs;
pub mod metrics;
pub mod prom;
mod response;
mod routes;
pub mod server;

pub use server::{check_listen, serve, serve_site, serve_with, AdminError, Limits};

/// The server's default whole-request bound ([`Limits::request_timeout`]); the client waits
/// a little longer, so that the server's own answer (possibly `202`) arrives first.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
