//! What an operator sees around a real `storeherd up`: the status page in a real browser
//! (headless Chromium), `storeherd logs`, the summary `up` prints once ready, shell
//! completions and manual pages.

mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use harness::{free_port, free_range, http, Up, BIN};

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
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs it (apt-get install chromium)"
        );
        eprintln!(
            "\n*** SKIPPED: chromium is not installed (apt-get install chromium); \
             the status page was NOT tested in a browser ***\n"
        );
    }
    found
}

/// Runs headless Chromium on `url` with `extra` arguments in a fresh profile; its stdout.
/// Virtual time lets the page's timers and its `/status` requests run without waiting.
fn browse(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
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
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + BROWSER_BOUND;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "chromium exited with {st}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Waits until `/status` (read with `token`) lists exactly `n` ready instances.
fn wait_ready_with(up: &Up, token: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http(up.admin, "GET", "/status", None, Some(token)).unwrap();
        assert_eq!(code, 200, "{body}");
        let st: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = st["instances"].as_array().unwrap();
        if list.len() == n && list.iter().all(|i| i["state"] == "ready") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {n} ready: {st:#}\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_page_in_chromium_asks_for_the_token_and_follows_a_scale() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (sport, eport) = (free_range(8), free_range(8));
    let token_file = dir.path().join("admin.token");
    let token = "page-token-0123";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let text = Up::topology(dir.path(), "2", listen, admin, sport, eport, "").replace(
        &format!("admin: {{ listen: {admin} }}"),
        &format!(
            "admin: {{ listen: {admin}, token_file: {} }}",
            token_file.display()
        ),
    );
    let file = dir.path().join("storeherd.yaml");
    std::fs::write(&file, text).unwrap();
    let mut up = Up::launch(dir, file, listen, admin, sport, eport, vec![], vec![]);
    up.wait_admin_up();
    wait_ready_with(&up, token, 2);
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready_with(&up, token, 3);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.log().contains("every instance is ready") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
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
        let pid = st["instances"][id - 1]["pid"].as_u64().unwrap();
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
    let mut follower = Command::new(BIN)
        .args(["logs", "-f", "-n", "0", "--admin", &admin])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follower);
    let old = st["instances"][1]["pid"].as_u64().unwrap();
    let out = up.ctl(&["restart", "2"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with("[2] storeherd: ") && l.contains("started pid") => {
                if !l.contains(&format!("pid {old}:")) {
                    break Some(l);
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen.is_some(), "the follower never printed the new start");
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
