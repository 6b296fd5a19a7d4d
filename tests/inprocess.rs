//! The two entry points driven in-process: the built-in store server on a test's own
//! listener and shutdown future, and the supervisor on a test's listeners and outside
//! commands (its instances are real `storeherd store` processes).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use storeherd::protocol::compose;
use storeherd::server::identity::Identity;
use storeherd::server::{Listeners, RunOptions};
use storeherd::supervisor::run::{self as supervisor, Outside};
use storeherd::topology::{Overrides, Plan};
use storeherd::wire::Client;

const T: Duration = Duration::from_secs(10);
const ADMIN_KEY: &str = "ADMINKEY0123456789";

/// A session logged in as the administrator (data blocks look absent to anonymous ones).
async fn admin_session(addr: SocketAddr, key: &str) -> Client {
    let mut c = Client::connect(addr, T).await.unwrap();
    assert!(c.login("administrator", key).await.unwrap());
    c
}

/// Waits (bounded) until `cond` holds, checking every 50 ms.
async fn until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn provision(home: &Path, port: u16) {
    std::fs::create_dir_all(home).unwrap();
    Identity::generate("storeherd-test")
        .unwrap()
        .install(&home.join("ssl"))
        .unwrap();
    // eport 0: the DHT node takes a free UDP port.
    std::fs::write(
        home.join("config.txt"),
        format!("sport: {port}\neport: 0\nlisten_address: 127.0.0.1\n"),
    )
    .unwrap();
    std::fs::write(
        home.join("auth.txt"),
        format!("administrator {ADMIN_KEY} 2026-01-01T00:00:00Z\n"),
    )
    .unwrap();
}

/// Runs the server on a fresh ephemeral listener in its own thread; sending on the returned
/// channel stops it.
fn serve(
    home: &Path,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), storeherd::server::ServerError>>,
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    if !home.join("config.txt").exists() {
        provision(home, addr.port());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let home = home.to_path_buf();
    let thread = std::thread::spawn(move || {
        let shutdown = async move {
            let _ = stop_rx.await;
            Ok(())
        };
        storeherd::server::run(
            &home,
            RunOptions::default(),
            Listeners::from_std(vec![l]),
            shutdown,
        )
    });
    (addr, stop_tx, thread)
}

fn join_within<T>(thread: std::thread::JoinHandle<T>, within: Duration) -> T {
    support::wait::eventually(within, "the server's run to return", || {
        thread.is_finished()
    });
    thread.join().unwrap()
}

#[tokio::test]
async fn store_server_stop_closes_idle_sessions_and_answers_uploads_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (addr, stop, thread) = serve(&home);

    let mut writer = admin_session(addr, ADMIN_KEY).await;
    let (key, block) =
        compose::data_block(b"kept across an in-process restart", chrono::Utc::now());
    // An upload under way when the stop comes: everything but its payload is sent.
    let (lines, payload) = storeherd::wire::split_block(&block).unwrap();
    writer.queue_line(&format!("STORE SERVER {key}"));
    for l in &lines {
        writer.queue_line(l);
    }
    writer.flush().await.unwrap();
    let mut idle = Client::connect(addr, T).await.unwrap();
    idle.ping().await.unwrap();

    stop.send(()).unwrap();
    // The idle session is closed between commands rather than cut with the runtime...
    assert!(idle.read_line().await.is_err(), "idle session not closed");
    // ...while the upload under way is still taken and answered.
    writer.queue_raw(payload.unwrap());
    assert_eq!(writer.read_line().await.unwrap(), "DONE");
    assert!(
        writer.read_line().await.is_err(),
        "session not closed after its reply"
    );
    join_within(thread, T).unwrap();
    assert!(Client::connect(addr, Duration::from_secs(1)).await.is_err());

    // Same home, a new listener: what was acknowledged is there.
    let (addr, stop, thread) = serve(&home);
    let mut reader = admin_session(addr, ADMIN_KEY).await;
    // Acknowledged means journaled; the restarted worker publishes it.
    until("the block published", Duration::from_secs(30), async || {
        reader.get(&key, None).await.unwrap().as_ref() == Some(&block)
    })
    .await;
    stop.send(()).unwrap();
    join_within(thread, T).unwrap();
}

#[tokio::test]
async fn store_server_shutdown_command_ends_run() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _stop, thread) = serve(&dir.path().join("home"));
    let mut admin = admin_session(addr, ADMIN_KEY).await;
    // The session that asked is answered before the server ends.
    assert_eq!(admin.command("SHUTDOWN").await.unwrap(), "GOODBYE");
    join_within(thread, T).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_runs_in_process_reloads_and_stops_on_outside_commands() {
    let dir = tempfile::tempdir().unwrap();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (listen, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    // Instance port blocks for the reload to two instances.
    let (sport, eport) = (support::ports::range(2), support::ports::range(2));
    let file = dir.path().join("storeherd.yaml");
    let topology = |instances: u32| {
        format!(
            "listen: {listen}\nadmin: {{ listen: {admin_addr} }}\ninstances: {instances}\ndata: {}\nports: {{ server: {sport}, entangled: {eport} }}\nhealth: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\n",
            dir.path().join("data").display()
        )
    };
    std::fs::write(&file, topology(1)).unwrap();
    let overrides = Overrides::default();
    let mut plan = Plan::load(Some(&file), None, &overrides).unwrap();
    // This test binary is not storeherd: instances run the built one.
    plan.server.program = env!("CARGO_BIN_EXE_storeherd").into();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let listeners = supervisor::Listeners { public, admin };
    let run = tokio::spawn(supervisor::run(plan, overrides, listeners, rx));

    let client = storeherd::admin::client::AdminClient::new(admin_addr, None);
    let ready = |n: usize| {
        let client = client.clone();
        async move || match client.get_status().await {
            Ok(s) => {
                s.instances.len() == n
                    && s.instances
                        .iter()
                        .all(|i| i.state == storeherd::control::InstanceState::Ready)
            }
            Err(_) => false,
        }
    };
    until("one ready instance", Duration::from_secs(30), ready(1)).await;
    let admin_key = std::fs::read_to_string(dir.path().join("data/admin.key")).unwrap();
    let mut c = admin_session(listen, admin_key.trim()).await;
    let (key, block) = compose::data_block(b"through an in-process supervisor", chrono::Utc::now());
    assert!(c.store(&key, &block).await.unwrap());
    until("the block published", Duration::from_secs(30), async || {
        c.get(&key, None).await.unwrap().as_ref() == Some(&block)
    })
    .await;
    drop(c);

    std::fs::write(&file, topology(2)).unwrap();
    tx.send(Outside::Reload).await.unwrap();
    until("two ready instances", Duration::from_secs(30), ready(2)).await;
    let pids: Vec<u32> = client
        .get_status()
        .await
        .unwrap()
        .instances
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    assert_eq!(pids.len(), 2);

    tx.send(Outside::Stop).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("supervisor did not stop")
        .unwrap()
        .unwrap();
    let left = support::procs::wait_dead(&pids, T);
    assert!(left.is_empty(), "instances still running: {left:?}");
}
