//! `storeherd bench`: runs the load generator and prints its report.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{BenchArgs, Outcome};
use crate::bench::{self, BenchError, Config, Progress};

pub fn run(args: BenchArgs) -> Outcome {
    let login = match &args.login {
        Some(s) => {
            let (u, k) = s.split_once(':').ok_or(BenchError::BadLogin)?;
            Some((u.to_string(), k.to_string()))
        }
        None => None,
    };
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    anyhow::ensure!(!args.target.is_empty(), "--target needs an address");
    if let Some(r) = args.rate {
        anyhow::ensure!(
            r.is_finite() && r > 0.0,
            "--rate must be a positive number of operations per second"
        );
    }
    let cfg = Config {
        targets: args.target.clone(),
        op: args.op.parse()?,
        connections: args.connections.max(1),
        duration: Duration::from_secs_f64(args.duration),
        size: args.size,
        tls: args.tls,
        login,
        verify: args.verify,
        rate: args.rate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Arc::new(Progress::default());
    let bar = (std::io::stderr().is_terminal() && !args.json).then(|| {
        let b = indicatif::ProgressBar::new((args.duration * 10.0) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}")
                .expect("static template"),
        );
        b
    });
    let report = runtime.block_on(async {
        let ticker = bar.clone().map(|b| {
            let p = progress.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    b.inc(1);
                    b.set_message(format!(
                        "{} ops, {} errors",
                        p.ops.load(Ordering::Relaxed),
                        p.errors.load(Ordering::Relaxed)
                    ));
                }
            })
        });
        let r = bench::run(cfg, progress.clone()).await;
        if let Some(t) = ticker {
            t.abort();
        }
        r
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "op {:?} against {} with {} connections for {:.1} s",
            report.op,
            report.targets.join(","),
            report.connections,
            report.duration_s
        );
        println!(
            "ops {}  ops/s {:.0}  latency µs p50 {} p99 {} p99.9 {} max {}",
            report.ops,
            report.ops_per_sec,
            report.latency_us.p50,
            report.latency_us.p99,
            report.latency_us.p999,
            report.latency_us.max
        );
        if let Some(p) = report.processed_per_sec {
            println!("processed (stored and readable) blocks/s {p:.0}");
        }
        if report.errors.is_empty() {
            println!("errors: none");
        } else {
            for (k, v) in &report.errors {
                println!("errors {k}: {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
