//! `jobrunner quarantine`: what the daemon read from outside and could not record
//! as a job (docs/OPERATIONS.md says what to do about it). `inspect` shows the
//! entries of one job through [`section`].

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::table::{stamp, table};
use crate::config::Config;
use crate::ledger::{Ledger, Quarantined};

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// Most entries to show, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    limit: i64,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: QuarantineArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let entries = ledger.quarantined(None, args.limit).await?;
    if args.json {
        let doc = json!({ "quarantine": entries });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("Nothing is quarantined");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = entries
        .iter()
        .map(|q| {
            vec![
                q.id.to_string(),
                stamp(q.at),
                q.source.clone(),
                q.queue.clone().unwrap_or_else(|| "-".into()),
                q.job_id.map_or("-".into(), |id| id.to_string()),
                q.error.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "AT", "SOURCE", "QUEUE", "JOB", "ERROR"], rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// The `quarantine` lines of `inspect` for one job's entries.
pub fn section(entries: &[Quarantined]) -> String {
    if entries.is_empty() {
        return "quarantine   -\n".into();
    }
    let rows = entries
        .iter()
        .map(|q| {
            vec![
                stamp(q.at),
                q.source.clone(),
                q.error.clone(),
                q.raw.clone(),
            ]
        })
        .collect();
    let mut out = String::from("quarantine\n");
    for line in table(&["AT", "SOURCE", "ERROR", "RAW"], rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}
