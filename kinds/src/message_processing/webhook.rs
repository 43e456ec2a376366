//! Reading a webhook: the provider's request body (WhatsApp Cloud API shape)
//! becomes contacts' names, inbound messages and receipts, with every item that
//! could not be read kept in `rejected` with its path and reason. Pure: no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// What a webhook says, once read. Items that could not be read are in `rejected`.
#[derive(Debug, Default)]
pub(super) struct Webhook {
    /// Contact number → display name, from `contacts`.
    pub(super) names: BTreeMap<String, String>,
    pub(super) messages: Vec<Inbound>,
    pub(super) receipts: Vec<Receipt>,
    pub(super) rejected: Vec<Rejected>,
    /// Changes of another `field` (account updates, templates …): not ours.
    pub(super) ignored_changes: usize,
}

#[derive(Debug, PartialEq)]
pub(super) struct Inbound {
    pub(super) provider_id: String,
    pub(super) from: String,
    pub(super) sent_at: DateTime<Utc>,
    pub(super) body: Option<String>,
}

#[derive(Debug, PartialEq)]
pub(super) struct Receipt {
    pub(super) provider_id: String,
    pub(super) status: &'static str,
    /// Position in sent < delivered < read < failed; a receipt applies only if it is
    /// above the message's current status, so receipts never move backwards and
    /// `failed` is terminal.
    pub(super) rank: i32,
}

#[derive(Debug, PartialEq, Serialize)]
pub(super) struct Rejected {
    pub(super) path: String,
    pub(super) error: String,
}

/// The longest provider message id or contact number kept, in bytes. Real ones are
/// under 100; the limit keeps every value far below the btree entry size.
pub(super) const MAX_ID_BYTES: usize = 512;
/// 9999-12-31T23:59:59Z in Unix seconds.
pub(super) const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// Receipt statuses the provider sends, with their rank (see [`Receipt::rank`]).
pub(super) const RECEIPTS: [(&str, i32); 4] =
    [("sent", 1), ("delivered", 2), ("read", 3), ("failed", 4)];

/// Reads a webhook. The outer shape (an object with a non-empty `entry` array) is
/// required; below that, an unreadable entry, change, contact, message or status is
/// rejected on its own and the rest is still read.
pub(super) fn parse_webhook(webhook: &Value) -> Result<Webhook, String> {
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

pub(super) fn parse_change(change: &Value, path: &str, out: &mut Webhook) -> Result<(), String> {
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

pub(super) fn parse_contact(contact: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
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

pub(super) fn parse_message(message: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
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

pub(super) fn parse_status(status: &Map<String, Value>, out: &mut Webhook) -> Result<(), String> {
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
pub(super) fn describe(kind: &str, message: &Map<String, Value>) -> String {
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
pub(super) fn timestamp(message: &Map<String, Value>) -> Result<DateTime<Utc>, String> {
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
pub(super) fn clean(text: &str) -> String {
    jobrunner::pgtext::safe(text).into_owned()
}

/// A required string field that goes into a unique index: longer than `max` bytes
/// it could never be stored (a btree entry holds at most about 2,700 bytes), so the
/// item is rejected instead of failing the whole webhook.
pub(super) fn bounded(
    object: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<String, String> {
    let text = string(object, field)?;
    if text.len() > max {
        return Err(format!(
            "field `{field}`: {} bytes long, more than the {max} an id may have",
            text.len()
        ));
    }
    Ok(clean(text))
}

pub(super) fn object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("expected an object, found {}", type_of(value)))
}

pub(super) fn array<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a Vec<Value>, String> {
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

pub(super) fn string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
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

pub(super) fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
