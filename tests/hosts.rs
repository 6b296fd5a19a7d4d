//! One site over two hosts (`hosts`), both on loopback: two `storeherd up --host` processes
//! of ONE topology file, each with its own public and admin ports and data directory, one
//! store directory between them. What is stored through one host is read through the other;
//! accounts and claims made on one host reach the other's instances; `/site/status` answers
//! for both; ids and ports run on across the hosts.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use storeherd::control::site::SiteStatus;
use storeherd::protocol::compose;
use storeherd::wire::Client;
use support::up::{Ports, Up};
use support::{eventually, eventually_async, text};

const T: Duration = Duration::from_secs(20);
use support::{USER_KEY as KEY, USER_X, USER_Y};

fn rt() -> tokio::runtime::Runtime {
    support::current_thread()
}

/// The one file of both hosts: 2 instances each, the store in `store`.
fn topology(store: &Path, data: [&Path; 2], ports: [Ports; 2]) -> String {
    let host = |i: usize| {
        format!(
            "  - {{ name: h{}, address: 127.0.0.1, instances: 2, listen: {}, admin: {{ listen: {} }}, data: {} }}\n",
            i + 1,
            ports[i].listen,
            ports[i].admin,
            data[i].display()
        )
    };
    format!(
        "store: {}\n\
         ports: {{ server: {}, entangled: {} }}\n\
         health: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\n\
         restart: {{ backoff_min: 100ms, backoff_max: 1s, crash_loop: {{ restarts: 3, within: 30s }} }}\n\
         proxy: {{ connect_timeout: 1s, idle_timeout: 60s, drain_timeout: 3s }}\n\
         hosts:\n{}{}",
        store.display(),
        ports[0].sport,
        ports[0].eport,
        host(0),
        host(1)
    )
}

/// Both hosts started from one file in host 1's directory; host 2 keeps its data in its own.
struct Site {
    h1: Up,
    h2: Up,
}

impl Site {
    fn start() -> Site {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let p1 = Ports::free(4);
        // Same instance port bases: instance k is on sport + k - 1 whichever host holds it.
        let p2 = Ports {
            sport: p1.sport,
            eport: p1.eport,
            ..Ports::free(1)
        };
        let file = d1.path().join("storeherd.yaml");
        let store = d1.path().join("store");
        let text = topology(
            &store,
            [&d1.path().join("data"), &d2.path().join("data")],
            [p1, p2],
        );
        std::fs::write(&file, text).unwrap();
        let launch = |dir: tempfile::TempDir, ports: Ports, name: &str| {
            let mut up = Up::new(dir, file.clone(), ports);
            up.args = vec!["--host".into(), name.into()];
            up.respawn();
            up
        };
        let mut h1 = launch(d1, p1, "h1");
        let mut h2 = launch(d2, p2, "h2");
        h1.wait_admin();
        h2.wait_admin();
        Site { h1, h2 }
    }
}

/// `LOGIN user key` in a fresh session on `addr`: true on DONE.
fn login(addr: SocketAddr, user: &str, key: &str) -> bool {
    rt().block_on(async {
        let mut c = Client::connect(addr, T).await.unwrap();
        let ok = c.login(user, key).await.unwrap();
        let _ = c.quit().await;
        ok
    })
}

fn ledger(up: &Up) -> String {
    std::fs::read_to_string(up.data().join("accounts.txt")).unwrap_or_default()
}

fn site_status(up: &Up) -> Result<SiteStatus, String> {
    let (code, body) = up
        .api()
        .http("GET", "/site/status", None)
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("{code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

#[test]
fn two_hosts_of_one_file_serve_one_site() {
    let s = Site::start();
    let (h1, h2) = (&s.h1, &s.h2);

    // Ids and ports run on across the hosts: 1-2 on h1, 3-4 on h2.
    let st1 = h1.wait_ready_ids(&[1, 2], Duration::from_secs(60));
    let st2 = h2.wait_ready_ids(&[3, 4], Duration::from_secs(60));
    for i in st1.instances.iter().chain(&st2.instances) {
        assert_eq!(u32::from(i.port), u32::from(h1.sport) + i.id - 1, "{i:?}");
        assert_eq!(u32::from(i.eport), u32::from(h1.eport) + i.id - 1, "{i:?}");
    }
    assert!(st2.instances[0].home.ends_with("homes/3"), "{st2:?}");

    // /site/status on either host lists both, each with its own instances.
    for up in [h1, h2] {
        let site = eventually(T, up.with_log("/site/status lists both hosts"), || {
            site_status(up).and_then(|site| {
                let ids: Vec<Option<Vec<u32>>> = site
                    .hosts
                    .iter()
                    .map(|h| {
                        h.status
                            .as_ref()
                            .map(|st| st.instances.iter().map(|i| i.id).collect())
                    })
                    .collect();
                if ids == vec![Some(vec![1, 2]), Some(vec![3, 4])] {
                    Ok(site)
                } else {
                    Err(format!("{site:?}"))
                }
            })
        });
        let names: Vec<_> = site.hosts.iter().map(|h| h.name.clone()).collect();
        assert_eq!(names, vec![Some("h1".into()), Some("h2".into())]);
        assert_eq!(
            site.hosts[1].admin,
            format!("127.0.0.1:{}", h2.admin.port())
        );
    }
    let out = h2.ctl_ok(&["status", "--all-hosts"]);
    let table = text(&out.stdout);
    assert!(table.contains("host h1 (admin "), "{table}");
    assert!(table.contains("host h2 (admin "), "{table}");
    assert_eq!(table.matches("2 instances, 2 ready").count(), 2, "{table}");

    // One store: a block stored through h1's public port is read through h2's.
    rt().block_on(async {
        let (key, block) = compose::data_block(b"one site, two hosts", chrono::Utc::now());
        let mut c = Client::connect(h1.listen, T).await.unwrap();
        assert!(c.store(&key, &block).await.unwrap());
        let _ = c.quit().await;
        let reader = tokio::sync::Mutex::new(h2.admin_session(h2.listen).await);
        let got = eventually_async(T, "the block is readable through host 2", || async {
            reader.lock().await.get(&key, None).await.unwrap()
        })
        .await;
        assert_eq!(got, block);
    });

    // An account added on h1 logs in on h2's instances, and is not echoed back to h1.
    let (code, out, err) = h1.accounts(&["add", USER_X, KEY]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}\n{}", h1.log());
    assert!(
        err.contains("1 of 1 other host(s) of the site took the change"),
        "{err}"
    );
    for id in [3, 4] {
        eventually(T, h2.with_log("the account reaches host 2"), || {
            h2.auth_txt(id).contains(&format!("{USER_X} {KEY} "))
        });
        assert!(login(h2.instance_addr(id), USER_X, KEY), "instance {id}");
        assert!(!login(h2.instance_addr(id), USER_Y, KEY), "instance {id}");
    }
    // Time for an echo to come back, were there one.
    std::thread::sleep(Duration::from_secs(1));
    let line = format!("{USER_X} {KEY} ");
    assert_eq!(ledger(h1).matches(&line).count(), 1, "{}", ledger(h1));
    assert_eq!(ledger(h2).matches(&line).count(), 1, "{}", ledger(h2));

    // Free keys made on h2 reach h1; a claim on h1 reaches h2 and binds there too.
    let (code, out, err) = h2.accounts(&["gen", "2"]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}\n{}", h2.log());
    let keys: Vec<&str> = out.lines().collect();
    assert_eq!(keys.len(), 2, "{out}");
    eventually(T, h1.with_log("the free keys reach host 1"), || {
        keys.iter()
            .all(|k| h1.auth_txt(1).contains(&format!("undefined {k} ")))
    });
    assert!(login(h1.instance_addr(1), USER_X, keys[0]));
    let claim = format!("{USER_X} {} ", keys[0]);
    eventually(T, h2.with_log("the claim reaches host 2"), || {
        ledger(h2).contains(&claim) && h2.auth_txt(3).contains(&claim)
    });
    assert!(
        !login(h2.instance_addr(3), USER_Y, keys[0]),
        "Y took X's key"
    );
    assert!(login(h2.instance_addr(4), USER_X, keys[0]));
    // And the other way: a claim on h2 is seen on h1.
    assert!(login(h2.instance_addr(4), USER_Y, keys[1]));
    let claim = format!("{USER_Y} {} ", keys[1]);
    eventually(T, h1.with_log("the claim reaches host 1"), || {
        ledger(h1).contains(&claim) && h1.auth_txt(2).contains(&claim)
    });
    assert!(!login(h1.instance_addr(2), USER_X, keys[1]));

    // The hosts list cannot change under a running supervisor.
    let file = std::fs::read_to_string(&h1.file).unwrap();
    let more = file.replacen("instances: 2, listen", "instances: 1, listen", 1);
    assert_ne!(file, more);
    std::fs::write(&h1.file, more).unwrap();
    let (code, body) = h1.http("POST", "/reload", None);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("need a restart") && body.contains("hosts"),
        "{body}"
    );
    assert_eq!(h1.status().instances.len(), 2);
}

#[test]
fn a_file_with_hosts_needs_host_and_a_file_without_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [Ports::free(4), Ports::free(1)];
    let body = topology(
        &dir.path().join("store"),
        [&dir.path().join("d1"), &dir.path().join("d2")],
        ports,
    );
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, body).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(support::BIN)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["check", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("this site has several hosts (h1, h2): expected --host with one of them"),
        "{err}"
    );
    let out = run(&["up", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expected --host"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["check", "-f", file.to_str().unwrap(), "--host", "h2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("host       h2 (127.0.0.1), instances 3-4 of the site's 1-4"),
        "{plan}"
    );
    assert!(
        plan.contains("\ninstance 3\n") && plan.contains("\ninstance 4\n"),
        "{plan}"
    );
    assert!(!plan.contains("\ninstance 1\n"), "{plan}");

    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, "instances: 1\n").unwrap();
    let out = run(&["check", "-f", plain.to_str().unwrap(), "--host", "h1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--host: h1 given, but"),
        "{}",
        text(&out.stderr)
    );
}
