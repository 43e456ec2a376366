//! The writer's statements: the fenced batch `UPDATE … FROM UNNEST`, the late
//! errors of older attempts, and progress reports.

use chrono::Utc;
use sqlx::Row;
use uuid::Uuid;

use super::StatusUpdate;
use super::fold::{ChangedRow, Merged};
use crate::ledger::{Ledger, Status};
use serde_json::Value;

/// How every writer transaction begins. The batch statements join `jobs` with an
/// `UNNEST` of the batch; once `ANALYZE` has seen a ledger of mostly finished
/// rows, the planner expects few unfinished ones and picks a nested loop that
/// re-reads the whole `UNNEST` for every row, which is quadratic in the batch.
/// None of these statements needs a nested loop: with them off, the join is a
/// hash join over primary-key lookups whatever the statistics say. The
/// integration test `plans` checks the plans on a lived-in ledger.
///
/// The plans are also made for each batch (`plan_cache_mode = force_custom_plan`)
/// instead of once per connection. After a connection has run a statement
/// five times, Postgres may keep one generic plan for it, made whenever the
/// plan cache was last invalidated (`TRUNCATE`, `ANALYZE`, DDL). Made while
/// `jobs` was nearly empty, that plan scans the table, and nothing replaces it
/// as the table grows until the next `ANALYZE`: the status writes of a drain
/// right after a `TRUNCATE` cost three to four times as much, on some
/// connections of the pool and not others. Planning a batch costs well under
/// a millisecond, shared by every job in it.
pub(in crate::ledger) const PLAN_GUARD: &str =
    "BEGIN; SET LOCAL enable_nestloop = off; SET LOCAL plan_cache_mode = force_custom_plan";

/// One batch of status changes, fenced (see the module's invariant).
pub(in crate::ledger) const STATUS_UPDATE: &str = "UPDATE jobrunner.jobs AS j SET
                 status      = u.status,
                 attempts    = GREATEST(u.attempts, j.attempts + u.leases),
                 lease_token = u.token,
                 started_at  = COALESCE(u.started_at, j.started_at),
                 finished_at = u.finished_at,
                 result      = COALESCE(u.result::jsonb, j.result),
                 last_error  = COALESCE(u.last_error, j.last_error),
                 run_at      = COALESCE(u.run_at, j.run_at),
                 errors      = CASE WHEN u.errors IS NULL THEN j.errors
                                    ELSE j.errors || u.errors::jsonb END,
                 updated_at  = now()
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::int[], $5::timestamptz[],
                         $6::timestamptz[], $7::text[], $8::text[], $9::timestamptz[], $10::text[],
                         $11::int[])
               AS u(id, token, status, attempts, started_at, finished_at, result, last_error, run_at,
                    errors, leases)
             WHERE j.id = u.id
               -- Spelled out so the plan is primary-key lookups; joining on u.id
               -- alone plans a scan of the whole table for every batch.
               AND j.id = ANY($1)
               AND j.status <> ALL($12)
               AND (j.lease_token IS NULL OR j.lease_token <= u.token)
             RETURNING j.id, j.queue, j.kind";

/// Appends the errors of updates [`STATUS_UPDATE`] refused (a newer attempt owns
/// the row) to the row's history.
pub(in crate::ledger) const LATE_ERRORS: &str = "UPDATE jobrunner.jobs AS j SET
                 errors     = j.errors || u.errors::jsonb,
                 last_error = COALESCE(j.last_error, u.last_error)
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[])
               AS u(id, token, last_error, errors)
             WHERE j.id = u.id
               AND j.id = ANY($1)
               -- Only rows the batch statement refused: a newer attempt owns them.
               AND j.lease_token > u.token";

/// Progress reports: fenced like a status write, never onto a final row.
pub(in crate::ledger) const PROGRESS_UPDATE: &str = "UPDATE jobrunner.jobs AS j SET
                 progress = u.percent, progress_message = u.message, updated_at = now()
             FROM UNNEST($1::uuid[], $2::bigint[], $3::smallint[], $4::text[])
               AS u(id, token, percent, message)
             WHERE j.id = u.id
               AND j.id = ANY($1)
               AND j.status <> ALL($5)
               AND (j.lease_token IS NULL OR j.lease_token <= u.token)
             RETURNING j.id, j.queue, j.kind, j.status";

/// Binds a batch to [`STATUS_UPDATE`] (or to an `EXPLAIN` of it).
pub(in crate::ledger) fn bind_status_batch<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    batch: &[Merged],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut histories = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    for m in batch {
        leases.push(m.leases);
        ids.push(m.id);
        tokens.push(m.token);
        statuses.push(m.status.as_str());
        attempts.push(m.attempts);
        started.push(m.started_at);
        finished.push(m.finished_at);
        results.push(m.result.as_ref().map(Value::to_string));
        errors.push(m.last_error.clone());
        run_ats.push(m.run_at);
        histories.push((!m.errors.is_empty()).then(|| Value::from(m.errors.clone()).to_string()));
    }
    q.bind(ids)
        .bind(tokens)
        .bind(statuses)
        .bind(attempts)
        .bind(started)
        .bind(finished)
        .bind(results)
        .bind(errors)
        .bind(run_ats)
        .bind(histories)
        .bind(leases)
        .bind(&Status::FINAL[..])
}

/// A batch that ends each of `ids` `succeeded`, for `EXPLAIN`.
pub(in crate::ledger) fn sample_batch(ids: &[Uuid]) -> Vec<Merged> {
    let now = Utc::now();
    ids.iter()
        .map(|&id| Merged {
            id,
            token: 1,
            status: Status::Succeeded,
            attempts: 1,
            leases: 1,
            started_at: Some(now),
            finished_at: Some(now),
            result: None,
            last_error: None,
            run_at: None,
            errors: Vec::new(),
        })
        .collect()
}

impl Ledger {
    /// Applies a batch; returns (id, queue, kind) of every row it changed.
    pub(super) async fn write_statuses(
        &self,
        batch: &[Merged],
    ) -> crate::ledger::Result<Vec<(Uuid, String, String)>> {
        let start = std::time::Instant::now();
        self.metrics.status_batch(batch.len());
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, PLAN_GUARD).await?;
        let rows = bind_status_batch(sqlx::query(STATUS_UPDATE), batch)
            .fetch_all(&mut *tx)
            .await?;
        self.record_late_errors(&mut tx, batch).await?;
        tx.commit().await?;
        self.metrics.status_write(start.elapsed());
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Records the errors of updates the batch statement refused because a newer
    /// attempt had already written the row: the reaper's "lease expired" can reach
    /// the writer after the next attempt's `running` (or even its end). Their
    /// status is stale; the error still belongs in the job's history.
    async fn record_late_errors(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &[Merged],
    ) -> crate::ledger::Result {
        let late: Vec<&Merged> = batch.iter().filter(|m| !m.errors.is_empty()).collect();
        if late.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = late.iter().map(|m| m.id).collect();
        let tokens: Vec<i64> = late.iter().map(|m| m.token).collect();
        let errors: Vec<Option<String>> = late.iter().map(|m| m.last_error.clone()).collect();
        let histories: Vec<String> = late
            .iter()
            .map(|m| Value::Array(m.errors.clone()).to_string())
            .collect();
        sqlx::query(LATE_ERRORS)
            .bind(ids)
            .bind(tokens)
            .bind(errors)
            .bind(histories)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// Sets the progress of running attempts: fenced like a status write, never
    /// onto a final row, and the status is left as it is.
    pub(super) async fn write_progress(
        &self,
        reports: &[StatusUpdate],
    ) -> crate::ledger::Result<Vec<ChangedRow>> {
        let mut ids = Vec::with_capacity(reports.len());
        let mut tokens = Vec::with_capacity(reports.len());
        let mut percents = Vec::with_capacity(reports.len());
        let mut messages = Vec::with_capacity(reports.len());
        for r in reports {
            let Some(p) = &r.progress else { continue };
            ids.push(r.id);
            tokens.push(r.token);
            percents.push(i16::from(p.percent.min(100)));
            messages.push(p.message.clone());
        }
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, PLAN_GUARD).await?;
        let rows = sqlx::query(PROGRESS_UPDATE)
            .bind(ids)
            .bind(tokens)
            .bind(percents)
            .bind(messages)
            .bind(&Status::FINAL[..])
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }
}
