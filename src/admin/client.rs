//! A small HTTP/1 client of the admin API, for the control subcommands: one connection per
//! request, bearer token, timeouts, and errors that tell the operator what to do.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::control::accounts::{Command, Report};
use crate::control::site::SiteStatus;
use crate::control::{LogsPage, Status};

/// Bound on an answer's size: a status of thousands of instances fits many times over.
const MAX_ANSWER: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve the admin API address {target}: {source}")]
    Resolve {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot reach the admin API at {addr}: is `storeherd up` running?")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin API at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error(
        "the admin API at {addr} wants a valid token ({message}): pass --token-file FILE or set \
         admin.token_file in the topology"
    )]
    Unauthorized { addr: SocketAddr, message: String },
    /// The API understood the request and refused it (no such instance, invalid, shutting
    /// down…); `message` is its own explanation.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("talking to the admin API at {addr}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("unexpected answer from the admin API at {addr}: {detail}")]
    BadAnswer { addr: SocketAddr, detail: String },
}

/// What a control route answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReply {
    pub message: String,
    /// The supervisor had not finished when the API stopped waiting (`202 Accepted`); the
    /// change goes on and shows in the status.
    pub pending: bool,
}

#[derive(Deserialize)]
struct ReplyDoc {
    ok: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    pending: bool,
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
    read_timeout: Duration,
    control_timeout: Duration,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        AdminClient {
            addr,
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            read_timeout: Duration::from_secs(10),
            // Past the server's own bound, so its answer (possibly `202`) arrives first.
            control_timeout: super::REQUEST_TIMEOUT + Duration::from_secs(5),
        }
    }

    /// Bounds for reads (`status`, `metrics`) and for control requests.
    pub fn with_timeouts(mut self, read: Duration, control: Duration) -> Self {
        self.read_timeout = read;
        self.control_timeout = control;
        self
    }

    /// A client of the API at `target` (`host:port`, the host possibly a name, looked up
    /// now): how one host of a site reaches another's.
    pub async fn resolve(target: &str, token: Option<String>) -> Result<Self, ClientError> {
        let resolve = |source| ClientError::Resolve {
            target: target.to_string(),
            source,
        };
        let addr = tokio::net::lookup_host(target)
            .await
            .map_err(resolve)?
            .next()
            .ok_or_else(|| resolve(std::io::ErrorKind::NotFound.into()))?;
        Ok(AdminClient::new(addr, token))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /site/status`: every host's status (or why it is missing).
    pub async fn get_site_status(&self) -> Result<SiteStatus, ClientError> {
        let body = self.get_site_status_raw().await?;
        serde_json::from_slice(&body).map_err(|e| self.bad(format!("site status document: {e}")))
    }

    /// `GET /site/status` as the server sent it.
    pub async fn get_site_status_raw(&self) -> Result<Bytes, ClientError> {
        let (status, body) = self
            .send(Method::GET, "/site/status", None, self.read_timeout)
            .await?;
        self.expect_success(status, &body)?;
        Ok(body)
    }

    /// `POST /site/accounts`: hands another host of the site a change this one took.
    pub async fn forward(&self, cmd: &Command) -> Result<(), ClientError> {
        let json = serde_json::to_value(cmd)
            .map_err(|e| self.bad(format!("encoding the request: {e}")))?;
        let (status, body) = self
            .send(
                Method::POST,
                "/site/accounts",
                Some(json),
                self.control_timeout,
            )
            .await?;
        self.expect_success(status, &body)
    }

    /// `GET /status`, decoded.
    pub async fn get_status(&self) -> Result<Status, ClientError> {
        let body = self.get_status_raw().await?;
        serde_json::from_slice(&body).map_err(|e| self.bad(format!("status document: {e}")))
    }

    /// `GET /status` as the server sent it (for `status --json`, which passes it on whole).
    pub async fn get_status_raw(&self) -> Result<Bytes, ClientError> {
        let (status, body) = self
            .send(Method::GET, "/status", None, self.read_timeout)
            .await?;
        self.expect_success(status, &body)?;
        Ok(body)
    }

    /// `GET /metrics`.
    pub async fn get_metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self
            .send(Method::GET, "/metrics", None, self.read_timeout)
            .await?;
        self.expect_success(status, &body)?;
        String::from_utf8(body.to_vec()).map_err(|_| self.bad("metrics are not UTF-8".into()))
    }

    /// `GET /logs`: the last `lines` lines of one instance (or of all, interleaved), or with
    /// `cursor` (from an earlier page) the lines written since.
    pub async fn get_logs(
        &self,
        instance: Option<u32>,
        lines: usize,
        cursor: Option<&str>,
    ) -> Result<LogsPage, ClientError> {
        let mut path = format!("/logs?lines={lines}");
        if let Some(id) = instance {
            path.push_str(&format!("&instance={id}"));
        }
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = self
            .send(Method::GET, &path, None, self.read_timeout)
            .await?;
        self.expect_success(status, &body)?;
        serde_json::from_slice(&body).map_err(|e| self.bad(format!("logs document: {e}")))
    }

    /// `POST path` with an optional JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ControlReply, ClientError> {
        let (status, answer) = self
            .send(Method::POST, path, body, self.control_timeout)
            .await?;
        self.reply(status, &answer)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<ControlReply, ClientError> {
        let (status, answer) = self
            .send(Method::DELETE, path, None, self.control_timeout)
            .await?;
        self.reply(status, &answer)
    }

    pub async fn scale(&self, instances: u32) -> Result<ControlReply, ClientError> {
        self.post(
            "/scale",
            Some(serde_json::json!({ "instances": instances })),
        )
        .await
    }

    pub async fn add(&self, count: u32) -> Result<ControlReply, ClientError> {
        self.post("/instances", Some(serde_json::json!({ "count": count })))
            .await
    }

    pub async fn remove(&self, id: u32, now: bool) -> Result<ControlReply, ClientError> {
        let query = if now { "?now=1" } else { "" };
        self.delete(&format!("/instances/{id}{query}")).await
    }

    pub async fn restart(&self, id: u32) -> Result<ControlReply, ClientError> {
        self.post(&format!("/instances/{id}/restart"), None).await
    }

    pub async fn rolling_restart(&self) -> Result<ControlReply, ClientError> {
        self.post("/restart", None).await
    }

    pub async fn reload(&self) -> Result<ControlReply, ClientError> {
        self.post("/reload", None).await
    }

    /// `storeherd accounts …`: `GET /accounts` for the list, `POST /accounts` for a change.
    pub async fn accounts(&self, cmd: &Command) -> Result<Report, ClientError> {
        let (status, body) = match cmd {
            Command::List => {
                self.send(Method::GET, "/accounts", None, self.read_timeout)
                    .await?
            }
            cmd => {
                let json = serde_json::to_value(cmd)
                    .map_err(|e| self.bad(format!("encoding the request: {e}")))?;
                self.send(Method::POST, "/accounts", Some(json), self.control_timeout)
                    .await?
            }
        };
        self.expect_success(status, &body)?;
        serde_json::from_slice(&body).map_err(|e| {
            self.bad(format!(
                "accounts report: {e}: {}",
                String::from_utf8_lossy(&body)
            ))
        })
    }

    fn bad(&self, detail: String) -> ClientError {
        ClientError::BadAnswer {
            addr: self.addr,
            detail,
        }
    }

    /// The API's `{"error": …}` text, or the raw body when it is not that document.
    fn error_text(body: &[u8]) -> String {
        serde_json::from_slice::<ReplyDoc>(body)
            .ok()
            .and_then(|d| d.error)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
    }

    fn expect_success(&self, status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                addr: self.addr,
                message: Self::error_text(body),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message: Self::error_text(body),
            });
        }
        Ok(())
    }

    fn reply(&self, status: StatusCode, body: &[u8]) -> Result<ControlReply, ClientError> {
        self.expect_success(status, body)?;
        let doc: ReplyDoc = serde_json::from_slice(body)
            .map_err(|e| self.bad(format!("{e}: {}", String::from_utf8_lossy(body))))?;
        if !doc.ok {
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message: doc.error.unwrap_or_default(),
            });
        }
        Ok(ControlReply {
            message: doc.message.unwrap_or_default(),
            pending: doc.pending || status == StatusCode::ACCEPTED,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = self.exchange(method, path, body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr,
                timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let addr = self.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Unreachable { addr, source })?;
        let _ = stream.set_nodelay(true);
        let http = |source| ClientError::Http { addr, source };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin API client connection");
            }
        });

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string());
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| self.bad("the token holds characters a header cannot".into()))?;
            req = req.header(AUTHORIZATION, value);
        }
        let payload = match body {
            Some(json) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| self.bad(format!("building the request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| self.bad(format!("reading the answer: {e}")))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }
}
