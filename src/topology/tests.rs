//! Plan resolution: defaults, overrides, sites, and errors with their positions.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn plan(text: &str) -> Result<Plan, TopologyError> {
    plan_site(text, None)
}

fn plan_site(text: &str, site: Option<&str>) -> Result<Plan, TopologyError> {
    Plan::from_str(text, "t.yaml", site, &Overrides::default())
}

/// The error's `file:line:column: message` text.
fn err(text: &str) -> String {
    plan(text).unwrap_err().to_string()
}

#[test]
fn empty_file_is_the_default() {
    let p = plan("# nothing but a comment\n").unwrap();
    assert_eq!(p.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(p.admin.listen.to_string(), "127.0.0.1:8089");
    assert!(p.instances >= 1);
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(p.data, cwd.join("storeherd-data"));
    assert_eq!(p.store, cwd.join("storeherd-data/store"));
    assert_eq!(p.admin_key_file, cwd.join("storeherd-data/admin.key"));
    assert_eq!(
        p.ports,
        Ports {
            server: 18101,
            entangled: 18201
        }
    );
    assert_eq!(p.server.command, ServerCommand::Builtin);
    assert_eq!(p.server.stop_grace, Duration::from_secs(10));
    assert_eq!(
        (
            p.health.interval,
            p.health.timeout,
            p.health.unhealthy_after,
            p.health.start_grace
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(2),
            3,
            Duration::from_secs(60)
        )
    );
    assert_eq!(
        (
            p.restart.backoff_min,
            p.restart.backoff_max,
            p.restart.crash_loop_restarts,
            p.restart.crash_loop_within
        ),
        (
            Duration::from_millis(200),
            Duration::from_secs(30),
            5,
            Duration::from_secs(60)
        )
    );
    assert_eq!(
        (
            p.proxy.max_connections,
            p.proxy.connect_timeout,
            p.proxy.idle_timeout,
            p.proxy.drain_timeout
        ),
        (
            10_000,
            Duration::from_secs(2),
            Duration::from_secs(600),
            Duration::from_secs(60)
        )
    );
    assert_eq!(p, Plan::load(None, None, &Overrides::default()).unwrap());
}

#[test]
fn every_key_of_the_design_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        r#"
listen: 0.0.0.0:8081
admin: {{ listen: 127.0.0.1:8089, token_file: /etc/storeherd/admin.token }}
instances: 4
data: {d}/data
store: {d}/confidant/store
ports: {{ server: 18101, entangled: 18201 }}
server:
  command: [python2, /opt/confmail/server.py, -homedir, "{{home}}", "-x{{id}}:{{port}}:{{eport}}"]
  config: {{ max_connections: 20, timeout: 60, retry_schedule: [0, 5, 30], knode: [a:1, b:2], enable_ipv6: true }}
  tls: {{ cert: {d}/tls/c.pem, key: {d}/tls/k.pem, dhparams: {d}/tls/dh.pem }}
  stop_grace: 15s
health: {{ interval: 500ms, timeout: 2s, unhealthy_after: 4, start_grace: 2m }}
restart: {{ backoff_min: 100ms, backoff_max: 1m, crash_loop: {{ restarts: 3, within: 30s }} }}
proxy: {{ max_connections: 500, connect_timeout: 1s, idle_timeout: 5m, drain_timeout: 30s }}
shards:
  - {{ range: 00-3F, path: /mnt/d1/store }}
  - {{ range: 40-7f, path: /mnt/d2/store }}
sites:
  a: {{ host: 10.0.0.1 }}
  b: {{ host: 10.0.0.2, ports: {{ server: 19101 }}, cert_sha1: "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01" }}
replication: {{ authkey_file: /etc/storeherd/replication.key, peer_cert_sha1: "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:02" }}
accounts: {{ admin_key_file: /etc/storeherd/admin.key }}
upkeep: {{ prune_every: 8h, prune_when_disk_above: 85% }}
"#
    );
    let p = plan_site(&text, Some("a")).unwrap();
    assert_eq!(p.site.as_deref(), Some("a"));
    assert_eq!(p.host.as_deref(), Some("10.0.0.1"));
    assert_eq!(p.instances, 4);
    assert_eq!(p.store, PathBuf::from(format!("{d}/confidant/store")));
    assert_eq!(p.shards.len(), 2);
    assert_eq!(p.shards[1].range(), "40-7F");
    assert_eq!(p.shards[0].links(&p.store).len(), 64);
    assert_eq!(p.health.interval, Duration::from_millis(500));
    assert_eq!(p.restart.crash_loop_restarts, 3);
    let r = p.replication.as_ref().unwrap();
    assert_eq!(r.peer_site, "b");
    // The peer site's own pin wins over the shared one.
    assert_eq!(
        r.peer_cert_sha1.as_deref(),
        Some("AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01")
    );
    let i = p.instance(2);
    assert_eq!((i.port, i.eport), (18102, 18202));
    assert_eq!(i.home, PathBuf::from(format!("{d}/data/homes/2")));
    assert_eq!(i.argv[3], i.home.display().to_string());
    assert_eq!(i.argv[4], "-x2:18102:18202");
    let lines: Vec<String> = i.config.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    assert_eq!(
        lines,
        vec![
            "sport: 18102".to_string(),
            "eport: 18202".into(),
            format!("alt_localstore: {d}/confidant/store"),
            "listen_address: 10.0.0.1".into(),
            "replpeer: 10.0.0.2:19102".into(),
            "repl_authkey: <contents of /etc/storeherd/replication.key>".into(),
            "repl_cert: AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01".into(),
            "max_connections: 20".into(),
            "timeout: 60".into(),
            "retry_schedule: 0,5,30".into(),
            "knode: a:1".into(),
            "knode: b:2".into(),
            "enable_ipv6: true".into(),
        ]
    );
    assert!(i
        .config_text(Some("SECRETKEY"))
        .contains("\nrepl_authkey: SECRETKEY\n"));
    // Site b sees a as its peer, on a's (top-level) ports.
    let b = plan_site(&text, Some("b")).unwrap();
    assert_eq!(b.instance(1).replpeer(), Some("10.0.0.1:18101"));
    assert_eq!(b.ports.server, 19101);
    let json = serde_json::to_value(p.report()).unwrap();
    assert_eq!(json["plan"]["health"]["interval"], "500ms");
    assert_eq!(json["plan"]["upkeep"]["prune_every"], "8h");
    assert_eq!(json["plan"]["upkeep"]["prune_when_disk_above"], 85);
    assert_eq!(json["instances"].as_array().unwrap().len(), 4);
}

#[test]
fn overrides_win_and_instances_beyond_the_count_work() {
    let dir = tempfile::tempdir().unwrap();
    let o = Overrides {
        instances: Some("3".into()),
        listen: Some("127.0.0.1:9000".parse().unwrap()),
        data: Some(dir.path().join("d")),
        admin: Some("127.0.0.1:9001".parse().unwrap()),
        host: None,
    };
    let p = Plan::from_str("instances: 8\nlisten: 127.0.0.1:8081\n", "t.yaml", None, &o).unwrap();
    assert_eq!(p.instances, 3);
    assert_eq!(p.listen.port(), 9000);
    assert_eq!(p.admin.listen.port(), 9001);
    assert_eq!(p.data, dir.path().join("d"));
    assert_eq!(p.instance(7).port, 18107);
    assert_eq!(p.max_instances(), 100);
    let bad = Overrides {
        instances: Some("lots".into()),
        ..Overrides::default()
    };
    let e = Plan::from_str("", "t.yaml", None, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("command line: --instances: bad instance count `lots`"),
        "{e}"
    );
}

#[test]
fn restart_needed_lists_what_cannot_apply_live() {
    let a = plan("instances: 2\n").unwrap();
    let b = plan("instances: 5\nhealth: { interval: 3s }\n").unwrap();
    assert!(a.restart_needed(&b).is_ok());
    let c = plan("instances: 2\nlisten: 127.0.0.1:9081\nports: { server: 20001 }\n").unwrap();
    let changes = a.restart_needed(&c).unwrap_err().0;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0]
        .to_string()
        .starts_with("listen: 127.0.0.1:8081 -> 127.0.0.1:9081"));
    assert!(changes[1]
        .to_string()
        .starts_with("ports.server: 18101 -> 20001"));
}

#[test]
fn a_field_not_listed_as_live_needs_a_restart() {
    // A field the plan may gain later, present in both serialized plans with other values,
    // is reported without anyone listing it; the live ones are not.
    let a = serde_json::json!({ "instances": 1, "future": { "knob": 1 }, "proxy": { "x": 1 } });
    let b = serde_json::json!({ "instances": 2, "future": { "knob": 2 }, "proxy": { "x": 2 } });
    let changes = crate::topology::fixed_changes(&a, &b);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].to_string(), "future.knob: 1 -> 2");
    // A field that appears is a change too.
    let c = serde_json::json!({ "instances": 1, "future": { "knob": 1, "more": "x" } });
    assert_eq!(
        crate::topology::fixed_changes(&a, &c)[0].to_string(),
        "future.more: (none) -> x"
    );
    // Each fixed section of a real plan is caught.
    let base = plan("instances: 1\n").unwrap();
    for text in [
        "instances: 1\nadmin: { listen: 127.0.0.1:9999 }\n",
        "instances: 1\nports: { entangled: 20001 }\n",
        "instances: 1\nserver: { command: [python2, server.py, -homedir, \"{home}\"] }\n",
    ] {
        let other = plan(text).unwrap();
        assert!(base.restart_needed(&other).is_err(), "{text}");
    }
}

#[test]
fn unknown_keys_name_the_position_and_the_accepted_keys() {
    let e = err("listen: 127.0.0.1:8081\nhealth:\n  interval: 1s\n  intervall: 2s\n");
    assert!(
        e.starts_with(
            "t.yaml:4:3: health: unknown field `intervall`, expected one of `interval`, `timeout`"
        ),
        "{e}"
    );
    let e = err("lissen: 1\n");
    assert!(
        e.starts_with("t.yaml:1:1: unknown field `lissen`, expected one of `listen`, `admin`"),
        "{e}"
    );
}

#[test]
fn type_and_value_errors() {
    let e = err("ports:\n  server: abc\n");
    assert!(
        e.starts_with("t.yaml:2:11: ports.server: invalid type: string \"abc\", expected a port number from 1 to 65535"),
        "{e}"
    );
    let e = err("health: { interval: 10 }\n");
    assert!(
        e.starts_with("t.yaml:1:21: health.interval: bad duration `10` (no unit)"),
        "{e}"
    );
    let e = err("proxy:\n  idle_timeout: 5 minutes\n");
    assert!(
        e.contains("t.yaml:2:17: proxy.idle_timeout: bad duration `5 minutes`"),
        "{e}"
    );
    let e = err("instances: lots\n");
    assert!(
        e.starts_with(
            "t.yaml:1:12: instances: bad instance count `lots`: expected `auto` or a number"
        ),
        "{e}"
    );
    let e = err("admin: 127.0.0.1:8089\n");
    assert!(
        e.contains("expected a mapping with listen and token_file"),
        "{e}"
    );
    let e = err("server:\n  command: python\n");
    assert!(
        e.starts_with(
            "t.yaml:2:12: server.command: bad command `python`: expected `builtin` or a list"
        ),
        "{e}"
    );
    let e = err("listen: [1, 2\n");
    assert!(e.starts_with("t.yaml:"), "{e}");
}

#[test]
fn clashes_point_at_the_key() {
    let e = err("listen: 127.0.0.1:8081\nadmin:\n  listen: 127.0.0.1:8081\n");
    assert!(
        e.starts_with("t.yaml:3:3: port clash: admin listener 127.0.0.1:8081 and public listener"),
        "{e}"
    );
    let e = err("instances: 4\nports:\n  server: 18101\n  entangled: 18103\n");
    assert!(e.starts_with("t.yaml:4:3: port clash: 4 instances need server ports 18101-18104 and entangled ports 18103-18106, but the two ranges overlap; at most 2 instances fit"), "{e}");
    let e = err("instances: 4\nlisten: 0.0.0.0:18102\n");
    assert!(e.starts_with("t.yaml:2:1: port clash:"), "{e}");
    assert!(
        e.contains("the public listener port 18102 is among them; at most 1 instances fit"),
        "{e}"
    );
    let e = err("instances: 4\nports: { server: 65534 }\n");
    assert!(e.starts_with("t.yaml:1:1: port clash:"), "{e}");
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let e = err("admin: { listen: 0.0.0.0:8089 }\n");
    assert!(e.starts_with("t.yaml:1:10: admin listener 0.0.0.0:8089 is not on loopback: expected admin.token_file"), "{e}");
    plan("admin: { listen: 0.0.0.0:8089, token_file: /etc/t }\n").unwrap();
}

#[test]
fn store_path_must_be_creatable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = err(&format!(
        "data: {}\nstore: {}/store\n",
        dir.path().display(),
        file.display()
    ));
    assert!(e.starts_with("t.yaml:2:1: store path"), "{e}");
    assert!(e.contains("exists and is not a directory"), "{e}");
    // Control commands read the same file without the disk check.
    let topo = dir.path().join("t.yaml");
    std::fs::write(&topo, format!("store: {}/store\n", file.display())).unwrap();
    assert!(Plan::load(Some(&topo), None, &Overrides::default()).is_err());
    let p = Plan::load_for_control(Some(&topo), None, None).unwrap();
    assert_eq!(p.admin.listen.to_string(), "127.0.0.1:8089");
}

#[test]
fn shard_ranges() {
    let e =
        err("shards:\n  - { range: 00-3F, path: /mnt/a }\n  - { range: 30-4F, path: /mnt/b }\n");
    assert!(
        e.starts_with("t.yaml:3:7: shard range 30-4F overlaps shard range 00-3F"),
        "{e}"
    );
    let e = err("shards:\n  - range: 0-3F\n    path: /mnt/a\n");
    assert!(
        e.starts_with("t.yaml:2:5: bad shard range `0-3F`: expected two hex digits"),
        "{e}"
    );
}

#[test]
fn sites_rules() {
    let two = "instances: 2\nsites:\n  a: { host: 10.0.0.1 }\n  b: { host: 10.0.0.2 }\nreplication: { authkey_file: /tmp/k }\n";
    plan_site(two, Some("a")).unwrap();
    let e = plan_site(two, Some("c")).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "t.yaml:2:1: --site c is not one of the sites of this topology: expected one of a, b"
        ),
        "{e}"
    );
    let e = plan_site(two, None).unwrap_err().to_string();
    assert!(e.contains("expected --site with one of them"), "{e}");
    let auto = two.replace("instances: 2", "instances: auto");
    let e = plan_site(&auto, Some("a")).unwrap_err().to_string();
    assert!(
        e.starts_with("t.yaml:1:1: with `sites`, instances must be a number, not auto"),
        "{e}"
    );
    let nokey = two.replace("replication: { authkey_file: /tmp/k }\n", "");
    let e = plan_site(&nokey, Some("a")).unwrap_err().to_string();
    assert!(e.contains("replication.authkey_file is required"), "{e}");
    let e = plan_site("instances: 1\n", Some("a"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("command line: --site: a given, but t.yaml names no sites"),
        "{e}"
    );
    let v6 = two.replace("10.0.0.2", "\"::1\"");
    let e = plan_site(&v6, Some("a")).unwrap_err().to_string();
    assert!(
        e.starts_with("t.yaml:4:8: bad host `::1` for site b"),
        "{e}"
    );
}

#[test]
fn server_config_rules() {
    let e = err("server:\n  config: { sport: 1 }\n");
    assert!(
        e.starts_with("t.yaml:2:13: server.config sets `sport`, which storeherd writes itself"),
        "{e}"
    );
    let e = err("server:\n  config:\n    timeout:\n");
    assert!(
        e.starts_with("t.yaml:3:5: server.config.timeout is empty"),
        "{e}"
    );
    let e = err("server:\n  command: [x, \"{homedir}\"]\n");
    assert!(
        e.starts_with("t.yaml:2:16: unknown placeholder `{homedir}`"),
        "{e}"
    );
}

#[test]
fn relative_paths_follow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topo.yaml");
    std::fs::write(
        &file,
        "data: ./here\nshards: [{ range: 00-0F, path: ../elsewhere }]\n",
    )
    .unwrap();
    let p = Plan::load(Some(&file), None, &Overrides::default()).unwrap();
    assert_eq!(p.data, dir.path().join("here"));
    assert_eq!(
        p.shards[0].path,
        dir.path().parent().unwrap().join("elsewhere")
    );
    assert_eq!(p.source.as_deref(), Some(file.as_path()));
    let e = Plan::load(
        Some(&dir.path().join("nope.yaml")),
        None,
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("nope.yaml: cannot read the topology file"),
        "{e}"
    );
}

#[test]
fn two_sites_on_one_host_must_not_clash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let clash = format!(
        "instances: 2\nsites:\n  a: {{ host: 127.0.0.1, data: {d}/a }}\n  b: {{ host: 127.0.0.1, data: {d}/b, ports: {{ server: 18102 }} }}\nreplication: {{ authkey_file: {d}/k }}\n"
    );
    let e = plan_site(&clash, Some("a")).unwrap_err().to_string();
    assert!(e.starts_with("t.yaml:4:3: both sites have the same host, but their instance port ranges overlap, both use 8081 as public port, both use 8089 as admin port"), "{e}");
    let apart = format!(
        "instances: 2\nsites:\n  a: {{ host: 127.0.0.1, data: {d}/a }}\n  b: {{ host: 127.0.0.1, data: {d}/b, listen: 127.0.0.1:9081, admin: {{ listen: 127.0.0.1:9089 }}, ports: {{ server: 19101, entangled: 19201 }} }}\nreplication: {{ authkey_file: {d}/k }}\n"
    );
    let a = plan_site(&apart, Some("a")).unwrap();
    let b = plan_site(&apart, Some("b")).unwrap();
    assert_eq!(a.instance(2).replpeer(), Some("127.0.0.1:19102"));
    assert_eq!(b.instance(2).replpeer(), Some("127.0.0.1:18102"));
    assert_eq!(b.listen.port(), 9081);
    assert_eq!(b.admin.listen.port(), 9089);
}

#[test]
fn flag_errors_name_the_flag() {
    let o = Overrides {
        admin: Some("127.0.0.1:8081".parse().unwrap()),
        ..Overrides::default()
    };
    let e = Plan::from_str("instances: 1\n", "t.yaml", None, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("command line: --admin: port clash: admin listener 127.0.0.1:8081"),
        "{e}"
    );
    let o = Overrides {
        admin: Some("0.0.0.0:9999".parse().unwrap()),
        ..Overrides::default()
    };
    let e = Plan::from_str("instances: 1\n", "t.yaml", None, &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("command line: --admin: admin listener 0.0.0.0:9999 is not on loopback"),
        "{e}"
    );
}

#[test]
fn upkeep_schedule() {
    let p = plan("").unwrap();
    assert_eq!(
        p.upkeep,
        UpkeepPlan::default(),
        "no scheduled prune by default"
    );
    let p = plan("upkeep: { prune_every: 8h, prune_when_disk_above: 85% }\n").unwrap();
    assert_eq!(p.upkeep.prune_every, Some(Duration::from_secs(8 * 3600)));
    assert_eq!(p.upkeep.prune_when_disk_above, Some(85));
    let p = plan("upkeep:\n  prune_when_disk_above: 90\n").unwrap();
    assert_eq!(
        (p.upkeep.prune_every, p.upkeep.prune_when_disk_above),
        (None, Some(90))
    );
    let e = err("upkeep:\n  prune_every: 8\n");
    assert!(
        e.starts_with("t.yaml:2:16: upkeep.prune_every: bad duration `8` (no unit)"),
        "{e}"
    );
    let e = err("upkeep:\n  prune_every: 0s\n");
    assert!(
        e.starts_with("t.yaml:2:3: upkeep.prune_every is 0: expected a duration above zero"),
        "{e}"
    );
    for bad in ["100%", "0%", "eighty", "-5"] {
        let e = err(&format!("upkeep:\n  prune_when_disk_above: {bad}\n"));
        assert!(
            e.starts_with(&format!(
                "t.yaml:2:26: upkeep.prune_when_disk_above: bad percentage `{bad}`: expected a percentage of the disk from 1% to 99%"
            )),
            "{e}"
        );
    }
    let e = err("upkeep: { prune_daily: true }\n");
    assert!(
        e.contains("t.yaml:1:11: upkeep: unknown field `prune_daily`, expected `prune_every` or `prune_when_disk_above`"),
        "{e}"
    );
}

#[test]
fn balance_and_accept_proxy_are_read_and_checked() {
    let p = plan("instances: 1\n").unwrap();
    assert_eq!(p.proxy.balance, crate::proxy::Balance::RoundRobin);
    assert_eq!(p.proxy.accept_proxy, None);
    let p = plan(
        "instances: 1\nproxy:\n  balance: leastconn\n  accept_proxy: [10.1.2.3/8, 192.0.2.7, \"2001:db8::/32\"]\n",
    )
    .unwrap();
    assert_eq!(p.proxy.balance, crate::proxy::Balance::LeastConn);
    let nets: Vec<String> = p
        .proxy
        .accept_proxy
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    let e = err("proxy:\n  balance: random\n");
    assert!(
        e.starts_with(
            "t.yaml:2:3: proxy.balance: unknown balance `random`: expected roundrobin or leastconn"
        ),
        "{e}"
    );
    let e = err("proxy:\n  accept_proxy: [10.0.0.0/8, nowhere]\n");
    assert!(
        e.starts_with("t.yaml:2:") && e.contains("proxy.accept_proxy: bad network `nowhere`"),
        "{e}"
    );
    let e = err("proxy:\n  accept_proxy: []\n");
    assert!(e.contains("proxy.accept_proxy is empty"), "{e}");
    // Both apply live.
    let a = plan("instances: 1\n").unwrap();
    let b =
        plan("instances: 1\nproxy: { balance: leastconn, accept_proxy: [10.0.0.0/8] }\n").unwrap();
    assert!(a.restart_needed(&b).is_ok());
}

fn plan_host(text: &str, site: Option<&str>, host: Option<&str>) -> Result<Plan, TopologyError> {
    let o = Overrides {
        host: host.map(str::to_string),
        ..Overrides::default()
    };
    Plan::from_str(text, "t.yaml", site, &o)
}

fn host_err(text: &str, site: Option<&str>, host: Option<&str>) -> String {
    plan_host(text, site, host).unwrap_err().to_string()
}

/// The multi-host format: two hosts, ids running on across them.
const TWO_HOSTS: &str = "\
store: /tmp/shared-store
admin: { listen: 0.0.0.0:8089, token_file: /etc/storeherd/admin.token }
hosts:
  - { name: h1, address: 10.0.0.1, instances: 4 }
  - { name: h2, address: 10.0.0.2, instances: 3, data: /tmp/h2-data }
upkeep: { prune_every: 8h }
";

#[test]
fn hosts_number_ids_and_ports_across_the_list() {
    let h1 = plan_host(TWO_HOSTS, None, Some("h1")).unwrap();
    let h2 = plan_host(TWO_HOSTS, None, Some("h2")).unwrap();
    assert_eq!((h1.instances, h1.first_id()), (4, 1));
    assert_eq!((h2.instances, h2.first_id()), (3, 5));
    assert_eq!(h2.ids().collect::<Vec<_>>(), vec![5, 6, 7]);
    assert_eq!(h2.host_name.as_deref(), Some("h2"));
    // Homes stay local, the store is shared, ports follow the id.
    assert_eq!(h2.data, PathBuf::from("/tmp/h2-data"));
    assert_eq!(h2.store, PathBuf::from("/tmp/shared-store"));
    let i = h2.instance(5);
    assert_eq!((i.port, i.eport), (18105, 18205));
    assert_eq!(i.home, PathBuf::from("/tmp/h2-data/homes/5"));
    // Without sites the instances stay on loopback: only this host's proxy reaches them.
    assert_eq!(h2.host, None);
    assert_eq!(h2.listen_address(), "127.0.0.1");
    // Every host knows every host's ids and admin address.
    for p in [&h1, &h2] {
        let hosts: Vec<(&str, u32, u32, &str)> = p
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.first_id, h.last_id(), h.admin.as_str()))
            .collect();
        assert_eq!(
            hosts,
            vec![("h1", 1, 4, "10.0.0.1:8089"), ("h2", 5, 7, "10.0.0.2:8089")]
        );
    }
    // No live growth into the next host's ids; the shared store is pruned by the first.
    assert_eq!(h1.max_instances(), 4);
    assert!(h1.upkeep.prune_every.is_some());
    assert_eq!(h2.upkeep, UpkeepPlan::default());
    let ids: Vec<u32> = h2.report().instances.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![5, 6, 7]);
}

#[test]
fn hosts_per_host_overrides_win() {
    let text = "\
listen: 0.0.0.0:8081
admin: { listen: 0.0.0.0:8089, token_file: /etc/t }
hosts:
  - { name: a, address: 127.0.0.1, instances: 1, listen: 127.0.0.1:9081, admin: { listen: 127.0.0.1:9089 }, data: /tmp/a, store: /tmp/mnt-a }
  - { name: b, address: 127.0.0.1, instances: 1, listen: 127.0.0.1:9082, admin: { listen: 127.0.0.1:9090 }, data: /tmp/b }
";
    let a = plan_host(text, None, Some("a")).unwrap();
    assert_eq!(a.listen.to_string(), "127.0.0.1:9081");
    assert_eq!(a.admin.listen.to_string(), "127.0.0.1:9089");
    assert_eq!(a.admin.token_file, Some(PathBuf::from("/etc/t")));
    assert_eq!(a.store, PathBuf::from("/tmp/mnt-a"));
    let b = plan_host(text, None, Some("b")).unwrap();
    assert_eq!(b.store, PathBuf::from("/tmp/b/store"));
    assert_eq!(b.hosts[0].admin, "127.0.0.1:9089");
    assert_eq!(b.hosts[1].admin, "127.0.0.1:9090");
}

#[test]
fn hosts_selection_errors() {
    let e = host_err(TWO_HOSTS, None, None);
    assert!(
        e.starts_with(
            "t.yaml:3:1: this site has several hosts (h1, h2): expected --host with one of them"
        ),
        "{e}"
    );
    let e = host_err(TWO_HOSTS, None, Some("h3"));
    assert!(
        e.starts_with(
            "t.yaml:3:1: --host h3 is not one of the hosts of this site: expected one of h1, h2"
        ),
        "{e}"
    );
    let e = host_err("instances: 1\n", None, Some("h1"));
    assert!(
        e.starts_with("command line: --host: h1 given, but t.yaml names no hosts"),
        "{e}"
    );
    let e = host_err(&format!("instances: 2\n{TWO_HOSTS}"), None, Some("h1"));
    assert!(
        e.starts_with("t.yaml:1:1: instances is set, but `hosts` gives each host's count"),
        "{e}"
    );
    let o = Overrides {
        host: Some("h1".into()),
        instances: Some("2".into()),
        ..Overrides::default()
    };
    let e = Plan::from_str(TWO_HOSTS, "t.yaml", None, &o)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("command line: --instances: "), "{e}");
}

#[test]
fn hosts_list_errors_name_the_entry() {
    let one = |entries: &str| format!("hosts:\n{entries}");
    let e = host_err(
        &one("  - { name: h1, address: 10.0.0.1, instances: auto }\n"),
        None,
        Some("h1"),
    );
    assert!(
        e.starts_with("t.yaml:2:47: hosts[0].instances: bad instance count `auto` for a host: expected a number"),
        "{e}"
    );
    let e = host_err(&one("  - { name: h1, instances: 2 }\n"), None, Some("h1"));
    assert!(e.contains("missing field `address`"), "{e}");
    assert!(e.starts_with("t.yaml:2:"), "{e}");
    let e = host_err(
        &one("  - { name: h1, address: 10.0.0.1, instances: 2, port: 1 }\n"),
        None,
        Some("h1"),
    );
    assert!(e.contains("unknown field `port`"), "{e}");
    let e = host_err(
        &one("  - { name: h1, address: 10.0.0.1, instances: 2 }\n  - { name: h1, address: 10.0.0.2, instances: 2 }\n"),
        None,
        Some("h1"),
    );
    assert!(
        e.starts_with("t.yaml:3:7: host name h1 is used twice in this site"),
        "{e}"
    );
    let e = host_err(
        &one("  - { name: h1, address: \"::1\", instances: 2 }\n"),
        None,
        Some("h1"),
    );
    assert!(
        e.starts_with("t.yaml:2:17: bad address `::1` for host h1"),
        "{e}"
    );
    let e = host_err(
        &one("  - { name: \"h 1\", address: 10.0.0.1, instances: 2 }\n"),
        None,
        Some("h 1"),
    );
    assert!(e.starts_with("t.yaml:2:7: bad host name `h 1`"), "{e}");
    let e = host_err("hosts: []\n", None, Some("h1"));
    assert!(e.starts_with("t.yaml:1:1: hosts is empty"), "{e}");
}

#[test]
fn hosts_admin_must_be_reachable_and_hosts_on_one_address_kept_apart() {
    // Loopback admin, but the other host calls it at 10.0.0.1.
    let e = host_err(
        "hosts:\n  - { name: h1, address: 10.0.0.1, instances: 1 }\n  - { name: h2, address: 10.0.0.2, instances: 1 }\n",
        None,
        Some("h1"),
    );
    assert!(
        e.starts_with("t.yaml:2:17: host h1's admin listener 127.0.0.1:8089 is not where the other hosts of the site reach it (10.0.0.1:8089)"),
        "{e}"
    );
    // Two hosts on one machine: ports and data must differ.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let clash = format!(
        "data: {d}/data\nhosts:\n  - {{ name: h1, address: 127.0.0.1, instances: 1 }}\n  - {{ name: h2, address: 127.0.0.1, instances: 1 }}\n"
    );
    let e = host_err(&clash, None, Some("h2"));
    assert!(
        e.starts_with("t.yaml:4:5: hosts h1 and h2 have the same address 127.0.0.1, but both use 8081 as public port, both use 8089 as admin port, they use the same data directory"),
        "{e}"
    );
    // The site's whole id range counts: h2's listener among h1's instance ports.
    let within = format!(
        "hosts:\n  - {{ name: h1, address: 127.0.0.1, instances: 2, data: {d}/1 }}\n  - {{ name: h2, address: 127.0.0.1, instances: 2, data: {d}/2, listen: 127.0.0.1:18102, admin: {{ listen: 127.0.0.1:9090 }} }}\n"
    );
    let e = host_err(&within, None, Some("h2"));
    assert!(
        e.contains("port clash: 4 instances need server ports 18101-18104"),
        "{e}"
    );
    assert!(
        e.contains("the public listener port 18102 is among them"),
        "{e}"
    );
}

#[test]
fn sites_over_hosts_pair_at_the_holding_host() {
    let text = "\
admin: { listen: 0.0.0.0:8089, token_file: /etc/t }
sites:
  a:
    hosts:
      - { name: a1, address: 10.0.0.1, instances: 2 }
      - { name: a2, address: 10.0.0.2, instances: 2 }
  b:
    ports: { server: 19101 }
    hosts:
      - { name: b1, address: 10.1.0.1, instances: 3 }
      - { name: b2, address: 10.1.0.2, instances: 1 }
replication: { authkey_file: /tmp/k }
";
    let a2 = plan_host(text, Some("a"), Some("a2")).unwrap();
    assert_eq!(a2.host.as_deref(), Some("10.0.0.2"));
    assert_eq!(a2.listen_address(), "10.0.0.2");
    assert_eq!(a2.ids().collect::<Vec<_>>(), vec![3, 4]);
    // Instance 3 pairs with b's instance 3 (on b1), instance 4 with b's 4 (on b2).
    assert_eq!(a2.instance(3).replpeer(), Some("10.1.0.1:19103"));
    assert_eq!(a2.instance(4).replpeer(), Some("10.1.0.2:19104"));
    let b2 = plan_host(text, Some("b"), Some("b2")).unwrap();
    assert_eq!(b2.first_id(), 4);
    assert_eq!(b2.instance(4).replpeer(), Some("10.0.0.2:18104"));

    let e = host_err(text, Some("a"), None);
    assert!(e.contains("expected --host with one of them"), "{e}");
    let both = text.replace("  b:\n", "  b:\n    host: 10.1.0.9\n");
    let e = host_err(&both, Some("a"), Some("a1"));
    assert!(
        e.starts_with("t.yaml:10:5: site b has both host and hosts"),
        "{e}"
    );
    let uneven = text.replace("instances: 1 }", "instances: 2 }");
    let e = host_err(&uneven, Some("a"), Some("a1"));
    assert!(
        e.starts_with("t.yaml:9:5: site a's hosts run 4 instances and site b's run 5"),
        "{e}"
    );
    let top = format!("hosts: []\n{text}");
    let e = host_err(&top, Some("a"), Some("a1"));
    assert!(
        e.starts_with("t.yaml:1:1: hosts is set at the top level"),
        "{e}"
    );
    let one_sided = "instances: 2\nsites:\n  a: { hosts: [{ name: a1, address: 10.0.0.1, instances: 2 }] }\n  b: { host: 10.1.0.1 }\nreplication: { authkey_file: /tmp/k }\n";
    let e = host_err(one_sided, Some("b"), None);
    assert!(
        e.starts_with("t.yaml:4:3: site a has hosts but site b has none"),
        "{e}"
    );
}

#[test]
fn a_change_of_hosts_needs_a_restart() {
    let h1 = plan_host(TWO_HOSTS, None, Some("h1")).unwrap();
    let more = TWO_HOSTS.replace("instances: 3", "instances: 4");
    let h1b = plan_host(&more, None, Some("h1")).unwrap();
    let e = h1.restart_needed(&h1b).unwrap_err();
    assert!(e.0.iter().any(|c| c.field == "hosts"), "{e}");
    assert!(e.to_string().contains("need a restart"), "{e}");
}
