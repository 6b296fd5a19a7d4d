//! The command line: argument types (clap) and one module per command. This is the CLI edge,
//! the only place where errors become `anyhow` and where results are printed on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod bench;
pub mod check;
pub mod control;
pub mod generate;
pub mod logging;
pub mod logs;
pub mod store;
pub mod up;
pub mod upkeep;

/// Exit status of a command that ran (errors exit 1 through `main`).
pub type Outcome = anyhow::Result<std::process::ExitCode>;

#[derive(Debug, Parser)]
#[command(
    name = "storeherd",
    version,
    about = "Runs many Confidant Mail store servers behind one port"
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor, its instances and the proxy in the foreground.
    Up(UpArgs),
    /// Validate a topology file and print the resolved plan; exit 1 on error.
    Check(CheckArgs),
    /// Show instances, health, pids, ports, connections, CPU and RSS.
    Status(StatusArgs),
    /// Set the number of instances.
    Scale(ScaleArgs),
    /// Add instances.
    Add(AddArgs),
    /// Drain and remove one instance.
    Remove(RemoveArgs),
    /// Restart one instance, or all of them one at a time with --rolling.
    Restart(RestartArgs),
    /// Manage accounts across every instance.
    Accounts(AccountsArgs),
    /// Create the first-level links of a sharded store.
    Shards(ShardsArgs),
    /// Run the built-in single-threaded store server.
    Store(StoreArgs),
    /// Load generator speaking the store protocol.
    Bench(BenchArgs),
    /// Remove expired blocks from the site's store and entangled trees (storutil's prune).
    Prune(PruneArgs),
    /// Store usage: blocks and bytes per type, per first-level folder, and by age.
    Report(ReportArgs),
    /// Show an instance's server.log (across rotations), or every instance's, interleaved.
    Logs(LogsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page, or write one page per command into a directory.
    Man(ManArgs),
}

/// Where the topology comes from (shared by `up`, `check` and the control commands).
#[derive(Debug, Clone, Args, Default)]
pub struct TopologyArgs {
    /// Topology file (YAML). Without it, the built-in default.
    // Global: also accepted after a nested subcommand (`accounts add … -f FILE`).
    #[arg(short = 'f', long = "file", global = true)]
    pub file: Option<PathBuf>,
    /// Which site of a two-site topology this is.
    #[arg(long, global = true)]
    pub site: Option<String>,
    /// Which host of a site over several hosts (`hosts`) this is.
    #[arg(long, global = true)]
    pub host: Option<String>,
}

impl TopologyArgs {
    /// The overrides these flags make (`--host`); the other flags of `up` add theirs.
    pub fn overrides(&self) -> crate::topology::Overrides {
        crate::topology::Overrides {
            host: self.host.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Number of instances, or `auto` (one per logical core).
    #[arg(long)]
    pub instances: Option<String>,
    /// Public proxy address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (store, homes, ledger).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Admin API address.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Print the plan as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// How a control command finds the admin API.
#[derive(Debug, Clone, Args, Default)]
pub struct ControlArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Admin API address (overrides the one from the topology).
    #[arg(long, global = true)]
    pub admin: Option<SocketAddr>,
    /// File holding the admin bearer token.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Every host of a site over several hosts (`GET /site/status` of this one).
    #[arg(long)]
    pub all_hosts: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The new number of instances.
    pub instances: u32,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// How many instances to add.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Instance id.
    pub id: u32,
    /// Do not wait for connections to drain (the input queue is still emptied first).
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Instance id (also clears a `failed` state).
    #[arg(required_unless_present = "rolling", conflicts_with = "rolling")]
    pub id: Option<u32>,
    /// Restart every instance, one at a time.
    #[arg(long)]
    pub rolling: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status 3: the ledger has the change, but an instance did not answer DONE, \
                  or another host of the site has not taken it yet (named on stderr); the \
                  supervisor sends it again when that instance is ready, and to that host until \
                  it takes it."
)]
pub struct AccountsArgs {
    #[command(subcommand)]
    pub action: AccountsAction,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Subcommand)]
pub enum AccountsAction {
    /// Add an account USERHASH with AUTHKEY on every instance.
    Add { userhash: String, authkey: String },
    /// Add a free key (`undefined`) that the first LOGIN binds.
    AddKey { authkey: String },
    /// Disable a key everywhere.
    Rm { authkey: String },
    /// Generate N free keys and print them, one per line.
    Gen { n: u32 },
    /// List the ledger.
    List,
}

#[derive(Debug, Args)]
pub struct ShardsArgs {
    #[command(subcommand)]
    pub action: ShardsAction,
}

#[derive(Debug, Subcommand)]
pub enum ShardsAction {
    /// Create the first-level links; with --move, move existing data into place.
    Apply {
        /// Move data already in the store (or behind an old link) to its shard first.
        #[arg(long = "move")]
        move_data: bool,
        #[command(flatten)]
        topology: TopologyArgs,
    },
}

/// The original server's single-dash options (`server.py -homedir DIR -daemon …`), in
/// their storeherd spelling; other arguments unchanged. `-quiet` is `--quiet` and `-debug`
/// is `--verbose`: the log levels they stand for.
pub fn original_spelling(arg: std::ffi::OsString) -> std::ffi::OsString {
    let long = match arg.to_str() {
        Some("-homedir") => "--homedir",
        Some("-daemon") => "--daemon",
        Some("-pidfile") => "--pidfile",
        Some("-logfile") => "--logfile",
        Some("-logtraffic") => "--logtraffic",
        Some("-quiet") => "--quiet",
        Some("-debug") => "--verbose",
        _ => return arg,
    };
    long.into()
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Home directory holding config.txt (also accepted as `-homedir`).
    #[arg(long)]
    pub homedir: PathBuf,
    /// Detach from the terminal and run in the background (`-daemon`); the log goes to
    /// --logfile, or nowhere.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: write the server's process id to this file (`-pidfile`); removed on
    /// a clean stop.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Append the log (standard output and error) to this file (`-logfile`).
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,
    /// Log every protocol line received and sent (`-logtraffic`).
    #[arg(long)]
    pub logtraffic: bool,
    /// Take client sockets handed over by `storeherd up`'s proxy on <homedir>/handoff.sock
    /// (set by the supervisor for built-in instances).
    #[arg(long)]
    pub handoff: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target address(es), comma-separated; several = the client spreads connections itself.
    #[arg(long, value_delimiter = ',', default_values_t = [crate::topology::DEFAULT_LISTEN])]
    pub target: Vec<SocketAddr>,
    /// Operation.
    #[arg(long, default_value = "ping")]
    pub op: String,
    /// Concurrent connections.
    #[arg(short = 'c', long = "connections", default_value_t = 16)]
    pub connections: usize,
    /// Duration in seconds.
    #[arg(short = 'd', long = "duration", default_value_t = 10.0)]
    pub duration: f64,
    /// Payload size of stored blocks.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Use STARTTLS on every connection.
    #[arg(long)]
    pub tls: bool,
    /// Log in as USER:KEY on every connection.
    #[arg(long)]
    pub login: Option<String>,
    /// Wait until every stored block is readable and whole, and report blocks/s processed;
    /// fails if one is not. GETs always check the payload: other bytes count as `torn`.
    #[arg(long)]
    pub verify: bool,
    /// Fixed rate: operations per second across all connections, latency counted from each
    /// operation's scheduled start (compares tails at equal offered load).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status 75: another prune (the supervisor's, or one by hand) or a shard move \
                  holds <data>/upkeep.lock; nothing was done."
)]
pub struct PruneArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Count what would be removed or rewritten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the counts as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Wait for a prune already running instead of exiting with status 75.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// File system allocation unit for the disk-bytes columns (storutil's -blocksize).
    #[arg(long, default_value_t = 512)]
    pub blocksize: u64,
}

#[derive(Debug, Args)]
// `-f` follows here, as in `tail -f`; the topology file is `--file` only.
#[command(mut_arg("file", |a| a.short(None)))]
pub struct LogsArgs {
    /// Instance id; without it, every instance, interleaved by time, each line led by its id.
    pub id: Option<u32>,
    /// Keep printing new lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 50)]
    pub lines: usize,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write storeherd.1 and one storeherd-COMMAND.1 per command here instead of printing
    /// storeherd.1.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}
