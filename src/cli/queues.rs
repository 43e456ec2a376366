//! `queues` and `workers`: what each queue holds and which daemons serve them.
//!
//! A human table by default, one JSON document with `--json`.
//!
//! **Invariant:** like the rest of `cli`, this only calls `ledger` and `broker`
//! (checked with it: see `cli/mod.rs`).

use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::table::{age, table};
use crate::broker::{Broker, WorkerEntry};
use crate::config::Config;
use crate::ledger::Ledger;

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// One queue's row: the ledger's counts plus what Redis says.
#[derive(Debug, Serialize)]
struct QueueView {
    #[serde(flatten)]
    counts: crate::ledger::QueueCounts,
    /// Seconds since the oldest waiting job became due.
    oldest_waiting_secs: Option<i64>,
    paused: bool,
    /// Jobs in the queue's Redis ready set (dispatched, not yet fetched); absent
    /// when the queue's Redis did not answer.
    redis_ready: Option<i64>,
    /// Why the queue's Redis (its cluster master) could not be read, if it could
    /// not: one queue's trouble is shown on its own row.
    redis_error: Option<String>,
}

/// How long one queue's Redis read may take before its row says so.
const REDIS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn queues(config: Config, args: QueuesArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let broker = Broker::connect(&config.redis).await?;
    let configured: Vec<String> = config.queues.keys().cloned().collect();
    let counts = ledger
        .queue_counts(&configured)
        .await
        .context("counting jobs per queue")?;
    let paused = ledger
        .paused_queues()
        .await
        .context("reading paused queues")?;
    let now = Utc::now();
    // Each queue's Redis is read on its own, side by side: a cluster master that
    // is down shows on its queues' rows and delays no other.
    let reads = counts.iter().map(|c| {
        let broker = &broker;
        async move {
            let read = async {
                let paused = broker.paused(&c.queue).await?;
                let (ready, ..) = broker.depth(&c.queue).await?;
                Ok::<_, crate::broker::Error>((paused, ready))
            };
            match tokio::time::timeout(REDIS_READ_TIMEOUT, read).await {
                Ok(Ok(read)) => Ok(read),
                Ok(Err(error)) => Err(crate::error_chain(&error)),
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(REDIS_READ_TIMEOUT)
                )),
            }
        }
    });
    let depths = futures::future::join_all(reads).await;
    let mut views = Vec::with_capacity(counts.len());
    for (c, depth) in counts.into_iter().zip(depths) {
        views.push(QueueView {
            oldest_waiting_secs: c
                .oldest_waiting_since
                .map(|t| now.signed_duration_since(t).num_seconds().max(0)),
            // What daemons obey is the pause in Redis; the ledger's record of
            // it stands in while the queue's Redis does not answer.
            paused: match &depth {
                Ok((paused, _)) => *paused,
                Err(_) => paused.contains(&c.queue),
            },
            redis_ready: depth.as_ref().ok().map(|(_, ready)| *ready),
            redis_error: depth.err(),
            counts: c,
        });
    }
    broker.quit().await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "queues": views }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows = views
        .iter()
        .map(|v| {
            let c = &v.counts;
            vec![
                c.queue.clone(),
                c.ready.to_string(),
                c.scheduled.to_string(),
                c.running.to_string(),
                c.retrying.to_string(),
                c.dead.to_string(),
                if v.paused { "yes" } else { "no" }.to_owned(),
                v.oldest_waiting_secs.map_or("-".into(), age),
                c.succeeded_last_minute.to_string(),
                c.dead_last_minute.to_string(),
                v.redis_ready.map_or("-".into(), |n| n.to_string()),
                match &v.redis_error {
                    None => "ok".to_owned(),
                    Some(e) => format!("error: {e}"),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "QUEUE",
                "READY",
                "SCHEDULED",
                "RUNNING",
                "RETRYING",
                "DEAD",
                "PAUSED",
                "OLDEST WAIT",
                "OK LAST MIN",
                "DEAD LAST MIN",
                "IN REDIS",
                "REDIS",
            ],
            rows,
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct WorkerView {
    #[serde(flatten)]
    entry: WorkerEntry,
    /// `live`, `draining`, or `gone` (no heartbeat lately: it died without saying).
    state: &'static str,
}

pub async fn workers(config: Config, args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let broker = Broker::connect(&config.redis).await?;
    let entries = broker
        .workers()
        .await
        .context("reading the worker registry")?;
    broker.quit().await;
    let now = Utc::now();
    let views: Vec<WorkerView> = entries
        .into_iter()
        .map(|entry| WorkerView {
            state: if entry.is_stale(now) {
                "gone"
            } else if entry.draining {
                "draining"
            } else {
                "live"
            },
            entry,
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "workers": views }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        println!("No daemon is registered");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = views
        .iter()
        .map(|v| {
            let e = &v.entry;
            vec![
                e.id.to_string(),
                e.host.clone(),
                e.pid.to_string(),
                e.version.clone(),
                e.queues.join(","),
                e.running.to_string(),
                age(now.signed_duration_since(e.started_at).num_seconds()),
                age(now.signed_duration_since(e.heartbeat_at).num_seconds()),
                v.state.to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "HOST",
                "PID",
                "VERSION",
                "QUEUES",
                "RUNNING",
                "UP",
                "HEARTBEAT",
                "STATE",
            ],
            rows,
        )
    );
    Ok(ExitCode::SUCCESS)
}
