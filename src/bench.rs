//! `jobrunner bench`: throughput, pickup latency and memory of a real daemon.
//!
//! It creates a scratch database on the configured Postgres server and a scratch
//! key prefix on the configured Redis, starts `jobrunner run` as a child process
//! (so the memory figures are the daemon's own), and then:
//! 1. reads the daemon's idle RSS;
//! 2. for each way in, enqueues `--jobs` no-op jobs while the daemon is stopped
//!    (SIGSTOP), resumes it and times the drain of that backlog: the daemon's own
//!    processing rate, with no producer competing for the machine;
//! 3. for each way in (SQL, Redis), enqueues `--jobs` no-op jobs as fast as the
//!    producers can and measures the enqueue rate and the end-to-end rate
//!    (first enqueue → last `succeeded` row in the ledger), plus how far the ledger
//!    lags behind the workers (`updated_at - finished_at`);
//! 4. for each way in, enqueues at a steady `--rate` for `--latency-secs` and reports
//!    pickup latency percentiles: from the moment `enqueue` returned to the producer
//!    (SQL: committed) until the handler started (`started_at`);
//! 5. reads the daemon's peak RSS, stops it, drops the scratch database.
//!
//! It prints figures; it asserts nothing. Targets live in the closing notes.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;

use crate::broker::{Broker, RedisEnqueue};
use crate::config::{Config, QueueConfig};
use crate::ledger::Ledger;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// No-op jobs pushed through each way in for the throughput runs.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per second for the latency runs.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds each latency run lasts.
    #[arg(long, default_value_t = 5)]
    pub latency_secs: u64,
    /// Concurrent producer tasks during the throughput runs.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Keep the scratch database afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// One line of the results table.
struct Row {
    what: String,
    value: String,
}

pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.jobs == 0 || args.rate == 0 || args.producers == 0 {
        bail!("--jobs, --rate and --producers must be above zero");
    }
    let scratch = Scratch::create(&config).await?;
    let result = measure(&scratch, &args).await;
    scratch.drop_all(args.keep).await;
    let rows = result?;
    println!();
    println!("{:<52} {:>16}", "measure", "value");
    println!("{}", "-".repeat(69));
    for row in rows {
        println!("{:<52} {:>16}", row.what, row.value);
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
    async fn create(base: &Config) -> anyhow::Result<Scratch> {
        let db_name = format!("jobrunner_bench_{}", std::process::id());
        let admin_url = base.database.url.expose().to_owned();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {}", crate::config::redact_url(&admin_url)))?;
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
        config.queues.insert(
            "default".into(),
            QueueConfig {
                concurrency: 512,
                ..QueueConfig::default()
            },
        );
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

async fn measure(scratch: &Scratch, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let config = &scratch.config;
    let ledger = Ledger::connect(&config.database).await?;
    ledger.migrate().await?;
    let broker = Broker::connect(&config.redis).await?;
    let path = scratch.dir.join("bench.toml");
    // The daemon needs the real URLs: write them, not the printed form.
    let text = crate::config::with_secrets_exposed(|| toml::to_string(config))?;
    std::fs::write(&path, text)?;

    eprintln!("Starting the daemon...");
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
    let mut rows = vec![Row {
        what: "daemon idle RSS".into(),
        value: format!("{:.1} MB", rss_kb(pid, "VmRSS:")? as f64 / 1024.0),
    }];

    let pool = ledger.pool().clone();
    let p = Arc::new(pool.clone());
    let b = Arc::new(broker.clone());
    for (name, via_sql) in [("SQL", true), ("Redis", false)] {
        eprintln!("Backlog drain, {name} path, {} jobs...", args.jobs);
        signal(pid, "STOP");
        let enqueued = throughput(&pool, p.clone(), b.clone(), args, via_sql, false).await;
        signal(pid, "CONT");
        enqueued?;
        let start = Instant::now();
        wait_succeeded(&pool, args.jobs as i64, Duration::from_secs(600)).await?;
        rows.push(Row {
            what: format!("{name} backlog drain rate (daemon only)"),
            value: format!(
                "{:.0} jobs/s",
                args.jobs as f64 / start.elapsed().as_secs_f64()
            ),
        });
    }
    for (name, via_sql) in [("SQL", true), ("Redis", false)] {
        eprintln!("Throughput, {name} path, {} jobs...", args.jobs);
        let (enqueue, total, lag) =
            throughput(&pool, p.clone(), b.clone(), args, via_sql, true).await?;
        rows.push(Row {
            what: format!("{name} enqueue rate ({} producers)", args.producers),
            value: format!("{:.0} jobs/s", args.jobs as f64 / enqueue.as_secs_f64()),
        });
        rows.push(Row {
            what: format!("{name} end-to-end rate (enqueue → succeeded)"),
            value: format!("{:.0} jobs/s", args.jobs as f64 / total.as_secs_f64()),
        });
        rows.push(Row {
            what: format!("{name} ledger lag p50 / p99 / max (ms)"),
            value: format!("{:.1} / {:.1} / {:.1}", lag.0, lag.1, lag.2),
        });
    }
    for (name, via_sql) in [("SQL", true), ("Redis", false)] {
        eprintln!(
            "Latency, {name} path, {} jobs/s for {}s...",
            args.rate, args.latency_secs
        );
        let (p50, p99, max) = latency(&pool, p.clone(), b.clone(), args, via_sql).await?;
        rows.push(Row {
            what: format!(
                "{name} pickup latency p50 / p99 / max (ms) at {}/s",
                args.rate
            ),
            value: format!("{p50:.1} / {p99:.1} / {max:.1}"),
        });
    }
    rows.push(Row {
        what: "daemon peak RSS".into(),
        value: format!("{:.1} MB", rss_kb(pid, "VmHWM:")? as f64 / 1024.0),
    });

    // SIGTERM, as systemd would stop it.
    signal(pid, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait()).await;
    broker.quit().await;
    pool.close().await;
    Ok(rows)
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

/// Enqueues `args.jobs` no-ops through one way in and, if `wait`, waits for the
/// ledger to show them all succeeded. Returns (enqueue time, total time, ledger lag
/// percentiles).
async fn throughput(
    pool: &PgPool,
    p: Arc<PgPool>,
    b: Arc<Broker>,
    args: &BenchArgs,
    via_sql: bool,
    wait: bool,
) -> anyhow::Result<(Duration, Duration, (f64, f64, f64))> {
    sqlx::query("TRUNCATE jobrunner.outbox, jobrunner.jobs")
        .execute(pool)
        .await?;
    let start = Instant::now();
    let per = args.jobs / args.producers;
    let mut producers = JoinSet::new();
    for i in 0..args.producers {
        let n = if i == 0 {
            per + args.jobs % args.producers
        } else {
            per
        };
        let (p, b) = (p.clone(), b.clone());
        producers.spawn(async move {
            if via_sql {
                // Producers batch like a web app's bulk import: 500 jobs a transaction.
                let mut left = n as i64;
                while left > 0 {
                    let k = left.min(500);
                    sqlx::query(
                        "SELECT jobrunner.enqueue('noop', jsonb_build_object('i', g))
                         FROM generate_series(1, $1) g",
                    )
                    .bind(k)
                    .execute(&*p)
                    .await?;
                    left -= k;
                }
            } else {
                // Each producer keeps 32 enqueues in flight, as concurrent requests would.
                let mut inflight = JoinSet::new();
                for j in 0..n {
                    if inflight.len() >= 32
                        && let Some(r) = inflight.join_next().await
                    {
                        r??;
                    }
                    let b = b.clone();
                    inflight.spawn(async move {
                        b.enqueue(&RedisEnqueue {
                            queue: "default".into(),
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
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = producers.join_next().await {
        r??;
    }
    let enqueued = start.elapsed();
    if !wait {
        return Ok((enqueued, enqueued, (0.0, 0.0, 0.0)));
    }
    wait_succeeded(pool, args.jobs as i64, Duration::from_secs(600)).await?;
    let total = start.elapsed();
    let lag = percentiles(
        pool,
        "SELECT (extract(epoch FROM (updated_at - finished_at)) * 1000)::float8 FROM jobrunner.jobs",
    )
    .await?;
    Ok((enqueued, total, lag))
}

/// Steady load at `args.rate` for `args.latency_secs`; pickup latency percentiles.
async fn latency(
    pool: &PgPool,
    p: Arc<PgPool>,
    b: Arc<Broker>,
    args: &BenchArgs,
    via_sql: bool,
) -> anyhow::Result<(f64, f64, f64)> {
    sqlx::query("TRUNCATE jobrunner.outbox, jobrunner.jobs")
        .execute(pool)
        .await?;
    let total = args.rate as u64 * args.latency_secs;
    // Ticks of 10ms, each sending its share of the second's jobs.
    let per_tick = (args.rate as f64 / 100.0).max(1.0);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut owed = 0.0f64;
    // Each task returns (job id, when enqueue returned to the producer): pickup
    // latency is measured from there, as a producer would see it.
    let mut tasks: JoinSet<anyhow::Result<(uuid::Uuid, chrono::DateTime<chrono::Utc>)>> =
        JoinSet::new();
    let mut returned = Vec::with_capacity(total as usize);
    while sent < total {
        ticker.tick().await;
        owed += per_tick;
        while owed >= 1.0 && sent < total {
            owed -= 1.0;
            sent += 1;
            let (p, b) = (p.clone(), b.clone());
            tasks.spawn(async move {
                let id = if via_sql {
                    sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}'::jsonb)")
                        .fetch_one(&*p)
                        .await?
                } else {
                    b.enqueue(&RedisEnqueue {
                        queue: "default".into(),
                        kind: "noop".into(),
                        payload: "{}".into(),
                        ..Default::default()
                    })
                    .await?
                };
                Ok((id, chrono::Utc::now()))
            });
        }
        while let Some(r) = tasks.try_join_next() {
            returned.push(r??);
        }
    }
    while let Some(r) = tasks.join_next().await {
        returned.push(r??);
    }
    wait_succeeded(pool, total as i64, Duration::from_secs(120)).await?;
    let (ids, times): (Vec<uuid::Uuid>, Vec<chrono::DateTime<chrono::Utc>>) =
        returned.into_iter().unzip();
    let values: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM (j.started_at - r.returned_at)) * 1000)::float8
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS r(id, returned_at)
         JOIN jobrunner.jobs j USING (id)",
    )
    .bind(ids)
    .bind(times)
    .fetch_all(pool)
    .await?;
    Ok(summarize(values))
}

async fn wait_succeeded(pool: &PgPool, n: i64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobrunner.jobs WHERE status = 'succeeded'")
                .fetch_one(pool)
                .await?;
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} jobs succeeded within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// p50, p99 and max of a one-column query of milliseconds.
async fn percentiles(pool: &PgPool, sql: &'static str) -> anyhow::Result<(f64, f64, f64)> {
    let values: Vec<f64> = sqlx::query_scalar::<_, Option<f64>>(sql)
        .fetch_all(pool)
        .await?
        .into_iter()
        .flatten()
        .collect();
    Ok(summarize(values))
}

/// p50, p99 and max of some milliseconds.
fn summarize(mut values: Vec<f64>) -> (f64, f64, f64) {
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
