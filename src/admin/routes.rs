//! The admin API's routes: reads answer from the latest status, control routes hand a
//! request to the supervisor and answer `{"ok":true,"message":…}` or `{"ok":false,"error":…}`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONTENT_SECURITY_POLICY};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tower::Service;

use super::client::AdminClient;
use super::response::{error_response, json_response, with_type};
use super::{layers, logs, metrics};
use crate::control::accounts::Command as AccountsCommand;
use crate::control::site::{HostStatus, SiteHosts, SiteStatus};
use crate::control::{ControlError, Handle, Request as Control};

/// How long `/site/status` waits for another host's `/status`.
const HOST_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// What the admin API knows of the site: its other hosts (with `hosts`), and where this
/// host's own API listens.
#[derive(Debug)]
pub struct SiteView {
    pub hosts: Option<SiteHosts>,
    pub admin: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `POST /scale` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    instances: u32,
}

/// `POST /instances` body (optional: one instance without it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    count: u32,
}

/// The innermost service: routing and the handlers.
#[derive(Clone)]
pub struct Router {
    handle: Handle,
    /// How long a control route waits for the supervisor's answer before answering
    /// `202 Accepted` (the request stays queued; a rolling restart takes minutes).
    control_wait: Duration,
    max_body: usize,
    site: Arc<SiteView>,
}

impl Router {
    pub fn new(
        handle: Handle,
        control_wait: Duration,
        max_body: usize,
        site: Arc<SiteView>,
    ) -> Self {
        Self {
            handle,
            control_wait,
            max_body,
            site,
        }
    }
}

impl<B> Service<Request<Limited<B>>> for Router
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Limited<B>>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.route(req).await) })
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; use {allow}"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn control_error(e: &ControlError) -> Response<Full<Bytes>> {
    let status = match e {
        ControlError::NoSuchInstance(_) => StatusCode::NOT_FOUND,
        ControlError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::Ledger(_) => StatusCode::INTERNAL_SERVER_ERROR,
        e if e.is_refusal() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, &e.to_string())
}

fn no_instance(id: &str) -> Response<Full<Bytes>> {
    error_response(StatusCode::NOT_FOUND, &format!("no instance {id}"))
}

/// `?now=1`, `?now=true`, `?now` → true; absent, `0` or `false` → false.
fn query_now(query: Option<&str>) -> Result<bool, String> {
    let mut now = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("now", "" | "1" | "true") => now = true,
            ("now", "0" | "false") => now = false,
            ("now", v) => return Err(format!("now={v}: expected 1 or 0")),
            (k, _) => return Err(format!("unknown query parameter {k:?}")),
        }
    }
    Ok(now)
}

impl Router {
    async fn route<B>(self, req: Request<Limited<B>>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let is_get = method == Method::GET || method == Method::HEAD;
        let is_post = method == Method::POST;
        match segments.as_slice() {
            [] if is_get => page(),
            [] => method_not_allowed("GET, HEAD"),
            ["status"] if is_get => self.status(),
            ["metrics"] if is_get => self.metrics(),
            ["logs"] if is_get => logs::answer(&self.handle, req.uri().query()).await,
            ["status"] | ["metrics"] | ["logs"] => method_not_allowed("GET, HEAD"),
            ["scale"] if is_post => match self.body::<ScaleBody, B>(req).await {
                Ok(Some(body)) => self.control(Control::Scale(body.instances)).await,
                Ok(None) => error_response(StatusCode::BAD_REQUEST, "a JSON body is required"),
                Err(resp) => resp,
            },
            ["instances"] if is_post => match self.body::<AddBody, B>(req).await {
                Ok(Some(AddBody { count: 0 })) => {
                    error_response(StatusCode::BAD_REQUEST, "count must be at least 1")
                }
                Ok(Some(body)) => self.control(Control::Add(body.count)).await,
                Ok(None) => self.control(Control::Add(1)).await,
                Err(resp) => resp,
            },
            ["instances", id] if method == Method::DELETE => {
                let Ok(id) = id.parse::<u32>() else {
                    return no_instance(id);
                };
                match query_now(req.uri().query()) {
                    Ok(now) => self.control(Control::Remove { id, now }).await,
                    Err(e) => error_response(StatusCode::BAD_REQUEST, &e),
                }
            }
            ["instances", id, "restart"] if is_post => match id.parse::<u32>() {
                Ok(id) => self.control(Control::Restart(id)).await,
                Err(_) => no_instance(id),
            },
            ["restart"] if is_post => self.control(Control::RollingRestart).await,
            ["reload"] if is_post => self.control(Control::Reload).await,
            ["scale"] | ["instances", _, "restart"] | ["restart"] | ["reload"] => {
                method_not_allowed("POST")
            }
            ["accounts"] if is_get => self.accounts(AccountsCommand::List).await,
            ["accounts"] if is_post => match self.body::<AccountsCommand, B>(req).await {
                Ok(Some(AccountsCommand::Forwarded { .. })) => error_response(
                    StatusCode::BAD_REQUEST,
                    "forwarded changes go to POST /site/accounts",
                ),
                Ok(Some(cmd)) => self.accounts(cmd).await,
                Ok(None) => error_response(StatusCode::BAD_REQUEST, "a JSON body is required"),
                Err(resp) => resp,
            },
            ["accounts"] => method_not_allowed("GET, HEAD, POST"),
            ["site", "status"] if is_get => self.site_status().await,
            ["site", "status"] => method_not_allowed("GET, HEAD"),
            ["site", "accounts"] if is_post => match self.body::<AccountsCommand, B>(req).await {
                Ok(Some(cmd @ AccountsCommand::Forwarded { .. })) => self.accounts(cmd).await,
                Ok(_) => error_response(
                    StatusCode::BAD_REQUEST,
                    "expected a forwarded change ({\"action\":\"forwarded\",…}); account commands go to POST /accounts",
                ),
                Err(resp) => resp,
            },
            ["site", "accounts"] => method_not_allowed("POST"),
            ["instances"] => method_not_allowed("POST"),
            ["instances", _] => method_not_allowed("DELETE"),
            _ => error_response(StatusCode::NOT_FOUND, &format!("no route {path}")),
        }
    }

    fn status(&self) -> Response<Full<Bytes>> {
        // Serialized under the watch's read lock: no copy of a large status.
        let body = serde_json::to_vec(&*self.handle.status.borrow());
        match body {
            Ok(mut body) => {
                body.push(b'\n');
                with_type(StatusCode::OK, body.into(), "application/json")
            }
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// `GET /site/status`: this host's status and every other host's, asked at once, each
    /// with its error when it could not be read.
    async fn site_status(&self) -> Response<Full<Bytes>> {
        let local = self.handle.status.borrow().clone();
        let site = local.site.clone();
        let Some(sh) = &self.site.hosts else {
            let hosts = vec![HostStatus {
                name: None,
                admin: self.site.admin.clone(),
                status: Some(local),
                error: None,
            }];
            return site_json(&SiteStatus { site, hosts });
        };
        let mut asks = tokio::task::JoinSet::new();
        for (i, h) in sh.others().enumerate() {
            let (admin, token) = (h.admin.clone(), sh.token.clone());
            asks.spawn(async move {
                let answer = async {
                    let client = AdminClient::resolve(&admin, token)
                        .await?
                        .with_timeouts(HOST_STATUS_TIMEOUT, HOST_STATUS_TIMEOUT);
                    client.get_status().await
                };
                (i, answer.await.map_err(|e| e.to_string()))
            });
        }
        let mut answers: Vec<Option<Result<crate::control::Status, String>>> =
            (0..sh.hosts.len()).map(|_| None).collect();
        while let Some(Ok((i, answer))) = asks.join_next().await {
            answers[i] = Some(answer);
        }
        let mut others = answers.into_iter();
        let hosts = sh
            .hosts
            .iter()
            .map(|h| {
                let (status, error) = if h.name == sh.me {
                    (Some(local.clone()), None)
                } else {
                    match others.next().flatten() {
                        Some(Ok(st)) => (Some(st), None),
                        Some(Err(e)) => (None, Some(e)),
                        None => (None, Some("not asked".to_string())),
                    }
                };
                HostStatus {
                    name: Some(h.name.clone()),
                    admin: h.admin.clone(),
                    status,
                    error,
                }
            })
            .collect();
        site_json(&SiteStatus { site, hosts })
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let text = metrics::render(&self.handle.status.borrow());
        with_type(StatusCode::OK, text.into(), metrics::CONTENT_TYPE)
    }

    /// Reads and decodes a JSON body; an empty body is `None`.
    async fn body<T, B>(&self, req: Request<Limited<B>>) -> Result<Option<T>, Response<Full<Bytes>>>
    where
        T: for<'de> Deserialize<'de>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let bytes = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(layers::payload_too_large(self.max_body));
            }
            Err(e) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request body: {e}"),
                ))
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| error_response(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")))
    }

    /// `GET /accounts` (the ledger) and `POST /accounts` (a change sent to every instance):
    /// `{"ok":true,"message":…,"keys":[…],"accounts":[…],"instances":[…]}`.
    async fn accounts(&self, cmd: AccountsCommand) -> Response<Full<Bytes>> {
        if cmd != AccountsCommand::List {
            tracing::info!(action = cmd_name(&cmd), "admin accounts request");
        }
        let wait = tokio::time::Instant::now() + self.control_wait;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = tokio::time::timeout_at(
            wait,
            self.handle.submit(Control::Accounts { cmd, reply: tx }),
        )
        .await;
        match queued {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return control_error(&e),
            Err(_) => {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is not taking requests right now; try again",
                )
            }
        }
        match tokio::time::timeout_at(wait, rx).await {
            Ok(Ok(Ok(report))) => match serde_json::to_value(&report) {
                Ok(serde_json::Value::Object(mut doc)) => {
                    doc.insert("ok".into(), true.into());
                    json_response(StatusCode::OK, &serde_json::Value::Object(doc))
                }
                _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "encoding the report"),
            },
            Ok(Ok(Err(e))) => control_error(&e),
            Ok(Err(_)) => control_error(&ControlError::ShuttingDown),
            Err(_) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "ok": true,
                    "pending": true,
                    "message": "accepted; the instances are still being updated (see `storeherd accounts list`)",
                }),
            ),
        }
    }

    async fn control(&self, req: Control) -> Response<Full<Bytes>> {
        tracing::info!(request = ?req, "admin control request");
        let wait = tokio::time::Instant::now() + self.control_wait;
        let answer = match tokio::time::timeout_at(wait, self.handle.submit(req)).await {
            Ok(Ok(rx)) => tokio::time::timeout_at(wait, rx).await,
            Ok(Err(e)) => Ok(Ok(Err(e))),
            Err(_) => {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is not taking requests right now; try again",
                )
            }
        };
        match answer {
            Ok(Ok(Ok(message))) => json_response(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "message": message }),
            ),
            Ok(Ok(Err(e))) => control_error(&e),
            // The supervisor dropped the answer: it is going away.
            Ok(Err(_)) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &ControlError::ShuttingDown.to_string(),
            ),
            Err(_) => json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({
                    "ok": true,
                    "pending": true,
                    "message": "accepted; still in progress (follow it with `storeherd status`)",
                }),
            ),
        }
    }
}

/// The status page: one self-contained HTML document (inline style and script, no other
/// request than `/status`), so it works offline and behind the same token as the API.
const PAGE: &str = include_str!("page.html");

/// Only inline code and same-origin requests: the page loads nothing from anywhere else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn page() -> Response<Full<Bytes>> {
    let mut resp = with_type(StatusCode::OK, PAGE.into(), "text/html; charset=utf-8");
    resp.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    resp
}

fn site_json(doc: &SiteStatus) -> Response<Full<Bytes>> {
    match serde_json::to_value(doc) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The action's name for logs: the command itself carries keys, which stay out of them.
fn cmd_name(cmd: &AccountsCommand) -> &'static str {
    match cmd {
        AccountsCommand::Add { .. } => "add",
        AccountsCommand::AddKey { .. } => "add-key",
        AccountsCommand::Rm { .. } => "rm",
        AccountsCommand::Gen { .. } => "gen",
        AccountsCommand::List => "list",
        AccountsCommand::Forwarded { .. } => "forwarded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_query() {
        assert_eq!(query_now(None), Ok(false));
        assert_eq!(query_now(Some("now=1")), Ok(true));
        assert_eq!(query_now(Some("now")), Ok(true));
        assert_eq!(query_now(Some("now=true")), Ok(true));
        assert_eq!(query_now(Some("now=0")), Ok(false));
        assert!(query_now(Some("now=yes")).is_err());
        assert!(query_now(Some("later=1")).is_err());
    }
}
