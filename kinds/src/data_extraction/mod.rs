//! The `data-extraction` kind: reads an `extraction_queries` row, fetches its
//! source pages, extracts the records that match its topic and upserts them into
//! `extraction_results`, then sets the query's status and count.
//!
//! It owns the kind's two tables (`kinds/migrations/20261122000005_extraction.sql`) and
//! nothing else in Postgres. It must never fetch a URL the SSRF guard (`guard`)
//! refused, never parse HTML on an async thread, and never write results one row
//! per statement. Re-running a job upserts the same rows again (idempotent).
//! See docs/kinds/data-extraction.md for the rules as users see them.

mod extract;
mod fetch;
mod guard;

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use self::extract::{Record, Topic};
use self::fetch::Fetcher;
use crate::DataExtractionConfig;
use jobrunner::jobs::{Handler, JobContext, JobError, JobResult, Registry};

pub const KIND: &str = "data-extraction";

/// Results written per statement: big enough to make few round trips, small
/// enough to keep each statement's parameters modest.
const UPSERT_BATCH: usize = 500;
/// The longest record URL stored; `(query_id, url)` is a unique btree index, whose
/// entries hold at most about 2,700 bytes.
const MAX_URL_BYTES: usize = 2048;

pub(crate) fn register(registry: &mut Registry, config: &DataExtractionConfig) {
    match DataExtraction::new(config) {
        Ok(kind) => {
            registry.register(KIND, kind);
        }
        Err(error) => {
            // Start-up goes on so the other kinds run; this kind's jobs retry
            // until a daemon that can build its client takes them.
            tracing::error!(%error, "The data-extraction kind is unavailable");
            let message = format!("data-extraction is unavailable in this daemon: {error}");
            registry.register(KIND, move |_ctx: JobContext| {
                let message = message.clone();
                async move { Err(JobError::retryable(message)) }
            });
        }
    }
}

/// The handler. Cheap to clone: every job shares the one [`Fetcher`] (one HTTP
/// client, one set of concurrency limits).
#[derive(Clone)]
pub struct DataExtraction {
    fetcher: Arc<Fetcher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    query_id: Uuid,
}

/// Why one source gave no records.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error("parsing the page failed: {0}")]
    Parse(String),
}

impl SourceError {
    fn is_transient(&self) -> bool {
        matches!(self, SourceError::Fetch(e) if e.is_transient())
    }
}

/// What one source gave.
struct SourceOutcome {
    records: Vec<Record>,
    truncated: bool,
}

impl Handler for DataExtraction {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, JobResult> {
        let this = self.clone();
        Box::pin(async move { this.execute(ctx).await })
    }
}

impl DataExtraction {
    pub fn new(config: &DataExtractionConfig) -> Result<DataExtraction, fetch::Error> {
        Ok(DataExtraction {
            fetcher: Arc::new(Fetcher::new(config)?),
        })
    }

    async fn execute(&self, ctx: JobContext) -> JobResult {
        let Payload { query_id: id } = JobError::parse_payload(&ctx.payload)?;
        let db = &ctx.db;
        let row: Option<(String, Value)> = sqlx::query_as(
            "SELECT search_topic, sources FROM public.extraction_queries WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(db)
        .await
        .map_err(|e| db_error(id, &e))?;
        let Some((topic_text, sources)) = row else {
            return Err(JobError::permanent(format!(
                "extraction query {id} not found"
            )));
        };
        let checked = Topic::new(&topic_text)
            .ok_or_else(|| {
                format!("extraction query {id}: search_topic `{topic_text}` has no words")
            })
            .and_then(|topic| parse_sources(id, &sources).map(|s| (topic, s)));
        let (topic, sources) = match checked {
            Ok(ok) => ok,
            Err(message) => {
                set_status(
                    db,
                    id,
                    ctx.id,
                    "failed",
                    Some(&json!([{ "error": message }])),
                )
                .await?;
                return Err(JobError::permanent(message));
            }
        };

        set_status(db, id, ctx.id, "running", None).await?;
        info!(query.id = %id, sources = sources.len(), "Extracting");

        let total = sources.len();
        let fetched = std::sync::atomic::AtomicUsize::new(0);
        let fetch_all = join_all(sources.iter().map(|s| {
            let (ctx, fetched) = (&ctx, &fetched);
            self.source(s, &topic).inspect(move |_| {
                let n = fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                ctx.progress(
                    (n * 100 / total) as u8,
                    format!("fetched {n} of {total} sources"),
                );
            })
        }));
        let outcomes = tokio::select! {
            outcomes = fetch_all => outcomes,
            _ = ctx.cancel.cancelled() => {
                set_status(db, id, ctx.id, "pending", None).await?;
                return Err(JobError::retryable(format!("extraction query {id}: cancelled while fetching")));
            }
        };

        let mut errors = Vec::new();
        let mut any_transient = false;
        let mut truncated = Vec::new();
        let mut found = Vec::new();
        for (source, outcome) in sources.iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => {
                    if outcome.truncated {
                        truncated.push(source.to_string());
                    }
                    found.push((source.to_string(), outcome.records));
                }
                Err(error) => {
                    warn!(query.id = %id, %source, %error, "Source failed");
                    any_transient |= error.is_transient();
                    errors.push(json!({ "source": source.as_str(), "error": format!("source {source}: {error}") }));
                }
            }
        }

        if found.is_empty() {
            return Err(self
                .all_failed(&ctx, id, sources.len(), errors, any_transient)
                .await);
        }

        let (sources_of, records) = merge_sources(found);
        let source_errors = (!errors.is_empty()).then(|| Value::Array(errors.clone()));
        let count = store(db, id, ctx.id, &sources_of, &records, source_errors)
            .await
            .map_err(|e| db_error(id, &e))?;
        info!(query.id = %id, results = count, failed_sources = errors.len(), "Extraction done");
        Ok(json!({
            "query_id": id,
            "result_count": count,
            "sources": sources.len(),
            "source_errors": errors,
            "truncated": truncated,
        }))
    }

    /// Fetches one source and extracts its records off the async threads.
    async fn source(&self, source: &Url, topic: &Topic) -> Result<SourceOutcome, SourceError> {
        let page = self.fetcher.fetch(source).await?;
        let topic = topic.clone();
        let truncated = page.truncated;
        let records =
            tokio::task::spawn_blocking(move || extract::extract(&page.body, &page.url, &topic))
                .await
                .map_err(|e| SourceError::Parse(e.to_string()))?;
        Ok(SourceOutcome { records, truncated })
    }

    /// Every source failed. If any failure may pass (network, 5xx) the job is
    /// retried and the query goes back to `pending`, or to `failed` when this was
    /// the last attempt; if none can pass, the query is `failed` and the job dead.
    async fn all_failed(
        &self,
        ctx: &JobContext,
        id: Uuid,
        total: usize,
        errors: Vec<Value>,
        any_transient: bool,
    ) -> JobError {
        let summary = errors
            .iter()
            .filter_map(|e| e["error"].as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let message = format!("extraction query {id}: all {total} sources failed: {summary}");
        let last = ctx.attempt >= ctx.max_attempts;
        let status = if any_transient && !last {
            "pending"
        } else {
            "failed"
        };
        if let Err(e) = set_status(&ctx.db, id, ctx.id, status, Some(&Value::Array(errors))).await {
            return e;
        }
        if any_transient {
            JobError::retryable(message)
        } else {
            JobError::permanent(message)
        }
    }
}

/// The query's sources: a non-empty JSON array of http(s) URLs.
fn parse_sources(id: Uuid, sources: &Value) -> Result<Vec<Url>, String> {
    let Some(items) = sources.as_array() else {
        return Err(format!(
            "extraction query {id}: sources must be a JSON array of URLs, not {sources}"
        ));
    };
    if items.is_empty() {
        return Err(format!("extraction query {id} has no sources"));
    }
    items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(|s| Url::parse(s.trim()).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    format!("extraction query {id}: source {item} is not an http(s) URL")
                })
        })
        .collect()
}

/// Folds the records of all sources into one list with one record per URL; the
/// first source (in the query's order) that found a URL is its `source_url`.
fn merge_sources(found: Vec<(String, Vec<Record>)>) -> (HashMap<String, String>, Vec<Record>) {
    let mut sources_of = HashMap::new();
    let mut all = Vec::new();
    for (source, records) in found {
        for record in records {
            sources_of
                .entry(record.url.clone())
                .or_insert_with(|| source.clone());
            all.push(record);
        }
    }
    (sources_of, extract::merge(all))
}

async fn set_status(
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
async fn store(
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

/// Database trouble is worth a retry: Postgres may be back by then.
/// SQLSTATE classes 22 (data exception), 23 (integrity) and 54 (a program limit,
/// such as an index row too large) mean these records can never be written:
/// permanent. Anything else (connection, timeout, deadlock) may pass on retry.
fn db_error(id: Uuid, error: &sqlx::Error) -> JobError {
    let message = format!(
        "extraction query {id}: database error: {}",
        jobrunner::error_chain(error)
    );
    let class = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.chars().take(2).collect::<String>());
    match class.as_deref() {
        Some("22" | "23" | "54") => JobError::permanent(message),
        _ => JobError::retryable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_that_are_not_http_urls_are_named_in_the_error() {
        let id = Uuid::nil();
        assert!(parse_sources(id, &json!(["https://a.example/", "http://b.example/x"])).is_ok());
        let err =
            parse_sources(id, &json!(["https://a.example/", "ftp://b.example/"])).unwrap_err();
        assert!(
            err.contains("source \"ftp://b.example/\" is not an http(s) URL"),
            "{err}"
        );
        let err = parse_sources(id, &json!([])).unwrap_err();
        assert!(err.ends_with("has no sources"), "{err}");
        let err = parse_sources(id, &json!([42])).unwrap_err();
        assert!(err.contains("source 42 is not"), "{err}");
    }

    #[test]
    fn the_first_source_that_found_a_url_is_its_source() {
        let rec = |url: &str| Record {
            url: url.into(),
            ..Record::default()
        };
        let (sources_of, records) = merge_sources(vec![
            ("s1".into(), vec![rec("a"), rec("b")]),
            ("s2".into(), vec![rec("b"), rec("c")]),
        ]);
        assert_eq!(records.len(), 3);
        assert_eq!(sources_of["b"], "s1");
        assert_eq!(sources_of["c"], "s2");
    }
}
