//! The batched status writer: group commit for job transitions.
//!
//! Workers send [`StatusUpdate`]s into bounded channels, one per writer shard (a
//! job always goes to the same shard, so its transitions stay in order). Each shard
//! takes whatever has accumulated (up to a batch limit), folds several changes of
//! one job into one, and applies the batch with a single `UPDATE … FROM UNNEST`.
//! While a batch is in flight the next one accumulates, so under load each commit
//! carries thousands of transitions and at rest each lands within a round trip;
//! several shards commit side by side, which keeps the ledger's lag low.
//!
//! **Invariant:** an update carrying an older fencing token than the row's never
//! applies, and a final row never changes; both are checked in the statement itself.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Ledger, Status};

/// One transition of one attempt of a job.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub id: Uuid,
    /// The fencing token of the attempt this update describes.
    pub token: i64,
    pub status: Status,
    pub attempts: i32,
    /// When the transition happened (start time for `running`, end time for finals).
    pub at: DateTime<Utc>,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    /// The next run time, for `retrying` and `scheduled`.
    pub run_at: Option<DateTime<Utc>>,
}

/// The sending side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    /// One channel per shard; a job's shard is picked from its id.
    shards: Vec<mpsc::Sender<StatusUpdate>>,
}

impl WriterHandle {
    /// Queues an update; waits when the writer is behind (Postgres slow or down),
    /// which in turn slows fetching instead of growing memory without bound.
    pub async fn send(&self, update: StatusUpdate) {
        let shard = (update.id.as_u128() % self.shards.len() as u128) as usize;
        if self.shards[shard].send(update).await.is_err() {
            tracing::error!("Status writer is gone; a status change was not recorded");
        }
    }
}

/// The task that owns the receiving side.
pub struct StatusWriter {
    ledger: Ledger,
    rx: mpsc::Receiver<StatusUpdate>,
    batch_max: usize,
}

/// How many updates may wait for one shard before senders wait too.
const CHANNEL_CAPACITY: usize = 25_000;

impl StatusWriter {
    /// `shards` writers (at least one) and the handle that feeds them.
    pub fn new(
        ledger: Ledger,
        batch_max: usize,
        shards: usize,
    ) -> (Vec<StatusWriter>, WriterHandle) {
        let (writers, senders) = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                let writer = StatusWriter {
                    ledger: ledger.clone(),
                    rx,
                    batch_max,
                };
                (writer, tx)
            })
            .unzip();
        (writers, WriterHandle { shards: senders })
    }

    /// Writes until every handle is dropped and the channel is empty. A failed batch
    /// is retried with backoff, so Postgres being down delays status but loses none;
    /// `give_up` bounds that wait once the daemon is stopping.
    pub async fn run(mut self, give_up: tokio_util::sync::CancellationToken) {
        let mut buf = Vec::with_capacity(self.batch_max);
        while self.rx.recv_many(&mut buf, self.batch_max).await > 0 {
            let batch = coalesce(std::mem::take(&mut buf));
            let mut delay = Duration::from_millis(50);
            loop {
                match self.ledger.write_statuses(&batch).await {
                    Ok(()) => break,
                    Err(error) => {
                        let error = crate::error_chain(&error);
                        if give_up.is_cancelled() {
                            tracing::error!(%error, lost = batch.len(),
                                "Status writer gave up at shutdown; the orphan sweep will re-run these jobs");
                            break;
                        }
                        tracing::warn!(%error, batch = batch.len(), "Status write failed, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = give_up.cancelled() => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            tracing::trace!(size = batch.len(), "Status batch written");
        }
    }
}

/// Folds every update of one job in a batch into one row, in arrival order: the
/// later status wins, the start time of a `running` step survives its final step.
fn coalesce(updates: Vec<StatusUpdate>) -> Vec<Merged> {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(updates.len());
    let mut out: Vec<Merged> = Vec::with_capacity(updates.len());
    for u in updates {
        let started = (u.status == Status::Running).then_some(u.at);
        let finished = u.status.is_final().then_some(u.at);
        let error = attempt_error(&u);
        match index.get(&u.id) {
            Some(&i) => {
                let m = &mut out[i];
                if u.token < m.token {
                    // An older attempt's outcome arriving late: its status is
                    // stale, but the error it reports is still that attempt's.
                    m.errors.extend(error);
                    m.last_error = m.last_error.take().or(u.last_error);
                    continue;
                }
                if u.token > m.token {
                    m.started_at = None;
                }
                m.token = u.token;
                m.status = u.status;
                m.attempts = u.attempts;
                m.started_at = started.or(m.started_at);
                m.finished_at = finished;
                m.result = u.result.or(m.result.take());
                m.last_error = u.last_error.or(m.last_error.take());
                m.run_at = u.run_at;
                m.errors.extend(error);
            }
            None => {
                index.insert(u.id, out.len());
                out.push(Merged {
                    errors: error.into_iter().collect(),
                    id: u.id,
                    token: u.token,
                    status: u.status,
                    attempts: u.attempts,
                    started_at: started,
                    finished_at: finished,
                    result: u.result,
                    last_error: u.last_error,
                    run_at: u.run_at,
                });
            }
        }
    }
    out
}

/// The entry a transition that carries an error (retrying, dead, lease expired)
/// appends to the row's `errors` history. Kept per update, so folding several
/// attempts of one job into one row loses none of their errors.
fn attempt_error(u: &StatusUpdate) -> Option<Value> {
    let error = u.last_error.as_ref()?;
    Some(serde_json::json!({ "attempt": u.attempts, "error": error, "at": u.at }))
}

#[derive(Debug)]
pub(super) struct Merged {
    id: Uuid,
    token: i64,
    status: Status,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    result: Option<Value>,
    last_error: Option<String>,
    run_at: Option<DateTime<Utc>>,
    /// Errors of this batch's attempts, appended to the row's history.
    errors: Vec<Value>,
}

impl Ledger {
    pub(super) async fn write_statuses(&self, batch: &[Merged]) -> super::Result {
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
        for m in batch {
            ids.push(m.id);
            tokens.push(m.token);
            statuses.push(m.status.as_str());
            attempts.push(m.attempts);
            started.push(m.started_at);
            finished.push(m.finished_at);
            results.push(m.result.as_ref().map(Value::to_string));
            errors.push(m.last_error.clone());
            run_ats.push(m.run_at);
            histories
                .push((!m.errors.is_empty()).then(|| Value::from(m.errors.clone()).to_string()));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE jobrunner.jobs AS j SET
                 status      = u.status,
                 attempts    = u.attempts,
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
                         $6::timestamptz[], $7::text[], $8::text[], $9::timestamptz[], $10::text[])
               AS u(id, token, status, attempts, started_at, finished_at, result, last_error, run_at,
                    errors)
             WHERE j.id = u.id
               -- Spelled out so the plan is primary-key lookups; joining on u.id
               -- alone plans a scan of the whole table for every batch.
               AND j.id = ANY($1)
               AND j.status NOT IN ('succeeded', 'dead', 'cancelled')
               AND (j.lease_token IS NULL OR j.lease_token <= u.token)",
        )
        .bind(ids)
        .bind(tokens)
        .bind(statuses)
        .bind(attempts)
        .bind(started)
        .bind(finished)
        .bind(results)
        .bind(errors)
        .bind(run_ats)
        .bind(histories)
        .execute(&mut *tx)
        .await?;
        self.record_late_errors(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Ledger {
    /// Records the errors of updates the batch statement refused because a newer
    /// attempt had already written the row: the reaper's "lease expired" can reach
    /// the writer after the next attempt's `running` (or even its end). Their
    /// status is stale; the error still belongs in the job's history.
    async fn record_late_errors(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &[Merged],
    ) -> super::Result {
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
        sqlx::query(
            "UPDATE jobrunner.jobs AS j SET
                 errors     = j.errors || u.errors::jsonb,
                 last_error = COALESCE(j.last_error, u.last_error)
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[])
               AS u(id, token, last_error, errors)
             WHERE j.id = u.id
               AND j.id = ANY($1)
               -- Only rows the batch statement refused: a newer attempt owns them.
               AND j.lease_token > u.token",
        )
        .bind(ids)
        .bind(tokens)
        .bind(errors)
        .bind(histories)
        .execute(tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: Uuid, token: i64, status: Status) -> StatusUpdate {
        StatusUpdate {
            id,
            token,
            status,
            attempts: 1,
            at: Utc::now(),
            result: None,
            last_error: None,
            run_at: None,
        }
    }

    #[test]
    fn running_then_succeeded_folds_into_one_row_keeping_the_start_time() {
        let id = Uuid::now_v7();
        let running = update(id, 7, Status::Running);
        let started = running.at;
        let mut done = update(id, 7, Status::Succeeded);
        done.result = Some(serde_json::json!({"ok": true}));
        let merged = coalesce(vec![running, done]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].status, Status::Succeeded);
        assert_eq!(merged[0].started_at, Some(started));
        assert!(merged[0].finished_at.is_some());
        assert_eq!(merged[0].result, Some(serde_json::json!({"ok": true})));
    }

    #[test]
    fn an_older_attempt_in_the_same_batch_does_not_win() {
        let id = Uuid::now_v7();
        let merged = coalesce(vec![
            update(id, 9, Status::Running),
            update(id, 8, Status::Succeeded),
        ]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].status, Status::Running);
        assert_eq!(merged[0].token, 9);
    }

    #[test]
    fn folding_several_attempts_keeps_each_attempts_error() {
        let id = Uuid::now_v7();
        let mut first = update(id, 1, Status::Retrying);
        first.last_error = Some("boom 1".into());
        let mut second = update(id, 2, Status::Dead);
        second.attempts = 2;
        second.last_error = Some("boom 2".into());
        let merged = coalesce(vec![first, update(id, 2, Status::Running), second]);
        assert_eq!(merged.len(), 1);
        let errors: Vec<(i64, &str)> = merged[0]
            .errors
            .iter()
            .map(|e| (e["attempt"].as_i64().unwrap(), e["error"].as_str().unwrap()))
            .collect();
        assert_eq!(errors, [(1, "boom 1"), (2, "boom 2")]);
        assert_eq!(merged[0].last_error.as_deref(), Some("boom 2"));
    }

    #[test]
    fn a_late_error_of_an_older_attempt_is_kept_in_the_history() {
        let id = Uuid::now_v7();
        let mut reaped = update(id, 8, Status::Queued);
        reaped.last_error = Some("lease expired".into());
        let merged = coalesce(vec![update(id, 9, Status::Running), reaped]);
        assert_eq!(merged[0].status, Status::Running);
        assert_eq!(merged[0].last_error.as_deref(), Some("lease expired"));
        assert_eq!(merged[0].errors.len(), 1);
        assert_eq!(merged[0].errors[0]["error"], "lease expired");
    }

    #[test]
    fn different_jobs_stay_separate_and_in_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let merged = coalesce(vec![
            update(a, 1, Status::Running),
            update(b, 1, Status::Running),
        ]);
        assert_eq!(merged.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a, b]);
    }
}
