//! The job commands: `jobs`, `inspect`, `retry`, `purge`.
//!
//! Each prints a human table by default and one JSON document with `--json`
//! (stable field names, for scripts). Exit codes: 0 done, 1 an error (unknown id, a
//! job that cannot be retried, a service down), 2 a usage error (clap, which also
//! lists the valid values of `--status`).
//!
//! **Invariant:** like the rest of `cli`, this only calls `ledger` and `broker`
//! (checked with it: see `cli/mod.rs`).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};
use serde_json::json;
use uuid::Uuid;

use super::table::{age, clip, plural, stamp, table};
use crate::broker::{Broker, RedisJobState};
use crate::config::Config;
use crate::ledger::{DeadFilter, JobFilter, Ledger, Status};

/// Most rows one bulk retry or purge statement touches.
const BATCH: i64 = 1000;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs in this status.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs created since: an RFC 3339 time, or a duration such as 1h (now − 1h).
    #[arg(long, value_parser = parse_since)]
    since: Option<DateTime<Utc>>,
    /// Most jobs to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    limit: i64,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The job's id (a UUID).
    #[arg(value_parser = super::parse_job_id)]
    id: Uuid,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The dead or cancelled job to run again.
    #[arg(
        required_unless_present = "dead",
        conflicts_with = "dead",
        value_parser = super::parse_job_id
    )]
    id: Option<Uuid>,
    /// Retry every dead job (narrowed by --queue and --kind).
    #[arg(long)]
    dead: bool,
    /// With --dead: only this queue's dead jobs.
    #[arg(long, requires = "dead")]
    queue: Option<String>,
    /// With --dead: only dead jobs of this kind.
    #[arg(long, requires = "dead")]
    kind: Option<String>,
    /// Print one JSON document instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Which final jobs to delete (only final statuses: an unfinished job is still
    /// owed a run).
    #[arg(long, value_parser = final_status_parser())]
    status: Status,
    /// Delete those that ended longer ago than this, e.g. 7d or 12h.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// `purge --status`: the final members of [`Status`], and only those.
fn final_status_parser() -> impl clap::builder::TypedValueParser<Value = Status> {
    let finals = Status::value_variants()
        .iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str());
    clap::builder::PossibleValuesParser::new(finals).try_map(|s| s.parse::<Status>())
}

/// `--since`: an RFC 3339 time, or a duration back from now.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time (2026-11-22T14:00:00Z) nor a duration (1h)")
    })?;
    let d = chrono::Duration::from_std(d).map_err(|_| format!("`{text}` is too long"))?;
    Ok(Utc::now() - d)
}

pub async fn jobs(config: Config, args: JobsArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let filter = JobFilter {
        queue: args.queue,
        status: args.status,
        kind: args.kind,
        since: args.since,
        before: None,
        limit: args.limit,
    };
    let jobs = ledger.list_jobs(&filter).await.context("listing jobs")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "jobs": jobs }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("No jobs match");
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.queue.clone(),
                j.kind.clone(),
                j.status.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                age(now.signed_duration_since(j.created_at).num_seconds()),
                error_cell(j.status, j.last_error.as_deref()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "QUEUE", "KIND", "STATUS", "ATTEMPTS", "AGE", "ERROR"],
            rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn inspect(config: Config, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let id = args.id;
    let ledger = Ledger::connect(&config.database).await?;
    let quarantined = ledger.quarantined(Some(id), 20).await?;
    let mut job = match ledger.job_detail(id).await {
        Ok(job) => job,
        // Quarantined before it got a row: that is all there is to show.
        Err(crate::ledger::Error::NotFound(_)) if !quarantined.is_empty() => {
            if args.json {
                let doc = json!({ "id": id, "quarantine": quarantined });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("job {id} has no row; it was quarantined");
                print!("{}", super::quarantine::section(&quarantined));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let redaction = crate::redact::Redaction::new(&config.redaction);
    let secrets = crate::redact::job(&redaction, &mut job.job);
    crate::redact::history(&secrets, &mut job.errors);
    // The ledger is the record; Redis only adds where the job sits now, so a Redis
    // that cannot be reached is reported, not fatal.
    let redis: Result<RedisJobState, String> = match Broker::connect(&config.redis).await {
        Ok(broker) => {
            let state = broker.job_state(&job.job.queue, id).await;
            broker.quit().await;
            state.map_err(|e| crate::error_chain(&e))
        }
        Err(e) => Err(crate::error_chain(&e)),
    };
    if args.json {
        let mut doc = serde_json::to_value(&job)?;
        doc["redis"] = match &redis {
            Ok(state) => serde_json::to_value(state)?,
            Err(error) => json!({ "error": error }),
        };
        doc["quarantine"] = serde_json::to_value(&quarantined)?;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = super::job_rows(&job.job);
    rows.push((
        "lease_token",
        job.lease_token.map_or("-".into(), |t| t.to_string()),
    ));
    rows.push((
        "redis",
        match &redis {
            Ok(state) => redis_line(state),
            Err(error) => format!("unavailable: {error}"),
        },
    ));
    let errors = job.errors.as_array().cloned().unwrap_or_default();
    rows.push((
        "errors",
        if errors.is_empty() {
            "-".into()
        } else {
            "every failed attempt, oldest first".into()
        },
    ));
    let mut out = super::key_value_table(&rows);
    if !errors.is_empty() {
        let lines = errors
            .iter()
            .map(|e| {
                vec![
                    e["attempt"].to_string(),
                    e["at"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map_or("-".into(), |t| stamp(t.with_timezone(&Utc))),
                    e["error"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        for line in table(&["ATTEMPT", "AT", "ERROR"], lines).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str(&super::quarantine::section(&quarantined));
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The `jobs` table's error cell: the error that ended or is holding up the job,
/// or, for a job that succeeded after failing, its earlier error marked as such.
fn error_cell(status: Status, last_error: Option<&str>) -> String {
    match last_error {
        None => "-".into(),
        Some(e) if status == Status::Succeeded => clip(&format!("earlier: {e}"), 60),
        Some(e) => clip(e, 60),
    }
}

fn redis_line(state: &RedisJobState) -> String {
    let Some(place) = state.place else {
        return if state.present {
            "held, in no queue structure".into()
        } else {
            "not held (finished, or not dispatched yet)".into()
        };
    };
    let mut line = place.to_owned();
    if let Some(deadline) = state.lease_deadline {
        let _ = write!(line, ", lease until {}", stamp(deadline));
    }
    if let Some(due) = state.due_at {
        let _ = write!(line, ", due at {}", stamp(due));
    }
    if let Some(token) = state.token {
        let _ = write!(line, ", token {token}");
    }
    line
}

pub async fn retry(config: Config, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    if let Some(id) = args.id {
        let broker = Broker::connect(&config.redis).await?;
        let retried = crate::control::retry(&ledger, &broker, id).await;
        broker.quit().await;
        let queue = retried?;
        if args.json {
            println!("{}", json!({ "retried": 1, "id": id, "queue": queue }));
        } else {
            println!("Job {id} is queued again on `{queue}`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let filter = DeadFilter {
        queue: args.queue,
        kind: args.kind,
    };
    let n = crate::control::retry_dead(&ledger, &filter)
        .await
        .context("retrying dead jobs")?;
    if args.json {
        println!("{}", json!({ "retried": n }));
    } else {
        println!("Retried {n} dead {}", plural(n, "job"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn purge(config: Config, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let status = args.status;
    let cutoff = Utc::now()
        - chrono::Duration::from_std(args.older_than).context("--older-than is too long")?;
    let ledger = Ledger::connect(&config.database).await?;
    let n = if args.dry_run {
        ledger.count_final_before(status, cutoff).await? as u64
    } else {
        let mut total = 0;
        loop {
            let n = ledger
                .delete_final_batch(status, cutoff, BATCH)
                .await
                .context("deleting jobs")?;
            total += n;
            if (n as i64) < BATCH {
                break total;
            }
        }
    };
    if args.json {
        println!(
            "{}",
            json!({ "status": status, "older_than": humantime::format_duration(args.older_than).to_string(),
                    "dry_run": args.dry_run, "purged": n })
        );
    } else if args.dry_run {
        println!(
            "Would delete {n} {status} {} that ended before {}",
            plural(n, "job"),
            stamp(cutoff)
        );
    } else {
        println!(
            "Deleted {n} {status} {} that ended before {}",
            plural(n, "job"),
            stamp(cutoff)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_back_from_now() {
        let t = parse_since("2026-11-22T14:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T14:00:00+00:00");
        let back = Utc::now() - parse_since("1h").unwrap();
        assert!((3595..=3605).contains(&back.num_seconds()), "{back}");
        assert!(parse_since("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
