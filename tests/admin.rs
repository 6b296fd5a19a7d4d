//! The admin API over real HTTP on ephemeral loopback ports: contract of `/status` and
//! `/metrics`, control routes down to the supervisor's request channel, auth, limits, and
//! the `storeherd` binary's control commands against it. The supervisor's side of the
//! request channel is a small task here: it answers like the supervisor would and hands
//! every request it saw to the test.

mod support;

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use storeherd::admin::client::{AdminClient, ClientError};
use storeherd::admin::prom;
use storeherd::admin::{check_listen, serve, serve_with, AdminError, Limits};
use storeherd::control::{
    Answer, ControlError, Handle, InstanceState, InstanceStatus, Request, Status,
};
use storeherd::topology::TopologyError;
use support::admin::{INSTANCE_KEYS, STATUS_KEYS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Bound on every wait in these tests (a hang fails the test instead of blocking CI).
const BOUND: Duration = Duration::from_secs(20);

fn instance(id: u32, state: InstanceState) -> InstanceStatus {
    InstanceStatus {
        id,
        state,
        pid: (state != InstanceState::Backoff).then_some(4000 + id),
        port: 18100 + id as u16,
        eport: 18200 + id as u16,
        home: format!("/var/lib/storeherd/homes/{id}"),
        restarts: u64::from(id) - 1,
        connections_active: u64::from(id),
        connections_total: 10 * u64::from(id),
        bytes_in: 1000 * u64::from(id),
        bytes_out: 2000 * u64::from(id),
        connect_failures: 1,
        busy_total: 2,
        cpu_percent: 0.4,
        rss_bytes: 9_437_184,
        uptime_s: 12,
        queued_blocks: 0,
        handoff: false,
    }
}

fn sample_status() -> Status {
    Status {
        site: Some("a".into()),
        listen: "127.0.0.1:8081".into(),
        instances: vec![
            instance(1, InstanceState::Ready),
            instance(2, InstanceState::Backoff),
        ],
        rejected_total: 5,
        upkeep: Default::default(),
        connections_active: 3,
        proxy_header_accepted_total: 0,
        proxy_header_rejected_total: 0,
    }
}

/// What the stand-in supervisor answers. Instances 1 and 2 exist; scaling is bounded to
/// 64; a reload is refused as a broken file would be; a rolling restart is answered only
/// when the test says so (to see the API stop waiting).
fn answer(req: &Request) -> Option<Answer> {
    Some(match *req {
        Request::Scale(n) if n > 64 => Err(ControlError::TooManyInstances { max: 64 }),
        Request::Scale(n) => Ok(format!("scaling to {n} instances")),
        Request::Add(k) => Ok(format!("adding {k} instance(s)")),
        Request::Remove { id, now } if id <= 2 => Ok(format!("removing {id} (now: {now})")),
        Request::Restart(id) if id <= 2 => Ok(format!("restarting {id}")),
        Request::Remove { id, .. } | Request::Restart(id) => Err(ControlError::NoSuchInstance(id)),
        Request::Reload => Err(ControlError::BadTopology(Arc::new(TopologyError::At {
            file: "topology.yaml".into(),
            line: 3,
            column: 1,
            message: "unknown key `instancs`".into(),
        }))),
        Request::RollingRestart => return None,
        // Answered on their own channel by the accounts actor (tests/accounts.rs).
        Request::Accounts { .. } => Err(ControlError::ShuttingDown),
    })
}

struct Fixture {
    addr: SocketAddr,
    status: watch::Sender<Status>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), AdminError>>,
    /// Every request the supervisor received, in order.
    seen: mpsc::UnboundedReceiver<Request>,
    /// Answers held back (rolling restarts), to release later.
    held: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fixture {
    async fn start(token: Option<&str>) -> Fixture {
        Self::start_with(token, Limits::default()).await
    }

    async fn start_with(token: Option<&str>, limits: Limits) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (status_tx, status_rx) = watch::channel(sample_status());
        let (req_tx, mut req_rx) = mpsc::channel::<(Request, oneshot::Sender<Answer>)>(8);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (held_tx, held) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((req, reply)) = req_rx.recv().await {
                match answer(&req) {
                    Some(a) => {
                        let _ = reply.send(a);
                    }
                    None => {
                        let _ = held_tx.send(reply);
                    }
                }
                let _ = seen_tx.send(req);
            }
        });
        let handle = Handle {
            status: status_rx,
            requests: req_tx,
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve_with(
            listener,
            handle,
            token.map(str::to_owned),
            shutdown_rx,
            limits,
        ));
        Fixture {
            addr,
            status: status_tx,
            shutdown: shutdown_tx,
            server,
            seen,
            held,
        }
    }

    async fn next_seen(&mut self) -> Request {
        tokio::time::timeout(BOUND, self.seen.recv())
            .await
            .expect("the supervisor saw no request")
            .expect("the supervisor task ended")
    }

    fn nothing_seen(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

#[derive(Debug)]
struct HttpAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close`), so the tests control every byte.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> HttpAnswer {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut request = head.replace('\n', "\r\n").into_bytes();
        request.extend_from_slice(body);
        s.write_all(&request).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(BOUND, exchange)
        .await
        .expect("no answer");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    HttpAnswer {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpAnswer {
    request_auth(addr, method, path, body, None).await
}

async fn request_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> HttpAnswer {
    let mut head = format!("{method} {path} HTTP/1.1\nHost: {addr}\nConnection: close\n");
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\nContent-Length: {}\n",
            body.len()
        ));
    }
    head.push('\n');
    raw(addr, &head, body.as_bytes()).await
}

fn assert_error(a: &HttpAnswer, status: u16, contains: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let doc = a.json();
    assert_eq!(doc["ok"], Value::Bool(false), "{doc}");
    let error = doc["error"].as_str().expect("error text");
    assert!(error.contains(contains), "{error:?} lacks {contains:?}");
}

fn assert_ok(a: &HttpAnswer, message: &str) {
    assert_eq!(a.status, 200, "{a:?}");
    let doc = a.json();
    assert_eq!(doc["ok"], Value::Bool(true), "{doc}");
    assert_eq!(doc["message"], Value::String(message.into()), "{doc}");
}

#[tokio::test]
async fn status_json_matches_the_contract() {
    let fx = Fixture::start(None).await;
    let a = request(fx.addr, "GET", "/status", None).await;
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let doc = a.json();
    for key in STATUS_KEYS {
        assert!(doc.get(key).is_some(), "no {key} in {doc}");
    }
    assert_eq!(doc["site"], "a");
    assert_eq!(doc["listen"], "127.0.0.1:8081");
    let instances = doc["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    let states = [
        "provisioning",
        "starting",
        "ready",
        "unhealthy",
        "draining",
        "backoff",
        "failed",
        "stopped",
    ];
    for inst in instances {
        for key in INSTANCE_KEYS {
            assert!(inst.get(key).is_some(), "no {key} in {inst}");
        }
        assert!(states.contains(&inst["state"].as_str().unwrap()));
    }
    let first = &instances[0];
    assert_eq!(first["id"], 1);
    assert_eq!(first["state"], "ready");
    assert_eq!(first["pid"], 4001);
    assert_eq!(first["port"], 18101);
    assert_eq!(first["eport"], 18201);
    assert_eq!(first["home"], "/var/lib/storeherd/homes/1");
    assert_eq!(first["connections_total"], 10);
    assert_eq!(first["rss_bytes"], 9_437_184);
    assert!((first["cpu_percent"].as_f64().unwrap() - 0.4).abs() < 1e-6);
    assert_eq!(instances[1]["state"], "backoff");
    assert_eq!(instances[1]["pid"], Value::Null);
    // The whole document decodes back into the same status.
    let back: Status = serde_json::from_value(doc).unwrap();
    assert_eq!(back, sample_status());

    // A new status from the supervisor shows on the next request.
    fx.status.send_modify(|s| {
        s.site = None;
        s.instances[1].state = InstanceState::Failed;
    });
    let doc = request(fx.addr, "GET", "/status", None).await.json();
    assert_eq!(doc["site"], Value::Null);
    assert_eq!(doc["instances"][1]["state"], "failed");
}

#[tokio::test]
async fn metrics_parse_and_carry_every_required_metric() {
    let fx = Fixture::start(None).await;
    let a = request(fx.addr, "GET", "/metrics", None).await;
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = a.text();
    let parsed = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for name in prom::REQUIRED_PER_INSTANCE {
        for id in ["1", "2"] {
            assert!(
                parsed.matching(name, &[("instance", id)]).count() > 0,
                "no {name}{{instance=\"{id}\"}} in\n{text}"
            );
        }
    }
    let v = |name: &str, labels: &[(&str, &str)]| {
        parsed
            .find(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    assert_eq!(v("storeherd_instance_up", &[("instance", "1")]), 1.0);
    assert_eq!(v("storeherd_instance_up", &[("instance", "2")]), 0.0);
    assert_eq!(
        v("storeherd_instance_restarts_total", &[("instance", "2")]),
        1.0
    );
    assert_eq!(
        v("storeherd_proxy_connections_active", &[("instance", "2")]),
        2.0
    );
    assert_eq!(
        v("storeherd_proxy_connections_total", &[("instance", "2")]),
        20.0
    );
    assert_eq!(
        v(
            "storeherd_proxy_bytes_total",
            &[("instance", "2"), ("direction", "in")]
        ),
        2000.0
    );
    assert_eq!(
        v(
            "storeherd_proxy_bytes_total",
            &[("instance", "2"), ("direction", "out")]
        ),
        4000.0
    );
    assert_eq!(
        v(
            "storeherd_proxy_connect_failures_total",
            &[("instance", "1")]
        ),
        1.0
    );
    assert_eq!(v("storeherd_proxy_busy_total", &[("instance", "1")]), 2.0);
    assert_eq!(
        v("storeherd_instance_rss_bytes", &[("instance", "1")]),
        9_437_184.0
    );
    assert_eq!(v("storeherd_proxy_rejected_total", &[]), 5.0);
    assert_eq!(parsed.types["storeherd_proxy_rejected_total"], "counter");
    assert_eq!(parsed.types["storeherd_instance_cpu_percent"], "gauge");
}

#[tokio::test]
async fn control_routes_reach_the_supervisor() {
    let mut fx = Fixture::start(None).await;
    let addr = fx.addr;

    let a = request(addr, "POST", "/scale", Some(r#"{"instances":6}"#)).await;
    assert_ok(&a, "scaling to 6 instances");
    assert!(matches!(fx.next_seen().await, Request::Scale(6)));

    let a = request(addr, "POST", "/instances", None).await;
    assert_ok(&a, "adding 1 instance(s)");
    assert!(matches!(fx.next_seen().await, Request::Add(1)));

    let a = request(addr, "POST", "/instances", Some(r#"{"count":3}"#)).await;
    assert_ok(&a, "adding 3 instance(s)");
    assert!(matches!(fx.next_seen().await, Request::Add(3)));

    let a = request(addr, "DELETE", "/instances/2", None).await;
    assert_ok(&a, "removing 2 (now: false)");
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 2, now: false }
    ));

    let a = request(addr, "DELETE", "/instances/1?now=1", None).await;
    assert_ok(&a, "removing 1 (now: true)");
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 1, now: true }
    ));

    let a = request(addr, "POST", "/instances/2/restart", None).await;
    assert_ok(&a, "restarting 2");
    assert!(matches!(fx.next_seen().await, Request::Restart(2)));

    // Errors of the supervisor keep their meaning as HTTP statuses.
    let a = request(addr, "DELETE", "/instances/9", None).await;
    assert_error(&a, 404, "no instance 9");
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 9, now: false }
    ));
    let a = request(addr, "POST", "/instances/7/restart", None).await;
    assert_error(&a, 404, "no instance 7");
    assert!(matches!(fx.next_seen().await, Request::Restart(7)));
    let a = request(addr, "POST", "/scale", Some(r#"{"instances":100}"#)).await;
    assert_error(&a, 400, "at most 64 instances");
    assert!(matches!(fx.next_seen().await, Request::Scale(100)));
    let a = request(addr, "POST", "/reload", None).await;
    assert_error(&a, 400, "unknown key `instancs`");
    assert!(matches!(fx.next_seen().await, Request::Reload));

    // Requests the API itself refuses never reach the supervisor.
    for (method, path, body, status, text) in [
        (
            "POST",
            "/scale",
            Some("{\"instances\":"),
            400,
            "bad JSON body",
        ),
        (
            "POST",
            "/scale",
            Some(r#"{"instances":-1}"#),
            400,
            "bad JSON body",
        ),
        (
            "POST",
            "/scale",
            Some(r#"{"count":2}"#),
            400,
            "bad JSON body",
        ),
        ("POST", "/scale", None, 400, "a JSON body is required"),
        (
            "POST",
            "/instances",
            Some(r#"{"count":0}"#),
            400,
            "at least 1",
        ),
        ("DELETE", "/instances/abc", None, 404, "no instance abc"),
        ("DELETE", "/instances/1?now=maybe", None, 400, "now=maybe"),
        ("POST", "/instances/x/restart", None, 404, "no instance x"),
    ] {
        let a = request(addr, method, path, body).await;
        assert_error(&a, status, text);
    }
    assert!(fx.nothing_seen());
}

#[tokio::test]
async fn a_slow_supervisor_gets_the_request_and_the_client_a_202() {
    let limits = Limits {
        control_wait: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut fx = Fixture::start_with(None, limits).await;
    let a = request(fx.addr, "POST", "/restart", None).await;
    assert_eq!(a.status, 202, "{a:?}");
    let doc = a.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["pending"], true);
    assert!(matches!(fx.next_seen().await, Request::RollingRestart));
    // The request is still queued at the supervisor, whose answer is simply not awaited.
    let held = fx.held.recv().await.unwrap();
    let _ = held.send(Ok("rolling restart done".into()));
}

#[tokio::test]
async fn the_request_timeout_answers_instead_of_hanging() {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        control_wait: Duration::from_secs(60),
        ..Limits::default()
    };
    let mut fx = Fixture::start_with(None, limits).await;
    let a = request(fx.addr, "POST", "/restart", None).await;
    assert_error(&a, 503, "timed out");
    assert!(matches!(fx.next_seen().await, Request::RollingRestart));
    // The server still serves afterwards.
    assert_eq!(request(fx.addr, "GET", "/status", None).await.status, 200);
}

#[tokio::test]
async fn a_supervisor_gone_away_means_503() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_status_tx, status) = watch::channel(sample_status());
    let (requests, receiver) = mpsc::channel(1);
    drop(receiver);
    let (_stop_tx, stop) = watch::channel(false);
    let server = tokio::spawn(serve(listener, Handle { status, requests }, None, stop));
    let a = request(addr, "POST", "/scale", Some(r#"{"instances":2}"#)).await;
    assert_error(&a, 503, "shutting down");
    // Reads still work from the last status.
    assert_eq!(request(addr, "GET", "/status", None).await.status, 200);
    server.abort();
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let mut fx = Fixture::start(Some("s3cret-token")).await;
    let addr = fx.addr;
    let a = request(addr, "GET", "/status", None).await;
    assert_error(&a, 401, "bearer token");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    let a = request_auth(addr, "GET", "/status", None, Some("Bearer wrong")).await;
    assert_error(&a, 401, "bearer token");
    let a = request_auth(addr, "GET", "/metrics", None, Some("Basic s3cret-token")).await;
    assert_error(&a, 401, "bearer token");
    let a = request_auth(
        addr,
        "POST",
        "/scale",
        Some(r#"{"instances":2}"#),
        Some("Bearer s3cret-toke"),
    )
    .await;
    assert_error(&a, 401, "bearer token");
    assert!(
        fx.nothing_seen(),
        "a refused request reached the supervisor"
    );

    let a = request_auth(addr, "GET", "/status", None, Some("Bearer s3cret-token")).await;
    assert_eq!(a.status, 200);
    let a = request_auth(
        addr,
        "POST",
        "/scale",
        Some(r#"{"instances":2}"#),
        Some("Bearer s3cret-token"),
    )
    .await;
    assert_ok(&a, "scaling to 2 instances");
    assert!(matches!(fx.next_seen().await, Request::Scale(2)));
}

#[tokio::test]
async fn a_reachable_listener_without_a_token_is_refused() {
    let any: SocketAddr = "0.0.0.0:8089".parse().unwrap();
    assert!(matches!(
        check_listen(any, None),
        Err(AdminError::NeedsToken(_))
    ));
    assert!(check_listen(any, Some("")).is_err());
    assert!(check_listen(any, Some("t")).is_ok());
    assert!(check_listen("127.0.0.1:8089".parse().unwrap(), None).is_ok());

    // `serve` itself refuses such a socket before answering anything.
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let (_status_tx, status) = watch::channel(sample_status());
    let (requests, _rx) = mpsc::channel(1);
    let (_stop_tx, stop) = watch::channel(false);
    let result = tokio::time::timeout(
        BOUND,
        serve(listener, Handle { status, requests }, None, stop),
    )
    .await
    .expect("serve did not return");
    let err = result.unwrap_err();
    assert!(matches!(err, AdminError::NeedsToken(_)));
    assert!(err.to_string().contains("token_file"), "{err}");
}

#[tokio::test]
async fn body_limit_unknown_routes_and_wrong_methods() {
    let mut fx = Fixture::start(None).await;
    let addr = fx.addr;

    // Declared too large: refused before reading.
    let head = format!(
        "POST /scale HTTP/1.1\nHost: {addr}\nConnection: close\nContent-Type: application/json\nContent-Length: 100000\n\n"
    );
    assert_error(&raw(addr, &head, b"").await, 413, "over 4096 bytes");

    // Chunked, so the size shows only while reading.
    let padding = " ".repeat(6000);
    let chunk = format!("{{\"instances\":2{padding}}}");
    let body = format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len());
    let head = format!(
        "POST /scale HTTP/1.1\nHost: {addr}\nConnection: close\nTransfer-Encoding: chunked\n\n"
    );
    assert_error(
        &raw(addr, &head, body.as_bytes()).await,
        413,
        "over 4096 bytes",
    );

    // Just under the limit is fine.
    let padding = " ".repeat(4000);
    let body = format!("{{\"instances\":2{padding}}}");
    assert_ok(
        &request(addr, "POST", "/scale", Some(&body)).await,
        "scaling to 2 instances",
    );
    assert!(matches!(fx.next_seen().await, Request::Scale(2)));

    // (`/` is the status page.)
    for path in [
        "/nope",
        "/status/extra",
        "/instances/1/stop",
        "/accounts/extra",
    ] {
        assert_error(&request(addr, "GET", path, None).await, 404, "no route");
    }
    for (method, path, allow) in [
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("GET", "/scale", "POST"),
        ("GET", "/instances", "POST"),
        ("POST", "/instances/1", "DELETE"),
        ("GET", "/instances/1/restart", "POST"),
        ("GET", "/restart", "POST"),
        ("PUT", "/reload", "POST"),
    ] {
        let a = request(addr, method, path, None).await;
        assert_error(&a, 405, "method not allowed");
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
    }
    assert!(fx.nothing_seen());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let fx = Fixture::start(None).await;
    assert_eq!(request(fx.addr, "GET", "/status", None).await.status, 200);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(fx.addr).await.unwrap();
    idle.write_all(format!("GET /status HTTP/1.1\r\nHost: {}\r\n\r\n", fx.addr).as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let mut fx = fx;
    fx.shutdown.send(true).unwrap();
    let result = tokio::time::timeout(BOUND, &mut fx.server)
        .await
        .expect("serve did not stop")
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test]
async fn the_client_library_speaks_the_api() {
    let mut fx = Fixture::start(Some("tok")).await;
    let client = AdminClient::new(fx.addr, Some("tok\n".into()));
    assert_eq!(client.get_status().await.unwrap(), sample_status());
    let metrics = client.get_metrics().await.unwrap();
    prom::parse(&metrics).unwrap();

    let reply = client.scale(4).await.unwrap();
    assert_eq!(reply.message, "scaling to 4 instances");
    assert!(!reply.pending);
    assert!(matches!(fx.next_seen().await, Request::Scale(4)));
    client.add(2).await.unwrap();
    assert!(matches!(fx.next_seen().await, Request::Add(2)));
    client.remove(1, true).await.unwrap();
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 1, now: true }
    ));
    client.restart(2).await.unwrap();
    assert!(matches!(fx.next_seen().await, Request::Restart(2)));

    match client.remove(9, false).await {
        Err(ClientError::Refused {
            status: 404,
            message,
        }) => {
            assert_eq!(message, "no instance 9")
        }
        other => panic!("{other:?}"),
    }
    match client.reload().await {
        Err(ClientError::Refused {
            status: 400,
            message,
        }) => {
            assert!(message.contains("instancs"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    let wrong = AdminClient::new(fx.addr, Some("nope".into()));
    let err = wrong.get_status().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err:?}");
    let none = AdminClient::new(fx.addr, None);
    assert!(matches!(
        none.scale(1).await,
        Err(ClientError::Unauthorized { .. })
    ));

    let closed = closed_port().await;
    let err = AdminClient::new(closed, None)
        .get_status()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "cannot reach the admin API at {closed}: is `storeherd up` running?"
        )),
        "{err}"
    );
}

/// A loopback port nothing listens on (from the test kit's registry).
async fn closed_port() -> SocketAddr {
    support::ports::addr()
}

/// Runs the real binary; bounded, and killed if the test stops waiting.
async fn storeherd(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_storeherd"));
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(BOUND, cmd.output())
        .await
        .expect("storeherd did not finish")
        .expect("storeherd did not start")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_status_and_control_commands() {
    let mut fx = Fixture::start(Some("bin-token")).await;
    let addr = fx.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "bin-token\n").unwrap();
    let token = token_file.to_str().unwrap();

    // --json: one JSON document on stdout and nothing else.
    let out = storeherd(&["status", "--admin", &addr, "--token-file", token, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("stdout is one JSON document");
    let back: Status = serde_json::from_value(doc).unwrap();
    assert_eq!(back, sample_status());

    // The table: summary, header, one row per instance.
    let out = storeherd(&["status", "--admin", &addr, "--token-file", token]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].contains("127.0.0.1:8081") && lines[0].contains("site a"));
    assert!(lines[1].contains("STATE") && lines[1].contains("RSS MiB"));
    assert!(lines[2].contains("ready") && lines[2].contains("4001"));
    assert!(lines[3].contains("backoff"));

    let out = storeherd(&["scale", "3", "--admin", &addr, "--token-file", token]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "scaling to 3 instances\n");
    assert!(matches!(fx.next_seen().await, Request::Scale(3)));

    let out = storeherd(&[
        "add",
        "--count",
        "2",
        "--admin",
        &addr,
        "--token-file",
        token,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(matches!(fx.next_seen().await, Request::Add(2)));

    let out = storeherd(&[
        "remove",
        "2",
        "--now",
        "--admin",
        &addr,
        "--token-file",
        token,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 2, now: true }
    ));

    let out = storeherd(&["restart", "1", "--admin", &addr, "--token-file", token]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(matches!(fx.next_seen().await, Request::Restart(1)));

    // Failures: exit 1 with the API's reason on stderr, nothing on stdout.
    let out = storeherd(&["remove", "9", "--admin", &addr, "--token-file", token]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no instance 9"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(matches!(
        fx.next_seen().await,
        Request::Remove { id: 9, .. }
    ));

    let out = storeherd(&["status", "--admin", &addr, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let closed = closed_port().await.to_string();
    let out = storeherd(&["status", "--admin", &closed, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the admin API"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_find_the_api_in_the_topology_file() {
    let mut fx = Fixture::start(Some("file-token")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let topology = dir.path().join("storeherd.yaml");
    std::fs::write(
        &topology,
        format!(
            "admin: {{ listen: {}, token_file: {} }}\ninstances: 1\ndata: {}\n",
            fx.addr,
            token_file.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let file = topology.to_str().unwrap();

    let out = storeherd(&["status", "-f", file, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let back: Status = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(back, sample_status());

    let out = storeherd(&["restart", "2", "-f", file]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "restarting 2\n");
    assert!(matches!(fx.next_seen().await, Request::Restart(2)));

    // A broken file is reported with its position, and nothing is sent.
    std::fs::write(&topology, "admin: { listn: 127.0.0.1:1 }\n").unwrap();
    let out = storeherd(&["scale", "2", "-f", file]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("storeherd.yaml:1:"),
        "{}",
        stderr(&out)
    );
    assert!(fx.nothing_seen());
}

#[tokio::test]
async fn the_status_page_is_served_without_the_token_and_loads_nothing_else() {
    let fx = Fixture::start(Some("page-token")).await;
    let addr = fx.addr;
    let a = request(addr, "GET", "/", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = a.header("content-security-policy").expect("a CSP header");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = a.text();
    assert!(page.contains("fetch(\"/status\""), "{page}");
    // Everything inline: no stylesheet, script or image from anywhere.
    for outside in ["<link", " src=", "@import", "url("] {
        assert!(
            !page.contains(outside),
            "the page loads something: {outside}"
        );
    }
    // The data behind it keeps the token.
    assert_error(
        &request(addr, "GET", "/status", None).await,
        401,
        "bearer token",
    );
    // Only reading the page is public.
    assert_error(
        &request(addr, "POST", "/", Some("{}")).await,
        401,
        "bearer token",
    );
    let a = request_auth(addr, "POST", "/", Some("{}"), Some("Bearer page-token")).await;
    assert_error(&a, 405, "GET, HEAD");
}

#[tokio::test]
async fn logs_route_checks_its_input_and_keeps_the_token() {
    let fx = Fixture::start(Some("logs-token")).await;
    let addr = fx.addr;
    let auth = Some("Bearer logs-token");
    assert_error(
        &request(addr, "GET", "/logs", None).await,
        401,
        "bearer token",
    );
    let a = request_auth(addr, "GET", "/logs?instance=9", None, auth).await;
    assert_error(&a, 404, "no instance 9");
    let a = request_auth(addr, "GET", "/logs?lines=many", None, auth).await;
    assert_error(&a, 400, "lines=many");
    let a = request_auth(addr, "GET", "/logs?cursor=1.2", None, auth).await;
    assert_error(&a, 400, "cursor");
    let a = request_auth(addr, "POST", "/logs", Some("{}"), auth).await;
    assert_error(&a, 405, "GET, HEAD");
    // The sample instances' homes do not exist: no lines yet, and a cursor to follow from.
    let a = request_auth(addr, "GET", "/logs?instance=2&lines=5", None, auth).await;
    assert_eq!(a.status, 200, "{a:?}");
    let doc = a.json();
    assert_eq!(doc["lines"], serde_json::json!([]), "{doc}");
    assert!(doc["cursor"].as_str().unwrap().starts_with("2."), "{doc}");
}
