//! The minimal session: greeting, PING, QUIT, SELFTEST, invalid commands, config errors.

mod support;

use std::time::Duration;

use support::store::TestServer;

#[test]
fn greeting_ping_selftest_quit() {
    let s = TestServer::start(&[]);
    let mut c = s.raw();
    assert_eq!(c.cmd("PING"), "PONG");
    assert_eq!(c.cmd("ping hello there"), "PONG hello there");
    assert_eq!(c.cmd("PING  x"), "PONG  x");
    c.send_line("SELFTEST");
    assert_eq!(c.lines_until_endblock(), vec!["PASS", "EndBlock"]);
    assert_eq!(c.cmd("QUIT"), "GOODBYE");
    assert!(c.closed());
}

#[test]
fn three_invalid_commands_close() {
    let s = TestServer::start(&[]);
    let mut c = s.raw();
    assert_eq!(c.cmd("FOO"), "INVALID COMMAND");
    assert_eq!(c.cmd("BAR"), "INVALID COMMAND");
    assert_eq!(c.cmd("PING"), "PONG");
    assert_eq!(c.cmd("x"), "INVALID COMMAND");
    assert_eq!(c.cmd(""), "INVALID COMMAND");
    assert_eq!(c.cmd("PING\n"), "INVALID COMMAND");
    assert!(c.closed());
}

#[test]
fn busy_over_max_connections() {
    let s = TestServer::start(&[("max_connections", "2")]);
    let _a = s.raw();
    let _b = s.raw();
    let mut c = support::store::Raw::connect(s.addr()).unwrap();
    assert_eq!(c.line().unwrap(), "CONFIDANT MAIL SERVER PROTOCOL 1 BUSY");
    assert!(c.closed());
}

#[test]
fn bad_config_value_exits_2_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    storeherd::server::identity::Identity::generate("t")
        .unwrap()
        .install(&home.join("ssl"))
        .unwrap();
    std::fs::write(home.join("config.txt"), "# c\nsport: 12x\n").unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["store", "-homedir"])
        .arg(home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.txt:2") && err.contains("sport"),
        "{err}"
    );

    std::fs::write(home.join("config.txt"), "sport: 1\n").unwrap();
    std::fs::remove_file(home.join("ssl/server.crt")).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["store", "--homedir"])
        .arg(home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.crt"), "{err}");
}

#[test]
fn restart_keeps_serving() {
    let mut s = TestServer::start(&[]);
    s.kill9();
    s.restart();
    let mut c = s.raw();
    assert_eq!(c.cmd("PING"), "PONG");
    drop(c);
    assert!(s.wait_queue_empty(Duration::from_secs(5)));
}
