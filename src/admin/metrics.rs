//! `/metrics`: the `/status` document in the Prometheus text exposition format (0.0.4).
//! Metric names are a contract (docs/design.md "Admin API and metrics"): add, never rename.

use std::fmt::Write;

use crate::control::{InstanceState, InstanceStatus, Status, UpkeepStatus};

/// The `Content-Type` Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [InstanceState; 9] = [
    InstanceState::Provisioning,
    InstanceState::Starting,
    InstanceState::Ready,
    InstanceState::Unhealthy,
    InstanceState::Stalled,
    InstanceState::Draining,
    InstanceState::Backoff,
    InstanceState::Failed,
    InstanceState::Stopped,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value; integers are printed exactly (a u64 counter would lose digits as f64).
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f32),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            // Rust prints `inf`/`NaN`; the exposition format spells them `+Inf`/`-Inf`/`NaN`.
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// One family with one sample per instance, labelled `instance="<id>"`.
struct PerInstance {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&InstanceStatus) -> Value,
}

const PER_INSTANCE: &[PerInstance] = &[
    PerInstance {
        name: "storeherd_instance_up",
        help: "1 when the instance is ready and receives traffic, else 0.",
        kind: Kind::Gauge,
        value: |i| Value::Int(u64::from(i.state == InstanceState::Ready)),
    },
    PerInstance {
        name: "storeherd_instance_handoff",
        help: "1 when new clients are handed to the instance itself, 0 when they are relayed.",
        kind: Kind::Gauge,
        value: |i| Value::Int(u64::from(i.handoff)),
    },
    PerInstance {
        name: "storeherd_instance_restarts_total",
        help: "Restarts of the instance since the supervisor started.",
        kind: Kind::Counter,
        value: |i| Value::Int(i.restarts),
    },
    PerInstance {
        name: "storeherd_instance_cpu_percent",
        help: "CPU use of the instance process, in percent of one core.",
        kind: Kind::Gauge,
        value: |i| Value::Float(i.cpu_percent),
    },
    PerInstance {
        name: "storeherd_instance_rss_bytes",
        help: "Resident memory of the instance process, in bytes.",
        kind: Kind::Gauge,
        value: |i| Value::Int(i.rss_bytes),
    },
    PerInstance {
        name: "storeherd_instance_uptime_seconds",
        help: "Seconds since the instance process started.",
        kind: Kind::Gauge,
        value: |i| Value::Int(i.uptime_s),
    },
    PerInstance {
        name: "storeherd_instance_queued_blocks",
        help: "Files waiting in the instance's input queue.",
        kind: Kind::Gauge,
        value: |i| Value::Int(i.queued_blocks),
    },
    PerInstance {
        name: "storeherd_proxy_connections_active",
        help: "Client connections currently open on the instance (relayed or handed over).",
        kind: Kind::Gauge,
        value: |i| Value::Int(i.connections_active),
    },
    PerInstance {
        name: "storeherd_proxy_connections_total",
        help: "Client connections placed on the instance (relayed or handed over).",
        kind: Kind::Counter,
        value: |i| Value::Int(i.connections_total),
    },
    PerInstance {
        name: "storeherd_proxy_connect_failures_total",
        help: "Proxy connections to the instance that were refused or timed out.",
        kind: Kind::Counter,
        value: |i| Value::Int(i.connect_failures),
    },
    PerInstance {
        name: "storeherd_proxy_busy_total",
        help: "BUSY greetings the instance answered to the proxy.",
        kind: Kind::Counter,
        value: |i| Value::Int(i.busy_total),
    },
];

fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// Renders the status as Prometheus text. Every family is declared (HELP, TYPE) even when
/// there is no instance, so a scraper sees the same set of names at all times.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(1024 + status.instances.len() * 1024);

    for family in PER_INSTANCE {
        header(&mut out, family.name, family.help, family.kind);
        for i in &status.instances {
            let _ = writeln!(
                out,
                "{}{{instance=\"{}\"}} {}",
                family.name,
                i.id,
                (family.value)(i)
            );
        }
    }

    header(
        &mut out,
        "storeherd_instance_state",
        "Lifecycle state of the instance: 1 for the current state, 0 for the others.",
        Kind::Gauge,
    );
    for i in &status.instances {
        for state in STATES {
            let _ = writeln!(
                out,
                "storeherd_instance_state{{instance=\"{}\",state=\"{}\"}} {}",
                i.id,
                state.as_str(),
                u8::from(i.state == state)
            );
        }
    }

    header(
        &mut out,
        "storeherd_proxy_bytes_total",
        "Bytes of the instance's clients (relayed, or reported by the instance for handed-over ones): in = from clients, out = to clients.",
        Kind::Counter,
    );
    for i in &status.instances {
        for (direction, value) in [("in", i.bytes_in), ("out", i.bytes_out)] {
            let _ = writeln!(
                out,
                "storeherd_proxy_bytes_total{{instance=\"{}\",direction=\"{direction}\"}} {value}",
                i.id
            );
        }
    }

    let unlabelled: [(&str, &str, Kind, u64); 5] = [
        (
            "storeherd_proxy_rejected_total",
            "Clients turned away because no instance could take them.",
            Kind::Counter,
            status.rejected_total,
        ),
        (
            "storeherd_proxy_client_connections",
            "Client connections currently open on the public port.",
            Kind::Gauge,
            status.connections_active,
        ),
        (
            "storeherd_instances",
            "Instances the supervisor knows, in any state.",
            Kind::Gauge,
            status.instances.len() as u64,
        ),
        (
            "storeherd_proxy_header_accepted_total",
            "Clients whose PROXY protocol header was taken (proxy.accept_proxy).",
            Kind::Counter,
            status.proxy_header_accepted_total,
        ),
        (
            "storeherd_proxy_header_rejected_total",
            "Clients closed for a missing, malformed or untrusted PROXY protocol header.",
            Kind::Counter,
            status.proxy_header_rejected_total,
        ),
    ];
    for (name, help, kind, value) in unlabelled {
        header(&mut out, name, help, kind);
        let _ = writeln!(out, "{name} {value}");
    }
    render_upkeep(&mut out, &status.upkeep);
    out
}

/// The prune families: the schedule's counters, and the last run's time and counts (no
/// sample for those until a run is recorded).
fn render_upkeep(out: &mut String, u: &UpkeepStatus) {
    let counters: [(&str, &str, Kind, u64); 4] = [
        (
            "storeherd_prune_runs_total",
            "Prunes the schedule ran since the supervisor started.",
            Kind::Counter,
            u.runs_total,
        ),
        (
            "storeherd_prune_busy_total",
            "Scheduled prunes skipped because another prune or a shard move held the site lock.",
            Kind::Counter,
            u.busy_total,
        ),
        (
            "storeherd_prune_failures_total",
            "Scheduled prunes that ended in an error.",
            Kind::Counter,
            u.failures_total,
        ),
        (
            "storeherd_prune_running",
            "1 while a scheduled prune runs.",
            Kind::Gauge,
            u64::from(u.running),
        ),
    ];
    for (name, help, kind, value) in counters {
        header(out, name, help, kind);
        let _ = writeln!(out, "{name} {value}");
    }
    let last = u.last.as_ref();
    header(
        out,
        "storeherd_prune_last_start_timestamp_seconds",
        "Start of the last recorded prune of the site (by the schedule or by hand), unix time.",
        Kind::Gauge,
    );
    header(
        out,
        "storeherd_prune_last_duration_seconds",
        "How long the last recorded prune took.",
        Kind::Gauge,
    );
    header(
        out,
        "storeherd_prune_last_files",
        "Block files the last recorded prune examined, removed and rewritten, per tree and type.",
        Kind::Gauge,
    );
    header(
        out,
        "storeherd_prune_last_bytes_freed",
        "Bytes the last recorded prune freed, per tree.",
        Kind::Gauge,
    );
    let Some(r) = last else { return };
    let _ = writeln!(
        out,
        "storeherd_prune_last_start_timestamp_seconds {}",
        r.started_unix
    );
    let _ = writeln!(
        out,
        "storeherd_prune_last_duration_seconds {}",
        r.duration_ms as f64 / 1000.0
    );
    let mut trees = vec![("store", &r.store.counts)];
    let mut entangled = crate::upkeep::prune::PruneCounts::default();
    for e in &r.entangled {
        entangled.add(&e.counts);
    }
    trees.push(("entangled", &entangled));
    for (tree, counts) in trees {
        for (ty, c) in &counts.types {
            for (action, v) in [
                ("examined", c.examined),
                ("removed", c.removed),
                ("rewritten", c.rewritten),
            ] {
                let _ = writeln!(
                    out,
                    "storeherd_prune_last_files{{tree=\"{tree}\",type=\"{ty}\",action=\"{action}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "storeherd_prune_last_bytes_freed{{tree=\"{tree}\"}} {}",
            counts.totals().bytes_freed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::prom;
    use super::*;

    fn instance(id: u32, state: InstanceState) -> InstanceStatus {
        InstanceStatus {
            id,
            state,
            pid: Some(4000 + id),
            port: 18100 + id as u16,
            eport: 18200 + id as u16,
            home: format!("/data/homes/{id}"),
            restarts: u64::from(id),
            connections_active: 2,
            connections_total: 10 * u64::from(id),
            bytes_in: 1000,
            bytes_out: u64::MAX,
            connect_failures: 3,
            busy_total: 4,
            cpu_percent: 0.4,
            rss_bytes: 9_437_184,
            uptime_s: 12,
            queued_blocks: 1,
            handoff: true,
        }
    }

    fn status() -> Status {
        Status {
            site: Some("a".into()),
            listen: "127.0.0.1:8081".into(),
            instances: vec![
                instance(1, InstanceState::Ready),
                instance(2, InstanceState::Backoff),
            ],
            rejected_total: 7,
            upkeep: Default::default(),
            connections_active: 4,
            proxy_header_accepted_total: 5,
            proxy_header_rejected_total: 6,
        }
    }

    #[test]
    fn every_line_parses_and_types_come_first() {
        let text = render(&status());
        let parsed = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for name in prom::REQUIRED_PER_INSTANCE {
            for id in ["1", "2"] {
                assert!(
                    parsed.matching(name, &[("instance", id)]).count() > 0,
                    "{name} for instance {id} missing"
                );
            }
        }
        assert_eq!(parsed.types["storeherd_proxy_rejected_total"], "counter");
        assert_eq!(parsed.types["storeherd_instance_up"], "gauge");
    }

    #[test]
    fn values_follow_the_status() {
        let parsed = prom::parse(&render(&status())).unwrap();
        let v = |name: &str, labels: &[(&str, &str)]| parsed.find(name, labels).unwrap();
        assert_eq!(v("storeherd_instance_up", &[("instance", "1")]), 1.0);
        assert_eq!(v("storeherd_instance_up", &[("instance", "2")]), 0.0);
        assert_eq!(
            v("storeherd_instance_restarts_total", &[("instance", "2")]),
            2.0
        );
        assert!((v("storeherd_instance_cpu_percent", &[("instance", "1")]) - 0.4).abs() < 1e-6);
        assert_eq!(
            v("storeherd_instance_rss_bytes", &[("instance", "1")]),
            9_437_184.0
        );
        assert_eq!(
            v("storeherd_proxy_connections_total", &[("instance", "2")]),
            20.0
        );
        assert_eq!(
            v(
                "storeherd_proxy_bytes_total",
                &[("instance", "1"), ("direction", "in")]
            ),
            1000.0
        );
        assert_eq!(
            v(
                "storeherd_proxy_bytes_total",
                &[("instance", "1"), ("direction", "out")]
            ),
            u64::MAX as f64
        );
        assert_eq!(
            v(
                "storeherd_instance_state",
                &[("instance", "2"), ("state", "backoff")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "storeherd_instance_state",
                &[("instance", "2"), ("state", "ready")]
            ),
            0.0
        );
        assert_eq!(v("storeherd_proxy_rejected_total", &[]), 7.0);
        assert_eq!(v("storeherd_proxy_header_accepted_total", &[]), 5.0);
        assert_eq!(v("storeherd_proxy_header_rejected_total", &[]), 6.0);
        assert_eq!(v("storeherd_proxy_client_connections", &[]), 4.0);
    }

    #[test]
    fn a_stalled_instance_is_down_and_says_so() {
        let mut s = status();
        s.instances[0].state = InstanceState::Stalled;
        let parsed = prom::parse(&render(&s)).unwrap();
        let v = |name: &str, labels: &[(&str, &str)]| parsed.find(name, labels).unwrap();
        assert_eq!(v("storeherd_instance_up", &[("instance", "1")]), 0.0);
        let state = |id, state| {
            v(
                "storeherd_instance_state",
                &[("instance", id), ("state", state)],
            )
        };
        assert_eq!(state("1", "stalled"), 1.0);
        assert_eq!(state("1", "ready"), 0.0);
        assert_eq!(state("2", "stalled"), 0.0);
    }

    #[test]
    fn counters_are_printed_exactly() {
        let text = render(&status());
        assert!(text.contains(&format!(
            "storeherd_proxy_bytes_total{{instance=\"1\",direction=\"out\"}} {}\n",
            u64::MAX
        )));
    }

    #[test]
    fn no_instances_still_declares_every_family() {
        let mut s = status();
        s.instances.clear();
        let parsed = prom::parse(&render(&s)).unwrap();
        for name in prom::REQUIRED_PER_INSTANCE {
            assert!(parsed.types.contains_key(*name), "{name} not declared");
        }
        assert_eq!(
            parsed.find("storeherd_proxy_rejected_total", &[]),
            Some(7.0)
        );
    }

    #[test]
    fn odd_floats_use_the_exposition_spelling() {
        let mut s = status();
        s.instances[0].cpu_percent = f32::NAN;
        s.instances[1].cpu_percent = f32::INFINITY;
        let text = render(&s);
        assert!(text.contains("storeherd_instance_cpu_percent{instance=\"1\"} NaN\n"));
        assert!(text.contains("storeherd_instance_cpu_percent{instance=\"2\"} +Inf\n"));
        prom::parse(&text).unwrap();
    }

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        // The parser is what the other tests trust; it must fail on broken input.
        for bad in [
            "storeherd_x 1\n",                         // no TYPE before the sample
            "# TYPE a gauge\na{instance=\"1\" 1\n",    // unclosed labels
            "# TYPE a gauge\na{instance=1} 1\n",       // unquoted label value
            "# TYPE a gauge\na one\n",                 // not a number
            "# TYPE a gauge\na 1\na 2\n",              // duplicate series
            "# TYPE a gauge\n# TYPE a counter\na 1\n", // TYPE twice
            "# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 2\n", // family split
            "# TYPE a gauge\na 1",                     // no final newline
            "# TYPE 1a gauge\n",                       // bad name
            "# TYPE a widget\n",                       // unknown type
        ] {
            assert!(prom::parse(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
