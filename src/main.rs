use clap::Parser;
use storeherd::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let args = std::env::args_os().map(storeherd::cli::original_spelling);
    let cli = Cli::parse_from(args);
    storeherd::cli::logging::init(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Up(a) => storeherd::cli::up::run(a),
        Command::Check(a) => storeherd::cli::check::run(a),
        Command::Status(a) => storeherd::cli::control::status(a),
        Command::Scale(a) => storeherd::cli::control::scale(a),
        Command::Add(a) => storeherd::cli::control::add(a),
        Command::Remove(a) => storeherd::cli::control::remove(a),
        Command::Restart(a) => storeherd::cli::control::restart(a),
        Command::Accounts(a) => storeherd::cli::control::accounts(a),
        Command::Shards(a) => storeherd::cli::control::shards(a),
        Command::Store(a) => storeherd::cli::store::run(a),
        Command::Bench(a) => storeherd::cli::bench::run(a),
        Command::Prune(a) => storeherd::cli::upkeep::prune(a),
        Command::Report(a) => storeherd::cli::upkeep::report(a),
        Command::Logs(a) => storeherd::cli::logs::run(a),
        Command::Completions(a) => storeherd::cli::generate::completions(a),
        Command::Man(a) => storeherd::cli::generate::man(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("storeherd: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
