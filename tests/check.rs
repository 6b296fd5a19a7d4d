//! `storeherd check`, run as the real binary: every example is accepted, bad files are
//! refused with `file:line:column: what was expected`, and `--json` is one JSON document.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("check")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run storeherd check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Copies a topology into `dir`, moving its absolute system paths under `dir`, so that the
/// "can the store be created" check does not depend on who runs the test.
fn hermetic_copy(src: &Path, dir: &Path) -> PathBuf {
    let root = dir.display().to_string();
    let mut body = std::fs::read_to_string(src).unwrap();
    for prefix in ["/var/lib/", "/srv/", "/mnt/", "/etc/"] {
        body = body.replace(&format!(" {prefix}"), &format!(" {root}{prefix}"));
    }
    let dst = dir.join(src.file_name().unwrap());
    std::fs::write(&dst, body).unwrap();
    dst
}

fn assert_accepted(dir: &Path, file: &Path, site: Option<&str>) {
    let mut args = vec!["-f", file.to_str().unwrap()];
    if let Some(s) = site {
        args.extend(["--site", s]);
    }
    let out = check(dir, &args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{} refused: {}",
        file.display(),
        text(&out.stderr)
    );
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("\ninstance 1\n"), "{stdout}");
    assert!(stdout.contains("config.txt\n    sport: "), "{stdout}");

    args.push("--json");
    let out = check(dir, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let n = doc["plan"]["instances"].as_u64().unwrap();
    assert_eq!(doc["instances"].as_array().unwrap().len() as u64, n);
    if site.is_some() {
        assert_eq!(doc["plan"]["site"].as_str(), site);
        assert!(doc["instances"][0]["replpeer"].is_string());
    }
}

#[test]
fn every_example_is_accepted() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_owned())
        .collect();
    for want in ["laptop.yaml", "server-8core.yaml", "sharded.yaml"] {
        assert!(names.iter().any(|n| n == want), "examples/{want} missing");
    }
    for f in &files {
        let dir = tempfile::tempdir().unwrap();
        let copy = hermetic_copy(f, dir.path());
        assert_accepted(dir.path(), &copy, None);
    }
    // The deployment example names two sites; each side is checked.
    for site in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let copy = hermetic_copy(&repo().join("deploy/storeherd.yaml"), dir.path());
        assert_accepted(dir.path(), &copy, Some(site));
    }
}

#[test]
fn json_plan_of_the_default_topology() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let plan = &doc["plan"];
    assert_eq!(plan["listen"], "127.0.0.1:8081");
    assert_eq!(plan["admin"]["listen"], "127.0.0.1:8089");
    assert_eq!(plan["ports"]["server"], 18101);
    assert_eq!(plan["health"]["start_grace"], "1m");
    let data = dir.path().canonicalize().unwrap().join("storeherd-data");
    assert_eq!(plan["data"], data.display().to_string());
    let n = plan["instances"].as_u64().unwrap();
    assert!(n >= 1);
    let instances = doc["instances"].as_array().unwrap();
    assert_eq!(instances.len() as u64, n);
    assert_eq!(instances[0]["config"][0], "sport: 18101");
    assert_eq!(
        instances[0]["home"],
        data.join("homes/1").display().to_string()
    );
    let changes = doc["changes"].as_array().unwrap();
    assert!(changes[0]
        .as_str()
        .unwrap()
        .starts_with("create data directory"));
    // check only looks: nothing was created.
    assert!(!data.exists());
}

/// Writes `body` as `bad.yaml` and expects `check` to refuse it with `want` on stderr.
fn refused(body: &str, extra: &[&str], want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let body = body.replace("{tmp}", &dir.path().display().to_string());
    std::fs::write(dir.path().join("bad.yaml"), body).unwrap();
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    let mut args = vec!["-f", "bad.yaml"];
    args.extend(extra);
    let out = check(dir.path(), &args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "accepted: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(
        stderr.contains(want),
        "expected {want:?} in the error, got: {stderr}"
    );
}

#[test]
fn unknown_key() {
    refused(
        "listen: 127.0.0.1:8081\ninstancs: 3\n",
        &[],
        "bad.yaml:2:1: unknown field `instancs`, expected one of `listen`, `admin`, `instances`, `data`",
    );
    refused(
        "health: { interval: 1s, unhealthy: 3 }\n",
        &[],
        "bad.yaml:1:25: health: unknown field `unhealthy`, expected one of `interval`, `timeout`, `unhealthy_after`, `start_grace`",
    );
}

#[test]
fn wrong_type() {
    refused(
        "ports:\n  server: eighteen\n",
        &[],
        "bad.yaml:2:11: ports.server: invalid type: string \"eighteen\", expected a port number from 1 to 65535",
    );
}

#[test]
fn bad_duration() {
    refused(
        "restart:\n  backoff_max: 30 seconds\n",
        &[],
        "bad.yaml:2:16: restart.backoff_max: bad duration `30 seconds`: expected a duration with a unit, such as 500ms, 2s, 5m or 1h",
    );
}

#[test]
fn public_and_admin_port_clash() {
    refused(
        "listen: 0.0.0.0:8081\nadmin: { listen: 127.0.0.1:8081 }\n",
        &[],
        "bad.yaml:2:10: port clash: admin listener 127.0.0.1:8081 and public listener 0.0.0.0:8081 use the same port: expected different ports",
    );
}

#[test]
fn instance_port_ranges_overlap() {
    refused(
        "instances: 8\nports:\n  server: 20000\n  entangled: 20004\n",
        &[],
        "bad.yaml:4:3: port clash: 8 instances need server ports 20000-20007 and entangled ports 20004-20011, but the two ranges overlap; at most 4 instances fit",
    );
}

#[test]
fn public_port_among_instance_ports() {
    refused(
        "instances: 4\nlisten: 0.0.0.0:18103\n",
        &[],
        "bad.yaml:2:1: port clash: 4 instances need server ports 18101-18104 and entangled ports 18201-18204, but the public listener port 18103 is among them; at most 2 instances fit",
    );
}

#[test]
fn store_not_creatable() {
    refused(
        "instances: 1\ndata: {tmp}/data\nstore: {tmp}/a-file/store\n",
        &[],
        "bad.yaml:3:1: store path",
    );
    refused(
        "instances: 1\ndata: {tmp}/data\nstore: {tmp}/a-file/store\n",
        &[],
        "a-file exists and is not a directory: expected a directory that this user can create or write",
    );
}

#[test]
fn bad_shard_ranges() {
    refused(
        "shards:\n  - { range: 00-3F, path: /mnt/d1 }\n  - { range: 3F-7F, path: /mnt/d2 }\n",
        &[],
        "bad.yaml:3:7: shard range 3F-7F overlaps shard range 00-3F: expected ranges with no folder in common",
    );
    refused(
        "shards:\n  - { range: 00-3G, path: /mnt/d1 }\n",
        &[],
        "bad.yaml:2:7: bad shard range `00-3G`: expected two hex digits, a dash, two hex digits",
    );
}

#[test]
fn admin_off_loopback_without_token() {
    refused(
        "admin:\n  listen: 0.0.0.0:8089\n",
        &[],
        "bad.yaml:2:3: admin listener 0.0.0.0:8089 is not on loopback: expected admin.token_file",
    );
}

const SITES: &str = "instances: 2\nsites:\n  a: { host: 10.0.0.1 }\n  b: { host: 10.0.0.2 }\nreplication: { authkey_file: {tmp}/k }\n";

#[test]
fn sites_with_auto_instances() {
    refused(
        &SITES.replace("instances: 2", "instances: auto"),
        &["--site", "a"],
        "bad.yaml:1:1: with `sites`, instances must be a number, not auto",
    );
}

#[test]
fn unknown_site() {
    refused(
        SITES,
        &["--site", "c"],
        "bad.yaml:2:1: --site c is not one of the sites of this topology: expected one of a, b",
    );
}

#[test]
fn unknown_placeholder() {
    refused(
        "server:\n  command: [python2, server.py, -homedir, \"{homedir}\"]\n",
        &[],
        "bad.yaml:2:43: unknown placeholder `{homedir}` in server.command: expected one of {home}, {id}, {port}, {eport}",
    );
}

#[test]
fn yaml_syntax_error() {
    refused(
        "listen: 127.0.0.1:8081\nports: { server: 1\n",
        &[],
        "bad.yaml:3:1: did not find expected ',' or '}'",
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), &["-f", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nope.yaml: cannot read the topology file"));
}

// --- What check plans and provisioning writes, the built-in server runs.

#[test]
fn provisioned_home_is_served_by_the_builtin_server() {
    use std::time::Duration;
    use storeherd::supervisor::provision::{prepare_data, provision_home};
    use storeherd::topology::{Overrides, Plan};
    use storeherd::wire::{cert_sha1, Client};

    let dir = tempfile::tempdir().unwrap();
    let (port, eport) = (support::ports::port(), support::ports::port());
    let text = format!(
        "instances: 1\nports: {{ server: {port}, entangled: {eport} }}\nserver: {{ config: {{ max_connections: 5 }} }}\n"
    );
    let overrides = Overrides {
        data: Some(dir.path().join("data")),
        ..Overrides::default()
    };
    let plan = Plan::from_str(&text, "t.yaml", None, &overrides).unwrap();
    let prepared = prepare_data(&plan).unwrap();
    provision_home(&plan, &prepared, 1).unwrap();
    let inst = plan.instance(1);
    let _server = support::procs::Reaped(
        Command::new(BIN)
            .args(["store", "--homedir"])
            .arg(&inst.home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let der = rustls_pemfile::certs(&mut prepared.identity.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let pin = cert_sha1(der.as_ref());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], inst.port));
    let rt = support::current_thread();
    rt.block_on(async {
        let what = "the built-in server answers on the planned port";
        let client = support::eventually_async(Duration::from_secs(20), what, || {
            Client::connect(addr, Duration::from_secs(5))
        })
        .await;
        // The shared identity from ssl/ is the one presented.
        let mut client = client.starttls(Some(&pin)).await.unwrap();
        // auth.txt was seeded with the administrator key.
        assert!(client
            .login("administrator", &prepared.admin_key)
            .await
            .unwrap());
        assert_eq!(client.selftest().await.unwrap(), vec!["PASS".to_string()]);
        client.quit().await.unwrap();
    });
    // The server used the shared store of the plan, not a store of its own.
    assert!(plan.store.is_dir());
}

#[test]
fn bad_upkeep_schedule() {
    refused(
        "upkeep:\n  prune_when_disk_above: 120%\n",
        &[],
        "bad.yaml:2:26: upkeep.prune_when_disk_above: bad percentage `120%`: expected a percentage of the disk from 1% to 99%",
    );
    refused(
        "upkeep: { prune_every: 0s }\n",
        &[],
        "bad.yaml:1:11: upkeep.prune_every is 0: expected a duration above zero",
    );
}
