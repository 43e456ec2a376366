//! The batched status writer: group commit for job transitions.
//!
//! Workers send [`StatusUpdate`]s into bounded channels, one per writer shard (a
//! job always goes to the same shard, so its transitions stay in order). Each shard
//! takes whatever has accumulated (up to a batch limit), folds several changes of
//! one job into one, and applies the batch with a single `UPDATE … FROM UNNEST`.
//! While a batch is in flight the next one accumulates, so under load each commit
//! carries thousands of transitions; a shard holding only a few waits up to
//! [`shard::LINGER`] for more, so at moderate rates a commit is not spent on one job.
//! Several shards commit side by side, which keeps the ledger's lag low.
//!
//! **Invariant:** an update carrying an older fencing token than the row's never
//! applies, and a final row never changes; both are checked in the statement itself.
//! Checked by `tests/integration/crash.rs::a_paused_workers_late_outcome_is_rejected_by_the_fencing_token`
//! and `::a_stale_lease_cannot_ack_retry_or_heartbeat_after_it_was_reaped`.
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
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

mod admit;
mod fold;
mod shard;
mod statements;
mod transition;

use super::events::{Event, cut};
use super::{Ledger, Status};
use crate::batch::Backoff;
use crate::metrics::{Channel, Path};
pub(super) use admit::ADMISSION;
pub use admit::{Claim, Verdict};
use fold::{Merged, coalesce, event_steps, progress_events, split_progress, status_events};
pub(super) use statements::{
    LATE_ERRORS, PLAN_GUARD, PROGRESS_UPDATE, STATUS_UPDATE, bind_status_batch, sample_batch,
};
pub use transition::{Attempt, Transition};

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
    /// Set on an admission: the lease's claim, answered once every earlier
    /// write of the job is written (see [`WriterHandle::admit`]).
    verdict: Option<(Claim, oneshot::Sender<Verdict>)>,
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

    /// Asks the ledger whether a lease may run, once every earlier write of the
    /// job is written: [`Verdict::Run`] with the row's payload and
    /// attempt budget when its row is unfinished, on the lease's queue, of the
    /// lease's kind, and no newer attempt owns it; [`Verdict::Foreign`] when the
    /// row's queue or kind differ from the lease's; [`Verdict::Refused`]
    /// otherwise (the job is final, a newer attempt owns it, or there is no
    /// such row); `None` when no answer came (the writer stopped first).
    /// `update` is the lease's `running` write: an admitted one is written with
    /// the job's next change or within [`admit::HOLD`], and counts the lease in
    /// `attempts`. A worker admits its lease this way before it runs the
    /// handler, so a job whose ledger row is final never runs again, and a job
    /// runs what its row holds, whatever its Redis hash says.
    pub async fn admit(&self, update: StatusUpdate, claim: Claim) -> Option<Verdict> {
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            update,
            verdict: Some((claim, tx)),
        };
        self.shard(entry.update.id).send(entry).await.ok()?;
        rx.await.ok()
    }

    /// Queues a progress report without waiting; false (the report is dropped)
    /// when the writer is behind: the next report replaces it.
    pub fn try_report_progress(&self, attempt: Attempt, report: ProgressReport) -> bool {
        let entry = Entry {
            update: StatusUpdate::progress(attempt, report),
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

    /// Writes one round of status changes and progress reports, and emits the
    /// events of the rows it changed.
    async fn write_round(
        &self,
        updates: Vec<StatusUpdate>,
        give_up: &tokio_util::sync::CancellationToken,
    ) {
        let (progress, updates) = split_progress(updates);
        self.write_progress(progress).await;
        let steps = self.events.is_some().then(|| event_steps(&updates));
        let batch = coalesce(updates);
        if batch.is_empty() {
            return;
        }
        let (changed, buried) = self.write_isolated(&batch, give_up).await;
        if let Some(steps) = steps {
            self.emit(status_events(steps, &changed, &buried));
        }
        tracing::trace!(size = batch.len(), "Status batch written");
    }

    /// Answers a round's admissions: an admitted lease's `running` write is held
    /// (see [`admit::HOLD`]), a refused one is dropped. When Postgres cannot be
    /// read before the daemon gives up, the answers are dropped: the workers hand
    /// their leases back.
    async fn answer(
        &self,
        admissions: Vec<(StatusUpdate, Claim, oneshot::Sender<Verdict>)>,
        held: &mut Vec<admit::Held>,
        give_up: &tokio_util::sync::CancellationToken,
    ) {
        let asked: Vec<(Uuid, i64, &Claim)> = admissions
            .iter()
            .map(|(u, claim, _)| (u.id, u.token, claim))
            .collect();
        let ids: Vec<Uuid> = asked.iter().map(|a| a.0).collect();
        let mut delay = Duration::from_millis(50);
        let rows = loop {
            match self.ledger.admissible(&ids).await {
                Ok(rows) => break rows,
                Err(error) if give_up.is_cancelled() => {
                    tracing::error!(error = %crate::error_chain(&error), leases = ids.len(),
                        "Admitting leases failed at shutdown; they are handed back");
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), leases = ids.len(),
                        "Admitting leases failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let held_tokens: HashMap<Uuid, i64> =
            held.iter().map(|h| (h.update.id, h.update.token)).collect();
        let verdicts = admit::verdicts(&asked, &rows, &held_tokens);
        let now = tokio::time::Instant::now();
        for ((update, _, tx), verdict) in admissions.into_iter().zip(verdicts) {
            if let Verdict::Run { .. } = verdict {
                held.push(admit::Held { update, since: now });
            }
            let _ = tx.send(verdict);
        }
    }

    /// Writes a batch, isolating failure: returns the rows changed, the jobs whose
    /// own update could not be stored and were recorded `dead` (with the reason).
    /// What is still unwritten when the daemon gives up during an outage is left
    /// to the orphan sweep.
    async fn write_isolated(
        &self,
        batch: &[Merged],
        give_up: &tokio_util::sync::CancellationToken,
    ) -> (Vec<(Uuid, String, String)>, HashMap<Uuid, String>) {
        let mut changed = Vec::new();
        let mut buried = HashMap::new();
        let mut todo: Vec<std::ops::Range<usize>> = std::iter::once(0..batch.len()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
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
                break;
            }
            tracing::warn!(%error, batch = left, "Status write failed, retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = give_up.cancelled() => {}
            }
            todo = out.pending;
        }
        (changed, buried)
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
