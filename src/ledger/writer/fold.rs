//! Folding a batch: several transitions of one job become one row write, while
//! each transition still gives its own event. Pure logic, tested beside it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::StatusUpdate;
use crate::ledger::Status;
use crate::ledger::events::{Event, EventType, ProgressInfo, cut};

/// Separates progress reports (the last one per job wins) from status changes.
pub(super) fn split_progress(updates: Vec<StatusUpdate>) -> (Vec<StatusUpdate>, Vec<StatusUpdate>) {
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
pub(super) struct Step {
    status: Status,
    attempts: i32,
    at: DateTime<Utc>,
    error: Option<String>,
}

/// Per job, its transitions in arrival order (one attempt's `retrying`, then the
/// next attempt's `running`): the events `coalesce` must not fold away. A late
/// update of an older attempt than one already seen is left out, as `coalesce`
/// leaves it out of the row.
pub(super) fn event_steps(updates: &[StatusUpdate]) -> HashMap<Uuid, (i64, Vec<Step>)> {
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
pub(super) fn status_events(
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
pub(super) fn progress_events(reports: &[StatusUpdate], changed: Vec<ChangedRow>) -> Vec<Event> {
    let by_id: HashMap<Uuid, &StatusUpdate> = reports.iter().map(|r| (r.id, r)).collect();
    changed
        .into_iter()
        .filter_map(|(id, queue, kind, status)| {
            let report = by_id.get(&id)?;
            let progress = report.progress.as_ref()?;
            Some(Event {
                event_type: EventType::Progress,
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
pub(super) type ChangedRow = (Uuid, String, String, Status);

/// Folds every update of one job in a batch into one row, in arrival order: the
/// later status wins, the start time of a `running` step survives its final step.
/// Once the row is final nothing later changes it, as the statement would refuse
/// it. Text is made storable here (see [`safe`]), before it is copied anywhere.
pub(super) fn coalesce(updates: Vec<StatusUpdate>) -> Vec<Merged> {
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
pub(super) fn attempt_error(u: &StatusUpdate) -> Option<Value> {
    let error = u.last_error.as_ref()?;
    Some(serde_json::json!({ "attempt": u.attempts, "error": error, "at": u.at }))
}

#[derive(Debug)]
pub(in crate::ledger) struct Merged {
    pub(super) id: Uuid,
    pub(super) token: i64,
    pub(super) status: Status,
    pub(super) attempts: i32,
    /// Leases this row adds to the ledger's count (a hand-back subtracts one):
    /// the row's `attempts` never ends below its old count plus these, so a run
    /// Redis forgot about (it restarted empty) still counts.
    pub(super) leases: i32,
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) finished_at: Option<DateTime<Utc>>,
    pub(super) result: Option<Value>,
    pub(super) last_error: Option<String>,
    pub(super) run_at: Option<DateTime<Utc>>,
    /// Errors of this batch's attempts, appended to the row's history.
    pub(super) errors: Vec<Value>,
}

impl Merged {
    /// This job recorded `dead` for `reason` instead: what is written when the
    /// ledger refused the job's own update (nothing of that update is kept).
    pub(super) fn buried(&self, reason: String) -> Merged {
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
