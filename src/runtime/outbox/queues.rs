//! Each queue's part of the outbox: its dispatch, its backoff after a failure,
//! a dispatch still out after its round stopped waiting for it, and whether
//! this daemon has set jobs of it aside (`jobrunner.outbox_held`).
//!
//! A round waits for a queue's dispatch at most that queue's patience. A queue
//! whose Redis master stops answering (its sockets open, nothing coming back)
//! would otherwise hold the round's transaction, and with it every other queue's
//! jobs, until the command timeout. A dispatch the round stopped waiting for
//! keeps running: its rows are set aside, and the queue waits until it ends. Then
//! they go back to the outbox; if that dispatch reached Redis after all, the next
//! one of those rows skips the jobs Redis holds, as after any crash between
//! dispatch and commit. A queue whose pause after a failure has ended is asked
//! with a dispatch of no jobs (a probe) before its jobs go back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::Shared;
use super::super::retry::Backoff;
use crate::broker::Dispatch;
use crate::error_chain;
use crate::ledger::{DispatchJob, Event, Status};

/// How long a round waits for a queue's dispatch before it commits the others
/// without it, unless the queue has shown it needs longer.
pub(super) const PATIENCE: Duration = Duration::from_millis(500);

/// How one queue's part of an outbox batch went.
pub(super) struct QueueDispatch {
    /// Jobs Redis refused on their own, with the reason: they end `dead`.
    pub poison: Vec<(Uuid, String)>,
    /// Jobs left for a later round.
    pub pending: Vec<Uuid>,
    pub error: Option<crate::broker::Error>,
}

/// A queue's dispatch, run as a task of its own so a round can stop waiting for
/// it: its outcome and how long it took.
pub(super) type Running = JoinHandle<(QueueDispatch, Duration)>;

#[derive(Default)]
struct QueueState {
    /// Until when the queue waits after a failure that may pass, and the next pause.
    backoff: Option<(Instant, Backoff)>,
    /// A dispatch the last round stopped waiting for and that has not ended.
    out: Option<Running>,
    /// How long a round waits for this queue when not [`PATIENCE`]: twice the
    /// time its last dispatch took, when that was longer (a queue of large
    /// payloads, a busy Redis). A slow but healthy queue is given up on once, not
    /// every round; a queue back to quick dispatches is back to [`PATIENCE`].
    patience: Option<Duration>,
    /// This daemon set jobs of the queue aside; they go back when it answers.
    held: bool,
    /// Set-aside jobs to put back in the outbox before the next batch.
    release: bool,
}

impl QueueState {
    /// A dispatch failed for a reason that may pass: the queue waits 100 ms,
    /// doubling to 5 s with each failure in a row. Returns the wait.
    fn back_off(&mut self) -> Duration {
        let (until, backoff) = self
            .backoff
            .get_or_insert_with(|| (Instant::now(), Backoff::outage()));
        let delay = backoff.next();
        *until = Instant::now() + delay;
        delay
    }

    /// A dispatch of the queue came back in `took`.
    fn answered(&mut self, took: Duration, cap: Duration) {
        self.backoff = None;
        self.patience = patience_after(took, cap);
        if std::mem::take(&mut self.held) {
            self.release = true;
        }
    }
}

/// Every queue's state between rounds.
pub(super) struct Queues {
    state: HashMap<String, QueueState>,
    /// The longest a round waits for one queue: no dispatch outlives it anyway.
    cap: Duration,
    /// When set-aside jobs of queues not waiting here were last put back.
    swept: Option<Instant>,
}

impl Queues {
    pub fn new(command_timeout: Duration) -> Queues {
        Queues {
            state: HashMap::new(),
            cap: command_timeout.max(PATIENCE),
            swept: None,
        }
    }

    /// Whether the queue's rows wait this round: it is backed off, or a dispatch
    /// of it is still out.
    pub fn waiting(&self, queue: &str) -> bool {
        self.state.get(queue).is_some_and(|s| {
            s.out.is_some() || s.backoff.as_ref().is_some_and(|(u, _)| Instant::now() < *u)
        })
    }

    /// Every queue whose jobs this daemon keeps aside: it waits, or it has jobs
    /// set aside that no probe has yet let go.
    pub fn kept_aside(&self) -> Vec<String> {
        self.state
            .iter()
            .filter(|(q, s)| s.held || self.waiting(q))
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// How long this round waits for the queue's dispatch (never past `cap`:
    /// `patience_after` caps what it keeps, and `cap` is at least [`PATIENCE`]).
    pub fn patience(&self, queue: &str) -> Duration {
        self.state
            .get(queue)
            .and_then(|s| s.patience)
            .unwrap_or(PATIENCE)
    }

    /// Backs the queue off: 100 ms, doubling to 5 s.
    pub fn failed(&mut self, queue: &str) -> Duration {
        self.state.entry(queue.to_owned()).or_default().back_off()
    }

    /// The queue's dispatch came back, in `took`: its backoff ends, its patience
    /// follows the time it took, and its set-aside jobs go back.
    pub fn succeeded(&mut self, queue: &str, took: Duration) {
        let cap = self.cap;
        if let Some(state) = self.state.get_mut(queue) {
            state.answered(took, cap);
        }
    }

    /// Jobs of the queue were set aside.
    pub fn held(&mut self, queue: &str) {
        self.state.entry(queue.to_owned()).or_default().held = true;
    }

    /// Queues with jobs set aside that no longer wait: each gets a dispatch of
    /// no jobs this round, to learn whether its Redis answers.
    pub fn due_probes(&self) -> Vec<String> {
        self.state
            .iter()
            .filter(|(q, s)| s.held && !s.release && !self.waiting(q))
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// The queues whose set-aside jobs go back now.
    pub fn take_releases(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (queue, state) in &mut self.state {
            if std::mem::take(&mut state.release) {
                out.push(queue.clone());
            }
        }
        out
    }

    /// Putting the queue's jobs back failed: try again next round.
    pub fn release_later(&mut self, queue: &str) {
        self.state.entry(queue.to_owned()).or_default().release = true;
    }

    pub fn releases_pending(&self) -> bool {
        self.state.values().any(|s| s.release)
    }

    /// Whether a sweep of set-aside jobs is due (at once after start, then
    /// every `interval`).
    pub fn sweep_due(&mut self, interval: Duration) -> bool {
        let now = Instant::now();
        if self.swept.is_some_and(|at| now < at + interval) {
            return false;
        }
        self.swept = Some(now);
        true
    }

    /// The round stopped waiting for this dispatch; the queue waits until it ends.
    pub fn left_out(&mut self, queue: &str, running: Running) {
        self.state.entry(queue.to_owned()).or_default().out = Some(running);
    }

    /// Takes the outcome of every dispatch left out that has ended since. Their
    /// rows were set aside, so only what they say of the queue counts: a failure
    /// backs it off, a success lets its jobs go back and sets its patience.
    pub async fn collect(&mut self, shared: &Shared) {
        for (queue, state) in &mut self.state {
            if !state.out.as_ref().is_some_and(JoinHandle::is_finished) {
                continue;
            }
            let Some(running) = state.out.take() else {
                continue;
            };
            match running.await {
                Ok((done, took)) => match done.error {
                    Some(error) => {
                        tracing::warn!(queue, error = %error_chain(&error), took = ?took,
                            "A dispatch the outbox stopped waiting for failed; the queue backs off");
                        shared
                            .metrics
                            .redis_error(queue, crate::metrics::RedisPath::Dispatch);
                        state.back_off();
                    }
                    None => {
                        state.answered(took, self.cap);
                        tracing::info!(queue, took = ?took, patience = ?state.patience.unwrap_or(PATIENCE),
                            "A dispatch the outbox stopped waiting for reached Redis; its jobs are sent again, and Redis skips those it holds");
                    }
                },
                Err(error) => tracing::error!(queue, %error, "A dispatch task ended abnormally"),
            }
        }
    }

    /// When the earliest queue still waiting may be tried again: a backoff that
    /// ends. A dispatch left out wakes the outbox when it ends (`start`); it is
    /// also looked at every second.
    pub fn next(&self) -> Option<Instant> {
        let now = Instant::now();
        self.state
            .values()
            .filter_map(|s| match (&s.out, &s.backoff) {
                (Some(_), _) => Some(now + PATIENCE * 2),
                (None, Some((until, _))) if *until > now => Some(*until),
                _ => None,
            })
            .min()
    }

    /// Stops every dispatch still out (the daemon stops): their rows are in the
    /// outbox already.
    pub fn abort(&mut self) {
        for state in self.state.values_mut() {
            if let Some(running) = state.out.take() {
                running.abort();
            }
        }
    }
}

/// The patience a queue has after a dispatch that took `took`: `None` means
/// [`PATIENCE`].
fn patience_after(took: Duration, cap: Duration) -> Option<Duration> {
    let patience = took * 2;
    (patience > PATIENCE).then(|| patience.min(cap))
}

/// Starts one queue's dispatch as a task of its own, publishing the jobs'
/// events first (see `runtime::events`).
pub(super) fn start(shared: &Arc<Shared>, queue: String, jobs: Vec<DispatchJob>) -> Running {
    let shared = shared.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let jobs: Vec<Dispatch<'_>> = jobs
            .iter()
            .map(|j| Dispatch {
                id: j.id,
                kind: &j.kind,
                payload: &j.payload,
                priority: j.priority,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                run_ms: j.run_ms.unwrap_or_default(),
                revive: j.revive,
            })
            .collect();
        if shared.publisher.enabled() && !jobs.is_empty() {
            let now = Utc::now();
            let events = jobs
                .iter()
                .map(|j| {
                    let status = Status::initial(j.run_ms, now.timestamp_millis());
                    Event::status(j.id, &queue, j.kind, status, j.attempts, now, None)
                })
                .collect();
            shared.publisher.publish(events).await;
        }
        let done = dispatch_queue(&shared, &queue, &jobs).await;
        let took = started.elapsed();
        if took >= PATIENCE {
            // The round may have stopped waiting: the outbox looks again now,
            // so the queue's rows go on as soon as its dispatch ends.
            shared.outbox_wake.notify_one();
        }
        (done, took)
    })
}

/// Dispatches one queue's jobs, isolating failure: a failure that may pass keeps
/// them all for later; a queue whose own keys are broken does too (it is not the
/// jobs' fault); otherwise the batch is split until the jobs Redis refuses on
/// their own are found, and the rest are dispatched now.
async fn dispatch_queue(shared: &Shared, queue: &str, jobs: &[Dispatch<'_>]) -> QueueDispatch {
    let all = || jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let error = match shared.broker.dispatch(queue, jobs).await {
        Ok(_) => {
            return QueueDispatch {
                poison: Vec::new(),
                pending: Vec::new(),
                error: None,
            };
        }
        Err(e) => e,
    };
    if !error.is_transient() {
        // With no jobs, the script only checks the queue's own keys.
        if let Err(queue_error) = shared.broker.dispatch(queue, &[]).await {
            return QueueDispatch {
                poison: Vec::new(),
                pending: all(),
                error: Some(queue_error),
            };
        }
    } else {
        return QueueDispatch {
            poison: Vec::new(),
            pending: all(),
            error: Some(error),
        };
    }
    let broker = &shared.broker;
    let out = crate::batch::isolate(
        std::iter::once(0..jobs.len()),
        crate::broker::Error::is_transient,
        |r| broker.dispatch(queue, &jobs[r]),
    )
    .await;
    QueueDispatch {
        poison: out
            .poison
            .into_iter()
            .map(|(i, e)| {
                let reason = format!("Redis refused to dispatch this job: {}", error_chain(&e));
                (jobs[i].id, reason)
            })
            .collect(),
        pending: out
            .pending
            .into_iter()
            .flatten()
            .map(|i| jobs[i].id)
            .collect(),
        error: out.transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_follows_the_last_dispatch_within_the_command_timeout() {
        let cap = Duration::from_secs(5);
        assert_eq!(patience_after(Duration::from_millis(3), cap), None);
        assert_eq!(patience_after(PATIENCE / 2, cap), None);
        assert_eq!(
            patience_after(Duration::from_millis(800), cap),
            Some(Duration::from_millis(1600))
        );
        assert_eq!(patience_after(Duration::from_secs(4), cap), Some(cap));
    }
}
