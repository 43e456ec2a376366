//! What admins do to one job, over both stores: cancel it and retry it. The CLI
//! calls these (and the dashboard will), so the order of the writes and the
//! events they send live in one place.
//!
//! The ledger is written first (it is the record), then Redis. This module holds
//! no SQL and no Redis commands of its own: it calls `ledger` and `broker`.

use uuid::Uuid;

use crate::broker::{self, Broker, CancelOutcome, Leftover};
use crate::config::EventsConfig;
use crate::ledger::{self, Cancelled, Event, Ledger, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("cancelling job {id} in the ledger failed")]
    CancelInLedger {
        id: Uuid,
        #[source]
        source: ledger::Error,
    },
    #[error("the ledger says job {id} is cancelled, but removing it from Redis failed")]
    CancelInRedis {
        id: Uuid,
        #[source]
        source: broker::Error,
    },
    #[error(
        "job {id} is {status} but Redis still holds it in a queue (an attempt may still be settling); try again in a moment"
    )]
    StillInRedis { id: Uuid, status: Status },
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    #[error(transparent)]
    Broker(#[from] broker::Error),
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// What [`cancel`] did.
#[derive(Debug)]
pub enum Cancel {
    /// The job is now `cancelled`; it was `previous` on `queue`. `redis` says
    /// what became of its copy there; `unpublished` lists the event channels
    /// that failed (the cancel stands: an event is a notification).
    Done {
        queue: String,
        previous: Status,
        redis: CancelOutcome,
        unpublished: Vec<String>,
    },
    /// The job had ended already; nothing changed.
    AlreadyFinal(Status),
}

/// Cancels a job: marks it `cancelled` in the ledger (dropping its outbox row),
/// announces the change on the configured event channels, then removes it from
/// its Redis queue or tells the daemon running it to stop.
pub async fn cancel(
    ledger: &Ledger,
    broker: &Broker,
    events: &EventsConfig,
    id: Uuid,
) -> Result<Cancel> {
    let (queue, previous, event) = match ledger.cancel(id).await {
        Ok(Cancelled::Now {
            queue,
            previous,
            event,
        }) => (queue, previous, event),
        Ok(Cancelled::AlreadyFinal(status)) => return Ok(Cancel::AlreadyFinal(status)),
        Err(ledger::Error::NotFound(_)) => return Err(Error::NotFound(id)),
        Err(source) => return Err(Error::CancelInLedger { id, source }),
    };
    // Front ends following the job hear about it like any other status change.
    let unpublished = publish(ledger, broker, events, &[event]).await;
    let redis = broker
        .cancel(&queue, id)
        .await
        .map_err(|source| Error::CancelInRedis { id, source })?;
    Ok(Cancel::Done {
        queue,
        previous,
        redis,
        unpublished,
    })
}

/// Puts a dead or cancelled job back to `queued` and returns its queue. A
/// cancelled job may have left its copy in Redis (or still be settling its last
/// attempt), and the dispatch would skip it: that copy is cleared first, while
/// the row is still final and nothing can dispatch the job.
pub async fn retry(ledger: &Ledger, broker: &Broker, id: Uuid) -> Result<String> {
    let job = ledger.job(id).await.map_err(|e| match e {
        ledger::Error::NotFound(_) => Error::NotFound(id),
        e => Error::Ledger(e),
    })?;
    if job.status.is_final() && broker.clear_leftover(&job.queue, id).await? == Leftover::InUse {
        return Err(Error::StillInRedis {
            id,
            status: job.status,
        });
    }
    Ok(ledger.retry_job(id).await?)
}

/// Publishes events outside the daemon, on the channels `events` turns on, in
/// order, the way the daemon does ([`crate::runtime::deliver`]). Returns a
/// description of each failure; an event is a notification and the ledger row
/// stays the truth, so a failure is reported, not retried.
pub async fn publish(
    ledger: &Ledger,
    broker: &Broker,
    events: &EventsConfig,
    batch: &[Event],
) -> Vec<String> {
    let json: Vec<String> = batch.iter().map(Event::to_json).collect();
    let delivery = crate::runtime::deliver(ledger, broker, events, &json).await;
    let mut failed = Vec::new();
    if let Some(out) = delivery.redis {
        failed.extend(failures("publishing to Redis", out));
    }
    if let Some(out) = delivery.postgres {
        failed.extend(failures("NOTIFY", out));
    }
    failed
}

/// "`doing` failed: reason" for a channel's transient failure and each refused event.
fn failures<E: std::error::Error + 'static>(
    doing: &str,
    out: crate::batch::Isolated<(), E>,
) -> Vec<String> {
    out.transient
        .iter()
        .chain(out.poison.iter().map(|(_, e)| e))
        .map(|e| format!("{doing} failed: {}", crate::error_chain(e)))
        .collect()
}
