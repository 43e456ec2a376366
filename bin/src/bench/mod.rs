//! `jobrunner bench`: throughput, CPU cost per job, pickup latency and memory of
//! a real daemon.
//!
//! It creates a scratch database on the configured Postgres server and a scratch
//! key prefix on the configured Redis, starts `jobrunner run` as a child process
//! (so the memory and CPU figures are the daemon's own), optionally fills the
//! ledger with `--ledger-rows` finished jobs (then `VACUUM ANALYZE`, as a
//! long-lived ledger is), and then, per way in (SQL, Redis):
//! 1. **drain**: enqueues `--backlog` no-op jobs while the daemon is stopped
//!    (SIGSTOP), resumes it and times the drain: the daemon's own processing rate
//!    and the CPU each job cost the daemon, redis-server and Postgres (`cpu.rs`);
//!    with `--analyze-midway`, `ANALYZE` runs once about half of it has succeeded;
//! 2. **throughput**: enqueues `--jobs` no-op jobs as fast as the producers can and
//!    measures the enqueue rate, the end-to-end rate (first enqueue → last
//!    `succeeded` row) and its CPU cost, plus how far the ledger lags behind the
//!    workers (`updated_at - finished_at`);
//! 3. **latency**: enqueues at a steady `--rate` for `--latency-secs` and reports
//!    pickup latency percentiles: from the moment `enqueue` returned to the
//!    producer (SQL: committed) until the handler started (`started_at`);
//! 4. **bulk** (SQL only): `jobrunner.enqueue_many` in batches of `--bulk-batch`.
//!
//! Each run starts after a `CHECKPOINT` where the bench's role may run one, so
//! its Postgres figure does not include flushing what earlier runs or the
//! `--ledger-rows` fill left dirty.
//! Every timed window also reports how busy the whole machine was, so a run
//! disturbed by other work shows it; the report opens with the Postgres
//! settings that move the figures most (`shared_buffers`, `fsync`,
//! `synchronous_commit`). The daemon's peak RSS, whole and anonymous,
//! closes the report.
//! It prints figures (a table, or one JSON document with `--json`); it asserts
//! nothing. docs/PERFORMANCE.md explains each figure.
//!
//! This file parses the arguments and runs the daemon; `scratch.rs` makes and
//! drops the scratch database and key prefix, `runs.rs` holds the runs,
//! `producers.rs` their producers, `wait.rs` the reads that start and time
//! them, `report.rs` the figures, `cpu.rs` the CPU accounting.

mod cpu;
mod producers;
mod report;
mod runs;
mod scratch;
mod wait;

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use jobrunner::broker::Broker;
use jobrunner::config::Config;
use jobrunner::ledger::Ledger;

use self::report::Report;
use self::scratch::{Scratch, build_ledger};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// No-op jobs pushed through each way in for the throughput runs.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs queued while the daemon is stopped, for the drain runs (default: --jobs).
    #[arg(long)]
    pub backlog: Option<usize>,
    /// Finished rows put in the ledger before the runs (then VACUUM ANALYZE), to
    /// measure a lived-in ledger.
    #[arg(long, default_value_t = 0)]
    pub ledger_rows: u64,
    /// In each drain run, `ANALYZE jobrunner.jobs` once about half the backlog has
    /// succeeded, as autovacuum would: the statistics then see a ledger half
    /// finished and half queued. Its cost is in the drain's Postgres figure.
    #[arg(long)]
    pub analyze_midway: bool,
    /// Jobs per second for the latency runs.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds each latency run lasts.
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,
    /// Concurrent producer tasks during the throughput runs.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Payloads per `jobrunner.enqueue_many` call in the bulk run.
    #[arg(long, default_value_t = 1000)]
    pub bulk_batch: usize,
    /// Which runs to make, comma-separated: drain, throughput, latency, bulk.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "drain,throughput,latency,bulk"
    )]
    pub runs: Vec<RunKind>,
    /// Which ways in to measure, comma-separated: sql, redis.
    #[arg(long, value_delimiter = ',', default_value = "sql,redis")]
    pub paths: Vec<Path>,
    /// Queues the throughput and drain runs spread their jobs over, round robin,
    /// comma-separated. On a cluster, pick names whose slots lie on different
    /// masters (`redis-cli cluster keyslot NAME`) to load each of them.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch database afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunKind {
    Drain,
    Throughput,
    Latency,
    Bulk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Path {
    Sql,
    Redis,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Sql => "sql",
            Path::Redis => "redis",
        }
    }
}

pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.jobs == 0 || args.rate == 0 || args.producers == 0 || args.bulk_batch == 0 {
        bail!("--jobs, --rate, --producers and --bulk-batch must be above zero");
    }
    if args.backlog == Some(0) {
        bail!("--backlog must be above zero");
    }
    if let Some(bad) = args
        .queues
        .iter()
        .find(|q| !jobrunner::config::valid_name(q))
    {
        bail!("--queues: {bad:?} is not 1-64 letters, digits, dots, dashes or underscores");
    }
    let scratch = Scratch::create(&config, &args.queues).await?;
    let result = measure(&scratch, &args).await;
    scratch.drop_all(args.keep).await;
    let report = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(report.json))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!("{:<52} {:>16}", "measure", "value");
    println!("{}", "-".repeat(69));
    for (what, value) in report.rows {
        println!("{what:<52} {value:>16}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(scratch: &Scratch, args: &BenchArgs) -> anyhow::Result<Report> {
    let config = &scratch.config;
    // The producers' own pool: at a steady rate on a busy machine many enqueues
    // wait for a connection at once, and a wait is part of what is measured.
    let mut producers_db = config.database.clone();
    producers_db.max_connections = 32;
    producers_db.acquire_timeout = Duration::from_secs(120);
    let ledger = Ledger::connect(&producers_db).await?;
    ledger.migrate(&jobrunner_kinds::migrations()).await?;
    let broker = Broker::connect(&config.redis).await?;
    let pool = ledger.pool().clone();
    let mut report = Report::default();
    report.set("run", "date", json!(Utc::now().to_rfc3339()));
    report.set("run", "jobs", json!(args.jobs));
    report.set("run", "backlog", json!(args.backlog.unwrap_or(args.jobs)));
    report.set("run", "ledger_rows", json!(args.ledger_rows));
    report.set("run", "analyze_midway", json!(args.analyze_midway));
    report.set("run", "version", json!(env!("CARGO_PKG_VERSION")));
    server_settings(&pool, &mut report).await?;

    let built = if args.ledger_rows > 0 {
        let start = Instant::now();
        let built = build_ledger(&pool, args.ledger_rows).await?;
        report.row(
            format!("ledger filled with {} finished rows", args.ledger_rows),
            format!("{:.0} s", start.elapsed().as_secs_f64()),
        );
        Some(built)
    } else {
        None
    };

    let path = scratch.dir.join("bench.toml");
    // The daemon needs the real URLs: write them, not the printed form.
    let text = jobrunner::config::with_secrets_exposed(|| toml::to_string(config))?;
    std::fs::write(&path, text)?;
    if !args.json {
        eprintln!("Starting the daemon...");
    }
    let mut daemon = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--config", path.to_str().unwrap_or_default(), "run"])
        .env_remove("JOBRUNNER_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JOBRUNNER_REDIS_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the daemon")?;
    let pid = daemon.id().context("daemon pid")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kb(pid, "VmRSS:")? as f64 / 1024.0;
    report.row("daemon idle RSS", format!("{idle:.1} MB"));
    report.set("daemon", "idle_rss_mb", json!(idle));
    // Most of the idle RSS is the binary's code, mapped from the page cache
    // (shared with every process running the binary, and reclaimable): the
    // memory the daemon itself holds is its anonymous part.
    let idle_anon = rss_kb(pid, "RssAnon:")? as f64 / 1024.0;
    report.row("daemon idle RSS, anonymous", format!("{idle_anon:.1} MB"));
    report.set("daemon", "idle_anon_rss_mb", json!(idle_anon));
    let peak_anon = AnonPeak::watch(pid);

    let redis_pid = broker.server_pid().await.ok().flatten();
    let probe = cpu::Probe::new(pid, redis_pid, pool.clone(), &scratch.db_name);
    let settle: bool = sqlx::query_scalar(
        "SELECT r.rolsuper OR EXISTS (SELECT FROM pg_roles c WHERE c.rolname = 'pg_checkpoint'
                                      AND pg_has_role(r.oid, c.oid, 'MEMBER'))
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&pool)
    .await?;
    report.set("run", "checkpoint_before_runs", json!(settle));
    if !settle {
        report.row(
            "CHECKPOINT before each run",
            "not allowed: windows may pay for flushing earlier writes",
        );
    }
    let bench = Bench {
        pool: pool.clone(),
        broker: Arc::new(broker.clone()),
        args: args.clone(),
        built,
        settle,
        probe,
    };
    let result = bench.all(pid, &mut report).await;
    if result.is_ok() {
        let peak = rss_kb(pid, "VmHWM:")? as f64 / 1024.0;
        report.row("daemon peak RSS", format!("{peak:.1} MB"));
        report.set("daemon", "peak_rss_mb", json!(peak));
        let peak_anon = peak_anon.mb();
        report.row("daemon peak RSS, anonymous", format!("{peak_anon:.1} MB"));
        report.set("daemon", "peak_anon_rss_mb", json!(peak_anon));
    }
    // SIGTERM, as systemd would stop it.
    signal(pid, "STOP");
    signal(pid, "CONT");
    signal(pid, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait()).await;
    broker.quit().await;
    pool.close().await;
    result.map(|()| report)
}

/// The Postgres settings the figures depend on most: how much of the ledger
/// stays in Postgres's own cache, and whether a commit waits for the disk.
async fn server_settings(pool: &PgPool, report: &mut Report) -> anyhow::Result<()> {
    let names = [
        "server_version",
        "shared_buffers",
        "fsync",
        "synchronous_commit",
    ];
    let values: Vec<String> =
        sqlx::query_scalar("SELECT current_setting(n) FROM unnest($1::text[]) AS n")
            .bind(&names[..])
            .fetch_all(pool)
            .await
            .context("reading the Postgres server's settings")?;
    let line: Vec<String> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    report.row("postgres", line.join(", "));
    for (name, value) in names.iter().zip(values) {
        report.set("postgres", name, json!(value));
    }
    Ok(())
}

/// What every run needs.
struct Bench {
    pool: PgPool,
    broker: Arc<Broker>,
    args: BenchArgs,
    /// When the `--ledger-rows` filler was built: rows created since are the runs'.
    built: Option<DateTime<Utc>>,
    /// Whether the bench may run `CHECKPOINT` before each run (superuser or
    /// `pg_checkpoint`), so a window does not pay for flushing what the set-up
    /// wrote: filling ten million rows leaves gigabytes for the checkpointer.
    settle: bool,
    probe: cpu::Probe,
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// The highest anonymous RSS the daemon reached. The kernel keeps a high-water
/// mark only for the whole RSS (`VmHWM`), code included, so this samples
/// `RssAnon` every 20 ms until dropped.
struct AnonPeak {
    peak_kb: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnonPeak {
    fn watch(pid: u32) -> AnonPeak {
        let peak_kb = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = peak_kb.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while let Ok(kb) = rss_kb(pid, "RssAnon:") {
                peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                tick.tick().await;
            }
        });
        AnonPeak { peak_kb, task }
    }

    fn mb(&self) -> f64 {
        self.peak_kb.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for AnonPeak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rss_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the daemon's /proc status (has it exited?)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
