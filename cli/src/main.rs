//! The `smelter` binary: parses arguments, loads configuration, dispatches, and maps errors
//! to exit codes (2: invalid input, 1: failure).

use std::io::IsTerminal;

use clap::Parser;
use smelter_cli::cli::{Cli, Command, MaintenanceCommand};
use smelter_cli::{CliError, commands};
use smelter_common::config::SmelterConfig;
use smelter_common::shutdown::{CancellationToken, cancel_on_signal};
use smelter_common::telemetry::{self, LogFormat};

// Many threads allocating Arrow buffers contend on glibc's malloc; mimalloc does not.
// (Built without transparent huge pages: see the workspace Cargo.toml.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    // On a terminal `smelter up` draws live progress; info lines would tear it apart.
    let interactive_up =
        matches!(cli.command, Command::Up(_)) && std::io::stderr().is_terminal() && !cli.log_json;
    // The benchmark's result is its output; its in-process cluster's info lines are noise.
    let quiet = interactive_up || matches!(cli.command, Command::Bench(_));
    let level = if quiet && cli.log_level == "info" {
        "warn"
    } else {
        cli.log_level.as_str()
    };
    let config = match SmelterConfig::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            let error = CliError::from(error);
            eprintln!("error: {error}");
            std::process::exit(error.exit_code());
        }
    };
    let format = if cli.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    // Flushes the trace exporter when dropped, after the runtime has stopped.
    let telemetry = telemetry::init(format, level, &config.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(cli, config));
    drop(runtime);
    drop(telemetry);
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(error.exit_code());
    }
}

async fn run(cli: Cli, config: SmelterConfig) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Up(args) => {
            cancel_on_signal(shutdown.clone());
            commands::up::run(config, args, shutdown).await
        }
        Command::Coordinator => {
            cancel_on_signal(shutdown.clone());
            commands::roles::coordinator(config, shutdown).await
        }
        Command::Worker => {
            cancel_on_signal(shutdown.clone());
            commands::roles::worker(config, shutdown).await
        }
        Command::Query(args) => commands::admin::query(&config, args).await,
        Command::Tables(args) => commands::admin::tables(&config, args).await,
        Command::Status(args) => commands::admin::status(&config, args).await,
        Command::Validate(args) => commands::admin::validate(args).await,
        Command::Apply(args) => commands::admin::apply(&config, args).await,
        Command::Infer(args) => commands::infer::run(args).await,
        Command::Verify(args) => commands::verify::run(config, args).await,
        Command::Compact(args) => commands::compact::run(config, args).await,
        Command::Delete(args) => commands::delete::run(config, args).await,
        Command::Replay(args) => commands::replay::run(config, args).await,
        Command::Backfill(args) => commands::backfill::run(config, args).await,
        Command::Restore(args) => commands::restore::run(config, args).await,
        Command::Pause(args) => commands::restore::pause(&config, args, true).await,
        Command::Resume(args) => commands::restore::pause(&config, args, false).await,
        Command::History(args) => commands::history::run(config, args).await,
        Command::Quality(args) => commands::quality::run(config, args).await,
        Command::Maintenance(MaintenanceCommand::Status(args)) => {
            commands::maintenance::status(config, args).await
        }
        Command::Bench(args) => commands::bench::run(config, args).await,
    }
}
