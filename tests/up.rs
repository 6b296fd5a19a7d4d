//! `storeherd up` end to end: a real supervisor, real built-in store servers, the proxy on a
//! loopback port, the admin API.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storeherd::control::InstanceState::{Backoff, Failed, Ready};
use storeherd::protocol::compose;
use storeherd::wire::Client;
use support::admin::{INSTANCE_KEYS, STATUS_KEYS};
use support::load::ClientLoop;
use support::procs::{alive, wait_dead, Reaped};
use support::up::{all_ready, Up};
use support::{eventually, eventually_async, runtime as rt};

const T: Duration = Duration::from_secs(10);

#[test]
fn three_instances_share_one_store_and_spread_connections() {
    let up = Up::start(3, "");
    let st = up.wait_ready(3);
    let list = &st.instances;
    assert_eq!(list.len(), 3);
    let homes: BTreeSet<&str> = list.iter().map(|i| i.home.as_str()).collect();
    let ports: BTreeSet<u16> = list.iter().map(|i| i.port).collect();
    let pids: BTreeSet<u32> = list.iter().map(|i| i.pid.unwrap()).collect();
    assert_eq!((homes.len(), ports.len(), pids.len()), (3, 3, 3));
    for (k, i) in list.iter().enumerate() {
        let id = k as u16 + 1;
        assert_eq!(i.port, up.sport + id - 1);
        assert_eq!(i.eport, up.eport + id - 1);
        let config = std::fs::read_to_string(format!("{}/config.txt", i.home)).unwrap();
        assert!(
            config.contains(&format!("sport: {}\n", up.sport + id - 1)),
            "{config}"
        );
        assert!(
            config.contains(&format!("eport: {}\n", up.eport + id - 1)),
            "{config}"
        );
        let store = up.data().join("store");
        assert!(
            config.contains(&format!("alt_localstore: {}\n", store.display())),
            "{config}"
        );
        assert!(i.pid.is_some_and(alive));
    }
    // Counters start after the health checks, which do not go through the proxy.
    let before: Vec<u64> = list.iter().map(|i| i.connections_total).collect();
    rt().block_on(async {
        for _ in 0..30 {
            let c = Client::connect(up.listen, T).await.unwrap();
            c.quit().await.unwrap();
        }
    });
    // /status is refreshed a few times a second.
    let spread = |st: &storeherd::control::Status| -> Vec<u64> {
        st.instances
            .iter()
            .zip(&before)
            .map(|(i, b)| i.connections_total - b)
            .collect()
    };
    let after = up.wait_status(T, "30 connections counted", |st| {
        spread(st).iter().sum::<u64>() == 30
    });
    assert_eq!(spread(&after), vec![10, 10, 10]);

    // One shared store: a block stored through the proxy (one instance) is read through
    // every instance directly.
    rt().block_on(async {
        let (key, block) = compose::data_block(b"shared store", chrono::Utc::now());
        let mut c = Client::connect(up.listen, T).await.unwrap();
        assert!(c.store(&key, &block).await.unwrap());
        for i in &after.instances {
            let addr = format!("127.0.0.1:{}", i.port).parse().unwrap();
            let c = tokio::sync::Mutex::new(up.admin_session(addr).await);
            let what = format!("the block is readable via {addr}");
            let b = eventually_async(T, what, || async {
                c.lock().await.get(&key, None).await.unwrap()
            })
            .await;
            assert_eq!(b, block);
        }
    });
}

#[test]
fn killed_instance_is_replaced_without_client_failures() {
    let up = Up::start(3, "");
    let st = up.wait_ready(3);
    let victim = st.instances[1].pid.unwrap();
    let clients = ClientLoop::start(up.listen, 8);
    std::thread::sleep(Duration::from_millis(500));
    support::procs::signal(victim, nix::sys::signal::Signal::SIGKILL);
    // Back and ready, with one restart.
    let st = up.wait_status(Duration::from_secs(30), "instance 2 comes back", |st| {
        let i = &st.instances[1];
        i.state == Ready && i.pid != Some(victim)
    });
    assert_eq!(st.instances[1].restarts, 1, "{st:#?}");
    std::thread::sleep(Duration::from_millis(500));
    let r = clients.stop();
    assert!(r.ok > 50);
    assert!(
        r.failures.is_empty(),
        "client failures through the proxy: {:?}",
        r.failures
    );
    // At most the sessions in flight on the killed instance were cut.
    assert!(r.cut <= 8, "cut: {}", r.cut);
}

#[test]
fn instance_that_exits_at_once_backs_off_then_fails() {
    let up = Up::start(1, "server: { command: [/bin/sh, -c, \"exit 3\"] }\n");
    let mut saw_backoff = false;
    eventually(
        Duration::from_secs(30),
        up.with_log("instance 1 failed"),
        || {
            let st = up.status();
            let state = st.instances[0].state;
            saw_backoff |= state == Backoff;
            if state == Failed {
                Ok(())
            } else {
                Err(Box::new(st))
            }
        },
    );
    assert!(saw_backoff, "no backoff seen before failed");
    assert!(up.log().contains("exit status 3"), "{}", up.log());
}

#[test]
fn scale_up_and_down_under_store_load_loses_nothing() {
    let up = Up::start(3, "");
    up.wait_ready(3);
    let rt = rt();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done_keys = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, failures, done_keys, addr) =
                (stop.clone(), failures.clone(), done_keys.clone(), up.listen);
            rt.spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let payload = format!("writer {w} block {n}");
                    let (key, block) = compose::data_block(payload.as_bytes(), chrono::Utc::now());
                    let r = async {
                        let mut c = Client::connect(addr, T).await?;
                        let ok = c.store(&key, &block).await?;
                        c.quit().await?;
                        Ok::<bool, storeherd::wire::WireError>(ok)
                    }
                    .await;
                    match r {
                        Ok(true) => done_keys.lock().unwrap().push((key, block)),
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    up.ctl_ok(&["scale", "5"]);
    up.wait_ready(5);
    std::thread::sleep(Duration::from_millis(500));
    let pids_before: Vec<u32> = up.pids();
    up.ctl_ok(&["scale", "2"]);
    up.wait_ready_ids(&[1, 2], Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
    });
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed client operations"
    );
    // Removed instances exited.
    let remaining: BTreeSet<u32> = up.pids().into_iter().collect();
    let gone: Vec<u32> = pids_before
        .into_iter()
        .filter(|p| !remaining.contains(p))
        .collect();
    assert_eq!(gone.len(), 3);
    assert!(wait_dead(&gone, Duration::from_secs(5)).is_empty());
    // Every block answered DONE is readable.
    let keys = done_keys.lock().unwrap().clone();
    assert!(keys.len() > 20, "too few stores: {}", keys.len());
    rt.block_on(async {
        let c = tokio::sync::Mutex::new(up.admin_session(up.listen).await);
        for (key, block) in &keys {
            let what = format!("block {key} is readable");
            let b = eventually_async(T, what, || async {
                c.lock().await.get(key, None).await.unwrap()
            })
            .await;
            assert_eq!(&b, block);
        }
    });
}

#[test]
fn editing_the_watched_file_applies_live_and_broken_edits_are_refused() {
    let up = Up::start(2, "");
    up.wait_ready(2);
    let text = std::fs::read_to_string(&up.file).unwrap();
    std::fs::write(&up.file, text.replace("instances: 2", "instances: 3")).unwrap();
    up.wait_ready_ids(&[1, 2, 3], Duration::from_secs(30));
    // A broken edit: refused, the running set stays.
    std::fs::write(
        &up.file,
        text.replace("instances: 2", "instances: 1\nbogus_key: 1"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        up.with_log("the broken edit is reported"),
        || up.log().contains("bogus_key"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = up.status();
    assert_eq!(st.instances.len(), 3, "{st:#?}");
    // A valid edit of a fixed setting: refused with the field and both values, the running
    // set stays.
    let listen = up.listen.to_string();
    let moved = format!("127.0.0.1:{}", support::ports::port());
    std::fs::write(
        &up.file,
        text.replace("instances: 2", "instances: 1")
            .replace(&listen, &moved),
    )
    .unwrap();
    let want = format!("listen: {listen} -> {moved}");
    let what = format!("the fixed edit is refused with `{want}`");
    eventually(Duration::from_secs(10), up.with_log(&what), || {
        up.log().contains(&want)
    });
    let st = up.status();
    assert_eq!(st.instances.len(), 3, "{st:#?}");
}

#[test]
fn busy_instance_is_routed_around() {
    let up = Up::start(2, "server: { config: { max_connections: 1 } }\n");
    let st = up.wait_ready(2);
    let port1 = st.instances[0].port;
    rt().block_on(async {
        // Hold instance 1's only connection slot (a health check may hold it for a moment).
        let addr1 = format!("127.0.0.1:{port1}").parse().unwrap();
        let held = eventually_async(T, "instance 1 is free", || Client::connect(addr1, T)).await;
        for _ in 0..6 {
            let mut c = Client::connect(up.listen, T).await.unwrap();
            c.ping().await.unwrap();
            c.quit().await.unwrap();
        }
        drop(held);
    });
    up.wait_status(T, "instance 1 answered BUSY", |st| {
        st.instances[0].busy_total >= 1
    });
}

#[test]
fn status_and_metrics_follow_the_contract() {
    let up = Up::start(2, "");
    up.wait_ready(2);
    // The contract is the document's keys: read untyped here, on purpose.
    let (code, body) = up.http("GET", "/status", None);
    assert_eq!(code, 200, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in STATUS_KEYS {
        assert!(st.get(key).is_some(), "missing {key}: {st:#}");
    }
    for i in st["instances"].as_array().unwrap() {
        for key in INSTANCE_KEYS {
            assert!(i.get(key).is_some(), "missing {key}: {i:#}");
        }
        assert!(i["rss_bytes"].as_u64().unwrap() > 0);
    }
    let (code, metrics) = up.http("GET", "/metrics", None);
    assert_eq!(code, 200);
    for name in [
        "storeherd_instance_up{instance=\"1\"} 1",
        "storeherd_instance_restarts_total{instance=\"2\"}",
        "storeherd_instance_cpu_percent",
        "storeherd_instance_rss_bytes",
        "storeherd_proxy_connections_active",
        "storeherd_proxy_connections_total",
        "storeherd_proxy_bytes_total{",
        "storeherd_proxy_connect_failures_total",
        "storeherd_proxy_busy_total",
        "storeherd_proxy_rejected_total",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let out = up.ctl_ok(&["status", "--json"]);
    let doc: storeherd::control::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.instances.len(), 2);
}

#[test]
fn non_loopback_admin_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:{}\nadmin: {{ listen: 0.0.0.0:{} }}\ninstances: 1\ndata: {}\n",
            support::ports::port(),
            support::ports::port(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["up", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn sigterm_drains_and_exits_zero_with_no_child_left() {
    let mut up = Up::start(2, "");
    up.wait_ready(2);
    let pids = up.pids();
    assert_eq!(pids.len(), 2);
    let status = up
        .terminate(Duration::from_secs(30))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", up.log());
    assert!(wait_dead(&pids, Duration::from_secs(2)).is_empty());
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_instance() {
    let mut up = Up::start(2, "");
    up.wait_ready(2);
    let pids = up.pids();
    let mut child = up.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let left = wait_dead(&pids, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "instances outlived the supervisor: {left:?}"
    );
}

#[test]
fn rolling_restart_replaces_every_instance_one_at_a_time() {
    let up = Up::start(3, "");
    let st = up.wait_ready(3);
    let old: Vec<u32> = st.instances.iter().map(|i| i.pid.unwrap()).collect();
    up.ctl_ok(&["restart", "--rolling"]);
    // At every moment at least two instances serve; at the end all three are new.
    let what = "the rolling restart finished";
    up.wait_status(Duration::from_secs(60), what, |st| {
        let ready = st.instances.iter().filter(|i| i.state == Ready).count();
        assert!(ready >= 2, "more than one instance out at once: {st:#?}");
        let fresh = st
            .instances
            .iter()
            .filter(|i| i.state == Ready && !old.contains(&i.pid.unwrap_or(0)))
            .count();
        fresh == 3
    });
    assert!(
        up.log().contains("rolling restart complete"),
        "{}",
        up.log()
    );
    rt().block_on(async {
        let mut c = Client::connect(up.listen, T).await.unwrap();
        c.ping().await.unwrap();
    });
}

#[test]
fn remove_and_restart_one_instance() {
    let up = Up::start(3, "");
    let st = up.wait_ready(3);
    let pid2 = st.instances[1].pid.unwrap();
    up.ctl_ok(&["remove", "2"]);
    up.wait_ready_ids(&[1, 3], Duration::from_secs(30));
    assert!(wait_dead(&[pid2], Duration::from_secs(5)).is_empty());
    // Its home stays on disk.
    assert!(up.data().join("homes/2/config.txt").exists());
    let out = up.ctl(&["remove", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance 9"));
    // `add` takes the lowest free id again, with its old home.
    up.ctl_ok(&["add"]);
    let st = up.wait_ready(3);
    let pid1 = st.instances[0].pid;
    up.ctl_ok(&["restart", "1"]);
    up.wait_status(Duration::from_secs(30), "instance 1 restarted", |st| {
        let i = &st.instances[0];
        i.state == Ready && i.pid != pid1
    });
}

#[test]
fn default_up_in_a_fresh_directory() {
    // No topology file: data under ./storeherd-data, one instance per core, built-in server.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", support::ports::port());
    let admin = format!("127.0.0.1:{}", support::ports::port());
    let child = std::process::Command::new(support::BIN)
        .args(["up", "--listen", &listen, "--admin", &admin])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = Reaped(child);
    let cores = std::thread::available_parallelism().unwrap().get();
    let api = support::admin::Admin::new(admin.parse().unwrap());
    eventually(
        Duration::from_secs(60),
        "default up becomes ready",
        || match api.status() {
            Ok(st) if st.instances.len() == cores && all_ready(&st) => Ok(()),
            other => Err(Box::new(other)),
        },
    );
    assert!(dir.path().join("storeherd-data/store").is_dir());
    assert!(dir
        .path()
        .join("storeherd-data/homes/1/config.txt")
        .is_file());
    rt().block_on(async {
        let mut c = Client::connect(listen.parse().unwrap(), T).await.unwrap();
        c.ping().await.unwrap();
    });
    drop(guard);
}
