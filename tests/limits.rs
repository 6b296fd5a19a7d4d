//! Resource limits: many idle client connections through the proxy while the admin API and
//! health checks keep answering; an instance at its `max_connections` routed around; running
//! out of file descriptors at accept survived.
//!
//! The suite runs small versions; `deploy/chaos/limits` runs `limits_full` (10,000 idle
//! connections and 1,000 more arriving; `LIMITS_IDLE`, `LIMITS_MORE` to change).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storeherd::wire::{GREETING_BUSY, GREETING_READY};
use support::up::{Topology, Up};
use support::{env_or, runtime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// How opening one connection ended.
#[derive(Debug, Default, Clone, Copy)]
struct Opened {
    ready: usize,
    busy: usize,
    failed: usize,
}

/// Opens `n` connections to `addr` (64 at a time) and reads each greeting; keeps the READY
/// ones open in `keep`.
async fn open_idle(addr: SocketAddr, n: usize, keep: &mut Vec<BufReader<TcpStream>>) -> Opened {
    let mut got = Opened::default();
    let mut left = n;
    while left > 0 {
        let batch = left.min(64);
        left -= batch;
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(async move {
                    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                        .await
                        .ok()?
                        .ok()?;
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                        .await
                        .ok()?
                        .ok()?;
                    Some((line.trim_end().to_string(), r))
                })
            })
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                Some((l, r)) if l == GREETING_READY => {
                    got.ready += 1;
                    keep.push(r);
                }
                Some((l, _)) if l == GREETING_BUSY => got.busy += 1,
                _ => got.failed += 1,
            }
        }
    }
    got
}

/// Samples `/status` latency on a thread until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Option<Duration>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(admin: SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s2, v2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = support::admin::Admin::new(admin).status().is_ok();
                v2.lock().unwrap().push(ok.then(|| t.elapsed()));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// (answered, failed, p50, max).
    fn finish(mut self) -> (usize, usize, Duration, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().unwrap().join();
        let v = self.samples.lock().unwrap();
        let mut ok: Vec<Duration> = v.iter().flatten().copied().collect();
        ok.sort();
        let p50 = ok.get(ok.len() / 2).copied().unwrap_or_default();
        let max = ok.last().copied().unwrap_or_default();
        (ok.len(), v.len() - ok.len(), p50, max)
    }
}

fn restarts_and_states(svc: &Up) -> (u64, Vec<String>) {
    let st = svc.status();
    (
        st.instances.iter().map(|i| i.restarts).sum(),
        st.instances
            .iter()
            .map(|i| i.state.as_str().to_string())
            .collect(),
    )
}

/// `idle` connections held open through the proxy, then `more` arriving on top.
fn idle_connections(idle: usize, more: usize) {
    let per_instance = idle.div_ceil(4) + 64;
    // The supervisor raises its soft limit to the hard one and keeps two descriptors per
    // session plus a reserve.
    let (_, nofile) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let cap = storeherd::proxy::fds::sessions_within(nofile);
    let proxy = format!(
        "max_connections: {idle}, connect_timeout: 2s, idle_timeout: 10m, drain_timeout: 3s"
    );
    let svc = Topology::new(4)
        .kills_expected()
        .proxy(Some(&proxy))
        .extra(&format!(
            "server: {{ config: {{ max_connections: {per_instance} }} }}\n"
        ))
        .start();
    svc.wait_ready(4);
    let rt = runtime();
    let sampler = Sampler::start(svc.admin);
    let mut held = Vec::new();
    let t = Instant::now();
    let first = rt.block_on(open_idle(svc.listen, idle, &mut held));
    let opened_in = t.elapsed();
    let second = rt.block_on(open_idle(svc.listen, more, &mut held));
    // Hold them while health checks run (several intervals).
    std::thread::sleep(Duration::from_secs(3));
    let st = svc.status();
    let (restarts, states) = restarts_and_states(&svc);
    let (answered, failed, p50, max) = sampler.finish();
    println!("--- {idle} idle connections through the proxy, then {more} more");
    println!("open-files limit {nofile}: the proxy holds at most {cap} sessions");
    println!(
        "first {idle}: READY {} BUSY {} failed {} (in {:.1} s)",
        first.ready,
        first.busy,
        first.failed,
        opened_in.as_secs_f64()
    );
    println!(
        "then {more}: READY {} BUSY {} failed {}",
        second.ready, second.busy, second.failed
    );
    println!(
        "proxy connections_active {}, rejected_total {}",
        st.connections_active, st.rejected_total
    );
    println!(
        "/status while loaded: {answered} answered, {failed} failed, p50 {p50:?}, max {max:?}"
    );
    println!("instance states {states:?}, restarts {restarts}");
    drop(held);
    assert_eq!(failed, 0, "/status went unanswered");
    assert_eq!(first.failed + second.failed, 0, "connections failed");
    assert_eq!(
        first.ready,
        idle.min(cap),
        "the first {idle} did not all get in"
    );
    assert!(states.iter().all(|s| s == "ready"), "{states:?}");
    assert_eq!(restarts, 0, "health checks restarted instances under load");
}

#[test]
fn idle_connections_short() {
    idle_connections(300, 50);
}

#[test]
#[ignore = "the full run: deploy/chaos/limits"]
fn limits_full() {
    idle_connections(env_or("LIMITS_IDLE", 10_000), env_or("LIMITS_MORE", 1_000));
}

/// An instance filled to its `max_connections` directly (bypassing the proxy) answers BUSY;
/// the proxy takes clients to the others instead.
#[test]
fn full_instance_is_routed_around() {
    let svc = Topology::new(3)
        .kills_expected()
        .proxy(None)
        .extra("server: { config: { max_connections: 8 } }\n")
        .start();
    let st = svc.wait_ready(3);
    let port1 = st.instances[0].port;
    let rt = runtime();
    let mut filler = Vec::new();
    let direct: SocketAddr = format!("127.0.0.1:{port1}").parse().unwrap();
    let f = rt.block_on(open_idle(direct, 12, &mut filler));
    assert!(f.busy > 0, "instance 1 never got full: {f:?}");
    let mut clients = Vec::new();
    let got = rt.block_on(open_idle(svc.listen, 9, &mut clients));
    // /status counters are refreshed on the supervisor's tick.
    std::thread::sleep(Duration::from_secs(2));
    let st = svc.status();
    println!("filler {f:?}; through the proxy {got:?}; {st:#?}");
    assert_eq!(
        got.ready, 9,
        "clients turned away while instances 2 and 3 had room"
    );
    assert!(
        st.instances[0].busy_total > 0,
        "the proxy never met instance 1's BUSY"
    );
    drop(filler);
    drop(clients);
}

/// Under `ulimit -n 256`, more client connections than descriptors: the proxy logs, pauses,
/// and serves new clients once the others close; the admin API answers throughout.
#[test]
fn out_of_descriptors_at_accept_is_survived() {
    out_of_descriptors(256, 400);
}

fn out_of_descriptors(nofile: u64, conns: usize) {
    let svc = Topology::new(2)
        .kills_expected()
        .proxy(None)
        .nofile(nofile)
        .start();
    svc.wait_ready(2);
    let rt = runtime();
    let sampler = Sampler::start(svc.admin);
    // All at once and held without reading, so that the proxy runs out of descriptors at
    // accept rather than turning clients away one batch at a time.
    let held = rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(TcpStream::connect(svc.listen)))
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            if let Ok(Ok(s)) = t.await {
                held.push(s);
            }
        }
        held
    });
    let paused = support::until(Duration::from_secs(10), || {
        svc.log().contains("accept failed; pausing")
    })
    .is_ok();
    let during = svc.try_status().is_ok();
    let connected = held.len();
    drop(held);
    // Service comes back once descriptors are free (bounded retries, no timing threshold).
    let mut after = Err(storeherd::wire::WireError::Closed);
    for _ in 0..50 {
        after = rt.block_on(async {
            let mut c =
                storeherd::wire::Client::connect(svc.listen, Duration::from_secs(10)).await?;
            c.ping().await
        });
        if after.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (answered, failed, p50, max) = sampler.finish();
    let (restarts, states) = restarts_and_states(&svc);
    println!("--- {conns} connections at once under ulimit -n {nofile}");
    println!("connected {connected}; accept paused (EMFILE logged): {paused}; /status during: {during}; a new client after closing: {after:?}");
    println!("/status: {answered} answered, {failed} failed, p50 {p50:?}, max {max:?}; states {states:?}, restarts {restarts}");
    assert!(paused, "no EMFILE at accept was logged: {}", svc.log_tail());
    assert!(
        after.is_ok(),
        "no service after the descriptors came back: {after:?}\n{}",
        svc.log_tail()
    );
    assert_eq!(failed, 0, "/status went unanswered");
    // The supervisor's own EMFILE is no verdict on the instances (regression: every
    // instance was marked unhealthy, then killed as hung after stop_grace).
    assert!(
        states.iter().all(|s| s == "ready"),
        "{states:?}\n{}",
        svc.log_tail()
    );
    assert_eq!(restarts, 0, "instances restarted: {}", svc.log_tail());
}

/// Idle sessions held under `ulimit -n 256` must not take the descriptors the admin API
/// needs (regression: at 10,000 idle clients the admin API failed every accept with EMFILE).
#[test]
fn sessions_leave_descriptors_for_the_admin_api() {
    // Instances with room for every client: only descriptors limit the proxy.
    let svc = Topology::new(2)
        .kills_expected()
        .proxy(None)
        .extra("server: { config: { max_connections: 1000 } }\n")
        .nofile(256)
        .start();
    svc.wait_ready(2);
    let rt = runtime();
    let mut held = Vec::new();
    let got = rt.block_on(open_idle(svc.listen, 200, &mut held));
    let during = svc.try_status().ok();
    let log = svc.log();
    drop(held);
    println!(
        "200 idle under ulimit -n 256: {got:?}; /status answered: {}",
        during.is_some()
    );
    assert!(
        during.is_some(),
        "/status unanswered with sessions held:\n{log}"
    );
    let budget = storeherd::proxy::fds::sessions_within(256);
    assert!(
        got.ready <= budget,
        "{got:?}: more sessions than the budget of {budget}"
    );
    assert!(
        log.contains("open-files limit"),
        "the cap was not logged:\n{log}"
    );
}

#[test]
#[ignore = "the full run: deploy/chaos/limits"]
fn limits_full_descriptors() {
    out_of_descriptors(
        env_or("LIMITS_NOFILE", 256),
        env_or("LIMITS_FD_CONNS", 2000),
    );
}
