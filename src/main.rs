//! Thin entry point: parse the command line, start logging, run the command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use datapack_worker::cli::{Cli, Command};
use datapack_worker::commands::{self, dlq, presign, reconcile};
use datapack_worker::ops::telemetry;
use datapack_worker::{app, config, shutdown};

/// Every message allocates and frees a few hundred small buffers (headers, SDK config, JSON),
/// spread over the runtime's threads; mimalloc's thread-local free lists make each of those
/// cheaper than glibc's arenas do (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = cli.runtime().and_then(|runtime| {
        runtime.block_on(async {
            telemetry::init(&cli.log_settings());
            execute(cli.command).await
        })
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("datapack-worker: {error:#}");
            if let Some(stopped) = error.downcast_ref::<reconcile::Stopped>() {
                ExitCode::from(stopped.exit_code())
            } else if refused(&error) {
                ExitCode::from(2)
            } else if error.downcast_ref::<dlq::Interrupted>().is_some() {
                ExitCode::from(dlq::INTERRUPTED_EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Exit 2 (docs/operating.md's "refused"): a configuration or a command's input that was refused before
/// anything was tried; every other failure exits 1.
fn refused(error: &anyhow::Error) -> bool {
    error.downcast_ref::<config::ConfigError>().is_some()
        || error
            .downcast_ref::<presign::PresignError>()
            .is_some_and(presign::PresignError::is_refusal)
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let settings = args.into_settings()?;
            app::run(settings, shutdown::signals()).await
        }
        Command::Migrate(database) => commands::migrate(database).await,
        Command::Presign(args) => presign::execute(args).await,
        Command::Dlq(command) => dlq::execute(command).await,
        Command::Reconcile(args) => reconcile::execute(*args).await,
    }
}
