//! `storeherd bench` against a real built-in store server: every op for one second, the
//! `--json` contract, and the fast, clear failures (wrong target, GET without a login).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::procs::Reaped;
use support::store::{accounts, TestServer, ADMIN_KEY};
use support::BIN;

/// Longest any bench run here may take, setup (proofs of work, GET set) included.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs `storeherd bench ARGS`, bounded by `limit`; panics if it is still running then.
fn bench(args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = Command::new(BIN)
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storeherd bench");
    // Killed and reaped if it is still running at the limit (also on panic).
    let mut bench = Reaped(child);
    assert!(
        bench.exit_within(limit).is_some(),
        "storeherd bench {args:?} still running after {limit:?}"
    );
    (read_output(&mut bench.0), started.elapsed())
}

/// The output of a child that has exited (its pipes read to the end).
fn read_output(child: &mut Child) -> Output {
    use std::io::Read;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout).unwrap();
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr).unwrap();
    }
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

fn server() -> TestServer {
    TestServer::start_with(
        support::store::Options::default()
            .config(&[("max_connections", "200")])
            .auth(&accounts()),
    )
}

/// Runs one op with `--json` and checks the report against the contract. One second, or
/// three for the ops that wait for an fsync (`DONE` comes only once a block is durable): on
/// a disk shared with other work a single sync can take longer than a second.
fn run_json(s: &TestServer, op: &str, extra: &[&str]) -> serde_json::Value {
    let target = &s.addr().to_string();
    let secs = if matches!(op, "store" | "mixed") {
        "3"
    } else {
        "1"
    };
    let mut args = vec![
        "--target", target, "--op", op, "-c", "4", "-d", secs, "--json",
    ];
    args.extend_from_slice(extra);
    let (out, _) = bench(&args, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {stderr}\n{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout:?}"));
    assert_eq!(v["op"], op);
    assert_eq!(v["targets"], serde_json::json!([target]));
    assert_eq!(v["connections"], 4);
    let secs = v["duration_s"].as_f64().expect("duration_s");
    assert!((0.9..30.0).contains(&secs), "duration_s {secs}");
    let ops = v["ops"].as_u64().expect("ops");
    assert!(
        ops > 0,
        "{op}: no operation completed: {v}\nbench stderr: {stderr}\nserver log:\n{}",
        s.log()
    );
    assert!(v["ops_per_sec"].as_f64().expect("ops_per_sec") > 0.0);
    let errors = v["errors"].as_object().expect("errors is an object");
    assert!(errors.is_empty(), "{op}: errors {errors:?}");
    let lat = &v["latency_us"];
    let (p50, p99, p999, max) = (
        lat["p50"].as_u64().expect("p50"),
        lat["p99"].as_u64().expect("p99"),
        lat["p999"].as_u64().expect("p999"),
        lat["max"].as_u64().expect("max"),
    );
    assert!(
        0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "{op}: latency {lat}"
    );
    v
}

#[test]
fn every_op_runs_against_a_real_server_with_no_errors() {
    let s = server();
    let login = format!("administrator:{ADMIN_KEY}");
    // Small blocks: the debug build's proofs of work for a store run are computed up front.
    for op in ["ping", "connect", "store"] {
        let v = run_json(&s, op, &["--size", "256"]);
        assert!(v.get("processed_per_sec").is_none(), "{op}: {v}");
    }
    for op in ["get", "mixed"] {
        run_json(&s, op, &["--login", &login, "--size", "256"]);
    }
    let v = run_json(
        &s,
        "store",
        &["--login", &login, "--verify", "--size", "256"],
    );
    let processed = v["processed_per_sec"]
        .as_f64()
        .expect("processed_per_sec with --verify");
    assert!(processed > 0.0, "{v}");
    assert!(s.log().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn a_fixed_rate_never_runs_ahead_of_its_schedule() {
    let s = server();
    // 4 connections at 200/s in total for 1 s: each starts at most one operation per 20 ms
    // of its schedule, so however fast the server, no more than rate × duration + one per
    // connection complete.
    let v = run_json(&s, "ping", &["--rate", "200"]);
    let ops = v["ops"].as_u64().unwrap();
    let secs = v["duration_s"].as_f64().unwrap();
    assert!(
        ops as f64 <= 200.0 * secs + 4.0,
        "{ops} ops in {secs} s at 200/s: {v}"
    );
    let (out, _) = bench(&["--rate", "0", "-d", "1"], RUN_LIMIT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate must be a positive"));
}

#[test]
fn human_output_names_the_op_and_the_figures() {
    let s = server();
    let (out, _) = bench(
        &["--target", &s.addr().to_string(), "-c", "2", "-d", "1"],
        RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ops/s"), "{stdout}");
    assert!(stdout.contains("errors: none"), "{stdout}");
}

/// Fails within a few seconds, non-zero, with a message naming the address, on stderr only.
fn assert_fails_fast(args: &[&str], expect: &[&str]) {
    let (out, took) = bench(args, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bench {args:?} succeeded");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    for e in expect {
        assert!(stderr.contains(e), "{e:?} not in {stderr:?}");
    }
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_wrong_target_fails_fast_and_clearly() {
    // Nothing listens there.
    let dead: SocketAddr = format!("127.0.0.1:{}", support::ports::port())
        .parse()
        .unwrap();
    let dead = dead.to_string();
    assert_fails_fast(
        &["--target", &dead, "-d", "5", "--json"],
        &["cannot reach", &dead],
    );
    // Listens but never greets: bounded by the connect timeout, not the run.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    assert_fails_fast(
        &["--target", &silent_addr, "-d", "60", "--op", "ping"],
        &["cannot reach", &silent_addr],
    );
    drop(silent);
    // One good target and one wrong one: still refused up front.
    let s = server();
    let both = format!("{},{dead}", s.addr());
    assert_fails_fast(&["--target", &both, "-d", "5"], &["cannot reach", &dead]);
}

#[test]
fn get_without_login_says_what_is_missing() {
    let s = server();
    let target = s.addr().to_string();
    for op in ["get", "mixed"] {
        assert_fails_fast(&["--target", &target, "--op", op], &["--login"]);
    }
    assert_fails_fast(
        &["--target", &target, "--op", "store", "--verify"],
        &["--login"],
    );
    assert_fails_fast(
        &["--target", &target, "--op", "ping", "--login", "nocolon"],
        &["USER:KEY"],
    );
    assert_fails_fast(
        &[
            "--target",
            &target,
            "--op",
            "ping",
            "--login",
            "administrator:WRONG",
        ],
        &["refused"],
    );
}
