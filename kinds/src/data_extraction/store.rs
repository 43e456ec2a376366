//! What the kind writes: a query's status and errors, and its results upserted
//! in batches with the query marked `done` in the same transaction.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::warn;
use uuid::Uuid;

use super::extract::Record;
use jobrunner::jobs::JobError;

/// Results written per statement: big enough to make few round trips, small
/// enough to keep each statement's parameters modest.
const UPSERT_BATCH: usize = 500;
/// The longest record URL stored; `(query_id, url)` is a unique btree index, whose
/// entries hold at most about 2,700 bytes.
const MAX_URL_BYTES: usize = 2048;

pub(super) async fn set_status(
    db: &PgPool,
    id: Uuid,
    job_id: Uuid,
    status: &str,
    source_errors: Option<&Value>,
) -> Result<(), JobError> {
    let source_errors = source_errors.map(|v| {
        let mut v = v.clone();
        jobrunner::pgtext::safe_json(&mut v);
        v
    });
    // No `source_errors` leaves the column alone when a run starts, so the errors
    // of the last run stay readable while this one runs.
    sqlx::query(
        "UPDATE public.extraction_queries
            SET status = $2, job_id = $3, updated_at = now(),
                source_errors = COALESCE($4, source_errors)
          WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(job_id)
    .bind(source_errors)
    .execute(db)
    .await
    .map_err(|e| db_error(id, &e))?;
    Ok(())
}

/// Upserts the records in batches (one statement each) and marks the query
/// `done`, all in one transaction. Returns the query's result count.
pub(super) async fn store(
    db: &PgPool,
    id: Uuid,
    job_id: Uuid,
    sources_of: &HashMap<String, String>,
    records: &[Record],
    source_errors: Option<Value>,
) -> Result<i32, sqlx::Error> {
    // Text from fetched pages is made safe for Postgres here, whatever path it took;
    // a URL too long for the unique index could never be stored and is skipped.
    let safe = |t: &str| jobrunner::pgtext::safe(t).into_owned();
    let kept: Vec<&Record> = records
        .iter()
        .filter(|r| r.url.len() <= MAX_URL_BYTES)
        .collect();
    if kept.len() < records.len() {
        warn!(query.id = %id, skipped = records.len() - kept.len(),
            "Skipped records whose URL is longer than {MAX_URL_BYTES} bytes");
    }
    let source_errors = source_errors.map(|mut v| {
        jobrunner::pgtext::safe_json(&mut v);
        v
    });
    let mut tx = db.begin().await?;
    for batch in kept.chunks(UPSERT_BATCH) {
        let mut sources = Vec::with_capacity(batch.len());
        let mut urls = Vec::with_capacity(batch.len());
        let mut titles = Vec::with_capacity(batch.len());
        let mut snippets = Vec::with_capacity(batch.len());
        let mut emails = Vec::with_capacity(batch.len());
        let mut phones = Vec::with_capacity(batch.len());
        for r in batch {
            sources.push(sources_of.get(&r.url).map(|s| safe(s)));
            urls.push(safe(&r.url));
            titles.push(r.title.as_deref().map(safe));
            snippets.push(r.snippet.as_deref().map(safe));
            emails.push(json!(r.emails.iter().map(|e| safe(e)).collect::<Vec<_>>()));
            phones.push(json!(r.phones.iter().map(|p| safe(p)).collect::<Vec<_>>()));
        }
        // Unchanged rows are left alone, so a re-run keeps their `extracted_at`.
        sqlx::query(
            "INSERT INTO public.extraction_results AS r
                    (query_id, source_url, url, title, snippet, emails, phones)
             SELECT $1, s.source_url, s.url, s.title, s.snippet,
                    ARRAY(SELECT jsonb_array_elements_text(s.emails)),
                    ARRAY(SELECT jsonb_array_elements_text(s.phones))
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
                    AS s(source_url, url, title, snippet, emails, phones)
             ON CONFLICT (query_id, url) DO UPDATE
                SET source_url = EXCLUDED.source_url, title = EXCLUDED.title,
                    snippet = EXCLUDED.snippet, emails = EXCLUDED.emails,
                    phones = EXCLUDED.phones, extracted_at = now()
              WHERE (r.source_url, r.title, r.snippet, r.emails, r.phones)
                    IS DISTINCT FROM
                    (EXCLUDED.source_url, EXCLUDED.title, EXCLUDED.snippet, EXCLUDED.emails, EXCLUDED.phones)",
        )
        .bind(id)
        .bind(&sources)
        .bind(&urls)
        .bind(&titles)
        .bind(&snippets)
        .bind(&emails)
        .bind(&phones)
        .execute(&mut *tx)
        .await?;
    }
    let count: i32 = sqlx::query_scalar(
        "UPDATE public.extraction_queries
            SET status = 'done', job_id = $2, updated_at = now(), source_errors = $3,
                result_count = (SELECT count(*) FROM public.extraction_results WHERE query_id = $1)
          WHERE id = $1
      RETURNING result_count",
    )
    .bind(id)
    .bind(job_id)
    .bind(source_errors)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(count)
}

/// A database error of query `id`'s job: permanent when these records can never
/// be written, retryable otherwise ([`crate::db::db_error`]).
pub(super) fn db_error(id: Uuid, error: &sqlx::Error) -> JobError {
    crate::db::db_error(&format!("extraction query {id}: database error"), error)
}
