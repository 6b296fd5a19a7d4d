//! HTTP admin API server, its client, and metrics.

pub mod api;
