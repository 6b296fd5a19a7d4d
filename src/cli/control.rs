//! Control commands: thin clients of the admin API (`status`, `scale`, `add`, `remove`,
//! `restart`). They find the API from `--admin`, else from the topology, else the default.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use super::*;
use crate::accounts::{Command, MAX_GEN};
use crate::admin::client::{AdminClient, ClientError, ControlReply};
use crate::control::{InstanceState, Status};
use crate::store::shards::{Layout, MoveOptions, Progress, ShardError};
use crate::topology::Plan;

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the admin token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// The admin address and token file: flags first, then the topology file, then defaults.
fn endpoint(args: &ControlArgs) -> anyhow::Result<(SocketAddr, Option<PathBuf>)> {
    let from_file = match &args.topology.file {
        // Both flags given: the file has nothing left to say (and need not be readable).
        Some(_) if args.admin.is_some() && args.token_file.is_some() => None,
        Some(file) => Some(admin_from_topology(file, &args.topology)?),
        None => None,
    };
    let (file_admin, file_token) = from_file.unzip();
    let addr = match args.admin.or(file_admin) {
        Some(addr) => addr,
        None => crate::topology::DEFAULT_ADMIN,
    };
    Ok((
        reachable(addr),
        args.token_file.clone().or(file_token.flatten()),
    ))
}

/// `admin.listen` and `admin.token_file` of the topology (after the site's and the host's
/// overrides).
fn admin_from_topology(
    file: &Path,
    t: &TopologyArgs,
) -> anyhow::Result<(SocketAddr, Option<PathBuf>)> {
    // The topology error already names the file and the position.
    let plan = Plan::load_for_control(Some(file), t.site.as_deref(), t.host.as_deref())?;
    Ok((plan.admin.listen, plan.admin.token_file))
}

/// A server listening on every address (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

pub(super) fn client(args: &ControlArgs) -> anyhow::Result<AdminClient> {
    let (addr, token_file) = endpoint(args)?;
    let token = token_file.as_deref().map(read_token).transpose()?;
    Ok(AdminClient::new(addr, token))
}

/// The supervisor's message on stdout. A pending (`202`) answer already says that the
/// change goes on; it is a success, since the request was queued.
fn print_reply(reply: ControlReply) -> Outcome {
    if reply.pending {
        tracing::info!("the supervisor is still working on it");
    }
    println!("{}", reply.message);
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> Outcome {
    let client = client(&args.control)?;
    let rt = runtime()?;
    if args.all_hosts {
        return site_status(&client, &rt, args.json);
    }
    if args.json {
        let raw = rt.block_on(client.get_status_raw())?;
        // Passed on whole (fields this build does not know included), once it is JSON.
        serde_json::from_slice::<serde_json::Value>(&raw)
            .context("the admin API's status is not JSON")?;
        let mut out = std::io::stdout().lock();
        out.write_all(&raw)?;
        if !raw.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()?;
    } else {
        let status = rt.block_on(client.get_status())?;
        print!("{}", render_table(&status));
        print!("{}", render_upkeep(&status.upkeep));
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --all-hosts`: every host of the site, asked through this one's `/site/status`.
fn site_status(client: &AdminClient, rt: &tokio::runtime::Runtime, json: bool) -> Outcome {
    if json {
        let raw = rt.block_on(client.get_site_status_raw())?;
        serde_json::from_slice::<serde_json::Value>(&raw)
            .context("the admin API's site status is not JSON")?;
        let mut out = std::io::stdout().lock();
        out.write_all(&raw)?;
        if !raw.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let site = rt.block_on(client.get_site_status())?;
    print!("{}", render_site(&site));
    // A host that could not be read is worth a non-zero exit to a script.
    if site.hosts.iter().any(|h| h.status.is_none()) {
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// The readable `status --all-hosts`: per host a heading, then its table (or its error).
pub fn render_site(site: &crate::control::site::SiteStatus) -> String {
    let mut out = String::new();
    for (i, h) in site.hosts.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let name = h.name.as_deref().unwrap_or("(this host)");
        out.push_str(&format!("host {name} (admin {})\n", h.admin));
        match (&h.status, &h.error) {
            (Some(st), _) => {
                out.push_str(&render_table(st));
                out.push_str(&render_upkeep(&st.upkeep));
            }
            (None, e) => out.push_str(&format!(
                "  not reachable: {}\n",
                e.as_deref().unwrap_or("no answer")
            )),
        }
    }
    out
}

pub fn scale(args: ScaleArgs) -> Outcome {
    let client = client(&args.control)?;
    print_reply(runtime()?.block_on(client.scale(args.instances))?)
}

pub fn add(args: AddArgs) -> Outcome {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let client = client(&args.control)?;
    print_reply(runtime()?.block_on(client.add(args.count))?)
}

pub fn remove(args: RemoveArgs) -> Outcome {
    let client = client(&args.control)?;
    print_reply(runtime()?.block_on(client.remove(args.id, args.now))?)
}

pub fn restart(args: RestartArgs) -> Outcome {
    let client = client(&args.control)?;
    let rt = runtime()?;
    let reply = match (args.id, args.rolling) {
        (_, true) => rt.block_on(client.rolling_restart())?,
        (Some(id), false) => rt.block_on(client.restart(id))?,
        (None, false) => bail!("give an instance id or --rolling"),
    };
    print_reply(reply)
}

/// Exit status of an accounts change that some instance has not taken yet (the ledger has
/// it, and the supervisor sends it again once that instance is ready).
pub const ACCOUNTS_INCOMPLETE: u8 = 3;

/// `storeherd accounts add|add-key|rm|gen|list`. Keys (`gen`) and the list go to stdout,
/// one per line; the report of instances that did not answer `DONE` goes to stderr.
pub fn accounts(args: AccountsArgs) -> Outcome {
    let cmd = match args.action {
        AccountsAction::Add { userhash, authkey } => Command::Add {
            user: userhash,
            key: authkey,
        },
        AccountsAction::AddKey { authkey } => Command::AddKey { key: authkey },
        AccountsAction::Rm { authkey } => Command::Rm { key: authkey },
        AccountsAction::Gen { n } => {
            if n == 0 || n > MAX_GEN {
                bail!("gen makes 1 to {MAX_GEN} keys");
            }
            Command::Gen { count: n }
        }
        AccountsAction::List => Command::List,
    };
    let is_change = cmd != Command::List;
    let client = client(&args.control)?;
    let report = runtime()?.block_on(client.accounts(&cmd))?;
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::List => {
            for e in &report.accounts {
                writeln!(out, "{} {} {}", e.user, e.key, e.date)?;
            }
        }
        Command::Gen { .. } => {
            for k in &report.keys {
                writeln!(out, "{k}")?;
            }
            eprintln!("{}", report.message);
        }
        _ => writeln!(out, "{}", report.message)?,
    }
    out.flush()?;
    let missed_hosts: Vec<_> = report.missed_hosts().collect();
    for h in &missed_hosts {
        eprintln!(
            "host {} ({}) has not taken the change yet: {}; it is sent again until it does",
            h.host,
            h.admin,
            h.error.as_deref().unwrap_or("no reason given")
        );
    }
    if is_change && !report.hosts.is_empty() {
        eprintln!(
            "{} of {} other host(s) of the site took the change",
            report.hosts.len() - missed_hosts.len(),
            report.hosts.len()
        );
    }
    let missed: Vec<_> = report.missed().collect();
    for d in &missed {
        eprintln!(
            "instance {} ({}) did not answer DONE: {}; it gets the change when it is ready again",
            d.id,
            d.addr,
            d.error.as_deref().unwrap_or("no reason given")
        );
    }
    if missed.is_empty() {
        if is_change && !report.instances.is_empty() {
            eprintln!("{} instance(s) updated", report.instances.len());
        }
        if missed_hosts.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            Ok(ExitCode::from(ACCOUNTS_INCOMPLETE))
        }
    } else {
        eprintln!(
            "{} of {} instance(s) updated; the ledger has the change",
            report.instances.len() - missed.len(),
            report.instances.len()
        );
        Ok(ExitCode::from(ACCOUNTS_INCOMPLETE))
    }
}

/// `storeherd shards apply [--move]`: links the first-level folders as the topology's shards
/// say; with `--move`, moves existing data into place first. Only while nothing runs.
pub fn shards(args: ShardsArgs) -> Outcome {
    let ShardsAction::Apply {
        move_data,
        topology,
    } = args.action;
    let plan = Plan::load(
        topology.file.as_deref(),
        topology.site.as_deref(),
        &topology.overrides(),
    )?;
    refuse_while_running(&plan)?;
    let layout = Layout::new(&plan.store, &plan.shards);
    std::fs::create_dir_all(&plan.store)
        .with_context(|| format!("creating the store {}", plan.store.display()))?;
    if !move_data {
        let made = layout.link()?;
        let conflicts = layout.conflicts()?;
        println!("created {made} shard link(s) in {}", plan.store.display());
        if conflicts.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        bail!(
            "{}\nrun `storeherd shards apply --move` to move the data",
            ShardError::Conflicts(conflicts)
        );
    }
    // A prune walking the store while files move would judge some twice and miss others.
    let _upkeep = crate::upkeep::SiteLock::acquire_now(&plan.data)?;
    let bar = move_bar();
    let report = layout.apply_move(MoveOptions::default(), &mut |p| match p {
        Progress::Total { files, bytes } => {
            bar.set_length(bytes);
            bar.set_message(format!("{files} files"));
        }
        Progress::File { bytes } => bar.inc(bytes),
    })?;
    bar.finish_and_clear();
    println!(
        "moved {} file(s) ({} bytes), removed {} source copies already in place, created {} link(s)",
        report.files_moved, report.bytes_moved, report.duplicates_removed, report.links_created
    );
    if report.differing.is_empty() && report.unresolved.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (src, dst) in &report.differing {
        eprintln!(
            "storeherd: {} and {} differ: both kept; compare them, remove the wrong one, then run again",
            src.display(),
            dst.display()
        );
    }
    if !report.unresolved.is_empty() {
        eprintln!("storeherd: {}", ShardError::Conflicts(report.unresolved));
    }
    Ok(ExitCode::from(1))
}

/// A byte-counting bar on stderr when it is a terminal; hidden otherwise.
fn move_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} ({msg}) {elapsed_precise} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Refuses while the supervisor answers on its admin API or a home's pidfile names a live
/// process running in that home: a store server could write into a folder being moved.
fn refuse_while_running(plan: &Plan) -> anyhow::Result<()> {
    let addr = reachable(plan.admin.listen);
    let token = plan
        .admin
        .token_file
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let client =
        AdminClient::new(addr, token).with_timeouts(Duration::from_secs(3), Duration::from_secs(3));
    match runtime()?.block_on(client.get_status()) {
        Err(ClientError::Unreachable { .. }) => {}
        // Anything that answers there (even refusing the token) is a running supervisor.
        _ => bail!(
            "storeherd is running (its admin API answers at {addr}): stop it first (SIGTERM to              `storeherd up`), then run `storeherd shards apply` again"
        ),
    }
    let homes = plan.homes();
    let Ok(dir) = std::fs::read_dir(&homes) else {
        return Ok(());
    };
    for e in dir.flatten() {
        let home = e.path();
        let pidfile = home.join(crate::supervisor::process::PIDFILE);
        let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if crate::supervisor::process::alive_in(pid, &home) {
            bail!(
                "a store server (pid {pid}, from {}) still runs in {}: stop it first, then run                  `storeherd shards apply` again",
                pidfile.display(),
                home.display()
            );
        }
    }
    Ok(())
}

/// `12s`, `5m03s`, `2h05m`, `3d04h`.
fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The readable `status`: one summary line, then one aligned row per instance.
/// One line on the site's prune, when there is a schedule or a recorded run.
pub fn render_upkeep(u: &crate::control::UpkeepStatus) -> String {
    let last = u.last.as_ref().map(|r| {
        let t = r.total().totals();
        format!(
            "last {} ({}, {} ms): {} examined, {} removed, {} rewritten, {} bytes freed",
            r.started,
            r.trigger.as_str(),
            r.duration_ms,
            t.examined,
            t.removed,
            t.rewritten,
            t.bytes_freed
        )
    });
    match (u.scheduled, last) {
        (false, None) => String::new(),
        (scheduled, last) => format!(
            "prune: {}{}{}\n",
            if u.running {
                "running; "
            } else if scheduled {
                "scheduled; "
            } else {
                "not scheduled; "
            },
            last.unwrap_or_else(|| "no run recorded".into()),
            u.last_error
                .as_deref()
                .map(|e| format!("; last scheduled run failed: {e}"))
                .unwrap_or_default()
        ),
    }
}

pub fn render_table(status: &Status) -> String {
    let ready = status
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count();
    let mut out = format!(
        "proxy {}{}: {} instance{}, {} ready; {} client connection{} open; {} rejected\n",
        status.listen,
        status
            .site
            .as_deref()
            .map(|s| format!(" (site {s})"))
            .unwrap_or_default(),
        status.instances.len(),
        if status.instances.len() == 1 { "" } else { "s" },
        ready,
        status.connections_active,
        if status.connections_active == 1 {
            ""
        } else {
            "s"
        },
        status.rejected_total,
    );
    if status.instances.is_empty() {
        return out;
    }
    let header = [
        "ID", "STATE", "PID", "PORT", "EPORT", "RESTARTS", "CONNS", "CPU%", "RSS MiB", "UPTIME",
        "QUEUED",
    ];
    let rows: Vec<[String; 11]> = status
        .instances
        .iter()
        .map(|i| {
            [
                i.id.to_string(),
                i.state.as_str().to_owned(),
                i.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                i.port.to_string(),
                i.eport.to_string(),
                i.restarts.to_string(),
                format!("{}/{}", i.connections_active, i.connections_total),
                format!("{:.1}", i.cpu_percent),
                format!("{:.1}", i.rss_bytes as f64 / (1024.0 * 1024.0)),
                if i.pid.is_some() {
                    human_duration(i.uptime_s)
                } else {
                    "-".to_owned()
                },
                i.queued_blocks.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    // Text columns (STATE) to the left, numbers to the right.
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (col, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if col > 0 {
                s.push_str("  ");
            }
            if col == 1 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    out.push_str(&line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::InstanceStatus;

    fn inst(id: u32, state: InstanceState, pid: Option<u32>) -> InstanceStatus {
        InstanceStatus {
            id,
            state,
            pid,
            port: 18100 + id as u16,
            eport: 18200 + id as u16,
            home: format!("/d/homes/{id}"),
            restarts: 0,
            connections_active: 1,
            connections_total: 1234,
            bytes_in: 0,
            bytes_out: 0,
            connect_failures: 0,
            busy_total: 0,
            cpu_percent: 12.345,
            rss_bytes: 9_437_184,
            uptime_s: 3725,
            queued_blocks: 0,
            handoff: false,
        }
    }

    #[test]
    fn table_is_aligned_and_complete() {
        let status = Status {
            site: None,
            listen: "127.0.0.1:8081".into(),
            instances: vec![
                inst(1, InstanceState::Ready, Some(4242)),
                inst(12, InstanceState::Backoff, None),
            ],
            rejected_total: 3,
            upkeep: Default::default(),
            connections_active: 1,
            proxy_header_accepted_total: 0,
            proxy_header_rejected_total: 0,
        };
        let table = render_table(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "proxy 127.0.0.1:8081: 2 instances, 1 ready; 1 client connection open; 3 rejected"
        );
        assert_eq!(lines.len(), 4);
        // Every row ends where the header ends: right-aligned last column.
        assert_eq!(lines[1].len(), lines[2].len());
        assert_eq!(lines[1].len(), lines[3].len());
        assert!(lines[2].contains("ready"));
        assert!(lines[2].contains("4242"));
        assert!(lines[2].contains("1/1234"));
        assert!(lines[2].contains("12.3"));
        assert!(lines[2].contains("9.0"));
        assert!(lines[2].contains("1h02m"));
        assert!(lines[3].contains("backoff"));
        // The STATE column starts at the same offset in every line.
        let at = lines[1].find("STATE").unwrap();
        assert_eq!(lines[2].find("ready"), Some(at));
        assert_eq!(lines[3].find("backoff"), Some(at));
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(a("0.0.0.0:8089")), a("127.0.0.1:8089"));
        assert_eq!(reachable(a("[::]:8089")), a("[::1]:8089"));
        assert_eq!(reachable(a("10.0.0.1:8089")), a("10.0.0.1:8089"));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(303), "5m03s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
