//! The command line: clap definitions and one thin function per subcommand.
//!
//! This is the binary's edge: it turns errors into a message on stderr and an exit
//! code (`anyhow` lives here and in `main.rs` only). Exit codes: 0 success, 1 error,
//! 2 usage error (clap), 3 `status --wait` saw the job end other than `succeeded`.
//!
//! **Invariant:** nothing here talks to Redis or Postgres directly; it calls
//! `ledger`, `broker` and `runtime`.

mod admin;
mod control;
mod cron;
mod demo;
mod quarantine;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use uuid::Uuid;

use crate::broker::{Broker, RedisEnqueue};
use crate::config::{self, Config};
use crate::jobs::Registry;
use crate::ledger::{Job, Ledger, NewJob, Status};
use crate::runtime::Daemon;

#[derive(Debug, Parser)]
#[command(name = "jobrunner", version, about = "A background job-runner daemon")]
pub struct Cli {
    /// Config file (default: ./config/jobrunner.toml, then /etc/jobrunner/jobrunner.toml).
    #[arg(long, global = true, env = "JOBRUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT (a second signal exits at once);
    /// SIGHUP reloads the config file.
    Run {
        /// Apply pending migrations before starting.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Enqueue a job and print its id.
    Enqueue {
        kind: String,
        /// The payload as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The queue (default: the kind's configured queue).
        #[arg(long)]
        queue: Option<String>,
        /// Higher runs first, from -1000 to 1000.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
        /// Run no earlier than this from now, e.g. 30s or 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Run no earlier than this time, in RFC 3339 (2026-12-01T09:00:00Z); a past
        /// time means now.
        #[arg(long, conflicts_with = "delay", value_parser = parse_rfc3339)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// Enqueue through SQL (transactional outbox) or straight into Redis.
        #[arg(long, value_enum, default_value_t = Via::Sql)]
        via: Via,
        /// While an unfinished job holds this key, print its id instead of adding
        /// a job (SQL only).
        #[arg(long)]
        unique_key: Option<String>,
    },
    /// Show one job.
    Status {
        id: String,
        /// Print a JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Wait until the job ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 1).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Set up, enqueue demo jobs of the built-in kinds, run them and show their status.
    Demo,
    /// Measure enqueue rate, end-to-end throughput, pickup latency and memory.
    Bench(crate::bench::BenchArgs),
    /// Print the effective configuration (passwords hidden).
    Config,
    /// Cron schedules ([cron.NAME]): list them, or run one now.
    Cron {
        #[command(subcommand)]
        command: cron::CronCommand,
    },
    /// Cancel a job: a waiting job never runs, a running one is told to stop.
    Cancel(control::CancelArgs),
    /// Pause a queue on every daemon: nothing new starts, running jobs finish.
    Pause(control::QueueArgs),
    /// Resume a paused queue.
    Resume(control::QueueArgs),
    /// Per queue: ready, scheduled, running, retrying and dead jobs, pause, oldest wait, last minute's ends.
    Queues(admin::QueuesArgs),
    /// List jobs, newest first.
    Jobs(admin::JobsArgs),
    /// Show one job in full: every column, each attempt's error, where it is in Redis.
    Inspect(admin::InspectArgs),
    /// Run a dead or cancelled job again, or every dead job with --dead.
    Retry(admin::RetryArgs),
    /// Delete final jobs that ended before a cutoff, in small batches.
    Purge(admin::PurgeArgs),
    /// The daemons running now.
    Workers(admin::WorkersArgs),
    /// Items read from Redis that could not be recorded as jobs, newest first.
    Quarantine(quarantine::QuarantineArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Sql,
    Redis,
}

/// Runs one subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let quiet = !matches!(cli.command, Command::Run { .. } | Command::Demo);
    let mut log = config.log.clone();
    if quiet && std::env::var_os("RUST_LOG").is_none() {
        log.level = "warn".into();
    }
    crate::telemetry::init(&log);
    match cli.command {
        Command::Run { migrate } => run_daemon(config, cli.config.as_deref(), migrate).await,
        Command::Migrate => {
            let ledger = Ledger::connect(&config.database).await?;
            ledger.migrate().await?;
            println!(
                "Database schema is current (version {})",
                crate::ledger::schema_version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue {
            kind,
            payload,
            queue,
            priority,
            delay,
            at,
            max_attempts,
            via,
            unique_key,
        } => {
            if unique_key.is_some() && via == Via::Redis {
                bail!(
                    "--unique-key works only with --via sql: the Redis script has no unique keys"
                );
            }
            let job = EnqueueArgs {
                kind,
                payload,
                queue,
                priority,
                delay,
                at,
                max_attempts,
                unique_key,
            }
            .validate(&config)?;
            let id = match via {
                Via::Sql => {
                    let ledger = Ledger::connect(&config.database).await?;
                    ledger
                        .enqueue(&job)
                        .await
                        .context("enqueueing through SQL")?
                }
                Via::Redis => {
                    let broker = Broker::connect(&config.redis).await?;
                    let id = broker
                        .enqueue(&RedisEnqueue {
                            queue: job.queue.clone().unwrap_or_default(),
                            kind: job.kind.clone(),
                            payload: job.payload.to_string(),
                            priority: job.priority,
                            max_attempts: job.max_attempts.unwrap_or(0),
                            delay_ms: job
                                .run_at
                                .map_or(0, |t| (t - chrono::Utc::now()).num_milliseconds().max(0)),
                        })
                        .await
                        .context("enqueueing through Redis")?;
                    broker.quit().await;
                    id
                }
            };
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            id,
            json,
            wait,
            timeout,
        } => {
            let id: Uuid = id
                .parse()
                .with_context(|| format!("`{id}` is not a job id (a UUID)"))?;
            let ledger = Ledger::connect(&config.database).await?;
            let job = if wait {
                ledger.wait_final(id, timeout).await?
            } else {
                ledger.job(id).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", job_table(&job));
            }
            let status = job.status();
            Ok(match (wait, status) {
                (false, _) | (true, Some(Status::Succeeded)) => ExitCode::SUCCESS,
                (true, Some(s)) if s.is_final() => ExitCode::from(3),
                (true, _) => {
                    bail!("job {id} is still {} after the timeout", job.status)
                }
            })
        }
        Command::Demo => demo::run(config).await,
        Command::Bench(args) => crate::bench::run(config, args).await,
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cron { command } => cron::run(config, command).await,
        Command::Cancel(args) => control::cancel(config, args).await,
        Command::Pause(args) => control::pause(config, args).await,
        Command::Resume(args) => control::resume(config, args).await,
        Command::Queues(args) => admin::queues(config, args).await,
        Command::Jobs(args) => admin::jobs(config, args).await,
        Command::Inspect(args) => admin::inspect(config, args).await,
        Command::Retry(args) => admin::retry(config, args).await,
        Command::Purge(args) => admin::purge(config, args).await,
        Command::Workers(args) => admin::workers(config, args).await,
        Command::Quarantine(args) => quarantine::run(config, args).await,
    }
}

/// The daemon: start, tell systemd it is ready, reload on SIGHUP, drain on
/// SIGTERM/SIGINT, exit 0.
async fn run_daemon(
    config: Config,
    path: Option<&std::path::Path>,
    migrate: bool,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything slow: SIGHUP's default action ends the process, and
    // `systemctl reload` may come early.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let notifier = crate::runtime::Notifier::from_env();
    if migrate {
        let ledger = Ledger::connect(&config.database).await?;
        ledger.migrate().await.context("applying migrations")?;
        tracing::info!(
            version = crate::ledger::schema_version(),
            "Migrations applied"
        );
    }
    let registry = Registry::builtin(&config);
    let daemon = Daemon::start_notifying(config, registry, notifier.clone()).await?;
    notifier.ready();
    let shutdown = daemon.shutdown_token();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop requested; draining (send the signal again to exit at once)");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("Second stop signal; exiting without draining");
        std::process::exit(130);
    });
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&daemon, path, &notifier),
            _ = draining.cancelled() => break,
        }
    }
    daemon.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read the same file (and environment) again and apply it. A file that
/// does not load is logged and changes nothing; the daemon keeps running.
fn reload(daemon: &Daemon, path: Option<&std::path::Path>, notifier: &crate::runtime::Notifier) {
    notifier.reloading();
    match Config::load(path) {
        Ok(new) => {
            let origin = new.origin.clone();
            let report = daemon.reload(new);
            tracing::info!(
                config = origin,
                applied = report.applied.len(),
                needs_restart = report.needs_restart.len(),
                "Config reloaded"
            );
        }
        Err(error) => tracing::error!(
            error = %crate::error_chain(&error),
            "Config reload failed; keeping the running config"
        ),
    }
    notifier.ready();
}

/// SIGTERM or SIGINT, whichever comes first: both mean "stop".
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

struct EnqueueArgs {
    kind: String,
    payload: String,
    queue: Option<String>,
    priority: i32,
    delay: Option<Duration>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    max_attempts: Option<i32>,
    unique_key: Option<String>,
}

impl EnqueueArgs {
    /// Checks the arguments the way the ledger would, but with messages that name
    /// the flag, and fills the queue from the kind's config.
    fn validate(self, config: &Config) -> anyhow::Result<NewJob> {
        if !config::valid_name(&self.kind) {
            bail!(
                "kind `{}`: use 1 to 64 letters, digits, '-', '_' or '.'",
                self.kind
            );
        }
        let payload: Value = serde_json::from_str(&self.payload)
            .with_context(|| format!("--payload is not valid JSON: `{}`", self.payload))?;
        if let Some(q) = &self.queue
            && !config::valid_name(q)
        {
            bail!("--queue `{q}`: use 1 to 64 letters, digits, '-', '_' or '.'");
        }
        if !(-1000..=1000).contains(&self.priority) {
            bail!(
                "--priority {} is out of range (-1000 to 1000)",
                self.priority
            );
        }
        if self.max_attempts.is_some_and(|m| m < 1) {
            bail!("--max-attempts must be at least 1");
        }
        if self.unique_key.as_deref() == Some("") {
            bail!("--unique-key must not be empty");
        }
        let queue = self
            .queue
            .or_else(|| config.kinds.get(&self.kind).map(|k| k.queue.clone()))
            .or_else(|| Some(config::DEFAULT_QUEUE.to_owned()));
        let run_at = match (self.delay, self.at) {
            (Some(d), _) => Some(
                chrono::Utc::now()
                    + chrono::Duration::from_std(d).context("--delay is too long")?,
            ),
            // A time in the past runs now, as jobrunner.enqueue treats it.
            (None, Some(at)) => Some(at.max(chrono::Utc::now())),
            (None, None) => None,
        };
        Ok(NewJob {
            kind: self.kind,
            payload,
            queue,
            run_at,
            priority: self.priority,
            max_attempts: self.max_attempts,
            unique_key: self.unique_key,
        })
    }
}

/// `--at`: an RFC 3339 time with its offset, e.g. 2026-12-01T09:00:00Z.
fn parse_rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 time like 2026-12-01T09:00:00Z or 2026-12-01T10:00:00+01:00 ({e})")
        })
}

/// One job as a two-column table for people.
pub fn job_table(job: &Job) -> String {
    key_value_table(&job_rows(job))
}

/// The rows `status` and `inspect` show for a job, in order.
pub fn job_rows(job: &Job) -> Vec<(&'static str, String)> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
        })
    };
    vec![
        ("id", job.id.to_string()),
        ("kind", job.kind.clone()),
        ("queue", job.queue.clone()),
        ("status", job.status.clone()),
        (
            "attempts",
            format!("{} of {}", job.attempts, job.max_attempts),
        ),
        ("priority", job.priority.to_string()),
        ("payload", job.payload.to_string()),
        (
            "result",
            job.result.as_ref().map_or("-".into(), Value::to_string),
        ),
        ("last_error", job.last_error.clone().unwrap_or("-".into())),
        ("unique_key", job.unique_key.clone().unwrap_or("-".into())),
        (
            "progress",
            match (job.progress, &job.progress_message) {
                (Some(p), Some(m)) => format!("{p}% {m}"),
                (Some(p), None) => format!("{p}%"),
                _ => "-".into(),
            },
        ),
        ("run_at", time(Some(job.run_at))),
        ("created_at", time(Some(job.created_at))),
        ("started_at", time(job.started_at)),
        ("finished_at", time(job.finished_at)),
        ("updated_at", time(Some(job.updated_at))),
    ]
}

/// Rows of `key value`, the keys padded to one column.
pub fn key_value_table(rows: &[(&str, String)]) -> String {
    rows.iter().map(|(k, v)| format!("{k:<12} {v}\n")).collect()
}
