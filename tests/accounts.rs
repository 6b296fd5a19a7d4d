//! `storeherd accounts` end to end: a real supervisor with real built-in store servers; every
//! check logs in on each instance's own port (not through the proxy).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use storeherd::control::InstanceState::Ready;
use storeherd::wire::Client;
use support::up::Up;
use support::{eventually, text};

const T: Duration = Duration::from_secs(10);
use support::{USER_KEY as KEY, USER_X, USER_Y};

fn rt() -> tokio::runtime::Runtime {
    support::current_thread()
}

/// `(id, address)` of every instance, from `/status`.
fn instance_addrs(up: &Up) -> Vec<(u32, SocketAddr)> {
    up.status()
        .instances
        .iter()
        .map(|i| (i.id, SocketAddr::from(([127, 0, 0, 1], i.port))))
        .collect()
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

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, up: &Up, timeout: Duration, cond: impl FnMut() -> bool) {
    eventually(timeout, up.with_log(what), cond);
}

#[test]
fn add_reaches_every_instance_and_new_ones_and_rm_disables_everywhere() {
    let up = Up::start(2, "");
    up.wait_ready(2);

    let (code, out, err) = up.accounts(&["add", USER_X, KEY]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}\n{}", up.log());
    assert!(out.contains("added"), "{out}");
    let addrs = instance_addrs(&up);
    assert_eq!(addrs.len(), 2);
    for (id, addr) in &addrs {
        assert!(
            login(*addr, USER_X, KEY),
            "instance {id} refuses the account"
        );
        // Bound to that user only.
        assert!(
            !login(*addr, USER_Y, KEY),
            "instance {id} lets another user in"
        );
    }
    let ledger = std::fs::read_to_string(up.data().join("accounts.txt")).unwrap();
    assert!(ledger.starts_with('#'), "{ledger}");
    assert!(ledger.contains(&format!("\n{USER_X} {KEY} ")), "{ledger}");

    let (code, out, _) = up.accounts(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{USER_X} {KEY} "))),
        "{out}"
    );

    // A new instance is seeded from the ledger.
    let added = up.ctl(&["add"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    up.wait_ready(3);
    let addrs = instance_addrs(&up);
    assert_eq!(addrs.len(), 3);
    assert!(
        login(addrs[2].1, USER_X, KEY),
        "the new instance lacks the account"
    );

    let (code, out, err) = up.accounts(&["rm", KEY]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
    for (id, addr) in &addrs {
        assert!(!login(*addr, USER_X, KEY), "instance {id} still accepts it");
    }
    let (_, out, _) = up.accounts(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("disabled {KEY} "))),
        "{out}"
    );

    // Refused before anything is written: reserved names and malformed keys.
    let (code, _, err) = up.accounts(&["add", "administrator", KEY]);
    assert_ne!(code, 0);
    assert!(err.contains("reserved"), "{err}");
    let (code, _, err) = up.accounts(&["add-key", "short"]);
    assert_ne!(code, 0);
    assert!(err.contains("8 to 40"), "{err}");
}

#[test]
fn gen_keys_are_claimable_and_a_claim_binds_every_instance() {
    let up = Up::start(2, "");
    up.wait_ready(2);
    let (code, out, err) = up.accounts(&["gen", "3"]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}\n{}", up.log());
    let keys: Vec<&str> = out.lines().collect();
    assert_eq!(keys.len(), 3, "{out}");
    for k in &keys {
        assert!(
            k.len() == 40
                && k.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()),
            "{k:?}"
        );
    }
    let addrs = instance_addrs(&up);
    let (a1, a2) = (addrs[0].1, addrs[1].1);

    // Key 0: claimed by X on instance 1; Y cannot take it on instance 2.
    assert!(login(a1, USER_X, keys[0]));
    wait_for("the claim reaches the ledger", &up, T, || {
        up.accounts(&["list"])
            .1
            .lines()
            .any(|l| l.starts_with(&format!("{USER_X} {} ", keys[0])))
    });
    wait_for("the claim reaches instance 2", &up, T, || {
        up.auth_txt(2).contains(&format!("{USER_X} {} ", keys[0]))
    });
    assert!(
        !login(a2, USER_Y, keys[0]),
        "Y claimed X's key on instance 2"
    );
    assert!(login(a2, USER_X, keys[0]));
    assert!(!login(a1, USER_Y, keys[0]));

    // Keys 1 and 2 are free on both instances: each is claimable, once.
    assert!(login(a2, USER_Y, keys[1]));
    assert!(login(a1, USER_X, keys[2]));
    wait_for("both claims reach the other instance", &up, T, || {
        up.auth_txt(1).contains(&format!("{USER_Y} {} ", keys[1]))
            && up.auth_txt(2).contains(&format!("{USER_X} {} ", keys[2]))
    });
    assert!(!login(a1, USER_X, keys[1]));
    assert!(!login(a2, USER_Y, keys[2]));
    assert!(login(a1, USER_Y, keys[1]));
}

#[test]
fn an_instance_down_during_add_gets_the_account_when_back() {
    let up = Up::start(2, "");
    up.wait_ready(2);
    let st = up.status();
    let pid2 = st.instances[1].pid.unwrap() as i32;
    let pid = nix::unistd::Pid::from_raw(pid2);
    // Stopped, not dead: it still accepts connections but never answers.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (code, out, err) = up.accounts(&["add", USER_X, KEY]);
    // Let it go on whatever happens next (the supervisor may also restart it).
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(code, 3, "stdout {out}\nstderr {err}\n{}", up.log());
    assert!(err.contains("instance 2"), "{err}");
    assert!(!err.contains("instance 1 "), "{err}");
    let addrs = instance_addrs(&up);
    assert!(login(addrs[0].1, USER_X, KEY));
    wait_for(
        "instance 2 gets the account",
        &up,
        Duration::from_secs(60),
        || {
            up.status().instances[1].state == Ready
                && up.auth_txt(2).contains(&format!("{USER_X} {KEY} "))
        },
    );
    assert!(login(addrs[1].1, USER_X, KEY));
    assert!(!login(addrs[1].1, USER_Y, KEY));
}

/// A line storeherd did not write (here an administrator's own session on one instance;
/// between sites, a REPLOGIN from the peer) reaches the ledger and the other instances. An
/// old value coming back (an echo) does not undo a newer change.
#[test]
fn foreign_auth_lines_reach_the_ledger_and_echoes_do_not_undo_changes() {
    const KEY2: &str = "89ABCDEF0123456789ABCDEF0123456789ABCDEF";
    let up = Up::start(2, "");
    up.wait_ready(2);
    let addrs = instance_addrs(&up);
    let (a1, a2) = (addrs[0].1, addrs[1].1);
    rt().block_on(async {
        let mut c = up.admin_session(a1).await;
        assert!(c
            .simple(&format!("ADDLOGIN {USER_Y} {KEY2}"))
            .await
            .unwrap());
        let _ = c.quit().await;
    });
    wait_for("the foreign line reaches instance 2", &up, T, || {
        up.auth_txt(2).contains(&format!("{USER_Y} {KEY2} "))
    });
    assert!(login(a2, USER_Y, KEY2));
    let (_, out, _) = up.accounts(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{USER_Y} {KEY2} "))),
        "{out}"
    );

    // add, rm, then the old binding shows up again on instance 1: the ledger keeps `disabled`
    // and instance 1 is set back.
    assert_eq!(up.accounts(&["add", USER_X, KEY]).0, 0);
    assert_eq!(up.accounts(&["rm", KEY]).0, 0);
    rt().block_on(async {
        let mut c = up.admin_session(a1).await;
        assert!(c.simple(&format!("ADDLOGIN {USER_X} {KEY}")).await.unwrap());
        let _ = c.quit().await;
    });
    wait_for("instance 1 is set back to disabled", &up, T, || {
        up.auth_txt(1)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("disabled {KEY} ")))
    });
    assert!(!login(a1, USER_X, KEY));
    assert!(!login(a2, USER_X, KEY));
    let (_, out, _) = up.accounts(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("disabled {KEY} "))),
        "{out}"
    );
}

/// With a peer site (only site a runs here): a REPLOGIN from the peer reaches the ledger and
/// the other local instances, and is not sent back to the instance it came from; a claim is
/// sent back to its own instance by ADDLOGIN (so that instance passes it to its peer).
#[test]
fn with_a_peer_site_replogin_lines_spread_and_claims_go_back_to_their_instance() {
    const KEY2: &str = "89ABCDEF0123456789ABCDEF0123456789ABCDEF";
    let b = support::up::Ports::free(2);
    let extra = format!(
        "sites:\n  a: {{ host: 127.0.0.1 }}\n  b: {{ host: 127.0.0.1, ports: {{ server: {}, entangled: {} }}, listen: {}, admin: {{ listen: {} }}, data: b-data }}\nreplication: {{ authkey_file: repl.key }}\n",
        b.sport, b.eport, b.listen, b.admin
    );
    let up = support::up::Topology::new(2)
        .extra(&extra)
        .args(&["--site", "a"])
        .start();
    up.wait_ready(2);
    let repl_key = std::fs::read_to_string(up.dir.path().join("repl.key")).unwrap();
    let addrs = instance_addrs(&up);
    let (a1, a2) = (addrs[0].1, addrs[1].1);

    rt().block_on(async {
        let mut c = Client::connect(a1, T).await.unwrap();
        assert!(c.login("replication", repl_key.trim()).await.unwrap());
        assert!(c
            .simple(&format!("REPLOGIN {USER_Y} {KEY2}"))
            .await
            .unwrap());
        let _ = c.quit().await;
    });
    wait_for("the peer's change reaches instance 2", &up, T, || {
        up.auth_txt(2).contains(&format!("{USER_Y} {KEY2} "))
    });
    assert!(login(a2, USER_Y, KEY2));
    let (_, out, _) = up.accounts(&["list"]);
    assert!(out.contains(&format!("{USER_Y} {KEY2} ")), "{out}");

    let (code, out, err) = up.accounts(&["gen", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let key = out.trim().to_string();
    assert!(login(a1, USER_X, &key));
    let line = format!("{USER_X} {key} ");
    wait_for(
        "the claim reaches instance 2 and goes back to 1",
        &up,
        T,
        || up.auth_txt(2).contains(&line) && up.auth_txt(1).matches(&line).count() == 2,
    );
    assert!(!login(a2, USER_Y, &key));
    // The REPLOGIN line was not sent back to instance 1.
    assert_eq!(
        up.auth_txt(1).matches(&format!("{USER_Y} {KEY2} ")).count(),
        1
    );
}

/// The ledger outlives the supervisor: after a restart on the same data, a claimed key stays
/// bound everywhere and a free key is still free, and claims still propagate.
#[test]
fn ledger_and_claims_survive_a_restart_of_the_supervisor() {
    let mut up = Up::start(2, "");
    up.wait_ready(2);
    let (code, out, err) = up.accounts(&["gen", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let keys: Vec<String> = out.lines().map(str::to_string).collect();
    let addrs = instance_addrs(&up);
    assert!(login(addrs[0].1, USER_X, &keys[0]));
    wait_for("the claim reaches instance 2", &up, T, || {
        up.auth_txt(2).contains(&format!("{USER_X} {} ", keys[0]))
    });
    assert!(up
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    // Same topology file, same data directory.
    up.respawn();
    up.wait_admin();
    up.wait_ready(2);
    let addrs = instance_addrs(&up);
    assert!(!login(addrs[1].1, USER_Y, &keys[0]));
    assert!(login(addrs[1].1, USER_X, &keys[0]));
    assert!(login(addrs[1].1, USER_Y, &keys[1]));
    wait_for("the new claim reaches instance 1", &up, T, || {
        up.auth_txt(1).contains(&format!("{USER_Y} {} ", keys[1]))
    });
    assert!(!login(addrs[0].1, USER_X, &keys[1]));
    let (_, out, _) = up.accounts(&["list"]);
    assert!(out.contains(&format!("{USER_X} {} ", keys[0])), "{out}");
    assert!(out.contains(&format!("{USER_Y} {} ", keys[1])), "{out}");
}
