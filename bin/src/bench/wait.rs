//! The reads of the scratch ledger that start and time a run: the reset
//! before it, the waits for its jobs to succeed, `--analyze-midway`'s
//! `ANALYZE`, and when its last row was written. Each is shaped so its own
//! cost, which the CPU figures include, does not grow with the run: a count
//! of the run's rows only near its end, one index entry otherwise.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use super::Bench;

/// When `--analyze-midway`'s `ANALYZE` ran: the share of the backlog that had
/// succeeded, and how long it took.
pub(super) struct Midway {
    pub(super) done: f64,
    pub(super) ms: f64,
}

impl Bench {
    /// Clears the previous run's jobs (keeping the `--ledger-rows` filler),
    /// checkpoints where allowed, and returns the moment from which rows belong
    /// to the next run.
    pub(super) async fn reset(&self) -> anyhow::Result<DateTime<Utc>> {
        match self.built {
            None => {
                sqlx::query("TRUNCATE jobrunner.outbox, jobrunner.outbox_held, jobrunner.jobs, jobrunner.external_ids")
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
        if self.settle {
            sqlx::query("CHECKPOINT").execute(&self.pool).await?;
        }
        Ok(sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Waits until `n` jobs created since `since` succeeded. Polls rarely: each
    /// count reads the run's rows, and Postgres time spent counting is in the
    /// CPU figures. The next poll comes at half the time the rest should take
    /// at the pace since `start`, when the jobs began to run.
    pub(super) async fn wait_succeeded(
        &self,
        since: DateTime<Utc>,
        n: usize,
        start: Instant,
        limit: Duration,
    ) -> anyhow::Result<()> {
        loop {
            let done = self.succeeded(since).await?;
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

    /// How many jobs created since `since` succeeded: reads every one of them.
    async fn succeeded(&self, since: DateTime<Utc>) -> anyhow::Result<usize> {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobrunner.jobs
             WHERE status = 'succeeded' AND created_at >= $1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(done as usize)
    }

    /// Waits until a job created at `mark` or later has succeeded, reading
    /// only the newest entry of `jobs_status_idx`'s succeeded range, every
    /// 20 ms: next to nothing for Postgres (0.02–0.05 ms a read, against about
    /// 150 ms for counting a million succeeded rows).
    /// If nothing more succeeds for a second (the mark lay past the last job,
    /// or the daemon stalled), it returns too: the count that follows decides.
    pub(super) async fn wait_past(
        &self,
        mark: DateTime<Utc>,
        start: Instant,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let mut last: (Option<DateTime<Utc>>, Instant) = (None, Instant::now());
        loop {
            // Not `max(created_at)`: with statistics that saw no succeeded row,
            // that plan reads every succeeded entry. The ordered scan with a
            // limit reads one, whatever the statistics say.
            let newest: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT created_at FROM jobrunner.jobs WHERE status = 'succeeded'
                 ORDER BY created_at DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?;
            if newest.is_some_and(|t| t >= mark) {
                return Ok(());
            }
            if newest != last.0 {
                last = (newest, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("no job enqueued after {mark} succeeded within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the oldest and the newest job of a backlog just enqueued (daemon
    /// stopped) were created. On the SQL path, their rows' `created_at` (each
    /// enqueue transaction's start; one index entry each). On the Redis path,
    /// whose rows come later, `since` and now: its jobs' `created_at` is when
    /// the enqueue script ran.
    pub(super) async fn created_span(
        &self,
        since: DateTime<Utc>,
    ) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
        let end = |sql: &'static str| async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(sql)
                .fetch_optional(&self.pool)
                .await
        };
        let oldest = end(
            "SELECT created_at FROM jobrunner.jobs WHERE status = 'queued'
             ORDER BY created_at LIMIT 1",
        );
        let newest = end(
            "SELECT created_at FROM jobrunner.jobs WHERE status = 'queued'
             ORDER BY created_at DESC LIMIT 1",
        );
        match (oldest.await?, newest.await?) {
            (Some(first), Some(last)) => Ok((first, last)),
            _ => Ok((
                since,
                sqlx::query_scalar("SELECT clock_timestamp()")
                    .fetch_one(&self.pool)
                    .await?,
            )),
        }
    }

    /// `--analyze-midway`'s `ANALYZE jobrunner.jobs`, with the share of the
    /// `n` jobs created since `since` that had succeeded, counted once.
    pub(super) async fn analyze(&self, since: DateTime<Utc>, n: usize) -> anyhow::Result<Midway> {
        let done = self.succeeded(since).await?;
        let at = Instant::now();
        sqlx::query("ANALYZE jobrunner.jobs")
            .execute(&self.pool)
            .await?;
        Ok(Midway {
            done: done as f64 / n as f64,
            ms: at.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// When the last row of the run was written.
    pub(super) async fn last_update(&self, since: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        let last: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(updated_at) FROM jobrunner.jobs WHERE created_at >= $1")
                .bind(since)
                .fetch_one(&self.pool)
                .await?;
        last.context("the run wrote no rows")
    }
}
