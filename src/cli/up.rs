//! `storeherd up`: load the topology and run the supervisor in the foreground.

use std::process::ExitCode;

use anyhow::Context;

use super::{Outcome, UpArgs};
use crate::topology::{Overrides, Plan};

pub fn run(args: UpArgs) -> Outcome {
    let overrides = Overrides {
        instances: args.instances,
        listen: args.listen,
        data: args.data,
        admin: args.admin,
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
    runtime.block_on(crate::supervisor::run::run(plan, overrides))?;
    // Sessions still open after the drain are cut here, with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
