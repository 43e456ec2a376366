//! `jobrunner demo`: the README's first command. Migrates, enqueues jobs of every
//! built-in kind through both ways in (a content campaign, an extraction query
//! against a fixture page served on loopback, a messaging webhook, and the
//! diagnostic kinds), runs an in-process daemon until they all end, and prints
//! their status and what they produced. The daemon's log goes to a file the demo
//! names (its retries and failures are expected, and would read as errors in the
//! middle of the table); when something goes wrong, the log's end is shown.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use jobrunner::broker::{Broker, RedisEnqueue};
use jobrunner::config::Config;
use jobrunner::ledger::{Ledger, NewJob, Status};
use jobrunner::runtime::Daemon;

mod fixtures;

pub async fn run(config: Config, log: PathBuf) -> anyhow::Result<ExitCode> {
    println!("The demo daemon's log goes to {}", log.display());
    let outcome = run_jobs(config).await;
    if outcome.is_err() {
        show_log_tail(&log, 30);
    }
    outcome
}

/// The last `lines` lines of the demo's log, on stderr, so a failure comes with
/// what the daemon said.
fn show_log_tail(log: &Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let all: Vec<&str> = text.lines().collect();
    eprintln!(
        "\nThe last lines of the demo daemon's log ({}):",
        log.display()
    );
    for line in &all[all.len().saturating_sub(lines)..] {
        eprintln!("    {line}");
    }
}

async fn run_jobs(mut config: Config) -> anyhow::Result<ExitCode> {
    // Retries in the demo should take moments, not the production backoff.
    let fail = config.kinds.entry("fail".into()).or_default();
    fail.backoff.base = Duration::from_millis(200);
    fail.backoff.max = Duration::from_secs(1);
    fail.max_attempts = 3;
    // The extraction demo reads a page this process serves on loopback, which the
    // SSRF guard refuses unless allowed.
    let site = fixtures::FixtureSite::start()
        .await
        .context("starting the demo's fixture site")?;
    let mut extraction: jobrunner_kinds::DataExtractionConfig = config.section();
    extraction.allow_hosts.push("127.0.0.1".into());
    config.set_section(&extraction);

    let ledger = Ledger::connect(&config.database).await?;
    ledger
        .migrate(&jobrunner_kinds::migrations())
        .await
        .context("applying migrations")?;
    ledger.sync_kinds(&config).await?;
    let broker = Broker::connect(&config.redis).await?;

    let sql = |kind: &str, payload: serde_json::Value| NewJob {
        kind: kind.into(),
        payload,
        ..NewJob::default()
    };
    let pool = ledger.pool();
    let campaign = fixtures::create_campaign(pool).await?;
    let query = fixtures::create_extraction_query(pool, &site.url()).await?;
    let mut jobs = Vec::new();
    for (what, job) in [
        (
            "SQL",
            sql("content-generation", json!({ "campaign_id": campaign })),
        ),
        ("SQL", sql("data-extraction", json!({ "query_id": query }))),
        (
            "SQL",
            sql("message-processing", fixtures::webhook_payload()),
        ),
        ("SQL", sql("noop", json!({"hello": "world"}))),
        ("SQL", sql("sleep", json!({"ms": 300}))),
        ("SQL", sql("fail", json!({"times": 1}))),
        ("SQL", sql("fail", json!({"permanent": true}))),
        ("SQL", sql("sleep", json!({"ms": "not a number"}))),
        (
            "SQL, 1s delay",
            NewJob {
                run_at: Some(chrono::Utc::now() + chrono::Duration::seconds(1)),
                ..sql("noop", json!({"delayed": true}))
            },
        ),
    ] {
        jobs.push((what, ledger.enqueue(&job).await?));
    }
    let redis_id = broker
        .enqueue(&RedisEnqueue {
            queue: config.kind("noop").queue,
            kind: "noop".into(),
            payload: json!({"via": "redis"}).to_string(),
            ..RedisEnqueue::default()
        })
        .await?;
    jobs.push(("Redis", redis_id));

    println!("Enqueued {} demo jobs; running them...", jobs.len());
    let registry = jobrunner::cli::registry::<crate::Layers>(&config);
    let daemon = Daemon::start_with(config, registry, ledger.clone(), broker);
    let mut rows = Vec::new();
    for (via, id) in &jobs {
        let job = ledger
            .wait_final(*id, Some(Duration::from_secs(60)))
            .await?;
        rows.push((*via, job));
    }
    daemon.stop().await;

    println!();
    println!(
        "{:<36}  {:<18}  {:<13}  {:<9}  {:>8}  RESULT OR ERROR",
        "ID", "KIND", "ENQUEUED VIA", "STATUS", "ATTEMPTS"
    );
    let mut unfinished = 0;
    for (via, job) in &rows {
        let detail = match (&job.result, &job.last_error) {
            (Some(r), _) if job.status == Status::Succeeded => r.to_string(),
            (_, Some(e)) => e.clone(),
            _ => "-".into(),
        };
        if !job.status.is_final() {
            unfinished += 1;
        }
        println!(
            "{:<36}  {:<18}  {:<13}  {:<9}  {:>8}  {}",
            job.id,
            job.kind,
            via,
            job.status,
            job.attempts,
            shorten(&detail, 90)
        );
    }
    println!();
    println!("What the built-in kinds produced:");
    for line in fixtures::summary(ledger.pool(), campaign, query).await? {
        println!("{line}");
    }
    drop(site);
    if unfinished > 0 {
        anyhow::bail!("{unfinished} demo jobs did not finish within a minute");
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
