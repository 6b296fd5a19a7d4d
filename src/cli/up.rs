//! `storeherd up`: load the topology, bind its listeners, and run the supervisor in the
//! foreground, with SIGHUP reloading and SIGTERM/SIGINT draining and stopping.

use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::info;

use super::{Outcome, UpArgs};
use crate::supervisor::run::{Listeners, Outside};
use crate::topology::{Overrides, Plan};

pub fn run(args: UpArgs) -> Outcome {
    let overrides = Overrides {
        instances: args.instances,
        listen: args.listen,
        data: args.data,
        admin: args.admin,
        host: args.topology.host.clone(),
    };
    let plan = Plan::load(
        args.topology.file.as_deref(),
        args.topology.site.as_deref(),
        &overrides,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("storeherd")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let outside = forward_signals().context("installing signal handlers")?;
        let listeners = Listeners::bind(&plan).await?;
        crate::supervisor::run::run(plan, overrides, listeners, outside).await?;
        anyhow::Ok(())
    })?;
    // Sessions still open after the drain are cut here, with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// Turns SIGHUP into [`Outside::Reload`] and SIGTERM/SIGINT into [`Outside::Stop`].
fn forward_signals() -> std::io::Result<mpsc::Receiver<Outside>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let cmd = tokio::select! {
                _ = hup.recv() => { info!("SIGHUP: reloading the topology"); Outside::Reload }
                _ = term.recv() => { info!("SIGTERM: draining and stopping"); Outside::Stop }
                _ = int.recv() => { info!("SIGINT: draining and stopping"); Outside::Stop }
            };
            if tx.send(cmd).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
