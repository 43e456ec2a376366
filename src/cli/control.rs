//! `jobrunner cancel`, `pause` and `resume`: flow control from the command line.
//! The ledger is written first (it is the record), then Redis.

use std::process::ExitCode;

use serde_json::json;
use uuid::Uuid;

use crate::broker::{Broker, CancelOutcome};
use crate::config::Config;
use crate::control::{self, Cancel};
use crate::ledger::Ledger;

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The job's id (a UUID).
    #[arg(value_parser = super::parse_job_id)]
    pub id: Uuid,
    /// Print a JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The queue's name.
    pub queue: String,
    /// Print a JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 when the job is now cancelled; 1 when it is unknown or had ended.
pub async fn cancel(config: Config, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let id = args.id;
    let ledger = Ledger::connect(&config.database).await?;
    let broker = Broker::connect(&config.redis).await?;
    let outcome = control::cancel(&ledger, &broker, &config.events, id).await;
    broker.quit().await;
    let (queue, previous, redis) = match outcome {
        Ok(Cancel::Done {
            queue,
            previous,
            redis,
            unpublished,
        }) => {
            for failure in unpublished {
                eprintln!("warning: job {id} is cancelled, but {failure}");
            }
            (queue, previous, redis)
        }
        Ok(Cancel::AlreadyFinal(status)) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "id": id, "cancelled": false, "status": status })
                );
            } else {
                eprintln!("job {id} already {status}; nothing to cancel");
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!(
            "{}",
            json!({ "id": id, "cancelled": true, "previous_status": previous, "queue": queue,
                    "redis": redis })
        );
    } else {
        let what = match redis {
            CancelOutcome::Removed => "removed from its queue",
            CancelOutcome::Signalled => "its daemon was told to stop it",
            CancelOutcome::Absent => "it was not in Redis",
        };
        println!("Cancelled job {id} (was {previous}; {what})");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(config: Config, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let broker = Broker::connect(&config.redis).await?;
    let paused = control::pause(&ledger, &broker, &args.queue).await;
    broker.quit().await;
    paused?;
    if args.json {
        println!("{}", json!({ "queue": args.queue, "paused": true }));
    } else {
        println!(
            "Paused queue {}: no new job starts; running jobs finish",
            args.queue
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(config: Config, args: QueueArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let broker = Broker::connect(&config.redis).await?;
    let resumed = control::resume(&ledger, &broker, &args.queue).await;
    broker.quit().await;
    let was_paused = resumed?;
    if args.json {
        println!(
            "{}",
            json!({ "queue": args.queue, "paused": false, "was_paused": was_paused })
        );
    } else if was_paused {
        println!("Resumed queue {}", args.queue);
    } else {
        println!("Queue {} was not paused", args.queue);
    }
    Ok(ExitCode::SUCCESS)
}
