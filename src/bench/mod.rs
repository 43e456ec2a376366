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
//! 2. **throughput**: enqueues `--jobs` no-op jobs as fast as the producers can and
//!    measures the enqueue rate, the end-to-end rate (first enqueue → last
//!    `succeeded` row) and its CPU cost, plus how far the ledger lags behind the
//!    workers (`updated_at - finished_at`);
//! 3. **latency**: enqueues at a steady `--rate` for `--latency-secs` and reports
//!    pickup latency percentiles: from the moment `enqueue` returned to the
//!    producer (SQL: committed) until the handler started (`started_at`);
//! 4. **bulk** (SQL only): `jobrunner.enqueue_many` in batches of `--bulk-batch`.
//!
//! Every timed window also reports how busy the whole machine was, so a run
//! disturbed by other work shows it. The daemon's peak RSS closes the report.
//! It prints figures (a table, or one JSON document with `--json`); it asserts
//! nothing. docs/PERFORMANCE.md explains each figure.

mod cpu;

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;

use jobrunner::broker::{Broker, RedisEnqueue};
use jobrunner::config::{Config, QueueConfig};
use jobrunner::ledger::Ledger;

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

/// The figures: table rows for people, a JSON document for scripts.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.rows.push((what.into(), value.into()));
    }

    /// Sets `json[section][key] = value`.
    fn set(&mut self, section: &str, key: &str, value: Value) {
        let entry = self
            .json
            .entry(section.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(map) = entry {
            map.insert(key.to_owned(), value);
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

/// The scratch database, key prefix and config the bench daemon runs with.
struct Scratch {
    admin_url: String,
    db_name: String,
    config: Config,
    dir: std::path::PathBuf,
}

impl Scratch {
    async fn create(base: &Config, queues: &[String]) -> anyhow::Result<Scratch> {
        let db_name = format!("jobrunner_bench_{}", std::process::id());
        let admin_url = base.database.url.expose().to_owned();
        let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
            format!(
                "connecting to {}",
                jobrunner::config::redact_url(&admin_url)
            )
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .context("creating the scratch database (the role needs CREATEDB)")?;
        let _ = admin.close().await;

        let mut config = base.clone();
        config.database.url = replace_db(&admin_url, &db_name).into();
        config.database.max_connections = 16;
        config.redis.key_prefix = format!("jobrunner-bench-{}", std::process::id());
        config.redis.pool_size = 4;
        config.runtime.fetch_batch = 256;
        config.runtime.status_batch_max = 1000;
        config.runtime.status_writers = 3;
        config.queues.clear();
        for queue in queues.iter().map(String::as_str).chain(["default"]) {
            config.queues.insert(
                queue.into(),
                QueueConfig {
                    concurrency: 512,
                    ..QueueConfig::default()
                },
            );
        }
        config.log.level = "warn".into();
        // Measured with the admin listener on, as deployed, on a port of its own.
        config.admin.listen = "127.0.0.1:0".into();
        let dir = std::env::temp_dir().join(format!("jobrunner-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch {
            admin_url,
            db_name,
            config,
            dir,
        })
    }

    async fn drop_all(&self, keep: bool) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(broker) = Broker::connect(&self.config.redis).await {
            let _ = broker.delete_prefix().await;
            broker.quit().await;
        }
        if keep {
            eprintln!("Kept database {}", self.db_name);
            return;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
            {
                eprintln!("Could not drop {}: {error}", self.db_name);
            }
        }
    }
}

/// The same server URL with another database name.
fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn measure(scratch: &Scratch, args: &BenchArgs) -> anyhow::Result<Report> {
    let config = &scratch.config;
    // The producers' own pool: at a steady rate on a busy machine many enqueues
    // wait for a connection at once, and a wait is part of what is measured.
    let mut producers_db = config.database.clone();
    producers_db.max_connections = 32;
    producers_db.acquire_timeout = Duration::from_secs(120);
    let ledger = Ledger::connect(&producers_db).await?;
    ledger.migrate().await?;
    let broker = Broker::connect(&config.redis).await?;
    let pool = ledger.pool().clone();
    let mut report = Report::default();
    report.set("run", "date", json!(Utc::now().to_rfc3339()));
    report.set("run", "jobs", json!(args.jobs));
    report.set("run", "backlog", json!(args.backlog.unwrap_or(args.jobs)));
    report.set("run", "ledger_rows", json!(args.ledger_rows));
    report.set("run", "version", json!(env!("CARGO_PKG_VERSION")));

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

    let redis_pid = broker.server_pid().await.ok().flatten();
    let probe = cpu::Probe::new(pid, redis_pid, pool.clone(), &scratch.db_name);
    let bench = Bench {
        pool: pool.clone(),
        broker: Arc::new(broker.clone()),
        args: args.clone(),
        built,
        probe,
    };
    let result = bench.all(pid, &mut report).await;
    if result.is_ok() {
        let peak = rss_kb(pid, "VmHWM:")? as f64 / 1024.0;
        report.row("daemon peak RSS", format!("{peak:.1} MB"));
        report.set("daemon", "peak_rss_mb", json!(peak));
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

/// What every run needs.
struct Bench {
    pool: PgPool,
    broker: Arc<Broker>,
    args: BenchArgs,
    /// When the `--ledger-rows` filler was built: rows created since are the runs'.
    built: Option<DateTime<Utc>>,
    probe: cpu::Probe,
}

/// (p50, p99, max) in milliseconds.
type Spread = (f64, f64, f64);

fn spread_json(s: Spread) -> Value {
    json!({"p50": s.0, "p99": s.1, "max": s.2})
}

impl Bench {
    async fn all(&self, pid: u32, report: &mut Report) -> anyhow::Result<()> {
        let args = &self.args;
        let has = |r: RunKind| args.runs.contains(&r);
        let backlog = args.backlog.unwrap_or(args.jobs);
        for &path in &args.paths {
            let name = path.name();
            let label = name.to_uppercase();
            if has(RunKind::Drain) {
                self.say(format!("Backlog drain, {label} path, {backlog} jobs..."));
                let since = self.reset().await?;
                signal(pid, "STOP");
                let enqueued = self.enqueue(path, backlog).await;
                signal(pid, "CONT");
                enqueued?;
                let resumed = Utc::now();
                let before = self.probe.sample().await;
                self.wait_succeeded(since, backlog, Duration::from_secs(1800))
                    .await?;
                let after = self.probe.sample().await;
                let cost = self.probe.cost(&before, &after, backlog as u64);
                let last = self.last_update(since).await?;
                let secs = (last - resumed).as_seconds_f64().max(1e-3);
                let rate = backlog as f64 / secs;
                report.row(
                    format!("{label} backlog drain rate (daemon only)"),
                    format!("{rate:.0} jobs/s"),
                );
                report.row(format!("{label} drain CPU"), cost.line());
                report.row(format!("{label} drain machine load"), cost.load_line());
                report.set(
                    name,
                    "drain",
                    json!({"jobs": backlog, "rate": rate, "cpu": cost}),
                );
            }
            if has(RunKind::Throughput) {
                self.say(format!("Throughput, {label} path, {} jobs...", args.jobs));
                let since = self.reset().await?;
                let before = self.probe.sample().await;
                let start = Instant::now();
                self.enqueue(path, args.jobs).await?;
                let enqueue = start.elapsed();
                self.wait_succeeded(since, args.jobs, Duration::from_secs(1800))
                    .await?;
                let total = start.elapsed();
                let after = self.probe.sample().await;
                let cost = self.probe.cost(&before, &after, args.jobs as u64);
                let lag = self.lag(since).await?;
                let enqueue_rate = args.jobs as f64 / enqueue.as_secs_f64();
                let rate = args.jobs as f64 / total.as_secs_f64();
                report.row(
                    format!("{label} enqueue rate ({} producers)", args.producers),
                    format!("{enqueue_rate:.0} jobs/s"),
                );
                report.row(
                    format!("{label} end-to-end rate (enqueue → succeeded)"),
                    format!("{rate:.0} jobs/s"),
                );
                report.row(
                    format!("{label} end-to-end CPU (with enqueue)"),
                    cost.line(),
                );
                report.row(format!("{label} end-to-end machine load"), cost.load_line());
                report.row(
                    format!("{label} ledger lag p50 / p99 / max (ms)"),
                    format!("{:.1} / {:.1} / {:.1}", lag.0, lag.1, lag.2),
                );
                report.set(
                    name,
                    "throughput",
                    json!({"jobs": args.jobs, "enqueue_rate": enqueue_rate, "rate": rate,
                           "cpu": cost, "ledger_lag_ms": spread_json(lag)}),
                );
            }
            if has(RunKind::Latency) {
                self.say(format!(
                    "Latency, {label} path, {} jobs/s for {}s...",
                    args.rate, args.latency_secs
                ));
                let pickup = self.latency(path).await?;
                report.row(
                    format!("{label} pickup p50 / p99 / max (ms) at {}/s", args.rate),
                    format!("{:.1} / {:.1} / {:.1}", pickup.0, pickup.1, pickup.2),
                );
                report.set(
                    name,
                    "latency",
                    json!({"rate": args.rate, "pickup_ms": spread_json(pickup)}),
                );
            }
            if has(RunKind::Bulk) && path == Path::Sql {
                self.say(format!(
                    "Bulk enqueue, SQL path, {} jobs in calls of {}...",
                    args.jobs, args.bulk_batch
                ));
                let (rate, cost) = self.bulk(pid).await?;
                report.row(
                    format!("SQL enqueue_many rate ({} per call)", args.bulk_batch),
                    format!("{rate:.0} jobs/s"),
                );
                report.row("SQL enqueue_many CPU", cost.line());
                report.set(
                    name,
                    "bulk",
                    json!({"jobs": args.jobs, "batch": args.bulk_batch, "rate": rate, "cpu": cost}),
                );
            }
        }
        Ok(())
    }

    fn say(&self, line: String) {
        if !self.args.json {
            eprintln!("{line}");
        }
    }

    /// Clears the previous run's jobs (keeping the `--ledger-rows` filler) and
    /// returns the moment from which rows belong to the next run.
    async fn reset(&self) -> anyhow::Result<DateTime<Utc>> {
        match self.built {
            None => {
                sqlx::query("TRUNCATE jobrunner.outbox, jobrunner.jobs")
                    .execute(&self.pool)
                    .await?;
            }
            Some(built) => {
                sqlx::query("TRUNCATE jobrunner.outbox")
                    .execute(&self.pool)
                    .await?;
                sqlx::query("DELETE FROM jobrunner.jobs WHERE created_at >= $1")
                    .bind(built)
                    .execute(&self.pool)
                    .await?;
                // As autovacuum would: the next run starts from current statistics.
                sqlx::query("VACUUM (ANALYZE) jobrunner.jobs")
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Enqueues `n` no-ops through one way in, from `--producers` tasks.
    async fn enqueue(&self, path: Path, n: usize) -> anyhow::Result<()> {
        let producers = self.args.producers;
        let per = n / producers;
        let mut tasks = JoinSet::new();
        for i in 0..producers {
            let k = if i == 0 { per + n % producers } else { per };
            let (pool, broker) = (self.pool.clone(), self.broker.clone());
            let queues = self.args.queues.clone();
            tasks.spawn(async move {
                match path {
                    Path::Sql => enqueue_sql(&pool, &queues, k).await,
                    Path::Redis => enqueue_redis(&broker, &queues, k).await,
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }

    /// Waits until `n` jobs created since `since` succeeded. Polls rarely: each
    /// count reads the run's rows, and Postgres time spent counting is in the
    /// CPU figures. The next poll comes at half the time the rest should take.
    async fn wait_succeeded(
        &self,
        since: DateTime<Utc>,
        n: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobrunner.jobs
                 WHERE status = 'succeeded' AND created_at >= $1",
            )
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
            let done = done as usize;
            if done >= n {
                return Ok(());
            }
            let elapsed = start.elapsed();
            if elapsed > limit {
                bail!("only {done} of {n} jobs succeeded within {limit:?}");
            }
            let rest = if done == 0 {
                Duration::from_millis(100)
            } else {
                elapsed.mul_f64((n - done) as f64 / done as f64)
            };
            let pause = (rest / 2).clamp(Duration::from_millis(10), Duration::from_secs(2));
            tokio::time::sleep(pause).await;
        }
    }

    /// When the last row of the run was written.
    async fn last_update(&self, since: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        let last: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(updated_at) FROM jobrunner.jobs WHERE created_at >= $1")
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        last.context("the run wrote no rows")
    }

    /// How long after a job finished its row said so.
    async fn lag(&self, since: DateTime<Utc>) -> anyhow::Result<Spread> {
        let values: Vec<f64> = sqlx::query_scalar::<_, Option<f64>>(
            "SELECT (extract(epoch FROM (updated_at - finished_at)) * 1000)::float8
             FROM jobrunner.jobs WHERE created_at >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .flatten()
        .collect();
        Ok(summarize(values))
    }

    /// Steady load at `--rate` for `--latency-secs`; pickup latency percentiles.
    async fn latency(&self, path: Path) -> anyhow::Result<Spread> {
        let args = &self.args;
        let since = self.reset().await?;
        let total = args.rate as u64 * args.latency_secs;
        // Ticks of 10ms, each sending its share of the second's jobs.
        let per_tick = (args.rate as f64 / 100.0).max(1.0);
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u64;
        let mut owed = 0.0f64;
        // Each task returns (job id, when enqueue returned to the producer): pickup
        // latency is measured from there, as a producer would see it.
        let mut tasks: JoinSet<anyhow::Result<(uuid::Uuid, DateTime<Utc>)>> = JoinSet::new();
        let mut returned = Vec::with_capacity(total as usize);
        while sent < total {
            ticker.tick().await;
            owed += per_tick;
            while owed >= 1.0 && sent < total {
                owed -= 1.0;
                sent += 1;
                let (pool, broker) = (self.pool.clone(), self.broker.clone());
                tasks.spawn(async move {
                    let id = match path {
                        Path::Sql => {
                            sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}'::jsonb)")
                                .fetch_one(&pool)
                                .await?
                        }
                        Path::Redis => {
                            broker
                                .enqueue(&RedisEnqueue {
                                    queue: "default".into(),
                                    kind: "noop".into(),
                                    payload: "{}".into(),
                                    ..Default::default()
                                })
                                .await?
                        }
                    };
                    Ok((id, Utc::now()))
                });
            }
            while let Some(r) = tasks.try_join_next() {
                returned.push(r??);
            }
        }
        while let Some(r) = tasks.join_next().await {
            returned.push(r??);
        }
        self.wait_succeeded(since, total as usize, Duration::from_secs(120))
            .await?;
        let (ids, times): (Vec<uuid::Uuid>, Vec<DateTime<Utc>>) = returned.into_iter().unzip();
        let values: Vec<f64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM (j.started_at - r.returned_at)) * 1000)::float8
             FROM UNNEST($1::uuid[], $2::timestamptz[]) AS r(id, returned_at)
             JOIN jobrunner.jobs j USING (id)",
        )
        .bind(ids)
        .bind(times)
        .fetch_all(&self.pool)
        .await?;
        Ok(summarize(values))
    }

    /// `jobrunner.enqueue_many` from `--producers` tasks, with the daemon stopped
    /// so only the enqueue is timed; the daemon then drains what was enqueued.
    async fn bulk(&self, pid: u32) -> anyhow::Result<(f64, cpu::Cost)> {
        let args = &self.args;
        let since = self.reset().await?;
        signal(pid, "STOP");
        let before = self.probe.sample().await;
        let start = Instant::now();
        let per = args.jobs / args.producers;
        let mut tasks = JoinSet::new();
        for i in 0..args.producers {
            let n = if i == 0 {
                per + args.jobs % args.producers
            } else {
                per
            };
            let (pool, batch) = (self.pool.clone(), args.bulk_batch as i64);
            tasks.spawn(async move {
                let mut left = n as i64;
                while left > 0 {
                    let k = left.min(batch);
                    sqlx::query(
                        "SELECT jobrunner.enqueue_many('noop',
                             ARRAY(SELECT jsonb_build_object('i', g) FROM generate_series(1, $1) g))",
                    )
                    .bind(k)
                    .execute(&pool)
                    .await?;
                    left -= k;
                }
                anyhow::Ok(())
            });
        }
        let mut outcome = Ok(());
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                outcome = Err(e);
            }
        }
        let elapsed = start.elapsed();
        let after = self.probe.sample().await;
        signal(pid, "CONT");
        outcome?;
        self.wait_succeeded(since, args.jobs, Duration::from_secs(1800))
            .await?;
        let cost = self.probe.cost(&before, &after, args.jobs as u64);
        Ok((args.jobs as f64 / elapsed.as_secs_f64(), cost))
    }
}

/// SQL producers batch like a web app's bulk import: 500 `enqueue` calls a
/// transaction, round robin over `queues`.
async fn enqueue_sql(pool: &PgPool, queues: &[String], n: usize) -> anyhow::Result<()> {
    let mut left = n as i64;
    while left > 0 {
        let k = left.min(500);
        sqlx::query(
            "SELECT jobrunner.enqueue('noop', jsonb_build_object('i', g),
                 queue => ($2::text[])[1 + g % cardinality($2::text[])])
             FROM generate_series(1, $1) g",
        )
        .bind(k)
        .bind(queues)
        .execute(pool)
        .await?;
        left -= k;
    }
    Ok(())
}

/// Redis producers keep 32 enqueues in flight each, as concurrent requests would.
async fn enqueue_redis(broker: &Arc<Broker>, queues: &[String], n: usize) -> anyhow::Result<()> {
    let mut inflight = JoinSet::new();
    for j in 0..n {
        if inflight.len() >= 32
            && let Some(r) = inflight.join_next().await
        {
            r??;
        }
        let b = broker.clone();
        let queue = queues[j % queues.len()].clone();
        inflight.spawn(async move {
            b.enqueue(&RedisEnqueue {
                queue,
                kind: "noop".into(),
                payload: format!("{{\"i\":{j}}}"),
                ..Default::default()
            })
            .await
            .map(|_| ())
        });
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    Ok(())
}

/// Fills the ledger with `rows` succeeded no-op jobs created over the last hours,
/// as a long-running ledger is, then `VACUUM ANALYZE`s it. Returns the moment
/// after which rows belong to the runs.
async fn build_ledger(pool: &PgPool, rows: u64) -> anyhow::Result<DateTime<Utc>> {
    const CHUNK: u64 = 250_000;
    let mut done = 0u64;
    while done < rows {
        let k = CHUNK.min(rows - done);
        eprintln!("Filling the ledger: {done} of {rows} rows...");
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        // Oldest first, one millisecond apart, ending a minute ago.
        sqlx::query(
            "INSERT INTO jobrunner.jobs
               (queue, kind, payload, status, attempts, max_attempts, run_at, created_at,
                updated_at, started_at, finished_at, lease_token)
             SELECT 'default', 'noop', jsonb_build_object('i', g), 'succeeded', 1, 25, t, t,
                    t + interval '5 ms', t + interval '1 ms', t + interval '2 ms', g
             FROM generate_series($1::bigint, $2::bigint) g,
                  LATERAL (SELECT now() - interval '1 minute' - ($3 - g) * interval '1 ms' AS t) x",
        )
        .bind(done as i64 + 1)
        .bind((done + k) as i64)
        .bind(rows as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += k;
    }
    eprintln!("VACUUM ANALYZE of {rows} rows...");
    sqlx::query("VACUUM (ANALYZE) jobrunner.jobs")
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar("SELECT now() - interval '1 second'")
        .fetch_one(pool)
        .await?)
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
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

/// p50, p99 and max of some milliseconds.
fn summarize(mut values: Vec<f64>) -> Spread {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

#[cfg(test)]
mod tests {
    use super::replace_db;

    #[test]
    fn replace_db_swaps_only_the_database_name() {
        assert_eq!(
            replace_db("postgres://u:p@h:5432/app?sslmode=disable", "b"),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(replace_db("postgres://h", "b"), "postgres://h/b");
    }
}
