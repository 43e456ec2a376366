//! The `message-processing` kind: turns one raw messaging-provider webhook
//! (WhatsApp Cloud API shape) into rows of `conversations` and `messages`.
//!
//! It owns reading the webhook and the three statements that apply it, all in one
//! transaction: upsert the senders' conversations, insert the inbound messages by
//! provider id, and apply delivery/read receipts to outbound messages. It must never
//! count a resent message twice, move a receipt backwards, or fail a whole webhook
//! for one bad item: re-running a webhook changes nothing, and unreadable items are
//! reported in the job's result while the rest is kept. Reading the webhook is
//! `webhook.rs`; this file runs the statements.

mod webhook;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use jobrunner::jobs::{JobContext, JobError, JobResult, Registry};

use self::webhook::{Rejected, Webhook, clean, parse_webhook};

pub const KIND: &str = "message-processing";

pub(crate) fn register(registry: &mut Registry) {
    registry.register(KIND, run);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// Whose conversations these are; the same contact under two tenants is two
    /// conversations.
    tenant: String,
    /// The provider's request body, untouched.
    webhook: Value,
}

/// The longest tenant name, in bytes (it is part of a unique index too).
const MAX_TENANT_BYTES: usize = 512;

async fn run(ctx: JobContext) -> JobResult {
    let Payload { tenant, webhook } = JobError::parse_payload(&ctx.payload)?;
    if tenant.trim().is_empty() {
        return Err(JobError::permanent("bad payload: `tenant` is empty"));
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return Err(JobError::permanent(format!(
            "bad payload: `tenant` is {} bytes long, more than {MAX_TENANT_BYTES}",
            tenant.len()
        )));
    }
    let tenant = clean(&tenant);
    let webhook = parse_webhook(&webhook).map_err(JobError::permanent)?;
    if webhook.messages.is_empty() && webhook.receipts.is_empty() && !webhook.rejected.is_empty() {
        return Err(JobError::permanent(nothing_usable(&webhook.rejected)));
    }
    for rejected in &webhook.rejected {
        tracing::warn!(path = %rejected.path, error = %rejected.error, "Webhook item rejected");
    }

    let mut tx = ctx.db.begin().await.map_err(|e| db_error("begin", e))?;
    let (inserted, applied) = apply(&mut tx, &tenant, &webhook).await?;
    tx.commit().await.map_err(|e| db_error("commit", e))?;

    let duplicates = webhook.messages.len() as i64 - inserted;
    tracing::info!(
        inserted,
        duplicates,
        statuses_applied = applied,
        rejected = webhook.rejected.len(),
        "Webhook applied"
    );
    Ok(json!({
        "inserted": inserted,
        "duplicates": duplicates,
        "statuses_applied": applied,
        "rejected": webhook.rejected,
        "ignored_changes": webhook.ignored_changes,
    }))
}

/// Creates missing conversations and updates names. Numbers are sorted so two jobs
/// touching the same contacts lock their rows in the same order (no deadlock); a
/// name that did not change is not rewritten, so a resent webhook writes nothing.
const UPSERT_CONVERSATIONS: &str = "
INSERT INTO public.conversations AS c (tenant, contact_number, contact_name)
SELECT $1, t.number, t.name FROM UNNEST($2::text[], $3::text[]) AS t(number, name)
ON CONFLICT (tenant, contact_number) DO UPDATE
    SET contact_name = EXCLUDED.contact_name, updated_at = now()
    WHERE EXCLUDED.contact_name IS NOT NULL
      AND EXCLUDED.contact_name IS DISTINCT FROM c.contact_name";

/// Inserts the messages that are new and bumps their conversations' unread count
/// and last message time by exactly those, in one round trip. Returns how many were
/// new. The `contact_number = ANY($3)` terms keep both joins on the unique index.
const INSERT_MESSAGES: &str = "
WITH inserted AS (
    INSERT INTO public.messages
        (conversation_id, provider_message_id, direction, sender_type, body, sent_at, status, is_read)
    SELECT c.id, t.provider_id, 'inbound', 'contact', t.body, t.sent_at, 'received', false
    FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[])
             AS t(provider_id, number, body, sent_at)
    JOIN public.conversations c
      ON c.tenant = $1 AND c.contact_number = ANY($3) AND c.contact_number = t.number
    ON CONFLICT (provider_message_id) DO NOTHING
    RETURNING conversation_id, sent_at
), per_conversation AS (
    SELECT conversation_id, count(*) AS n, max(sent_at) AS latest
    FROM inserted GROUP BY conversation_id
), bumped AS (
    UPDATE public.conversations c
    SET unread_count = c.unread_count + p.n,
        last_message_at = GREATEST(c.last_message_at, p.latest),
        updated_at = now()
    FROM per_conversation p
    WHERE c.tenant = $1 AND c.contact_number = ANY($3) AND c.id = p.conversation_id
    RETURNING p.n
)
SELECT COALESCE(sum(n), 0)::bigint FROM bumped";

/// Applies receipts to outbound messages whose status is below them, and touches
/// their conversations' `updated_at` (the list shows the last message's status).
/// Returns how many messages changed.
const APPLY_RECEIPTS: &str = "
WITH receipt AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[]) AS t(provider_id, status, rank)
), applied AS (
    UPDATE public.messages m
    SET status = r.status, is_read = m.is_read OR r.status = 'read'
    FROM receipt r
    WHERE m.provider_message_id = ANY($1) AND m.provider_message_id = r.provider_id
      AND m.direction = 'outbound'
      AND r.rank > CASE m.status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2
                                 WHEN 'read' THEN 3 WHEN 'failed' THEN 4 ELSE 0 END
    RETURNING m.conversation_id
), touched AS (
    UPDATE public.conversations c SET updated_at = now()
    WHERE c.id = ANY (ARRAY(SELECT conversation_id FROM applied))
)
SELECT count(*) FROM applied";

/// Runs the three statements; returns (messages inserted, receipts applied).
async fn apply(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    webhook: &Webhook,
) -> Result<(i64, i64), JobError> {
    let mut inserted = 0;
    if !webhook.messages.is_empty() {
        let senders: BTreeMap<&str, Option<&str>> = webhook
            .messages
            .iter()
            .map(|m| {
                (
                    m.from.as_str(),
                    webhook.names.get(&m.from).map(String::as_str),
                )
            })
            .collect();
        let numbers: Vec<&str> = senders.keys().copied().collect();
        let names: Vec<Option<&str>> = senders.values().copied().collect();
        sqlx::query(UPSERT_CONVERSATIONS)
            .bind(tenant)
            .bind(&numbers)
            .bind(&names)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("upserting conversations", e))?;

        let m = &webhook.messages;
        inserted = sqlx::query_scalar(INSERT_MESSAGES)
            .bind(tenant)
            .bind(m.iter().map(|m| m.provider_id.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.from.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.body.as_deref()).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.sent_at).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("inserting messages", e))?;
    }
    let mut applied = 0;
    if !webhook.receipts.is_empty() {
        let r = &webhook.receipts;
        applied = sqlx::query_scalar(APPLY_RECEIPTS)
            .bind(r.iter().map(|r| r.provider_id.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.rank).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("applying statuses", e))?;
    }
    Ok((inserted, applied))
}

/// Permanent when this input can never be written, retryable otherwise
/// ([`crate::db::db_error`]).
fn db_error(doing: &str, error: sqlx::Error) -> JobError {
    crate::db::db_error(doing, &error)
}

/// The job's error when no item of the webhook could be read: the first few
/// reasons, each with its path.
fn nothing_usable(rejected: &[Rejected]) -> String {
    let mut text = rejected
        .iter()
        .take(3)
        .map(|r| format!("{}: {}", r.path, r.error))
        .collect::<Vec<_>>()
        .join("; ");
    if rejected.len() > 3 {
        text.push_str(&format!(" (and {} more)", rejected.len() - 3));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::webhook::*;
    use super::*;

    fn webhook(value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": value}
        ]}]})
    }

    fn text(id: &str, from: &str, body: &str) -> Value {
        json!({"from": from, "id": id, "timestamp": "1700000000", "type": "text", "text": {"body": body}})
    }

    #[test]
    fn a_webhook_without_entries_is_rejected() {
        let err = parse_webhook(&json!({"object": "whatsapp_business_account"})).unwrap_err();
        assert_eq!(err, "webhook: missing field `entry`");
        let err = parse_webhook(&json!({"entry": []})).unwrap_err();
        assert!(err.starts_with("webhook.entry: is empty"), "{err}");
    }

    #[test]
    fn a_webhook_that_is_not_an_object_says_what_it_was() {
        assert_eq!(
            parse_webhook(&json!("hello")).unwrap_err(),
            "webhook: expected an object, found a string"
        );
        assert_eq!(
            parse_webhook(&json!({"entry": {}})).unwrap_err(),
            "webhook: field `entry`: expected an array, found an object"
        );
    }

    #[test]
    fn a_bad_message_is_rejected_with_its_path_and_the_others_are_kept() {
        let mut bad = text("x", "1", "b");
        bad.as_object_mut().unwrap().remove("id");
        let body = json!({"object": "whatsapp_business_account", "entry": [{"changes": [
            {"field": "messages", "value": {"messages": [text("a", "1", "hi")]}},
            {"field": "messages", "value": {"messages": [text("b", "1", "x"), text("c", "1", "y"), bad]}}
        ]}]});
        let parsed = parse_webhook(&body).unwrap();
        assert_eq!(parsed.messages.len(), 3);
        assert_eq!(
            parsed.rejected,
            vec![Rejected {
                path: "webhook.entry[0].changes[1].value.messages[2]".into(),
                error: "missing field `id`".into(),
            }]
        );
    }

    #[test]
    fn messages_without_text_get_a_short_description() {
        let parsed = parse_webhook(&webhook(json!({"messages": [
            {"from": "1", "id": "a", "timestamp": "1700000000", "type": "image", "image": {"id": "m", "caption": "look"}},
            {"from": "1", "id": "b", "timestamp": 1700000001, "type": "location", "location": {}},
        ]})))
        .unwrap();
        let bodies: Vec<_> = parsed.messages.iter().map(|m| m.body.clone()).collect();
        assert_eq!(
            bodies,
            vec![Some("[image] look".into()), Some("[location]".into())]
        );
        assert!(parsed.rejected.is_empty());
    }

    #[test]
    fn the_strongest_receipt_for_a_message_wins_and_unknown_ones_are_rejected() {
        let parsed = parse_webhook(&webhook(json!({"statuses": [
            {"id": "w", "status": "read", "timestamp": "1"},
            {"id": "w", "status": "delivered", "timestamp": "1"},
            {"id": "v", "status": "deleted", "timestamp": "1"},
        ]})))
        .unwrap();
        assert_eq!(
            parsed.receipts,
            vec![Receipt {
                provider_id: "w".into(),
                status: "read",
                rank: 3
            }]
        );
        assert_eq!(parsed.rejected.len(), 1);
        assert!(
            parsed.rejected[0].error.contains("found \"deleted\""),
            "{:?}",
            parsed.rejected
        );
    }

    #[test]
    fn a_bad_timestamp_and_a_wrong_type_name_the_field() {
        let parsed = parse_webhook(&webhook(json!({"messages": [
            {"from": "1", "id": "a", "timestamp": "soon", "type": "text", "text": {"body": "x"}},
            {"from": 5, "id": "b", "timestamp": "1", "type": "text", "text": {"body": "x"}},
        ]})))
        .unwrap();
        let errors: Vec<_> = parsed.rejected.iter().map(|r| r.error.as_str()).collect();
        assert_eq!(
            errors,
            vec![
                "field `timestamp`: expected Unix seconds in the years 1970-9999, found \"soon\"",
                "field `from`: expected a string, found a number"
            ]
        );
    }

    #[test]
    fn other_change_fields_are_ignored_not_rejected() {
        let body = json!({"entry": [{"changes": [{"field": "account_update", "value": {}}]}]});
        let parsed = parse_webhook(&body).unwrap();
        assert_eq!((parsed.ignored_changes, parsed.rejected.len()), (1, 0));
    }

    #[test]
    fn the_error_for_an_unusable_webhook_lists_a_few_reasons() {
        let rejected: Vec<_> = (0..5)
            .map(|i| Rejected {
                path: format!("p{i}"),
                error: "e".into(),
            })
            .collect();
        assert_eq!(
            nothing_usable(&rejected),
            "p0: e; p1: e; p2: e (and 2 more)"
        );
    }
}
