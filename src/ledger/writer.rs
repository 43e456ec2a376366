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
//!
//! After a batch commits, the writer hands one [`Event`] per transition of the rows
//! it actually changed (the statement's `RETURNING`) to the event publisher, in
//! order; folding a job's transitions into one row does not fold its events.
//! Progress reports ride the same channels: they are written (fenced, never onto a
//! final row, never changing the status) just before the batch's status changes.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::events::{Event, EventType, ProgressInfo, cut};
use super::{Ledger, Status};
use crate::metrics::{Channel, Path};

/// Where a writer hands the events of each committed batch; the runtime's
/// publisher takes them from there.
pub type EventSender = mpsc::Sender<Vec<Event>>;

/// A progress report of a running attempt (see `JobContext::progress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    /// 0 to 100.
    pub percent: u8,
    pub message: Option<String>,
}

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
    /// Set on a progress report: only `progress` and `progress_message` change,
    /// never the status (`status` is then ignored).
    pub progress: Option<ProgressReport>,
    /// An attempt handed back unfinished (drain): it does not count, so
    /// `attempts` may go down by one. Every other write keeps the ledger's count
    /// of leases from going down.
    pub handed_back: bool,
}

/// An update on its way to a shard, with whoever waits for its verdict.
struct Entry {
    update: StatusUpdate,
    /// Answered once the batch holding the update is written: true when the
    /// ledger took it (see [`WriterHandle::admit`]).
    verdict: Option<oneshot::Sender<bool>>,
}

/// The sending side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    /// One channel per shard; a job's shard is picked from its id.
    shards: Vec<mpsc::Sender<Entry>>,
}

impl WriterHandle {
    fn shard(&self, id: Uuid) -> &mpsc::Sender<Entry> {
        &self.shards[(id.as_u128() % self.shards.len() as u128) as usize]
    }

    /// Queues an update; waits when the writer is behind (Postgres slow or down),
    /// which in turn slows fetching instead of growing memory without bound.
    pub async fn send(&self, update: StatusUpdate) {
        let entry = Entry {
            update,
            verdict: None,
        };
        if self.shard(entry.update.id).send(entry).await.is_err() {
            tracing::error!("Status writer is gone; a status change was not recorded");
        }
    }

    /// Writes an update and waits until its batch is written: `Some(true)` when
    /// the ledger took it, `Some(false)` when the row refused it (the job is
    /// final, a newer attempt owns it, or there is no such row), `None` when it
    /// was not written (the writer stopped first). A worker admits its `running`
    /// write this way before it runs the handler, so a job whose ledger row is
    /// final never runs again and every run is counted.
    pub async fn admit(&self, update: StatusUpdate) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            update,
            verdict: Some(tx),
        };
        self.shard(entry.update.id).send(entry).await.ok()?;
        rx.await.ok()
    }

    /// Queues an update without waiting; false (the update is dropped) when the
    /// writer is behind. For progress reports, which the next report replaces.
    pub fn try_send(&self, update: StatusUpdate) -> bool {
        let entry = Entry {
            update,
            verdict: None,
        };
        self.shard(entry.update.id).try_send(entry).is_ok()
    }
}

/// The task that owns the receiving side.
pub struct StatusWriter {
    ledger: Ledger,
    rx: mpsc::Receiver<Entry>,
    batch_max: usize,
    /// Where the events of committed batches go; `None` publishes none.
    events: Option<EventSender>,
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
                    events: None,
                };
                (writer, tx)
            })
            .unzip();
        (writers, WriterHandle { shards: senders })
    }

    /// Writes until every handle is dropped and the channel is empty. A batch that
    /// fails for a reason that may pass (Postgres down, a conflict) is retried with
    /// backoff, so an outage delays statuses but loses none; `give_up` bounds that
    /// wait once the daemon is stopping. A batch that fails because of what one
    /// job carries is split until that job is found: it is recorded `dead` with
    /// the reason, and the rest are written at once (see [`crate::batch`]).
    pub async fn run(mut self, give_up: tokio_util::sync::CancellationToken) {
        let mut buf = Vec::with_capacity(self.batch_max);
        while self.rx.recv_many(&mut buf, self.batch_max).await > 0 {
            let mut verdicts = Vec::new();
            let updates: Vec<StatusUpdate> = std::mem::take(&mut buf)
                .into_iter()
                .map(|e| {
                    if let Some(tx) = e.verdict {
                        verdicts.push((e.update.id, e.update.token, tx));
                    }
                    e.update
                })
                .collect();
            let (progress, updates) = split_progress(updates);
            self.write_progress(progress).await;
            let steps = self.events.is_some().then(|| event_steps(&updates));
            let batch = coalesce(updates);
            if batch.is_empty() {
                // Only progress reports this time.
                continue;
            }
            let (changed, buried, unwritten) = self.write_isolated(&batch, &give_up).await;
            let taken: std::collections::HashSet<Uuid> = changed
                .iter()
                .map(|c| c.0)
                .filter(|id| !buried.contains_key(id))
                .collect();
            let tokens: HashMap<Uuid, i64> = batch.iter().map(|m| (m.id, m.token)).collect();
            for (id, token, tx) in verdicts {
                // Not written at all: dropping the sender says so.
                if !unwritten.contains(&id) {
                    let _ = tx.send(taken.contains(&id) && tokens.get(&id) == Some(&token));
                }
            }
            if let Some(steps) = steps {
                self.emit(status_events(steps, &changed, &buried));
            }
            tracing::trace!(size = batch.len(), "Status batch written");
        }
    }

    /// Writes a batch, isolating failure: returns the rows changed, the jobs whose
    /// own update could not be stored and were recorded `dead` (with the reason),
    /// and the ids left unwritten because the daemon stopped during an outage.
    async fn write_isolated(
        &self,
        batch: &[Merged],
        give_up: &tokio_util::sync::CancellationToken,
    ) -> (
        Vec<(Uuid, String, String)>,
        HashMap<Uuid, String>,
        std::collections::HashSet<Uuid>,
    ) {
        let mut unwritten = std::collections::HashSet::new();
        let mut changed = Vec::new();
        let mut buried = HashMap::new();
        let mut todo: Vec<std::ops::Range<usize>> = std::iter::once(0..batch.len()).collect();
        let mut delay = Duration::from_millis(50);
        let ledger = &self.ledger;
        loop {
            let out = crate::batch::isolate(
                todo,
                |e: &super::Error| !e.is_permanent(),
                |r| ledger.write_statuses(&batch[r]),
            )
            .await;
            for (_, rows) in out.done {
                changed.extend(rows);
            }
            for (i, error) in out.poison {
                let m = &batch[i];
                let reason = cut(&format!(
                    "the ledger could not store this job's {} status: {}",
                    m.status,
                    crate::error_chain(&error)
                ));
                tracing::error!(job.id = %m.id, status = %m.status, error = %reason,
                    "A status write was refused; recording the job as dead");
                self.ledger.metrics.batch_poison(Path::Status);
                let dead = m.buried(reason.clone());
                match ledger.write_statuses(std::slice::from_ref(&dead)).await {
                    Ok(rows) => changed.extend(rows),
                    Err(error) => tracing::error!(job.id = %m.id,
                        error = %crate::error_chain(&error),
                        "Recording a refused job as dead failed too; its status is left as it was"),
                }
                buried.insert(m.id, reason);
            }
            let Some(error) = out.transient else { break };
            let left: usize = out.pending.iter().map(|r| r.len()).sum();
            let error = crate::error_chain(&error);
            if give_up.is_cancelled() {
                tracing::error!(%error, lost = left,
                    "Status writer gave up at shutdown; the orphan sweep will re-run these jobs");
                unwritten.extend(out.pending.into_iter().flatten().map(|i| batch[i].id));
                break;
            }
            tracing::warn!(%error, batch = left, "Status write failed, retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = give_up.cancelled() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            todo = out.pending;
        }
        (changed, buried, unwritten)
    }

    /// Publishes the events of every committed batch to `events`.
    pub fn with_events(mut self, events: EventSender) -> StatusWriter {
        self.events = Some(events);
        self
    }

    /// Hands a batch's events to the publisher without waiting: a slow event
    /// channel must not slow the ledger, so a full buffer drops them (counted).
    fn emit(&self, events: Vec<Event>) {
        let Some(tx) = &self.events else { return };
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if tx.try_send(events).is_err() {
            self.ledger.metrics.events_dropped(Channel::Buffer, n);
        }
    }

    /// Writes a batch's progress reports (one attempt, no retry: a lost report is
    /// replaced by the next) and emits `progress` events for the rows changed.
    async fn write_progress(&self, reports: Vec<StatusUpdate>) {
        if reports.is_empty() {
            return;
        }
        match self.ledger.write_progress(&reports).await {
            Ok(changed) => {
                if self.events.is_some() {
                    self.emit(progress_events(&reports, changed));
                }
            }
            Err(error) => tracing::warn!(error = %crate::error_chain(&error),
                reports = reports.len(), "Writing progress failed; the reports are dropped"),
        }
    }
}

/// Separates progress reports (the last one per job wins) from status changes.
fn split_progress(updates: Vec<StatusUpdate>) -> (Vec<StatusUpdate>, Vec<StatusUpdate>) {
    let (progress, statuses): (Vec<_>, Vec<_>) =
        updates.into_iter().partition(|u| u.progress.is_some());
    let mut last: HashMap<Uuid, StatusUpdate> = HashMap::with_capacity(progress.len());
    for mut p in progress {
        if let Some(m) = p.progress.as_mut().and_then(|p| p.message.as_mut()) {
            crate::pgtext::fix(m);
        }
        match last.get(&p.id) {
            Some(prev) if prev.token > p.token => {}
            _ => {
                last.insert(p.id, p);
            }
        }
    }
    (last.into_values().collect(), statuses)
}

/// One transition of a job, kept for its event.
struct Step {
    status: Status,
    attempts: i32,
    at: DateTime<Utc>,
    error: Option<String>,
}

/// Per job, its transitions in arrival order (one attempt's `retrying`, then the
/// next attempt's `running`): the events `coalesce` must not fold away. A late
/// update of an older attempt than one already seen is left out, as `coalesce`
/// leaves it out of the row.
fn event_steps(updates: &[StatusUpdate]) -> HashMap<Uuid, (i64, Vec<Step>)> {
    let mut steps: HashMap<Uuid, (i64, Vec<Step>)> = HashMap::with_capacity(updates.len());
    for u in updates {
        let entry = steps.entry(u.id).or_insert_with(|| (u.token, Vec::new()));
        // A final step ends the job: nothing after it applies (see `coalesce`).
        if u.token < entry.0 || entry.1.last().is_some_and(|s| s.status.is_final()) {
            continue;
        }
        entry.0 = u.token;
        entry.1.push(Step {
            status: u.status,
            attempts: u.attempts,
            at: u.at,
            error: u.last_error.as_deref().map(cut),
        });
    }
    steps
}

/// The events of the rows a batch changed, in the batch's order per job.
/// A job whose own update was refused and recorded `dead` (`buried`) gets one
/// `dead` event with the reason instead of its steps.
fn status_events(
    mut steps: HashMap<Uuid, (i64, Vec<Step>)>,
    changed: &[(Uuid, String, String)],
    buried: &HashMap<Uuid, String>,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(changed.len());
    for (id, queue, kind) in changed {
        let Some((_, job_steps)) = steps.remove(id) else {
            continue;
        };
        if let Some(reason) = buried.get(id) {
            let attempts = job_steps.last().map_or(0, |s| s.attempts);
            let mut e = Event::status(*id, queue, kind, Status::Dead, attempts, Utc::now(), None);
            e.error = Some(reason.clone());
            events.push(e);
            continue;
        }
        for step in job_steps {
            let mut e = Event::status(*id, queue, kind, step.status, step.attempts, step.at, None);
            e.error = step.error;
            events.push(e);
        }
    }
    events
}

/// `progress` events for the reports that were written.
fn progress_events(reports: &[StatusUpdate], changed: Vec<ChangedRow>) -> Vec<Event> {
    let by_id: HashMap<Uuid, &StatusUpdate> = reports.iter().map(|r| (r.id, r)).collect();
    changed
        .into_iter()
        .filter_map(|(id, queue, kind, status)| {
            let report = by_id.get(&id)?;
            let progress = report.progress.as_ref()?;
            Some(Event {
                kind_of_event: EventType::Progress,
                id,
                queue,
                kind,
                status,
                attempt: report.attempts,
                at: report.at,
                error: None,
                progress: Some(ProgressInfo {
                    percent: progress.percent,
                    message: progress.message.as_deref().map(cut),
                }),
            })
        })
        .collect()
}

/// (id, queue, kind, status) of a row a progress write changed.
type ChangedRow = (Uuid, String, String, String);

/// Folds every update of one job in a batch into one row, in arrival order: the
/// later status wins, the start time of a `running` step survives its final step.
/// Once the row is final nothing later changes it, as the statement would refuse
/// it. Text is made storable here (see [`safe`]), before it is copied anywhere.
fn coalesce(updates: Vec<StatusUpdate>) -> Vec<Merged> {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(updates.len());
    let mut out: Vec<Merged> = Vec::with_capacity(updates.len());
    for mut u in updates {
        if let Some(e) = u.last_error.as_mut() {
            crate::pgtext::fix(e);
        }
        if let Some(r) = u.result.as_mut() {
            crate::pgtext::safe_json(r);
        }
        let started = (u.status == Status::Running).then_some(u.at);
        let finished = u.status.is_final().then_some(u.at);
        let error = attempt_error(&u);
        // A lease counted by this row: one per attempt's `running`; a hand-back
        // gives its attempt back.
        let lease = match (u.status, u.handed_back) {
            (_, true) => -1,
            (Status::Running, false) => 1,
            _ => 0,
        };
        match index.get(&u.id) {
            Some(&i) => {
                let m = &mut out[i];
                if u.token < m.token || m.status.is_final() {
                    // An older attempt's outcome arriving late, or anything after
                    // the end: its status is stale, but the error it reports is
                    // still that attempt's.
                    m.errors.extend(error);
                    m.last_error = m.last_error.take().or(u.last_error);
                    continue;
                }
                // A repeated `running` of the same attempt is not another lease.
                if u.token > m.token || lease != 1 {
                    m.leases += lease;
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
                    leases: lease,
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
    /// Leases this row adds to the ledger's count (a hand-back subtracts one):
    /// the row's `attempts` never ends below its old count plus these, so a run
    /// Redis forgot about (it restarted empty) still counts.
    leases: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    result: Option<Value>,
    last_error: Option<String>,
    run_at: Option<DateTime<Utc>>,
    /// Errors of this batch's attempts, appended to the row's history.
    errors: Vec<Value>,
}

impl Merged {
    /// This job recorded `dead` for `reason` instead: what is written when the
    /// ledger refused the job's own update (nothing of that update is kept).
    fn buried(&self, reason: String) -> Merged {
        let now = Utc::now();
        Merged {
            id: self.id,
            token: self.token,
            status: Status::Dead,
            attempts: self.attempts,
            leases: self.leases,
            started_at: self.started_at,
            finished_at: Some(now),
            result: None,
            errors: vec![serde_json::json!({"attempt": self.attempts, "error": reason, "at": now})],
            last_error: Some(reason),
            run_at: None,
        }
    }
}

/// How every writer transaction begins. The batch statements join `jobs` with an
/// `UNNEST` of the batch; once `ANALYZE` has seen a ledger of mostly finished
/// rows, the planner expects few unfinished ones and picks a nested loop that
/// re-reads the whole `UNNEST` for every row, which is quadratic in the batch.
/// None of these statements needs a nested loop: with them off, the join is a
/// hash join over primary-key lookups whatever the statistics say. The
/// integration test `plans` checks the plans on a lived-in ledger.
pub(super) const PLAN_GUARD: &str = "BEGIN; SET LOCAL enable_nestloop = off";

/// One batch of status changes, fenced (see the module's invariant).
pub(super) const STATUS_UPDATE: &str = "UPDATE jobrunner.jobs AS j SET
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
               AND j.status NOT IN ('succeeded', 'dead', 'cancelled')
               AND (j.lease_token IS NULL OR j.lease_token <= u.token)
             RETURNING j.id, j.queue, j.kind";

/// Appends the errors of updates [`STATUS_UPDATE`] refused (a newer attempt owns
/// the row) to the row's history.
pub(super) const LATE_ERRORS: &str = "UPDATE jobrunner.jobs AS j SET
                 errors     = j.errors || u.errors::jsonb,
                 last_error = COALESCE(j.last_error, u.last_error)
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[])
               AS u(id, token, last_error, errors)
             WHERE j.id = u.id
               AND j.id = ANY($1)
               -- Only rows the batch statement refused: a newer attempt owns them.
               AND j.lease_token > u.token";

/// Progress reports: fenced like a status write, never onto a final row.
pub(super) const PROGRESS_UPDATE: &str = "UPDATE jobrunner.jobs AS j SET
                 progress = u.percent, progress_message = u.message, updated_at = now()
             FROM UNNEST($1::uuid[], $2::bigint[], $3::smallint[], $4::text[])
               AS u(id, token, percent, message)
             WHERE j.id = u.id
               AND j.id = ANY($1)
               AND j.status NOT IN ('succeeded', 'dead', 'cancelled')
               AND (j.lease_token IS NULL OR j.lease_token <= u.token)
             RETURNING j.id, j.queue, j.kind, j.status";

/// Binds a batch to [`STATUS_UPDATE`] (or to an `EXPLAIN` of it).
pub(super) fn bind_status_batch<'q>(
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
}

/// A batch that ends each of `ids` `succeeded`, for `EXPLAIN`.
pub(super) fn sample_batch(ids: &[Uuid]) -> Vec<Merged> {
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
    ) -> super::Result<Vec<(Uuid, String, String)>> {
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
    async fn write_progress(&self, reports: &[StatusUpdate]) -> super::Result<Vec<ChangedRow>> {
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
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
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
            progress: None,
            handed_back: false,
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
    fn folded_transitions_still_give_one_event_each_and_stale_ones_none() {
        let id = Uuid::now_v7();
        let mut retrying = update(id, 7, Status::Retrying);
        retrying.last_error = Some("boom".into());
        let updates = vec![
            update(id, 7, Status::Running),
            retrying,
            update(id, 8, Status::Running),
            update(id, 7, Status::Dead),
            update(id, 8, Status::Succeeded),
        ];
        let steps = event_steps(&updates);
        let changed = vec![(id, "default".to_owned(), "noop".to_owned())];
        let events = status_events(steps, &changed, &HashMap::new());
        let seen: Vec<(&str, Option<&str>)> = events
            .iter()
            .map(|e| (e.status.as_str(), e.error.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("running", None),
                ("retrying", Some("boom")),
                ("running", None),
                ("succeeded", None)
            ]
        );
        assert!(
            status_events(event_steps(&updates), &[], &HashMap::new()).is_empty(),
            "no row changed, no event"
        );
    }

    #[test]
    fn only_the_last_progress_report_of_a_job_in_a_batch_is_written() {
        let id = Uuid::now_v7();
        let report = |percent| {
            let mut u = update(id, 3, Status::Running);
            u.progress = Some(ProgressReport {
                percent,
                message: None,
            });
            u
        };
        let (progress, statuses) = split_progress(vec![
            report(10),
            update(id, 3, Status::Succeeded),
            report(20),
        ]);
        assert_eq!(progress.len(), 1);
        assert_eq!(progress[0].progress.as_ref().unwrap().percent, 20);
        assert_eq!(statuses.len(), 1);
    }

    #[test]
    fn nothing_after_a_final_step_applies_and_each_attempt_counts_one_lease() {
        let id = Uuid::now_v7();
        let merged = coalesce(vec![
            update(id, 7, Status::Running),
            update(id, 7, Status::Succeeded),
            update(id, 9, Status::Running),
        ]);
        assert_eq!(merged[0].status, Status::Succeeded);
        assert_eq!(merged[0].token, 7);
        assert_eq!(merged[0].leases, 1);
        let mut retrying = update(id, 7, Status::Retrying);
        retrying.last_error = Some("x".into());
        let merged = coalesce(vec![
            update(id, 7, Status::Running),
            retrying,
            update(id, 9, Status::Running),
        ]);
        assert_eq!(merged[0].leases, 2);
    }

    #[test]
    fn text_postgres_cannot_store_is_escaped_before_the_write() {
        let id = Uuid::now_v7();
        let mut done = update(id, 7, Status::Dead);
        done.last_error = Some("bad\0byte".into());
        done.result = Some(serde_json::json!({"out": "a\u{0}b"}));
        let merged = coalesce(vec![done]);
        assert_eq!(merged[0].last_error.as_deref(), Some("bad\u{FFFD}byte"));
        assert_eq!(
            merged[0].result,
            Some(serde_json::json!({"out": "a\u{FFFD}b"}))
        );
        assert_eq!(merged[0].errors[0]["error"], "bad\u{FFFD}byte");
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
