//! Thin entry point: parse the command line, start logging, run the command, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use datapack_worker::cli::{Cli, Command, DlqCommand};
use datapack_worker::commands::{dlq, presign};
use datapack_worker::ops::telemetry;
use datapack_worker::{app, aws, config, shutdown, store};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(&cli.log_format);
    match execute(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("datapack-worker: {error:#}");
            if error.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let settings = args.into_settings()?;
            app::run(settings, shutdown::on_signals()).await
        }
        Command::Migrate(db) => {
            let db = db.to_settings()?;
            let pool = store::pool(db.connect, &db.pool);
            store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Presign(args) => {
            let bucket = args.bucket()?;
            let s3 = aws::s3(&aws::load(&config::aws_from_env()).await);
            let signed = presign::presign(&s3, &bucket, &args).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&signed)?);
            } else {
                println!("{} {}", signed.method, signed.url);
                for (name, value) in &signed.headers {
                    println!("{name}: {value}");
                }
            }
            Ok(())
        }
        Command::Dlq(command) => {
            let sqs = aws::sqs(&aws::load(&config::aws_from_env()).await);
            match command {
                DlqCommand::List { queues, max, json } => {
                    let entries = dlq::list(&sqs, &queues.sqs_dead_letter_queue_url, max).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&entries)?);
                    } else {
                        println!("{:<20} {:>8}  {:<36}  key", "reason", "age_s", "message_id");
                        for e in &entries {
                            let age = e
                                .age_secs
                                .map(|a| a.to_string())
                                .unwrap_or_else(|| "-".into());
                            println!(
                                "{:<20} {:>8}  {:<36}  {}",
                                e.reason,
                                age,
                                e.message_id,
                                e.key.as_deref().unwrap_or("-")
                            );
                        }
                        println!("{} message(s)", entries.len());
                    }
                    Ok(())
                }
                DlqCommand::Redrive {
                    queues,
                    reason,
                    max,
                } => {
                    let moved = dlq::redrive(
                        &sqs,
                        &queues.sqs_dead_letter_queue_url,
                        queues.main_url()?,
                        reason.as_deref(),
                        max,
                    )
                    .await?;
                    println!("redrove {moved} message(s)");
                    Ok(())
                }
            }
        }
    }
}
