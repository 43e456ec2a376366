//! The `data-extraction` kind: reads an `extraction_queries` row, fetches its
//! source pages, extracts the records that match its topic and upserts them into
//! `extraction_results`, then sets the query's status and count.
//!
//! It owns the kind's two tables (`kinds/migrations/20261122000005_extraction.sql`) and
//! nothing else in Postgres. It must never fetch a URL the SSRF guard (`guard`)
//! refused, never parse HTML on an async thread, and never write results one row
//! per statement (`store.rs` holds the writes). Re-running a job upserts the
//! same rows again (idempotent).
//! See docs/kinds/data-extraction.md for the rules as users see them.

mod extract;
mod fetch;
mod guard;
mod store;

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use self::extract::{Record, Topic};
use self::fetch::Fetcher;
use self::store::{db_error, set_status, store};
use crate::DataExtractionConfig;
use jobrunner::jobs::{Handler, JobContext, JobError, JobResult, Registry};

pub const KIND: &str = "data-extraction";

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
