//! `storeherd check`: validate a topology and print the resolved plan (or one JSON document).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use crate::topology::{format_duration, Plan, PlanReport, ServerCommand};

use super::{CheckArgs, Outcome};

pub fn run(args: CheckArgs) -> Outcome {
    let plan = Plan::load(
        args.topology.file.as_deref(),
        args.topology.site.as_deref(),
        &args.topology.overrides(),
    )?;
    let report = plan.report();
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&report)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        // `check | head` closes the pipe early; that is not an error of the topology.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        // A valid file that `up` would still refuse (data outside its shard) is an error too.
        _ if !report.conflicts.is_empty() => {
            eprintln!(
                "storeherd: `up` would refuse to start: {} problem(s) with the store (see above)",
                report.conflicts.len()
            );
            Ok(ExitCode::from(1))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `3-4`, or `3` for one id.
fn id_range(first: u32, last: u32) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// The plan in readable form.
pub fn render(r: &PlanReport) -> String {
    let p = &r.plan;
    let mut out = String::new();
    let o = &mut out;
    let source = p
        .source
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_else(|| crate::topology::DEFAULT_NAME.to_string());
    let _ = writeln!(o, "topology   {source} is valid");
    if let Some(site) = &p.site {
        let host = p.host.as_deref().unwrap_or("-");
        let _ = writeln!(o, "site       {site} (host {host})");
    }
    if let Some(me) = p.this_host() {
        let _ = writeln!(
            o,
            "host       {} ({}), instances {} of the site's 1-{}",
            me.name,
            me.address,
            id_range(me.first_id, me.last_id()),
            p.hosts.last().map_or(me.last_id(), |h| h.last_id())
        );
        for h in p.hosts.iter().filter(|h| h.name != me.name) {
            let _ = writeln!(
                o,
                "           other host {} ({}), instances {}, admin API at {}",
                h.name,
                h.address,
                id_range(h.first_id, h.last_id()),
                h.admin
            );
        }
    }
    let _ = writeln!(o, "listen     {}", p.listen);
    let token = match &p.admin.token_file {
        Some(t) => format!("bearer token from {}", t.display()),
        None => "no token (loopback only)".into(),
    };
    let _ = writeln!(o, "admin      {}, {token}", p.admin.listen);
    let _ = writeln!(
        o,
        "instances  {} (ports leave room for up to {})",
        p.instances, r.max_instances
    );
    let _ = writeln!(o, "data       {}", p.data.display());
    let _ = writeln!(o, "store      {}", p.store.display());
    let _ = writeln!(
        o,
        "ports      server {}/tcp, entangled {}/udp, + instance id - 1",
        p.ports.server, p.ports.entangled
    );
    let command = match &p.server.command {
        ServerCommand::Builtin => "builtin (storeherd store --homedir <home>)".to_string(),
        ServerCommand::Argv(a) => a.join(" "),
    };
    let _ = writeln!(o, "server     {command}");
    let _ = writeln!(
        o,
        "           stop grace {}",
        format_duration(p.server.stop_grace)
    );
    let tls = match (&p.server.tls.cert, &p.server.tls.key) {
        (Some(c), Some(k)) => format!("cert {}, key {}", c.display(), k.display()),
        _ => format!(
            "one identity, generated once into {}",
            p.data.join("ssl").display()
        ),
    };
    let _ = writeln!(o, "tls        {tls}");
    let _ = writeln!(o, "admin key  {}", p.admin_key_file.display());
    let h = &p.health;
    let _ = writeln!(
        o,
        "health     every {}, timeout {}, out of rotation after {} failures, start grace {}",
        format_duration(h.interval),
        format_duration(h.timeout),
        h.unhealthy_after,
        format_duration(h.start_grace)
    );
    let rs = &p.restart;
    let _ = writeln!(
        o,
        "restart    backoff {} doubling to {}, failed after {} restarts within {}",
        format_duration(rs.backoff_min),
        format_duration(rs.backoff_max),
        rs.crash_loop_restarts,
        format_duration(rs.crash_loop_within)
    );
    let px = &p.proxy;
    let _ = writeln!(
        o,
        "proxy      at most {} connections, connect timeout {}, idle timeout {}, drain timeout {}",
        px.max_connections,
        format_duration(px.connect_timeout),
        format_duration(px.idle_timeout),
        format_duration(px.drain_timeout)
    );
    let trusted = match &px.accept_proxy {
        Some(nets) => {
            let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            format!(", PROXY headers required from {}", nets.join(", "))
        }
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "           balance {}{trusted}",
        match px.balance {
            crate::proxy::Balance::RoundRobin => "roundrobin",
            crate::proxy::Balance::LeastConn => "leastconn",
        }
    );
    let up = &p.upkeep;
    let every = up
        .prune_every
        .map(|d| format!("every {}", format_duration(d)));
    let disk = up
        .prune_when_disk_above
        .map(|n| format!("when a store disk is over {n}%"));
    let when: Vec<String> = every.into_iter().chain(disk).collect();
    let _ = writeln!(
        o,
        "upkeep     {}",
        if when.is_empty() && p.first_id() > 1 {
            // Only the first host has a schedule: the hosts share one store.
            let first = p.hosts.first().map_or("-", |h| h.name.as_str());
            format!("no scheduled prune here (the hosts share one store: only the first host, {first}, runs the upkeep schedule)")
        } else if when.is_empty() {
            "no scheduled prune (run `storeherd prune`)".to_string()
        } else {
            format!("prune once per site {}", when.join(", and "))
        }
    );
    if let Some(rp) = &p.replication {
        let pin = rp.peer_cert_sha1.as_deref().unwrap_or("not pinned");
        let _ = writeln!(
            o,
            "replication with site {} at {} (key file {}, peer certificate {pin})",
            rp.peer_site,
            rp.peer_host,
            rp.authkey_file.display()
        );
    }
    for i in &r.instances {
        let _ = writeln!(o, "\ninstance {}", i.id);
        let _ = writeln!(o, "  home      {}", i.home.display());
        let _ = writeln!(
            o,
            "  ports     server {}/tcp, entangled {}/udp",
            i.port, i.eport
        );
        let _ = writeln!(o, "  command   {}", i.argv.join(" "));
        if let Some(peer) = &i.replpeer {
            let _ = writeln!(o, "  replpeer  {peer}");
        }
        let _ = writeln!(o, "  config.txt");
        for line in &i.config {
            let _ = writeln!(o, "    {line}");
        }
    }
    if !p.shards.is_empty() {
        let _ = writeln!(o, "\nshards");
        for s in &p.shards {
            let links: Vec<_> = r
                .shard_links
                .iter()
                .filter(|l| l.range == s.range())
                .collect();
            let missing = links.iter().filter(|l| l.state == "missing").count();
            let _ = writeln!(
                o,
                "  {}  {}/{{{:02X}..{:02X}}} -> {}/{{{:02X}..{:02X}}}  ({} links, {} to create)",
                s.range(),
                p.store.display(),
                s.first,
                s.last,
                s.path.display(),
                s.first,
                s.last,
                links.len(),
                missing
            );
        }
    }
    if !r.conflicts.is_empty() {
        let _ = writeln!(o, "\n`storeherd up` would refuse to start:");
        for c in &r.conflicts {
            let _ = writeln!(o, "  - {c}");
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(o, "\nnot checked:");
        for w in &r.warnings {
            let _ = writeln!(o, "  - {w}");
        }
    }
    let _ = writeln!(o, "\n`storeherd up` would");
    if r.changes.is_empty() {
        let _ = writeln!(o, "  change nothing on disk");
    }
    for c in &r.changes {
        let _ = writeln!(o, "  - {c}");
    }
    out
}
