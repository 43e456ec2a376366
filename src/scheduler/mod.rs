//! Cron schedules (`[cron.NAME]`) that enqueue one job per fire time, however
//! many daemons run them.
//!
//! Every daemon runs [`run`]. It sleeps until the next fire time of any schedule
//! (at most [`MAX_SLEEP`], and it wakes at once when a reload replaces the
//! config), then asks the ledger to claim each due fire time: the claim and the
//! enqueue are one transaction on `jobrunner.cron_fires`, whose primary key lets
//! exactly one daemon win (see `ledger::Ledger::fire_cron`). The job then travels
//! the ordinary SQL path: outbox, dispatch, fetch.
//!
//! Fire times are computed in the schedule's zone by `schedule::Schedule`; catch-up
//! after downtime by [`plan`]. Delayed jobs (`run_at`) need nothing from here: the
//! broker's fetch promotes them when due.
//!
//! **Invariant:** the scheduler runs SQL only through `ledger` and never touches
//! Redis. Checked by `tests/integration/invariants.rs::in_the_core_only_ledger_runs_sql`
//! and `::only_broker_names_the_redis_client`.
//!
//! Design note: it reads the cron section from the live config at every round,
//! never from a copy taken at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CatchUp, Config, CronConfig};
use crate::error_chain;
use crate::ledger::{CronJob, Ledger};

// The schedule type is pure config (parsed and checked with it); the loop
// here only evaluates it.
pub use crate::config::{Schedule, ScheduleError};

/// A fire time at most this far in the past is on time and enqueued; an older
/// one was missed and goes to the schedule's catch-up policy.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(60);
/// The loop looks at the clock and the config at least this often, so a wall
/// clock that steps does not delay a fire by more than this.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Fire rows older than this are deleted (each schedule keeps its latest).
pub const FIRE_HISTORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often one daemon prunes the fire table.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Most on-time fire times enqueued for one schedule in one round.
const ROUND_LIMIT: usize = 1000;

/// What one round does for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Fire times to enqueue, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// The first and last fire time that were missed (older than the grace).
    pub missed: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The last fire time this round dealt with: the next round starts after it.
    pub cursor: DateTime<Utc>,
}

/// Decides which fire times after `cursor` (the last one dealt with) to enqueue
/// at `now`. On-time fire times (within `grace`) are always enqueued. Missed ones
/// are dropped (`skip`) or represented by one job for the latest of them
/// (`run_once`).
pub fn plan(
    schedule: &Schedule,
    catch_up: CatchUp,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Plan {
    let on_time_from = crate::ledger::safe::before(now, grace);
    let mut fire = Vec::new();
    let mut missed = None;
    let mut from = cursor;
    if let Some(first) = schedule.next_after(cursor).filter(|t| *t < on_time_from) {
        let last = schedule
            .last_before(on_time_from)
            .filter(|t| *t >= first)
            .unwrap_or(first);
        missed = Some((first, last));
        if catch_up == CatchUp::RunOnce {
            fire.push(last);
        }
        from = last;
    }
    fire.extend(schedule.between(from, now, ROUND_LIMIT));
    let cursor = fire
        .last()
        .copied()
        .into_iter()
        .chain(missed.map(|m| m.1))
        .max()
        .unwrap_or(cursor);
    Plan {
        fire,
        missed,
        cursor,
    }
}

/// The job a schedule enqueues. The config was validated at load, so the payload
/// parses; a string that does not is sent as the string.
pub fn job_of(cron: &CronConfig) -> CronJob {
    CronJob {
        kind: cron.kind.clone(),
        payload: cron.payload_json().unwrap_or_else(|_| cron.payload.clone()),
        queue: cron.queue.clone(),
        priority: cron.priority,
    }
}

/// The queue a schedule's job goes to: its own, else its kind's, else the default.
pub fn queue_of(config: &Config, cron: &CronConfig) -> String {
    cron.queue
        .clone()
        .or_else(|| config.kinds.get(&cron.kind).map(|k| k.queue.clone()))
        .unwrap_or_else(|| crate::config::DEFAULT_QUEUE.to_owned())
}

/// A schedule's next fire time after `now`; `None` when it is disabled (or its
/// expression, validated at load, yields no further time).
pub fn next_fire(cron: &CronConfig, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.enabled
        .then(|| cron.parse_schedule().ok())
        .flatten()
        .and_then(|s| s.next_after(now))
}

/// One enabled schedule as this daemon tracks it.
struct Tracked {
    config: CronConfig,
    schedule: Schedule,
    /// The last fire time dealt with (enqueued, found claimed, or skipped).
    cursor: DateTime<Utc>,
}

/// The scheduler loop of one daemon; ends when `shutdown` fires.
pub async fn run(
    ledger: Ledger,
    mut live: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut next_prune = tokio::time::Instant::now();
    loop {
        let config = live.borrow_and_update().clone();
        let mut failed = !track(&ledger, &config, &mut tracked).await;
        let now = Utc::now();
        for (name, t) in tracked.iter_mut() {
            if !fire_due(&ledger, name, t, now).await {
                failed = true;
            }
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_INTERVAL;
            match ledger.prune_cron_fires(FIRE_HISTORY).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "Pruned old cron fire rows"),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "Pruning cron fire rows failed")
                }
            }
        }

        let now = Utc::now();
        let next = tracked
            .values()
            .filter_map(|t| t.schedule.next_after(t.cursor))
            .min();
        let wait = match next {
            _ if failed => MAX_SLEEP,
            Some(next) => (next - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = live.changed() => {
                if changed.is_err() {
                    // The daemon is going away; the token follows.
                    shutdown.cancelled().await;
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Brings `tracked` in line with the config's enabled schedules. A schedule new
/// to this daemon resumes after its last recorded fire time (catch-up applies) or,
/// if it never fired, starts now. A changed line or zone starts now. False when
/// the ledger could not be read; those schedules are tried again next round.
async fn track(ledger: &Ledger, config: &Config, tracked: &mut HashMap<String, Tracked>) -> bool {
    tracked.retain(|name, _| config.cron.get(name).is_some_and(|c| c.enabled));
    let now = Utc::now();
    let mut new = Vec::new();
    let mut unreadable = Vec::new();
    for (name, cron) in config.cron.iter().filter(|(_, c)| c.enabled) {
        let Some(t) = tracked.get_mut(name) else {
            new.push(name.clone());
            continue;
        };
        if t.config == *cron {
            continue;
        }
        if t.config.schedule != cron.schedule || t.config.timezone != cron.timezone {
            // Validated at load, so this fails only if a reload skipped validation.
            let Ok(schedule) = cron.parse_schedule() else {
                unreadable.push(name.clone());
                continue;
            };
            t.schedule = schedule;
            t.cursor = t.cursor.max(now);
            tracing::info!(cron.schedule = %name, schedule = %cron.schedule,
                timezone = %cron.timezone, "Cron schedule changed");
        }
        t.config = cron.clone();
    }
    for name in unreadable {
        tracing::error!(cron.schedule = %name, "Cron schedule cannot be read; it is not run");
        tracked.remove(&name);
    }
    if new.is_empty() {
        return true;
    }
    let last = match ledger.cron_last_fire_times(&new).await {
        Ok(last) => last,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "Reading cron fire times failed, retrying");
            return false;
        }
    };
    for name in new {
        let cron = &config.cron[&name];
        let schedule = match cron.parse_schedule() {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(cron.schedule = %name, %error, "Cron schedule cannot be read; it is not run");
                continue;
            }
        };
        let cursor = last.get(&name).copied().unwrap_or(now);
        tracing::info!(cron.schedule = %name, schedule = %cron.schedule, timezone = %cron.timezone,
            next = ?schedule.next_after(cursor.max(now)), "Cron schedule active");
        tracked.insert(
            name,
            Tracked {
                config: cron.clone(),
                schedule,
                cursor,
            },
        );
    }
    true
}

/// Enqueues the due fire times of one schedule. False when the ledger failed;
/// the cursor then stays at the last fire time dealt with, so the next round
/// tries again.
async fn fire_due(ledger: &Ledger, name: &str, t: &mut Tracked, now: DateTime<Utc>) -> bool {
    let mut plan = plan(&t.schedule, t.config.catch_up, t.cursor, now, ON_TIME_GRACE);
    if plan.missed.is_some() {
        // Other daemons may have fired what this one missed (it was paused or
        // just started): start after the latest recorded fire time instead.
        match ledger.cron_last_fire_times(&[name.to_owned()]).await {
            Ok(last) => {
                if let Some(&last) = last.get(name)
                    && last > t.cursor
                {
                    t.cursor = last;
                    plan = self::plan(&t.schedule, t.config.catch_up, t.cursor, now, ON_TIME_GRACE);
                }
            }
            Err(error) => {
                tracing::warn!(cron.schedule = %name, error = %error_chain(&error), "Reading cron fire times failed, retrying");
                return false;
            }
        }
    }
    if let Some((first, last)) = plan.missed {
        match t.config.catch_up {
            CatchUp::Skip => tracing::warn!(cron.schedule = %name, %first, %last,
                "Cron fire times were missed (no daemon ran them in time); skipping them"),
            CatchUp::RunOnce => tracing::warn!(cron.schedule = %name, %first, %last,
                "Cron fire times were missed (no daemon ran them in time); running one job for the latest"),
        }
    }
    if plan.fire.is_empty() {
        t.cursor = plan.cursor;
        return true;
    }
    let job = job_of(&t.config);
    for fire_at in &plan.fire {
        match ledger.fire_cron(name, *fire_at, &job, false).await {
            Ok(Some(id)) => {
                tracing::info!(cron.schedule = %name, %fire_at, job.id = %id, job.kind = %job.kind, "Cron fired");
            }
            Ok(None) => {
                tracing::debug!(cron.schedule = %name, %fire_at, "Cron fire time already claimed by another daemon");
            }
            Err(error) => {
                tracing::warn!(cron.schedule = %name, %fire_at, error = %error_chain(&error), "Cron fire failed, retrying");
                return false;
            }
        }
        t.cursor = *fire_at;
    }
    t.cursor = plan.cursor;
    true
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn on_time_fire_times_are_enqueued_and_nothing_else() {
        let every_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        let now = utc(10, 0, 1) + chrono::Duration::milliseconds(200);
        let p = plan(&every_second, CatchUp::Skip, utc(10, 0, 0), now, GRACE);
        assert_eq!(p.fire, vec![utc(10, 0, 1)]);
        assert_eq!((p.missed, p.cursor), (None, utc(10, 0, 1)));

        // A late round still enqueues every fire time within the grace.
        let now = utc(10, 0, 3) + chrono::Duration::milliseconds(500);
        let p = plan(&every_second, CatchUp::Skip, utc(10, 0, 0), now, GRACE);
        assert_eq!(p.fire, vec![utc(10, 0, 1), utc(10, 0, 2), utc(10, 0, 3)]);

        // Nothing due: nothing moves.
        let hourly = Schedule::parse("@hourly", "UTC").unwrap();
        let p = plan(
            &hourly,
            CatchUp::RunOnce,
            utc(10, 0, 0),
            utc(10, 30, 0),
            GRACE,
        );
        assert_eq!((p.fire.len(), p.missed, p.cursor), (0, None, utc(10, 0, 0)));
    }

    #[test]
    fn missed_fire_times_are_skipped_or_run_once() {
        let hourly = Schedule::parse("@hourly", "UTC").unwrap();
        let two_days_ago = utc(10, 0, 0) - chrono::Duration::days(2);
        let now = utc(10, 30, 0);

        let p = plan(&hourly, CatchUp::Skip, two_days_ago, now, GRACE);
        assert!(p.fire.is_empty(), "{p:?}");
        assert_eq!(
            p.missed,
            Some((two_days_ago + chrono::Duration::hours(1), utc(10, 0, 0)))
        );
        assert_eq!(
            p.cursor,
            utc(10, 0, 0),
            "the skipped times are not seen again"
        );

        let p = plan(&hourly, CatchUp::RunOnce, two_days_ago, now, GRACE);
        assert_eq!(p.fire, vec![utc(10, 0, 0)], "one job, for the latest");
        assert_eq!(p.cursor, utc(10, 0, 0));
    }

    #[test]
    fn a_round_can_both_catch_up_and_fire_on_time() {
        let minutely = Schedule::parse("* * * * *", "UTC").unwrap();
        let now = utc(10, 2, 30);
        // 10:01 is 90 s old (missed), 10:02 is 30 s old (on time).
        let p = plan(&minutely, CatchUp::Skip, utc(10, 0, 0), now, GRACE);
        assert_eq!(p.fire, vec![utc(10, 2, 0)]);
        assert_eq!(p.missed, Some((utc(10, 1, 0), utc(10, 1, 0))));
        let p = plan(&minutely, CatchUp::RunOnce, utc(10, 0, 0), now, GRACE);
        assert_eq!(p.fire, vec![utc(10, 1, 0), utc(10, 2, 0)]);
        assert_eq!(p.cursor, utc(10, 2, 0));
    }
}
