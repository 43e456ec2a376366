//! `jobrunner.external_ids`: the id a job has in the system it came from (the
//! arq bridge records arq ids here), so admins can find a job by that id.

use uuid::Uuid;

use super::{Ledger, Result};

/// One job's id in the system it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId {
    pub job_id: Uuid,
    /// The system, e.g. `arq`.
    pub source: String,
    /// The job's id there.
    pub external_id: String,
    /// Where it came from there (for arq: the queue).
    pub origin: String,
}

impl Ledger {
    /// Records external ids of jobs whose rows exist; a job already recorded keeps
    /// its first record. One statement for the batch.
    pub async fn record_external_ids(&self, ids: &[ExternalId]) -> Result {
        if ids.is_empty() {
            return Ok(());
        }
        let (jobs, rest): (Vec<Uuid>, Vec<(&str, &str, &str)>) = ids
            .iter()
            .map(|e| {
                (
                    e.job_id,
                    (e.source.as_str(), e.external_id.as_str(), e.origin.as_str()),
                )
            })
            .unzip();
        let sources: Vec<&str> = rest.iter().map(|r| r.0).collect();
        let external: Vec<&str> = rest.iter().map(|r| r.1).collect();
        let origins: Vec<&str> = rest.iter().map(|r| r.2).collect();
        sqlx::query(
            "INSERT INTO jobrunner.external_ids (job_id, source, external_id, origin)
             SELECT u.job_id, u.source, u.external_id, u.origin
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
                  AS u(job_id, source, external_id, origin)
             WHERE u.job_id IN (SELECT id FROM jobrunner.jobs WHERE id = ANY($1))
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(&jobs)
        .bind(&sources)
        .bind(&external)
        .bind(&origins)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The jobs recorded with `external_id` from `source`.
    pub async fn jobs_by_external_id(&self, source: &str, external_id: &str) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT job_id FROM jobrunner.external_ids WHERE source = $1 AND external_id = $2",
        )
        .bind(source)
        .bind(external_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
