//! The `message-processing` kind: turns one raw messaging-provider webhook
//! (WhatsApp Cloud API shape) into rows of `conversations` and `messages`.
//!
//! It owns reading the webhook and the three statements that apply it, all in one
//! transaction: upsert the senders' conversations, insert the inbound messages by
//! provider id, and apply delivery/read receipts to outbound messages. It must never
//! count a resent message twice, move a receipt backwards, or fail a whole webhook
//! for one bad item: re-running a webhook changes nothing, and unreadable items are
//! reported in the job's result while the rest is kept.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use jobrunner::jobs::{JobContext, JobError, JobResult, Registry};

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

/// What a webhook says, once read. Items that could not be read are in `rejected`.
#[derive(Debug, Default)]
struct Webhook {
    /// Contact number → display name, from `contacts`.
    names: BTreeMap<String, String>,
    messages: Vec<Inbound>,
    receipts: Vec<Receipt>,
    rejected: Vec<Rejected>,
    /// Changes of another `field` (account updates, templates …): not ours.
    ignored_changes: usize,
}

#[derive(Debug, PartialEq)]
struct Inbound {
    provider_id: String,
    from: String,
    sent_at: DateTime<Utc>,
    body: Option<String>,
}

#[derive(Debug, PartialEq)]
struct Receipt {
    provider_id: String,
    status: &'static str,
    /// Position in sent < delivered < read < failed; a receipt applies only if it is
    /// above the message's current status, so receipts never move backwards and
    /// `failed` is terminal.
    rank: i32,
}

#[derive(Debug, PartialEq, Serialize)]
struct Rejected {
    path: String,
    error: String,
}

/// The longest provider message id or contact number kept, in bytes. Real ones are
/// under 100; the limit keeps every value far below the btree entry size.
const MAX_ID_BYTES: usize = 512;
/// The longest tenant name, in bytes (it is part of a unique index too).
const MAX_TENANT_BYTES: usize = 512;
/// 9999-12-31T23:59:59Z in Unix seconds.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// Receipt statuses the provider sends, with their rank (see [`Receipt::rank`]).
const RECEIPTS: [(&str, i32); 4] = [("sent", 1), ("delivered", 2), ("read", 3), ("failed", 4)];

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

/// SQLSTATE classes 22 (data exception), 23 (integrity violation) and 54 (a
/// program limit such as the index row size) mean this input can never be
/// written, so retrying is pointless; anything else (a lost connection, a pool
/// timeout, a deadlock) may pass on the next attempt.
fn db_error(doing: &str, error: sqlx::Error) -> JobError {
    let message = format!("{doing}: {}", jobrunner::error_chain(&error));
    let class = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.chars().take(2).collect::<String>());
    match class.as_deref() {
        Some("22" | "23" | "54") => JobError::permanent(message),
        _ => JobError::retryable(message),
    }
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

/// Reads a webhook. The outer shape (an object with a non-empty `entry` array) is
/// required; below that, an unreadable entry, change, contact, message or status is
/// rejected on its own and the rest is still read.
fn parse_webhook(webhook: &Value) -> Result<Webhook, String> {
    let root = object(webhook).map_err(|e| format!("webhook: {e}"))?;
    if let Some(kind) = root.get("object")
        && kind.as_str() != Some("whatsapp_business_account")
    {
        return Err(format!(
            "webhook.object: expected \"whatsapp_business_account\", found {kind}"
        ));
    }
    let entries = array(root, "entry").map_err(|e| format!("webhook: {e}"))?;
    if entries.is_empty() {
        return Err("webhook.entry: is empty, so there is nothing to process".into());
    }
    let mut out = Webhook::default();
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("webhook.entry[{i}]");
        let changes = match object(entry).and_then(|e| array(e, "changes")) {
            Ok(changes) => changes,
            Err(error) => {
                out.reject(path, error);
                continue;
            }
        };
        for (j, change) in changes.iter().enumerate() {
            let path = format!("{path}.changes[{j}]");
            if let Err(error) = parse_change(change, &path, &mut out) {
                out.reject(path, error);
            }
        }
    }
    Ok(out)
}

fn parse_change(change: &Value, path: &str, out: &mut Webhook) -> Result<(), String> {
    let change = object(change)?;
    if string(change, "field")? != "messages" {
        out.ignored_changes += 1;
        return Ok(());
    }
    let value = object(change.get("value").ok_or("missing field `value`")?)
        .map_err(|e| format!("field `value`: {e}"))?;
    for (list, parse) in [
        (
            "contacts",
            parse_contact as fn(&Map<String, Value>, &mut Webhook) -> Result<(), String>,
        ),
        ("messages", parse_message),
        ("statuses", parse_status),
    ] {
        let Some(items) = value.get(list) else {
            continue;
        };
        let Some(items) = items.as_array() else {
            out.reject(
                format!("{path}.value.{list}"),
                format!("expected an array, found {}", type_of(items)),
            );
            continue;
        };
        for (k, item) in items.iter().enumerate() {
            if let Err(error) = object(item).and_then(|item| parse(item, out)) {
                out.reject(format!("{path}.value.{list}[{k}]"), error);
            }
        }
    }
    Ok(())
}

fn parse_contact(contact: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
    let number = bounded(contact, "wa_id", MAX_ID_BYTES)?;
    let name = match contact.get("profile") {
        None | Some(Value::Null) => None,
        Some(profile) => match object(profile)
            .map_err(|e| format!("field `profile`: {e}"))?
            .get("name")
        {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(clean(name)),
            Some(other) => {
                return Err(format!(
                    "field `profile.name`: expected a string, found {}",
                    type_of(other)
                ));
            }
        },
    };
    if let Some(name) = name {
        out.names.insert(number, name);
    }
    Ok(())
}

fn parse_message(message: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
    let provider_id = bounded(message, "id", MAX_ID_BYTES)?;
    let from = bounded(message, "from", MAX_ID_BYTES)?;
    let sent_at = timestamp(message)?;
    let kind = string(message, "type")?;
    let body = if kind == "text" {
        let text = message
            .get("text")
            .ok_or("missing field `text` for a message of type text")?;
        let text = object(text).map_err(|e| format!("field `text`: {e}"))?;
        Some(clean(
            string(text, "body").map_err(|e| format!("field `text`: {e}"))?,
        ))
    } else {
        Some(describe(kind, message))
    };
    if out.messages.iter().any(|m| m.provider_id == provider_id) {
        // The same message twice in one body: keep the first, like a resend.
        return Ok(());
    }
    out.messages.push(Inbound {
        provider_id,
        from,
        sent_at,
        body,
    });
    Ok(())
}

fn parse_status(status: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
    let provider_id = bounded(status, "id", MAX_ID_BYTES)?;
    let name = string(status, "status")?;
    let Some(&(status, rank)) = RECEIPTS.iter().find(|(s, _)| *s == name) else {
        return Err(format!(
            "field `status`: expected sent, delivered, read or failed, found \"{name}\""
        ));
    };
    // Several receipts for one message in one body: only the strongest matters.
    match out
        .receipts
        .iter_mut()
        .find(|r| r.provider_id == provider_id)
    {
        Some(seen) if seen.rank >= rank => {}
        Some(seen) => (seen.status, seen.rank) = (status, rank),
        None => out.receipts.push(Receipt {
            provider_id,
            status,
            rank,
        }),
    }
    Ok(())
}

impl Webhook {
    fn reject(&mut self, path: String, error: String) {
        self.rejected.push(Rejected { path, error });
    }
}

/// A short stand-in body for a message without text: "[image]", or "[image] caption".
fn describe(kind: &str, message: &Map<String, Value>) -> String {
    let plain = !kind.is_empty()
        && kind.len() <= 32
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let label = if plain { kind } else { "message" };
    let caption = message
        .get(kind)
        .and_then(|media| media.get("caption"))
        .and_then(Value::as_str);
    match caption {
        Some(caption) => format!("[{label}] {}", clean(caption)),
        None => format!("[{label}]"),
    }
}

/// The provider sends Unix seconds as a string ("1700000000"); a number is accepted too.
fn timestamp(message: &Map<String, Value>) -> Result<DateTime<Utc>, String> {
    let value = message
        .get("timestamp")
        .ok_or("missing field `timestamp`")?;
    let seconds = match value {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    // Postgres and chrono disagree on the far ends of time; a message dated outside
    // the years 1970-9999 is a provider's bug, rejected on its own.
    seconds
        .filter(|s| (0..=MAX_UNIX_SECONDS).contains(s))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| {
            let shown = jobrunner::pgtext::truncate(&value.to_string(), 64).to_owned();
            format!(
                "field `timestamp`: expected Unix seconds in the years 1970-9999, found {shown}"
            )
        })
}

/// Postgres text cannot hold NUL; a NUL in a provider's text is replaced rather
/// than failing the message.
fn clean(text: &str) -> String {
    jobrunner::pgtext::safe(text).into_owned()
}

/// A required string field that goes into a unique index: longer than `max` bytes
/// it could never be stored (a btree entry holds at most about 2,700 bytes), so the
/// item is rejected instead of failing the whole webhook.
fn bounded(object: &Map<String, Value>, field: &str, max: usize) -> Result<String, String> {
    let text = string(object, field)?;
    if text.len() > max {
        return Err(format!(
            "field `{field}`: {} bytes long, more than the {max} an id may have",
            text.len()
        ));
    }
    Ok(clean(text))
}

fn object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("expected an object, found {}", type_of(value)))
}

fn array<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Vec<Value>, String> {
    let value = object
        .get(field)
        .ok_or_else(|| format!("missing field `{field}`"))?;
    value.as_array().ok_or_else(|| {
        format!(
            "field `{field}`: expected an array, found {}",
            type_of(value)
        )
    })
}

fn string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    let value = object
        .get(field)
        .ok_or_else(|| format!("missing field `{field}`"))?;
    match value.as_str() {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("field `{field}`: is empty")),
        None => Err(format!(
            "field `{field}`: expected a string, found {}",
            type_of(value)
        )),
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
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
