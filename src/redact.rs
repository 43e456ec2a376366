//! Redaction: payload and result fields that hold personal data (phone numbers,
//! message bodies) are shown as `"[redacted]"` in everything jobrunner prints or
//! serves about a job: `/jobs/{id}`, `jobrunner status` and `inspect`, and the
//! error texts that reach logs, events and `last_error`. The ledger keeps the
//! payload and result whole.
//!
//! The rules come from `[redaction]` (JSON pointers, global and per kind). Every
//! front end redacts a job through one function, [`apply`]; the worker scrubs an
//! attempt's error text with [`Redaction::scrub`] before it logs or records it.
//! This module never touches a store.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::config::{JsonPointer, RedactionConfig};
use crate::ledger::Job;

/// What a redacted field shows instead of its value.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this (in characters) are replaced in JSON but not
/// searched for in free text, where they would match ordinary words.
const MIN_SCRUB_CHARS: usize = 4;

/// The rules of `[redaction]`, ready to apply. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    global: Rules,
    kinds: HashMap<String, Rules>,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    payload: Vec<JsonPointer>,
    result: Vec<JsonPointer>,
}

/// Redacts one job given as JSON, in the shape `/jobs/{id}`, `jobrunner status
/// --json` and `jobrunner inspect --json` print (an object with `kind`,
/// `payload`, `result`, `last_error`, `progress_message` and `errors`): the
/// fields the rules name in `payload` and `result` become [`REDACTED`], and
/// every payload value they name is replaced in the error and progress texts.
/// A value that is not such an object is left alone.
pub fn apply(redaction: &Redaction, job: &mut Value) {
    let Some(object) = job.as_object_mut() else {
        return;
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut secrets = Vec::new();
    if let Some(payload) = object.get_mut("payload") {
        secrets = redaction.payload(&kind, payload);
    }
    if let Some(result) = object.get_mut("result") {
        redaction.result(&kind, result);
    }
    if secrets.is_empty() {
        return;
    }
    for field in ["last_error", "progress_message"] {
        if let Some(Value::String(text)) = object.get_mut(field) {
            scrub_in_place(&secrets, text);
        }
    }
    if let Some(errors) = object.get_mut("errors") {
        history(&secrets, errors);
    }
}

/// The typed form of [`apply`], for one ledger row (the CLI's tables). Returns
/// the payload values it removed, for [`history`].
pub fn job(redaction: &Redaction, job: &mut Job) -> Vec<String> {
    let secrets = redaction.payload(&job.kind, &mut job.payload);
    if let Some(result) = &mut job.result {
        redaction.result(&job.kind, result);
    }
    for text in [&mut job.last_error, &mut job.progress_message]
        .into_iter()
        .flatten()
    {
        scrub_in_place(&secrets, text);
    }
    secrets
}

/// Replaces `secrets` in the `error` texts of an attempt history
/// (`[{attempt, error, at}]`, the `errors` column).
pub fn history(secrets: &[String], errors: &mut Value) {
    if let Value::Array(entries) = errors {
        for entry in entries {
            if let Some(Value::String(text)) = entry.get_mut("error") {
                scrub_in_place(secrets, text);
            }
        }
    }
}

impl Redaction {
    pub fn new(config: &RedactionConfig) -> Redaction {
        Redaction {
            global: Rules {
                payload: config.payload.clone(),
                result: config.result.clone(),
            },
            kinds: config
                .kinds
                .iter()
                .map(|(kind, rules)| {
                    let rules = Rules {
                        payload: rules.payload.clone(),
                        result: rules.result.clone(),
                    };
                    (kind.clone(), rules)
                })
                .collect(),
        }
    }

    /// Whether jobs of `kind` have any field to redact in their payload.
    pub fn covers_payload(&self, kind: &str) -> bool {
        self.pointers(kind, |r| &r.payload).next().is_some()
    }

    /// Redacts a payload in place; returns the values it removed (the texts of
    /// every string and number under the named fields), to scrub from texts.
    pub fn payload(&self, kind: &str, payload: &mut Value) -> Vec<String> {
        let mut removed = Vec::new();
        for pointer in self.pointers(kind, |r| &r.payload) {
            redact_at(payload, pointer.segments(), &mut removed);
        }
        removed
    }

    /// Redacts a result in place.
    pub fn result(&self, kind: &str, result: &mut Value) {
        let mut removed = Vec::new();
        for pointer in self.pointers(kind, |r| &r.result) {
            redact_at(result, pointer.segments(), &mut removed);
        }
    }

    /// `text` with every value the rules name in `payload` (JSON text, as a
    /// producer wrote it) replaced by [`REDACTED`]: an attempt's error may quote
    /// its input, and the error reaches logs, events and the ledger. Borrowed
    /// unchanged when the kind has no rules or the payload does not parse.
    pub fn scrub<'t>(&self, kind: &str, payload: &str, text: &'t str) -> Cow<'t, str> {
        if !self.covers_payload(kind) {
            return Cow::Borrowed(text);
        }
        let Ok(mut value) = crate::jobs::payload::decode(payload) else {
            return Cow::Borrowed(text);
        };
        let secrets = self.payload(kind, &mut value);
        let mut owned = text.to_owned();
        if scrub_in_place(&secrets, &mut owned) {
            Cow::Owned(owned)
        } else {
            Cow::Borrowed(text)
        }
    }

    fn pointers<'a>(
        &'a self,
        kind: &str,
        list: impl Fn(&'a Rules) -> &'a Vec<JsonPointer>,
    ) -> impl Iterator<Item = &'a JsonPointer> {
        let own = self.kinds.get(kind).map(&list).into_iter().flatten();
        list(&self.global).iter().chain(own)
    }
}

/// Replaces every node `segments` names under `value` with [`REDACTED`],
/// collecting the texts it held. `*` walks every element or member.
fn redact_at(value: &mut Value, segments: &[String], removed: &mut Vec<String>) {
    let Some((first, rest)) = segments.split_first() else {
        collect(value, removed);
        *value = Value::String(REDACTED.to_owned());
        return;
    };
    match value {
        Value::Object(map) if first == "*" => {
            for child in map.values_mut() {
                redact_at(child, rest, removed);
            }
        }
        Value::Object(map) => {
            if let Some(child) = map.get_mut(first.as_str()) {
                redact_at(child, rest, removed);
            }
        }
        Value::Array(items) if first == "*" => {
            for child in items {
                redact_at(child, rest, removed);
            }
        }
        Value::Array(items) => {
            if let Some(child) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                redact_at(child, rest, removed);
            }
        }
        _ => {}
    }
}

/// The texts of every string and number inside `value`.
fn collect(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// Replaces each secret (and its JSON-escaped form, as error messages quote
/// values) in `text`, longest first. True when anything was replaced.
fn scrub_in_place(secrets: &[String], text: &mut String) -> bool {
    let mut forms: Vec<String> = Vec::new();
    for secret in secrets {
        if secret.chars().count() < MIN_SCRUB_CHARS || secret == REDACTED {
            continue;
        }
        let quoted = Value::String(secret.clone()).to_string();
        let escaped = &quoted[1..quoted.len() - 1];
        if escaped != secret {
            forms.push(escaped.to_owned());
        }
        forms.push(secret.clone());
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    let mut changed = false;
    for form in &forms {
        if text.contains(form.as_str()) {
            *text = text.replace(form.as_str(), REDACTED);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_text: &str) -> Redaction {
        Redaction::new(&toml::from_str::<RedactionConfig>(toml_text).unwrap())
    }

    #[test]
    fn named_fields_of_every_array_element_are_redacted_and_the_rest_kept() {
        let r = rules(
            "[kinds.sms-inbound]\n\
             payload = [\"/webhook/entry/*/messages/*/from\", \"/webhook/entry/*/messages/*/text\"]\n",
        );
        let mut payload = json!({"tenant": "acme", "webhook": {"entry": [
            {"messages": [{"id": "m1", "from": "+15551234567", "text": {"body": "hello there"}},
                          {"id": "m2", "from": 15557654321u64}]}]}});
        let removed = r.payload("sms-inbound", &mut payload);
        assert_eq!(
            payload,
            json!({"tenant": "acme", "webhook": {"entry": [
                {"messages": [{"id": "m1", "from": REDACTED, "text": REDACTED},
                              {"id": "m2", "from": REDACTED}]}]}})
        );
        assert_eq!(removed, ["+15551234567", "15557654321", "hello there"]);
        // Another kind has no rules.
        let mut other = json!({"from": "+15551234567"});
        assert!(r.payload("noop", &mut other).is_empty());
        assert_eq!(other["from"], "+15551234567");
    }

    #[test]
    fn global_rules_apply_to_every_kind_and_indexes_name_one_element() {
        let r = rules("payload = [\"/phones/1\", \"/missing/x\"]\nresult = [\"/phone\"]\n");
        let mut payload = json!({"phones": ["a", "b"]});
        r.payload("any", &mut payload);
        assert_eq!(payload, json!({"phones": ["a", REDACTED]}));
        let mut result = json!({"phone": {"n": 1}});
        r.result("any", &mut result);
        assert_eq!(result, json!({"phone": REDACTED}));
    }

    #[test]
    fn apply_redacts_a_job_and_scrubs_its_texts() {
        let r = rules("[kinds.sms]\npayload = [\"/to\", \"/body\"]\nresult = [\"/echo\"]\n");
        let mut job = json!({
            "kind": "sms",
            "payload": {"to": "+15551234567", "body": "say \"hi\"", "n": 1},
            "result": {"echo": "+15551234567", "ok": true},
            "last_error": "cannot reach +15551234567: bad body \"say \\\"hi\\\"\"",
            "errors": [{"attempt": 1, "error": "no route to +15551234567"}],
            "progress_message": null,
        });
        apply(&r, &mut job);
        assert_eq!(
            job["payload"],
            json!({"to": REDACTED, "body": REDACTED, "n": 1})
        );
        assert_eq!(job["result"], json!({"echo": REDACTED, "ok": true}));
        assert_eq!(
            job["last_error"],
            "cannot reach [redacted]: bad body \"[redacted]\""
        );
        assert_eq!(job["errors"][0]["error"], "no route to [redacted]");
    }

    #[test]
    fn scrub_leaves_short_values_and_unruled_kinds_alone() {
        let r = rules("payload = [\"/code\", \"/phone\"]\n");
        let text = "code 42 failed for +15551234567";
        assert_eq!(
            r.scrub("x", r#"{"code": 42, "phone": "+15551234567"}"#, text),
            "code 42 failed for [redacted]"
        );
        assert!(matches!(
            Redaction::default().scrub("x", r#"{"phone": "+15551234567"}"#, text),
            Cow::Borrowed(_)
        ));
    }
}
