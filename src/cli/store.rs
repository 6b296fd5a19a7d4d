//! `storeherd store --homedir DIR`: the built-in store server.
use super::{Outcome, StoreArgs};

pub fn run(args: StoreArgs) -> Outcome {
    match crate::server::run(&args.homedir, crate::server::RunOptions::default()) {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(e) if e.is_config() => {
            tracing::error!("{e}");
            eprintln!("storeherd store: {e}");
            Ok(std::process::ExitCode::from(2))
        }
        Err(e) => Err(anyhow::Error::new(e).context("store server")),
    }
}
