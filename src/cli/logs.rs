//! `storeherd logs [ID] [-f] [-n N]`: instances' `server.log` through the admin API, so it
//! works from another machine (`--admin ADDR --token-file FILE`) as well as on this one.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use super::control::{client, runtime};
use super::{LogsArgs, Outcome};
use crate::control::LogLine;

/// How often `-f` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub fn run(args: LogsArgs) -> Outcome {
    let max = crate::admin::logs::MAX_LINES;
    if args.lines > max {
        bail!("-n {}: at most {max} lines", args.lines);
    }
    let client = client(&args.control)?;
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    let tagged = args.id.is_none();
    let mut page = rt.block_on(client.get_logs(args.id, args.lines, None))?;
    loop {
        match print(&mut out, &page.lines, tagged) {
            // `logs | head` closes the pipe: done, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r?,
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let cursor = page.cursor;
        page = rt.block_on(async {
            tokio::time::sleep(FOLLOW_EVERY).await;
            client.get_logs(args.id, 0, Some(&cursor)).await
        })?;
    }
}

fn print(out: &mut impl Write, lines: &[LogLine], tagged: bool) -> std::io::Result<()> {
    for l in lines {
        if tagged {
            writeln!(out, "[{}] {}", l.instance, l.line)?;
        } else {
            writeln!(out, "{}", l.line)?;
        }
    }
    out.flush()
}
