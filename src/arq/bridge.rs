//! The bridge's loop: takes due jobs from the arq queues into jobrunner, keeps
//! arq's view of them (`in_progress`, the result record) up to date from the
//! ledger, and turns arq aborts into cancellations.
//!
//! A taken job is marked in its arq queue only after jobrunner holds it (the
//! ENQUEUE script, or a `dead` row), and its id is derived from the arq id, so a
//! crash between the two, or two daemons reading the same job, enqueues it again
//! under the same id, which ENQUEUE and the ingester ignore. Nothing read is
//! dropped: a body that cannot be read becomes a `dead` job with the reason.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Error;
use super::config::ArqConfig;
use super::wire::{self, ArqJob, Ended, Record, Serializer};
use crate::broker::{Broker, RedisEnqueue};
use crate::config::EventsConfig;
use crate::ledger::{ExternalId, IngestedJob, Job, Ledger, Status};

/// The most taken jobs whose outcome is looked up per arq queue per round,
/// oldest first.
const SETTLE_PAGE: usize = 1000;
/// How many ended jobs' result records are written at once.
const FINISH_CONCURRENCY: usize = 32;
/// The longest wait after failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The running bridge: the `[arq]` section and the pools it goes through.
pub struct Bridge {
    config: ArqConfig,
    broker: Broker,
    ledger: Ledger,
    /// Where the cancellations of aborted jobs are announced.
    events: EventsConfig,
}

impl Bridge {
    pub fn new(config: ArqConfig, broker: Broker, ledger: Ledger, events: EventsConfig) -> Bridge {
        Bridge {
            config,
            broker,
            ledger,
            events,
        }
    }

    /// Rounds every `poll_interval` until `shutdown`; a failed round backs off
    /// (doubling to 5 s) and is logged with the queue it concerns.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(queues = ?self.config.queues, "Serving arq queues");
        let mut failures = 0u32;
        loop {
            let wait = if failures == 0 {
                self.config.poll_interval
            } else {
                (self.config.poll_interval * 2u32.saturating_pow(failures.min(10))).min(MAX_BACKOFF)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut failed = false;
            for queue in &self.config.queues {
                if let Err(error) = self.serve(queue).await {
                    failed = true;
                    tracing::warn!(arq.queue = %queue, error = %crate::error_chain(&error), "arq queue round failed; retrying");
                }
            }
            if let Err(error) = self.aborts().await {
                failed = true;
                tracing::warn!(error = %crate::error_chain(&error), "Reading arq aborts failed; retrying");
            }
            failures = if failed {
                failures.saturating_add(1)
            } else {
                0
            };
        }
    }

    async fn serve(&self, queue: &str) -> Result<(), Error> {
        self.admit(queue).await?;
        self.settle(queue).await.map(drop)
    }

    /// Takes the due jobs of one arq queue into jobrunner.
    pub async fn admit(&self, queue: &str) -> Result<usize, Error> {
        let now = Utc::now().timestamp_millis();
        let due = self
            .broker
            .arq_due(queue, now, self.config.batch)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        let mut taken = Vec::with_capacity(due.len());
        let mut refused = Vec::new();
        let mut calls = Vec::with_capacity(due.len());
        for d in due {
            let id = wire::job_id(&d.id);
            let job = match &d.body {
                None => Err(format!(
                    "arq job {} has no body (arq:job:{} expired or was deleted before the job was due)",
                    d.id, d.id
                )),
                Some(body) => wire::read_job(body),
            };
            let call = job
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|j| wire::to_call(j, &self.config));
            match call {
                Ok(call) => {
                    let enqueue = RedisEnqueue {
                        queue: call.queue,
                        kind: call.kind,
                        payload: call.payload,
                        priority: 0,
                        max_attempts: 0,
                        delay_ms: 0,
                    };
                    calls.push((d, id, job.ok(), enqueue));
                }
                Err(reason) => {
                    tracing::warn!(arq.queue = %queue, arq.id = %d.id, job.id = %id, error = %reason, "arq job cannot run; recording it dead");
                    let r = refusal(id, &self.config, job.ok().as_ref(), reason);
                    refused.push((d, r));
                }
            }
        }
        // One ENQUEUE per job, sent together over the pool. After a transient
        // failure nothing is marked taken: the next round enqueues them all again
        // under the same ids, which ENQUEUE ignores for those it already holds.
        let replies = futures::future::join_all(
            calls
                .iter()
                .map(|(_, id, _, enqueue)| self.broker.enqueue_with_id(enqueue, *id)),
        )
        .await;
        for ((d, id, job, _), reply) in calls.into_iter().zip(replies) {
            match reply {
                Ok(_) => taken.push((d.id, d.score)),
                Err(e) if e.is_transient() => return Err(Error::redis(queue, e)),
                Err(e) => {
                    let r = refusal(id, &self.config, job.as_ref(), crate::error_chain(&e));
                    refused.push((d, r));
                }
            }
        }
        if !refused.is_empty() {
            let mut rows: Vec<IngestedJob> = refused.iter().map(|(_, r)| r.clone()).collect();
            self.ledger
                .insert_ingested(&mut rows)
                .await
                .map_err(|source| Error::Ledger {
                    queue: queue.to_owned(),
                    source,
                })?;
            taken.extend(refused.into_iter().map(|(d, _)| (d.id, d.score)));
        }
        let n = taken.len();
        self.broker
            .arq_take(queue, &taken)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        Ok(n)
    }

    /// Brings arq's view of the taken jobs up to date: `in_progress` while they
    /// run, the result record once they end.
    pub async fn settle(&self, queue: &str) -> Result<usize, Error> {
        let ids = self
            .broker
            .arq_taken(queue, SETTLE_PAGE)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        if ids.is_empty() {
            return Ok(0);
        }
        let uuids: Vec<Uuid> = ids.iter().map(|id| wire::job_id(id)).collect();
        let rows: HashMap<Uuid, Job> = self
            .ledger
            .jobs(&uuids)
            .await
            .map_err(|source| Error::Ledger {
                queue: queue.to_owned(),
                source,
            })?
            .into_iter()
            .map(|j| (j.id, j))
            .collect();
        // The arq id goes in the ledger once the job runs or ends (a job seen
        // again keeps its first record). Waiting jobs are left for later, so a
        // backlog does not rewrite a thousand records every round.
        let known: Vec<ExternalId> = ids
            .iter()
            .zip(&uuids)
            .filter(|(_, uuid)| {
                rows.get(uuid)
                    .is_some_and(|j| j.status == Status::Running || j.status.is_final())
            })
            .map(|(arq_id, uuid)| ExternalId {
                job_id: *uuid,
                source: "arq".to_owned(),
                external_id: arq_id.clone(),
                origin: queue.to_owned(),
            })
            .collect();
        self.ledger
            .record_external_ids(&known)
            .await
            .map_err(|source| Error::Ledger {
                queue: queue.to_owned(),
                source,
            })?;
        let mut running = Vec::new();
        let mut ended = Vec::new();
        for (arq_id, uuid) in ids.iter().zip(&uuids) {
            // No row yet: the ingester has not recorded it; the next round will.
            let Some(job) = rows.get(uuid) else { continue };
            match job.status {
                Status::Running => running.push(arq_id.clone()),
                s if s.is_final() => ended.push((arq_id.clone(), job.clone())),
                _ => {}
            }
        }
        let n = ended.len();
        futures::stream::iter(ended)
            .map(|(arq_id, job)| async move { self.finish(queue, &arq_id, &job).await })
            .buffer_unordered(FINISH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let ttl = (self.config.poll_interval * 20).max(Duration::from_secs(10));
        self.broker
            .arq_in_progress(&running, ttl.as_millis() as u64)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        Ok(n)
    }

    async fn finish(&self, queue: &str, arq_id: &str, job: &Job) -> Result<(), Error> {
        let body = self
            .broker
            .arq_body(arq_id)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        let serializer = body
            .as_deref()
            .map(wire::serializer_of)
            .unwrap_or(Serializer::Pickle);
        let parsed: Option<ArqJob> = body.as_deref().and_then(|b| wire::read_job(b).ok());
        let ended = match job.status {
            Status::Succeeded => Ended::Succeeded(job.result.clone().unwrap_or_default()),
            Status::Cancelled => Ended::Cancelled,
            _ => Ended::Dead(
                job.last_error
                    .clone()
                    .unwrap_or_else(|| "the job ended dead".to_owned()),
            ),
        };
        let finished = job.finished_at.unwrap_or(job.updated_at);
        let meta = Record {
            arq_id,
            arq_queue: queue,
            attempts: job.attempts.max(1) as i64,
            started_ms: job.started_at.unwrap_or(finished).timestamp_millis(),
            finished_ms: finished.timestamp_millis(),
        };
        let keep = self.config.keep_result;
        let record = (!keep.is_zero())
            .then(|| wire::result_record(parsed.as_ref(), serializer, &ended, &meta));
        let wrote = self
            .broker
            .arq_finish(queue, arq_id, record, keep.as_millis() as u64)
            .await
            .map_err(|source| Error::redis(queue, source))?;
        if wrote {
            tracing::debug!(arq.queue = %queue, arq.id = %arq_id, job.id = %job.id, status = %job.status.as_str(), "arq result written");
        }
        Ok(())
    }

    /// Cancels the taken jobs named in `arq:abort`. The result record (an
    /// `asyncio.CancelledError`) is written when the ledger says `cancelled`.
    pub async fn aborts(&self) -> Result<(), Error> {
        let ids = self
            .broker
            .arq_aborts()
            .await
            .map_err(|source| Error::redis("arq:abort", source))?;
        for arq_id in ids {
            let mut taken = false;
            for queue in &self.config.queues {
                if self
                    .broker
                    .arq_is_taken(queue, &arq_id)
                    .await
                    .map_err(|source| Error::redis(queue, source))?
                {
                    taken = true;
                    break;
                }
            }
            if !taken {
                continue;
            }
            let id = wire::job_id(&arq_id);
            match crate::control::cancel(&self.ledger, &self.broker, &self.events, id).await {
                Ok(crate::control::Cancel::Done { .. }) => {
                    tracing::info!(arq.id = %arq_id, job.id = %id, "arq abort: job cancelled");
                }
                // Already over: its result record is written as it stands.
                Ok(crate::control::Cancel::AlreadyFinal(_)) => {}
                // Not recorded yet: the next round tries again.
                Err(crate::control::Error::NotFound(_)) => {}
                Err(source) => return Err(Error::Cancel { id, source }),
            }
        }
        Ok(())
    }
}

/// A job the bridge cannot run, recorded `dead` with `reason`.
fn refusal(id: Uuid, config: &ArqConfig, job: Option<&ArqJob>, reason: String) -> IngestedJob {
    let now = Utc::now();
    let kind = job
        .map(|j| j.function.as_str())
        .filter(|f| wire::is_kind_name(f))
        .unwrap_or("arq")
        .to_owned();
    IngestedJob {
        id,
        queue: config.queue.clone(),
        kind,
        payload: "null".to_owned(),
        priority: 0,
        max_attempts: 1,
        run_at: now,
        created_at: now,
        refused: Some(reason),
    }
}
