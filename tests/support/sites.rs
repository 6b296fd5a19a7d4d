//! Two sites of `storeherd up` that replicate to each other, from one topology file (as
//! deploy/two-site/ shows), each in its own directory.

use std::path::Path;
use std::time::Duration;

use super::up::{Ports, Up};
use super::wait::eventually;

/// One topology file for both sites (2 instances each), with a sender interval of 1 s and a
/// long back-off (60 s) that only the reachability probe can cut short.
pub fn two_site_topology(
    dirs: [&Path; 2],
    hosts: [&str; 2],
    ports: [Ports; 2],
    keyfile: &Path,
) -> String {
    let site = |i: usize| {
        let p = ports[i];
        format!(
            "{{ host: {}, listen: {}, admin: {{ listen: {} }}, data: {}, ports: {{ server: {}, entangled: {} }} }}",
            hosts[i],
            p.listen,
            p.admin,
            dirs[i].join("data").display(),
            p.sport,
            p.eport
        )
    };
    format!(
        "instances: 2\n\
         health: {{ interval: 200ms, timeout: 2s, unhealthy_after: 2, start_grace: 20s }}\n\
         restart: {{ backoff_min: 100ms, backoff_max: 1s, crash_loop: {{ restarts: 3, within: 30s }} }}\n\
         proxy: {{ connect_timeout: 1s, idle_timeout: 60s, drain_timeout: 3s }}\n\
         server:\n  config: {{ run_queue_interval: 1, retry_schedule: [0, 60], timeout: 5 }}\n  stop_grace: 3s\n\
         sites:\n  a: {}\n  b: {}\n\
         replication: {{ authkey_file: {} }}\n",
        site(0),
        site(1),
        keyfile.display()
    )
}

/// Both sites, each in its own directory (with a copy of the one topology file).
pub struct TwoSites {
    pub a: Up,
    pub b: Up,
}

impl TwoSites {
    /// Starts site a, then site b (which reads the replication key a generated), each under
    /// `prefix` (empty, or `ip netns exec NS`). Waits for neither.
    pub fn start(hosts: [&str; 2], ports: [Ports; 2], prefixes: [Vec<String>; 2]) -> TwoSites {
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let keyfile = da.path().join("replication.key");
        let text = two_site_topology([da.path(), db.path()], hosts, ports, &keyfile);
        let [pa, pb] = prefixes;
        let launch = |dir: tempfile::TempDir, ports: Ports, prefix: Vec<String>, site: &str| {
            let file = dir.path().join("storeherd.yaml");
            std::fs::write(&file, &text).unwrap();
            let mut up = Up::new(dir, file, ports);
            up.prefix = prefix;
            up.args = vec!["--site".into(), site.into()];
            up.respawn();
            up
        };
        let a = launch(da, ports[0], pa, "a");
        // Site a generates the key file; b must not race it.
        wait_file(&keyfile);
        let b = launch(db, ports[1], pb, "b");
        TwoSites { a, b }
    }
}

impl TwoSites {
    /// Both sites on loopback, on free ports, each with both instances ready.
    pub fn on_loopback() -> TwoSites {
        let ports = [Ports::free(2), Ports::free(2)];
        let mut s = TwoSites::start(["127.0.0.1", "127.0.0.1"], ports, [vec![], vec![]]);
        ready(&mut s.a);
        ready(&mut s.b);
        s
    }
}

/// Waits until a site's admin API answers and both its instances are ready.
pub fn ready(up: &mut Up) {
    up.wait_admin();
    up.wait_ready(2);
}

/// Waits (bounded) until `path` holds a line of text; returns it, trimmed.
pub fn wait_file(path: &Path) -> String {
    eventually(
        Duration::from_secs(30),
        format!("{} appears", path.display()),
        || {
            let t = std::fs::read_to_string(path).ok()?;
            let t = t.trim();
            (!t.is_empty()).then(|| t.to_string())
        },
    )
}
