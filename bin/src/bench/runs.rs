//! The runs a benchmark makes, in order (drain, throughput, latency, bulk);
//! `producers` enqueues for them and `wait` times them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::task::JoinSet;

use jobrunner::broker::RedisEnqueue;

use super::report::{Report, Spread, spread_json, summarize};
use super::{Bench, Path, RunKind, cpu, signal};

impl Bench {
    pub(super) async fn all(&self, pid: u32, report: &mut Report) -> anyhow::Result<()> {
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
                let (first, until) = self.created_span(since).await?;
                signal(pid, "CONT");
                enqueued?;
                let resumed = Utc::now();
                let before = self.probe.sample().await;
                let limit = Duration::from_secs(1800);
                let start = Instant::now();
                // Jobs of one priority run in the order they were enqueued, so
                // the newest succeeded job's creation time says how far the
                // drain got: one index probe, where counting would read every
                // row done so far (at a 1M backlog, seconds of Postgres CPU).
                let span = (until - first).to_std().unwrap_or_default();
                let at = |share: f64| {
                    first + chrono::TimeDelta::from_std(span.mul_f64(share)).unwrap_or_default()
                };
                let midway = if args.analyze_midway {
                    self.wait_past(at(0.5), start, limit).await?;
                    Some(self.analyze(since, backlog).await?)
                } else {
                    None
                };
                self.wait_past(at(0.9), start, limit).await?;
                self.wait_succeeded(since, backlog, start, limit).await?;
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
                let mut drain = json!({"jobs": backlog, "rate": rate, "cpu": cost});
                if let Some(m) = midway {
                    report.row(
                        format!("{label} drain ANALYZE midway"),
                        format!("at {:.0}% done, {:.0} ms", m.done * 100.0, m.ms),
                    );
                    drain["analyze_midway"] = json!({"done": m.done, "ms": m.ms});
                }
                report.set(name, "drain", drain);
            }
            if has(RunKind::Throughput) {
                self.say(format!("Throughput, {label} path, {} jobs...", args.jobs));
                let since = self.reset().await?;
                let before = self.probe.sample().await;
                let start = Instant::now();
                self.enqueue(path, args.jobs).await?;
                let enqueue = start.elapsed();
                self.wait_succeeded(since, args.jobs, Instant::now(), Duration::from_secs(1800))
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
                let (pickup, cost) = self.latency(path).await?;
                report.row(
                    format!("{label} pickup p50 / p99 / max (ms) at {}/s", args.rate),
                    format!("{:.1} / {:.1} / {:.1}", pickup.0, pickup.1, pickup.2),
                );
                report.row(format!("{label} latency CPU"), cost.line());
                report.row(format!("{label} latency machine load"), cost.load_line());
                report.set(
                    name,
                    "latency",
                    json!({"rate": args.rate, "pickup_ms": spread_json(pickup), "cpu": cost}),
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
                report.row("SQL enqueue_many machine load", cost.load_line());
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

    /// Steady load at `--rate` for `--latency-secs`; pickup latency percentiles,
    /// and the CPU from the first enqueue to the last job's end.
    async fn latency(&self, path: Path) -> anyhow::Result<(Spread, cpu::Cost)> {
        let args = &self.args;
        let since = self.reset().await?;
        let total = args.rate as u64 * args.latency_secs;
        let before = self.probe.sample().await;
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
        self.wait_succeeded(
            since,
            total as usize,
            Instant::now(),
            Duration::from_secs(120),
        )
        .await?;
        let after = self.probe.sample().await;
        let cost = self.probe.cost(&before, &after, total);
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
        Ok((summarize(values), cost))
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
        self.wait_succeeded(since, args.jobs, Instant::now(), Duration::from_secs(1800))
            .await?;
        let cost = self.probe.cost(&before, &after, args.jobs as u64);
        Ok((args.jobs as f64 / elapsed.as_secs_f64(), cost))
    }
}
