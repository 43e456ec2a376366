//! Ingest: recording jobs producers put straight into Redis.
//!
//! A batch goes in with one `INSERT … FROM UNNEST`; a row Postgres refuses is
//! found by halving the batch, recorded `dead`, or quarantined when even that fails.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::{Error, Ledger, NewQuarantine, Result, Status};

/// A job a producer put straight into Redis, to be recorded in the ledger.
#[derive(Debug, Clone)]
pub struct IngestedJob {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub priority: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Set when the job is refused at ingest (bad payload): it is recorded `dead`.
    pub refused: Option<String>,
}

/// What [`Ledger::insert_ingested`] did besides inserting.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// Ids whose row already existed, final, for this same job: a producer
    /// re-sent them.
    pub finished: Vec<Uuid>,
    /// Ids that Postgres refused even as `dead`: quarantined instead.
    pub quarantined: Vec<Uuid>,
    /// Ids whose row already existed for another job (another queue, kind or
    /// payload), finished or not: the Redis copy re-used a job's id and must
    /// not run. The ledger's row is left as it was.
    pub conflicts: Vec<Conflict>,
}

/// A Redis copy whose id belongs to a different job in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: Uuid,
    /// The ledger job's queue and kind (the copy's are the ingester's).
    pub queue: String,
    pub kind: String,
}

impl IngestOutcome {
    /// Whether the copy of `id` must not run: its id is a finished job's or
    /// another job's, or it was quarantined.
    pub fn dropped(&self, id: &Uuid) -> bool {
        self.finished.contains(id)
            || self.quarantined.contains(id)
            || self.conflicts.iter().any(|c| &c.id == id)
    }
}

impl Ledger {
    /// Records jobs producers put straight into Redis. Idempotent: a row that exists
    /// already is left alone, so a re-ingest after a crash does no harm. Returns the
    /// ids whose row already exists, final, for the same job (a producer re-sent
    /// a finished job's id, and it must not run again) and those whose row
    /// belongs to another job (a copy that re-used the id of a job on another
    /// queue, or with another kind or payload: it must not run, and the ledger's
    /// job keeps its payload).
    ///
    /// A row Postgres refuses (bad data the script could not see) does not block the
    /// batch: the batch is retried row by row and each refused row is recorded
    /// `dead` with the reason, so one bad job never stalls a queue.
    pub async fn insert_ingested(&self, jobs: &mut [IngestedJob]) -> Result<IngestOutcome> {
        let mut outcome = IngestOutcome::default();
        // A data error names no row: `batch::isolate` halves the batch until the
        // culprits stand alone, so one poison row costs about 2·log2(n) statements,
        // and the rest go in. Any other error returns after the culprits found so
        // far are recorded; the caller retries the whole batch, which the
        // `ON CONFLICT DO NOTHING` makes harmless for the parts done.
        let out = crate::batch::isolate(
            std::iter::once(0..jobs.len()),
            |e: &Error| data_error(e).is_none(),
            |r| self.insert_ingested_batch(&jobs[r]),
        )
        .await;
        for (_, (finished, conflicts)) in out.done {
            outcome.finished.extend(finished);
            outcome.conflicts.extend(conflicts);
        }
        for (i, error) in out.poison {
            let message = data_error(&error).unwrap_or_default();
            let reason = format!("the ledger refused this job: {message}");
            if self.refuse_ingested(&mut jobs[i], reason).await? {
                outcome.quarantined.push(jobs[i].id);
            }
        }
        match out.transient {
            Some(error) => Err(error),
            None => Ok(outcome),
        }
    }

    /// Records one ingested job Postgres refused as `dead`, with every value it
    /// carries made as plain as possible; if even that is refused, quarantines it.
    /// True when it was quarantined.
    async fn refuse_ingested(&self, job: &mut IngestedJob, reason: String) -> Result<bool> {
        let now = Utc::now();
        job.refused = Some(match job.refused.take() {
            Some(earlier) => format!("{earlier}; {reason}"),
            None => reason,
        });
        job.run_at = now;
        job.created_at = now;
        job.priority = job.priority.clamp(-1000, 1000);
        job.max_attempts = job.max_attempts.max(1);
        match self.insert_ingested_batch(std::slice::from_mut(job)).await {
            Ok(_) => Ok(false),
            Err(Error::Sql(sqlx::Error::Database(e))) if is_data_error(e.code().as_deref()) => {
                let raw = serde_json::json!({
                    "id": job.id, "kind": job.kind, "payload": job.payload,
                    "priority": job.priority, "max_attempts": job.max_attempts,
                })
                .to_string();
                let error = format!(
                    "{}; recording it dead failed too: {}",
                    job.refused.as_deref().unwrap_or_default(),
                    e.message()
                );
                self.quarantine(&NewQuarantine {
                    source: "ingest",
                    queue: Some(&job.queue),
                    job_id: Some(job.id),
                    raw: &raw,
                    error: &error,
                })
                .await?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_ingested_batch(
        &self,
        jobs: &[IngestedJob],
    ) -> Result<(Vec<Uuid>, Vec<Conflict>)> {
        let mut cols = IngestColumns::default();
        for job in jobs {
            cols.push(job);
        }
        let ids = cols.ids.clone();
        let mut conn = self.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let inserted = sqlx::query(
            "INSERT INTO jobrunner.jobs
               (id, queue, kind, payload, status, priority, max_attempts, run_at, created_at,
                last_error, finished_at)
             SELECT u.id, u.queue, u.kind, u.payload::jsonb, u.status, u.priority, u.max_attempts,
                    u.run_at, u.created_at, u.last_error,
                    CASE WHEN u.status = 'dead' THEN now() END
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                         $7::int[], $8::timestamptz[], $9::timestamptz[], $10::text[])
               AS u(id, queue, kind, payload, status, priority, max_attempts, run_at, created_at,
                    last_error)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(cols.ids)
        .bind(&cols.queues[..])
        .bind(&cols.kinds[..])
        .bind(&cols.payloads[..])
        .bind(cols.statuses)
        .bind(cols.priorities)
        .bind(cols.max_attempts)
        .bind(cols.run_ats)
        .bind(cols.created_ats)
        .bind(cols.errors)
        .fetch_all(&mut *tx)
        .await?;
        let inserted: std::collections::HashSet<Uuid> = inserted.iter().map(|r| r.get(0)).collect();
        let existing: Vec<usize> = (0..ids.len())
            .filter(|&i| !inserted.contains(&ids[i]))
            .collect();
        // Rows that existed before this insert (usually none) must be this very
        // job (a re-ingest after a crash, or a producer re-sending), or the copy
        // is an impostor; and a final row's id must not run again.
        let mut finished = Vec::new();
        let mut conflicts = Vec::new();
        if !existing.is_empty() {
            let pick =
                |col: &[String]| existing.iter().map(|&i| col[i].clone()).collect::<Vec<_>>();
            let rows = sqlx::query(
                "SELECT j.id, j.status = ANY($5), j.queue, j.kind,
                        j.queue = u.queue AND j.kind = u.kind AND j.payload = u.payload::jsonb
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
                   AS u(id, queue, kind, payload)
                 JOIN jobrunner.jobs j ON j.id = u.id
                 WHERE j.id = ANY($1)",
            )
            .bind(existing.iter().map(|&i| ids[i]).collect::<Vec<Uuid>>())
            .bind(pick(&cols.queues))
            .bind(pick(&cols.kinds))
            .bind(pick(&cols.payloads))
            .bind(&Status::FINAL[..])
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id: Uuid = row.get(0);
                if !row.get::<bool, _>(4) {
                    conflicts.push(Conflict {
                        id,
                        queue: row.get(2),
                        kind: row.get(3),
                    });
                } else if row.get::<bool, _>(1) {
                    finished.push(id);
                }
            }
        }
        tx.commit().await?;
        Ok((finished, conflicts))
    }
}

/// SQLSTATE classes 22 (data exception) and 23 (constraint violation): the row is
/// wrong, not the connection.
fn is_data_error(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

#[derive(Default)]
struct IngestColumns {
    ids: Vec<Uuid>,
    queues: Vec<String>,
    kinds: Vec<String>,
    payloads: Vec<String>,
    statuses: Vec<&'static str>,
    priorities: Vec<i32>,
    max_attempts: Vec<i32>,
    run_ats: Vec<DateTime<Utc>>,
    created_ats: Vec<DateTime<Utc>>,
    errors: Vec<Option<String>>,
}

impl IngestColumns {
    fn push(&mut self, job: &IngestedJob) {
        let (status, payload) = match &job.refused {
            // A refused payload may not be JSON at all: keep the text as a JSON string.
            Some(_) => (
                Status::Dead,
                Value::String(crate::pgtext::safe(&job.payload).into_owned()).to_string(),
            ),
            None => (Status::initial(job.run_at, Utc::now()), job.payload.clone()),
        };
        self.ids.push(job.id);
        self.queues.push(job.queue.clone());
        self.kinds.push(job.kind.clone());
        self.payloads.push(payload);
        self.statuses.push(status.as_str());
        self.priorities.push(job.priority);
        self.max_attempts.push(job.max_attempts);
        self.run_ats.push(job.run_at);
        self.created_ats.push(job.created_at);
        self.errors.push(
            job.refused
                .as_deref()
                .map(|e| crate::pgtext::safe(e).into_owned()),
        );
    }
}

/// The server's message when `error` is a data error (SQLSTATE class 22 or 23):
/// one row's values were refused, and another row would go in.
fn data_error(error: &Error) -> Option<String> {
    match error {
        Error::Sql(sqlx::Error::Database(e)) if is_data_error(e.code().as_deref()) => {
            Some(e.message().to_owned())
        }
        _ => None,
    }
}
