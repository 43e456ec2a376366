//! The `content-generation` kind: plans a month of social posts for one row of
//! `content_campaigns`, drafts each post with a generator, and writes the drafts to
//! `content_posts` with the campaign's status.
//!
//! It owns those two tables' writes and nothing else. It never touches Redis or the
//! jobs table, never commits some posts without the others (all drafts and the
//! `ready` status go in one transaction), and never deletes a post a person has
//! moved past `draft`. Running it twice leaves the same posts as running it once.
//! `docs/kinds/content-generation.md` is the user-facing description.

mod calendar;
mod generator;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::calendar::Slot;
use self::generator::{Draft, DraftRequest, Generator, OpenAi, Template};
use crate::{ContentGenerationConfig, ContentGenerator};
use jobrunner::config::Config;
use jobrunner::jobs::{JobContext, JobError, JobResult, Registry};

pub const KIND: &str = "content-generation";

pub(crate) fn register(registry: &mut Registry, config: &Config) {
    let kind = Arc::new(ContentGeneration::new(&config.section()));
    registry.register(KIND, move |ctx: JobContext| {
        let kind = Arc::clone(&kind);
        async move { kind.run(ctx).await }
    });
}

/// One instance per daemon, shared by all its jobs.
struct ContentGeneration {
    config: ContentGenerationConfig,
    /// Holds the kind's one HTTP client, so connections to the endpoint are reused
    /// across drafts and jobs.
    openai: OpenAi,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// A string first, so a bad id gets a message naming the field.
    campaign_id: String,
}

/// The columns of a campaign the kind reads.
#[derive(Debug, sqlx::FromRow)]
struct Campaign {
    id: Uuid,
    month: String,
    topic: String,
    brand: Option<String>,
    channels: Vec<String>,
    posts_per_week: i32,
    timezone: String,
    generator: String,
}

impl ContentGeneration {
    fn new(config: &ContentGenerationConfig) -> ContentGeneration {
        ContentGeneration {
            config: config.clone(),
            openai: OpenAi::new(config),
        }
    }

    async fn run(&self, ctx: JobContext) -> JobResult {
        let campaign_id = parse_payload(&ctx.payload)?;
        let campaign = start(&ctx.db, campaign_id, ctx.id).await?;
        let error = match self.generate(&ctx, &campaign).await {
            Ok(result) => return Ok(result),
            Err(error) => error,
        };
        // A retryable failure leaves the campaign `generating` for the next attempt;
        // only an end (permanent, or the last attempt) is written as `failed`.
        let last_attempt = ctx.attempt >= ctx.max_attempts;
        let ends = matches!(error, JobError::Permanent { .. }) || last_attempt;
        if ends && let Err(e) = mark_failed(&ctx.db, campaign.id, ctx.id, &error.to_string()).await
        {
            tracing::warn!(
                campaign.id = %campaign.id,
                error = %jobrunner::error_chain(&e),
                "Cannot record the content campaign's failure"
            );
        }
        Err(error)
    }

    async fn generate(&self, ctx: &JobContext, campaign: &Campaign) -> JobResult {
        let id = campaign.id;
        let bad = |reason: String| JobError::permanent(format!("content campaign {id}: {reason}"));
        let tz = calendar::zone(&campaign.timezone).map_err(|e| bad(e.to_string()))?;
        let channels = distinct_channels(&campaign.channels);
        if channels.is_empty() {
            return Err(bad("has no channels".to_owned()));
        }
        let slots = calendar::plan(&campaign.month, campaign.posts_per_week, tz, &channels)
            .map_err(|e| bad(e.to_string()))?;
        let which = self.generator_for(&campaign.generator).map_err(bad)?;
        let requests: Vec<DraftRequest> = slots
            .iter()
            .map(|slot| DraftRequest {
                topic: campaign.topic.clone(),
                brand: campaign.brand.clone(),
                channel: slot.channel.clone(),
                local: slot.local,
                timezone: campaign.timezone.clone(),
                sequence: slot.sequence,
            })
            .collect();
        let limit = self.config.max_concurrent_drafts;
        let drafts = match which {
            ContentGenerator::Template => draft_all(&Template, requests, limit, ctx, id).await?,
            ContentGenerator::Openai => {
                let drafter = self.openai.drafter().map_err(|e| prefix(e, id))?;
                draft_all(&drafter, requests, limit, ctx, id).await?
            }
        };
        let inserted = write(&ctx.db, id, ctx.id, &slots, &drafts).await?;
        let generator = match which {
            ContentGenerator::Template => "template",
            ContentGenerator::Openai => "openai",
        };
        tracing::info!(
            campaign.id = %id,
            posts = inserted,
            generator,
            "Content campaign drafted"
        );
        Ok(json!({
            "campaign_id": id,
            "generator": generator,
            "posts": inserted,
            // Slots whose post a person already moved past `draft`; those were kept.
            "kept": slots.len() as u64 - inserted,
        }))
    }

    /// The campaign's `generator` column: a name, or `default` for the config's.
    fn generator_for(&self, name: &str) -> Result<ContentGenerator, String> {
        match name {
            "template" => Ok(ContentGenerator::Template),
            "openai" => Ok(ContentGenerator::Openai),
            "default" => Ok(self.config.generator),
            other => Err(format!(
                "unknown generator `{other}` (expected template, openai or default)"
            )),
        }
    }
}

fn parse_payload(payload: &Value) -> Result<Uuid, JobError> {
    let Payload { campaign_id } = JobError::parse_payload(payload)?;
    Uuid::parse_str(campaign_id.trim()).map_err(|_| {
        JobError::permanent(format!(
            "bad payload: campaign_id `{campaign_id}` is not a UUID"
        ))
    })
}

/// The channels in their given order, each once and trimmed, so a repeated
/// channel cannot plan two posts for one slot.
fn distinct_channels(channels: &[String]) -> Vec<String> {
    let mut seen = Vec::with_capacity(channels.len());
    for channel in channels.iter().map(|c| c.trim()) {
        if !channel.is_empty() && !seen.iter().any(|s: &String| s == channel) {
            seen.push(channel.to_owned());
        }
    }
    seen
}

/// Drafts every request, at most `limit` at a time, in order, reporting progress
/// per drafted post. The first failure stops the rest: one more attempt will redo
/// them all, and that is idempotent.
async fn draft_all<G: Generator>(
    generator: &G,
    requests: Vec<DraftRequest>,
    limit: usize,
    ctx: &JobContext,
    campaign_id: Uuid,
) -> Result<Vec<Draft>, JobError> {
    let cancel: &CancellationToken = &ctx.cancel;
    let total = requests.len().max(1);
    let mut drafted = 0;
    // Owned requests: a closure over borrowed ones trips the compiler's check that
    // the handler's future is Send for every lifetime.
    let drafting = stream::iter(requests)
        .map(|request| async move {
            generator.draft(&request).await.map_err(|e| {
                prefix(
                    e,
                    format!(
                        "{campaign_id}, {} post of {}",
                        request.channel,
                        request.local.format("%Y-%m-%d %H:%M")
                    ),
                )
            })
        })
        .buffered(limit.max(1))
        .inspect_ok(|_| {
            drafted += 1;
            ctx.progress(
                (drafted * 100 / total) as u8,
                format!("drafted {drafted} of {total} posts"),
            );
        })
        .try_collect::<Vec<Draft>>();
    tokio::select! {
        drafts = drafting => drafts,
        _ = cancel.cancelled() => Err(JobError::retryable(format!(
            "content campaign {campaign_id}: cancelled while drafting posts"
        ))),
    }
}

/// Names the campaign (and post) in an error, keeping whether it is retryable.
fn prefix(error: JobError, what: impl std::fmt::Display) -> JobError {
    match error {
        JobError::Retryable {
            message,
            retry_after,
        } => JobError::Retryable {
            message: format!("content campaign {what}: {message}"),
            retry_after,
        },
        JobError::Permanent { message } => JobError::Permanent {
            message: format!("content campaign {what}: {message}"),
        },
    }
}

fn db_error(campaign_id: Uuid, doing: &str, error: &sqlx::Error) -> JobError {
    JobError::retryable(format!(
        "content campaign {campaign_id}: cannot {doing}: {}",
        jobrunner::error_chain(error)
    ))
}

/// Loads the campaign and marks it `generating` in one statement (its own short
/// transaction), so a front end sees the work start at once.
async fn start(db: &PgPool, campaign_id: Uuid, job_id: Uuid) -> Result<Campaign, JobError> {
    sqlx::query_as::<_, Campaign>(
        "UPDATE content_campaigns
         SET status = 'generating', job_id = $2, updated_at = now()
         WHERE id = $1
         RETURNING id, month, topic, brand, channels, posts_per_week, timezone, generator",
    )
    .bind(campaign_id)
    .bind(job_id)
    .fetch_optional(db)
    .await
    .map_err(|e| db_error(campaign_id, "mark it generating", &e))?
    .ok_or_else(|| JobError::permanent(format!("content campaign {campaign_id} not found")))
}

/// Replaces the campaign's drafts with `drafts` and marks it `ready`, all in one
/// transaction. Returns how many posts were inserted.
async fn write(
    db: &PgPool,
    campaign_id: Uuid,
    job_id: Uuid,
    slots: &[Slot],
    drafts: &[Draft],
) -> Result<u64, JobError> {
    let fail = |doing: &'static str| move |e: sqlx::Error| db_error(campaign_id, doing, &e);
    let mut tx = db.begin().await.map_err(fail("begin a transaction"))?;
    // Locking the campaign row makes two attempts that overlap (a lease expired
    // while the first still ran) write one after the other; the second then sees
    // and deletes the first's drafts instead of colliding with them.
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM content_campaigns WHERE id = $1 FOR UPDATE")
            .bind(campaign_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fail("lock the campaign"))?;
    if exists.is_none() {
        return Err(JobError::permanent(format!(
            "content campaign {campaign_id} was deleted while its posts were drafted"
        )));
    }
    sqlx::query("DELETE FROM content_posts WHERE campaign_id = $1 AND status = 'draft'")
        .bind(campaign_id)
        .execute(&mut *tx)
        .await
        .map_err(fail("delete the earlier drafts"))?;
    let hashtags: Vec<Value> = drafts.iter().map(|d| json!(d.hashtags)).collect();
    // One statement for the whole month. A slot still held by a post a person moved
    // past `draft` keeps that post (DO NOTHING).
    let inserted = sqlx::query(
        "INSERT INTO content_posts (campaign_id, scheduled_for, channel, title, body, hashtags)
         SELECT $1, p.scheduled_for, p.channel, p.title, p.body,
                ARRAY(SELECT jsonb_array_elements_text(p.hashtags))
         FROM UNNEST($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::jsonb[])
              AS p(scheduled_for, channel, title, body, hashtags)
         ON CONFLICT (campaign_id, channel, scheduled_for) DO NOTHING",
    )
    .bind(campaign_id)
    .bind(slots.iter().map(|s| s.at).collect::<Vec<_>>())
    .bind(slots.iter().map(|s| s.channel.clone()).collect::<Vec<_>>())
    .bind(drafts.iter().map(|d| d.title.clone()).collect::<Vec<_>>())
    .bind(drafts.iter().map(|d| d.body.clone()).collect::<Vec<_>>())
    .bind(hashtags)
    .execute(&mut *tx)
    .await
    .map_err(fail("insert the drafts"))?
    .rows_affected();
    sqlx::query(
        "UPDATE content_campaigns
         SET status = 'ready', last_error = NULL, job_id = $2, updated_at = now()
         WHERE id = $1",
    )
    .bind(campaign_id)
    .bind(job_id)
    .execute(&mut *tx)
    .await
    .map_err(fail("mark it ready"))?;
    tx.commit().await.map_err(fail("commit the drafts"))?;
    Ok(inserted)
}

async fn mark_failed(
    db: &PgPool,
    campaign_id: Uuid,
    job_id: Uuid,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE content_campaigns
         SET status = 'failed', last_error = $2, job_id = $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(campaign_id)
    .bind(error)
    .bind(job_id)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_without_a_campaign_id_names_the_field() {
        let err = parse_payload(&json!({})).unwrap_err();
        assert_eq!(err.to_string(), "bad payload: missing field `campaign_id`");
    }

    #[test]
    fn a_campaign_id_that_is_not_a_uuid_is_quoted() {
        let err = parse_payload(&json!({"campaign_id": "42"})).unwrap_err();
        assert!(matches!(err, JobError::Permanent { .. }));
        assert_eq!(
            err.to_string(),
            "bad payload: campaign_id `42` is not a UUID"
        );
    }

    #[test]
    fn the_default_generator_is_the_configured_one() {
        let config = ContentGenerationConfig {
            generator: ContentGenerator::Openai,
            ..ContentGenerationConfig::default()
        };
        let kind = ContentGeneration::new(&config);
        assert_eq!(kind.generator_for("default"), Ok(ContentGenerator::Openai));
        assert_eq!(
            kind.generator_for("template"),
            Ok(ContentGenerator::Template)
        );
        assert!(kind.generator_for("gpt").unwrap_err().contains("`gpt`"));
    }

    #[test]
    fn repeated_and_blank_channels_are_planned_once() {
        let channels = ["x", " linkedin", "x", "", "linkedin"].map(String::from);
        assert_eq!(distinct_channels(&channels), ["x", "linkedin"]);
    }

    #[test]
    fn a_prefixed_error_keeps_its_retry_after() {
        let err = JobError::Retryable {
            message: "slow down".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        };
        let JobError::Retryable {
            message,
            retry_after,
        } = prefix(err, "c1")
        else {
            panic!("not retryable");
        };
        assert_eq!(message, "content campaign c1: slow down");
        assert_eq!(retry_after, Some(std::time::Duration::from_secs(3)));
    }
}
