//! Flow-control settings (docs/FLOW_CONTROL.md): rate limits of queues and kinds,
//! a kind's cluster-wide concurrency, its unique-key template and what a timeout
//! does. Parsing and checking only; the limits are enforced by the broker's fetch
//! script.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `rate_limit = { limit = 10, period = "1s", key = "contact" }`: at most `limit`
/// leases in any `period` (a sliding window), across every daemon.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub limit: u32,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Kinds only: a payload field (a top-level name, or a JSON pointer such as
    /// `/entry/0/from`); the limit then holds per distinct value of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a kind's attempt that runs past its `timeout` leads to.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Another attempt after backoff, while attempts remain.
    #[default]
    Retry,
    /// The job ends `dead` at once.
    Dead,
}

/// Longest rate-limit period: windows are kept in Redis for this long at most.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Checks one rate limit; `key_allowed` is false for queues. Returns the
/// offending key (relative to `at`) and the reason.
pub(super) fn validate_rate_limit(
    at: &str,
    limit: &RateLimit,
    key_allowed: bool,
) -> Result<(), (String, String)> {
    if limit.limit == 0 {
        return Err((format!("{at}.limit"), "must be at least 1".into()));
    }
    if limit.period < Duration::from_millis(1) || limit.period > MAX_PERIOD {
        return Err((format!("{at}.period"), "must be from 1ms to 24h".into()));
    }
    match &limit.key {
        None => {}
        Some(_) if !key_allowed => {
            return Err((
                format!("{at}.key"),
                "only a kind's rate limit can be per payload field".into(),
            ));
        }
        Some(key) if key.is_empty() || key == "/" => {
            return Err((
                format!("{at}.key"),
                "must name a payload field or be a JSON pointer like /entry/0/from".into(),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// A unique-key template: text with `{field}` placeholders, braces balanced.
pub(super) fn validate_unique_key(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty (leave the key out for no uniqueness)".into());
    }
    let mut open = false;
    let mut field = 0;
    for c in template.chars() {
        match (c, open) {
            ('{', false) => {
                open = true;
                field = 0;
            }
            ('}', true) if field == 0 => return Err("has an empty {} placeholder".into()),
            ('}', true) => open = false,
            ('{', true) | ('}', false) => {
                return Err("has an unbalanced { or }; placeholders look like {field}".into());
            }
            (_, true) => field += 1,
            _ => {}
        }
    }
    if open {
        return Err("has an unclosed {".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_key_template_needs_balanced_placeholders() {
        assert!(validate_unique_key("contact:{from}").is_ok());
        assert!(validate_unique_key("nightly").is_ok());
        assert!(validate_unique_key("x:{}").is_err());
        assert!(validate_unique_key("x:{from").is_err());
        assert!(validate_unique_key("x:from}").is_err());
        assert!(validate_unique_key("").is_err());
    }

    #[test]
    fn flow_keys_parse_and_bad_values_name_their_key() {
        let text = r#"
            [queues.default]
            rate_limit = { limit = 10, period = "1s" }
            [kinds.sms]
            concurrency = 4
            on_timeout = "dead"
            unique_key = "contact:{from}"
            rate_limit = { limit = 2, period = "500ms", key = "/entry/0/from" }
        "#;
        let config = super::super::Config::from_toml(text, "f.toml").unwrap();
        config.validate().unwrap();
        let sms = config.kind("sms");
        assert_eq!(sms.on_timeout, OnTimeout::Dead);
        assert_eq!(sms.rate_limit.unwrap().period, Duration::from_millis(500));
        for (bad, key) in [
            ("[kinds.sms]\nconcurrency = 0", "kinds.sms.concurrency"),
            ("[kinds.sms]\nunique_key = \"a:{\"", "kinds.sms.unique_key"),
            (
                "[kinds.sms]\nrate_limit = { limit = 0, period = \"1s\" }",
                "kinds.sms.rate_limit.limit",
            ),
            (
                "[queues.default]\nrate_limit = { limit = 1, period = \"0s\" }",
                "queues.default.rate_limit.period",
            ),
        ] {
            let config = super::super::Config::from_toml(bad, "f.toml").unwrap();
            let text = config.validate().unwrap_err().to_string();
            assert!(text.contains(&format!("`{key}`")), "{bad}: {text}");
        }
        let err = super::super::Config::from_toml("[kinds.sms]\non_timeout = \"later\"", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("on_timeout"), "{err}");
    }

    #[test]
    fn a_queue_rate_limit_cannot_be_per_payload_field() {
        let limit = RateLimit {
            limit: 5,
            period: Duration::from_secs(1),
            key: Some("contact".into()),
        };
        assert!(validate_rate_limit("kinds.k.rate_limit", &limit, true).is_ok());
        let (key, _) = validate_rate_limit("queues.q.rate_limit", &limit, false).unwrap_err();
        assert_eq!(key, "queues.q.rate_limit.key");
    }
}
