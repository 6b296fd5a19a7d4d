//! `storeherd store --homedir DIR`: the built-in store server, with the original server's
//! `-daemon`, `-pidfile`, `-logfile` and `-logtraffic` (docs/protocol.md §1; server.py).
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Outcome, StoreArgs};

pub fn run(args: StoreArgs) -> Outcome {
    if args.pidfile.is_some() && !args.daemon {
        // As the original: the pid file belongs to daemon mode.
        tracing::warn!("--pidfile is only used with --daemon");
    }
    let homedir = std::path::absolute(&args.homedir)
        .with_context(|| format!("{}", args.homedir.display()))?;
    let pidfile = match &args.pidfile {
        Some(p) if args.daemon => Some(std::path::absolute(p)?),
        _ => None,
    };
    let log = match &args.logfile {
        Some(p) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("log file {}", p.display()))?,
        ),
        None if args.daemon => Some(File::options().write(true).open("/dev/null")?),
        None => None,
    };
    if args.daemon {
        // Before any thread or runtime exists: only the calling thread survives a fork.
        nix::unistd::daemon(false, true).context("detaching (-daemon)")?;
        let null = File::open("/dev/null")?;
        nix::unistd::dup2(null.as_raw_fd(), 0)?;
    }
    if let Some(log) = &log {
        nix::unistd::dup2(log.as_raw_fd(), 1)?;
        nix::unistd::dup2(log.as_raw_fd(), 2)?;
    }
    let _pid = match pidfile {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
    let opts = crate::server::RunOptions {
        log_traffic: args.logtraffic,
        handoff: args.handoff,
    };
    let served = crate::server::Listeners::bind(&homedir)
        .and_then(|listeners| crate::server::run(&homedir, opts, listeners, signalled()));
    match served {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(e) if e.is_config() => {
            tracing::error!("{e}");
            eprintln!("storeherd store: {e}");
            Ok(std::process::ExitCode::from(2))
        }
        Err(e) => Err(anyhow::Error::new(e).context("store server")),
    }
}

/// Resolves on SIGTERM or SIGINT. Polled inside the server's runtime, which is where the
/// handlers must be installed.
async fn signalled() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

/// The daemon's pid file, written by the daemon itself and removed when it stops.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: PathBuf) -> anyhow::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(&self.0));
    }
}
