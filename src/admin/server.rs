//! The admin API's HTTP server: hyper 1 connections, tower layers (timeout, concurrency
//! limit, bearer auth, body limit) around the [`Router`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::limit::ConcurrencyLimitLayer;
use tower::timeout::{error::Elapsed, TimeoutLayer};
use tower::ServiceBuilder;

use super::layers::{BearerAuthLayer, BodyLimitLayer};
use super::response::error_response;
use super::routes::{Router, SiteView};
use crate::control::site::SiteHosts;
use crate::control::Handle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the admin API would listen on {0}, which is not a loopback address, without a token: \
         set admin.token_file (clients then send `Authorization: Bearer <token>`) or listen on \
         127.0.0.1"
    )]
    NeedsToken(SocketAddr),
    #[error("admin API socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Bounds of the admin server. The defaults suit an operator's API on a busy machine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole-request bound (including reading the body), enforced by a tower timeout.
    pub request_timeout: Duration,
    /// How long a control route waits for the supervisor before answering `202 Accepted`;
    /// below `request_timeout` so the accepted answer is the one the client gets.
    pub control_wait: Duration,
    /// Requests served at once; more wait their turn.
    pub max_concurrent_requests: usize,
    /// Open connections; more wait in the listen backlog.
    pub max_connections: usize,
    pub max_body_bytes: usize,
    /// A client must send its request head within this (also ends idle keep-alives).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: super::REQUEST_TIMEOUT,
            control_wait: Duration::from_secs(25),
            max_concurrent_requests: 16,
            max_connections: 64,
            max_body_bytes: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Refuses a listener that anyone off this machine could reach when no token guards it.
/// An empty token counts as none.
pub fn check_listen(addr: SocketAddr, token: Option<&str>) -> Result<(), AdminError> {
    let has_token = token.is_some_and(|t| !t.trim().is_empty());
    if has_token || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(AdminError::NeedsToken(addr))
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true (or its sender is
/// dropped), then finishes the requests under way and returns.
pub async fn serve(
    listener: TcpListener,
    handle: Handle,
    token: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    serve_with(listener, handle, token, shutdown, Limits::default()).await
}

/// A tower error (only the timeout can happen) becomes an answer, not a dropped connection.
/// (The error type stays `BoxError` because tower maps readiness errors through it.)
fn timeout_to_response(
    result: Result<Response<Full<Bytes>>, BoxError>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(result.unwrap_or_else(|e| {
        if e.is::<Elapsed>() {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "request timed out")
        } else {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }))
}

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// [`serve`] for one host of a site over several: `/site/status` also asks the other
/// hosts, and `/site/accounts` takes their forwarded account changes.
pub async fn serve_site(
    listener: TcpListener,
    handle: Handle,
    token: Option<String>,
    site: Option<SiteHosts>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    serve_inner(listener, handle, token, site, shutdown, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    handle: Handle,
    token: Option<String>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<(), AdminError> {
    serve_inner(listener, handle, token, None, shutdown, limits).await
}

async fn serve_inner(
    listener: TcpListener,
    handle: Handle,
    token: Option<String>,
    site: Option<SiteHosts>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<(), AdminError> {
    let local = listener.local_addr()?;
    let token = token.filter(|t| !t.trim().is_empty());
    check_listen(local, token.as_deref())?;

    let service = ServiceBuilder::new()
        .map_result(timeout_to_response)
        .layer(TimeoutLayer::new(limits.request_timeout))
        .layer(ConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        .layer(BearerAuthLayer::new(token.as_deref().map(str::trim)))
        .layer(BodyLimitLayer::new(limits.max_body_bytes))
        .service(Router::new(
            handle,
            limits.control_wait,
            limits.max_body_bytes,
            Arc::new(SiteView {
                hosts: site,
                admin: local.to_string(),
            }),
        ));

    tracing::info!(%local, auth = token.is_some(), "admin API listening");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown_requested(&mut shutdown) => break,
        };
        // Reap finished connection tasks so the set does not grow with history.
        while connections.try_join_next().is_some() {}
        let svc = TowerToHyperService::new(service.clone());
        let mut stop = shutdown.clone();
        let header_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown_requested(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin API connection ended with an error");
            }
        });
    }

    tracing::info!(%local, "admin API stopping");
    drop(listener);
    let grace = limits.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("admin API connections still open after {grace:?}; closing them");
        connections.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_needs_no_token_elsewhere_one_is_required() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_listen(a("127.0.0.1:8089"), None).is_ok());
        assert!(check_listen(a("[::1]:8089"), None).is_ok());
        assert!(check_listen(a("[::ffff:127.0.0.1]:8089"), None).is_ok());
        assert!(matches!(
            check_listen(a("0.0.0.0:8089"), None),
            Err(AdminError::NeedsToken(_))
        ));
        assert!(check_listen(a("[::]:8089"), None).is_err());
        assert!(check_listen(a("10.0.0.1:8089"), Some("  ")).is_err());
        assert!(check_listen(a("0.0.0.0:8089"), Some("s3cret")).is_ok());
    }
}
