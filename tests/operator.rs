//! What an operator sees around a real `storeherd up`: the status page in a real browser
//! (headless Chromium), `storeherd logs`, the summary `up` prints once ready, shell
//! completions and manual pages.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::CommandFactory;
use support::procs::Reaped;
use support::up::{all_ready, Topology, Up};
use support::{eventually, BIN};

/// Bound on one browser run.
const BROWSER_BOUND: Duration = Duration::from_secs(60);

/// Debian's `chromium`, or `None` when it is absent outside CI (a loud skip). In CI
/// (`CI` set), a missing browser fails the test: `.ci/run` installs it.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    let what = "the status page in a browser";
    support::have(
        found.is_some(),
        what,
        "chromium",
        "apt-get install chromium",
    );
    found
}

/// Runs headless Chromium on `url` with `extra` arguments in a fresh profile; its stdout.
/// Virtual time lets the page's timers and its `/status` requests run without waiting.
fn browse(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed and reaped if it runs past the bound.
    let mut child = Reaped(child);
    let mut stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let st = child
        .exit_within(BROWSER_BOUND)
        .unwrap_or_else(|| panic!("chromium did not finish within {BROWSER_BOUND:?}"));
    assert!(st.success(), "chromium exited with {st}");
    reader.join().unwrap()
}

/// `(id, state)` of every instance row of the rendered page.
fn rows(dom: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for piece in dom.split("<tr data-id=\"").skip(1) {
        let (id, rest) = piece.split_once('"').unwrap();
        let state = rest
            .split_once("data-state=\"")
            .and_then(|(_, s)| s.split_once('"'))
            .map(|(s, _)| s.to_string())
            .unwrap();
        out.push((id.parse().unwrap(), state));
    }
    out
}

/// Waits until `/status` (read with the handle's token) lists exactly `n` ready instances.
fn wait_ready_with(up: &Up, n: usize) {
    let what = format!("{n} ready instances");
    up.wait_status(Duration::from_secs(60), &what, |st| {
        st.instances.len() == n && all_ready(st)
    });
}

#[test]
fn status_page_in_chromium_asks_for_the_token_and_follows_a_scale() {
    let Some(chromium) = chromium() else { return };
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("admin.token");
    let token = "page-token-0123";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let keys = format!("token_file: {}", token_file.display());
    let mut up = Topology::new(2).admin_keys(&keys).start();
    up.token = Some(token.to_string());
    let (listen, admin) = (up.listen, up.admin);
    wait_ready_with(&up, 2);
    let page = format!("http://{admin}/");

    // Without the token: the page loads (it holds no data) and asks for one.
    let dom = browse(&chromium, &page, &["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"unauthorized\""), "{dom}");
    assert!(dom.contains("needs a bearer token"), "{dom}");
    assert!(rows(&dom).is_empty(), "{dom}");
    // A wrong one is refused as such.
    let dom = browse(&chromium, &format!("{page}#token=wrong"), &["--dump-dom"]);
    assert!(dom.contains("token given was refused"), "{dom}");
    assert!(rows(&dom).is_empty(), "{dom}");

    let with_token = format!("{page}#token={token}");
    let dom = browse(&chromium, &with_token, &["--dump-dom"]);
    assert_eq!(
        rows(&dom),
        [(1, "ready".to_string()), (2, "ready".to_string())],
        "{dom}"
    );
    assert!(dom.contains(&format!("<b>{listen}</b>")), "{dom}");
    assert!(dom.contains("class=\"badge s-ready\""), "{dom}");
    assert!(dom.contains("<polyline"), "no sparkline: {dom}");

    let out = Command::new(BIN)
        .args(["scale", "3", "--admin", &admin.to_string(), "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    support::succeeded(&out);
    wait_ready_with(&up, 3);
    let dom = browse(&chromium, &with_token, &["--dump-dom"]);
    let states: Vec<(u32, String)> = (1..=3).map(|i| (i, "ready".to_string())).collect();
    assert_eq!(rows(&dom), states, "{dom}");

    // Kept for a person to look at, in the test's scratch directory.
    let shot_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &chromium,
        &with_token,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,400",
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
    up.terminate(Duration::from_secs(30));
}

/// Reads `child`'s stdout lines into a channel, so a test can wait for one with a bound.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn logs_and_the_ready_summary() {
    let up = Up::start(2, "");
    let st = up.wait_ready(2);
    let admin = up.admin.to_string();

    // Where to look, once every instance is ready (on stderr with the rest of the log).
    let _ = support::until(Duration::from_secs(10), || {
        up.log().contains("every instance is ready")
    });
    let log = up.log();
    assert!(log.contains("every instance is ready (2)"), "{log}");
    assert!(
        log.contains(&format!("clients connect to  {}", up.listen)),
        "{log}"
    );
    assert!(
        log.contains(&format!("status page         http://{admin}/")),
        "{log}"
    );
    let key = up.data().join("admin.key");
    assert!(log.contains(&key.display().to_string()), "{log}");

    // Every instance, interleaved, each line led by its id.
    let out = up.ctl(&["logs", "-n", "100"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for id in [1, 2] {
        let pid = st.instances[id - 1].pid.unwrap();
        assert!(
            text.contains(&format!("[{id}] storeherd: ")) && text.contains(&format!("pid {pid}")),
            "{text}"
        );
    }
    // One instance, no prefix, the last line only.
    let out = up.ctl(&["logs", "2", "-n", "1"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.starts_with('['), "{text}");
    // An unknown instance: a clear message and a non-zero exit.
    let out = up.ctl(&["logs", "9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no instance 9"), "{err}");

    // -f prints what is written afterwards: the restart's new process.
    let mut follower = Reaped(
        Command::new(BIN)
            .args(["logs", "-f", "-n", "0", "--admin", &admin])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut follower.0);
    let old = st.instances[1].pid.unwrap();
    let out = up.ctl(&["restart", "2"]);
    assert!(out.status.success(), "{out:?}");
    let new_start = |l: &String| {
        l.starts_with("[2] storeherd: ")
            && l.contains("started pid")
            && !l.contains(&format!("pid {old}:"))
    };
    eventually(
        Duration::from_secs(30),
        "the follower prints the new start",
        || lines.try_iter().any(|l| new_start(&l)),
    );
}

fn subcommands() -> Vec<String> {
    storeherd::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

#[test]
fn completions_and_manual_pages_name_every_command() {
    let names = subcommands();
    for expected in ["up", "status", "logs", "completions", "man"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell}: no {name}");
        }
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("possible values"),
        "{err}"
    );

    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH storeherd"),
        "{page}"
    );
    for name in &names {
        assert!(page.contains(name.as_str()), "man page: no {name}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("storeherd.1").is_file());
    for name in &names {
        let file = dir.path().join(format!("storeherd-{name}.1"));
        assert!(file.is_file(), "no {}", file.display());
    }
}
