//! Text from the outside world, made storable before it reaches Postgres.
//!
//! Handler results, error messages and progress messages come from programs,
//! servers and webhooks. Postgres refuses U+0000 in `text` (`invalid byte sequence
//! for encoding "UTF8": 0x00`) and the escape `\u0000` in `jsonb` (`unsupported
//! Unicode escape sequence`), and readers cannot decode JSON nested deeper than
//! 128 levels. (Bytes that are not UTF-8 never get this far: handlers decode
//! outside output lossily, with U+FFFD.) These helpers write NUL out as a
//! visible escape and replace values too deep to read, so one job's output can
//! never fail a status batch or a later read.

use std::borrow::Cow;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

/// The latest time the ledger hands out: the end of year 9999.
fn latest() -> DateTime<Utc> {
    // 9999-12-31T23:59:59Z; a literal in range, so the fallback never applies.
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `from + d`, saturating at the end of year 9999: time arithmetic never panics
/// on a value from outside (a huge `Retry-After`, a long TTL in the config).
pub fn after(from: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| from.checked_add_signed(d))
        .map_or_else(latest, |t| t.min(latest()))
}

/// `from - d`, saturating at the Unix epoch.
pub fn before(from: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| from.checked_sub_signed(d))
        .map_or(DateTime::UNIX_EPOCH, |t| t.max(DateTime::UNIX_EPOCH))
}

/// What a NUL character becomes: the JSON spelling, as visible text.
const NUL_ESCAPE: &str = "\\u0000";

/// `s` with every U+0000 written as the six characters `\u0000`.
pub fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', NUL_ESCAPE))
    } else {
        Cow::Borrowed(s)
    }
}

/// Rewrites `s` in place when it holds U+0000 (see [`text`]).
pub fn fix(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', NUL_ESCAPE);
    }
}

/// The deepest nesting a stored result may have: readers (serde_json, as in
/// `jobrunner status` and `/jobs/{id}`) refuse more than 128 levels.
pub const MAX_DEPTH: usize = 100;

/// Whether `value` nests deeper than `max` levels (counted without recursion).
fn deeper_than(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        if depth > max {
            return true;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    false
}

/// Makes `value` storable in `jsonb` and readable again, in place: every string
/// and key loses its U+0000 (see [`text`]), and a value nested deeper than
/// [`MAX_DEPTH`] is replaced by a note saying so.
pub fn json(value: &mut Value) {
    if deeper_than(value, MAX_DEPTH) {
        let old = std::mem::replace(
            value,
            serde_json::json!({
                "not_stored": format!("the result was nested deeper than {MAX_DEPTH} levels")
            }),
        );
        drop_deep(old);
        return;
    }
    // An explicit stack: a value nested ten thousand deep must not overflow ours.
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => *s = text(s).into_owned(),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(text(&k).into_owned(), v);
                    }
                }
                stack.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

/// Drops a value without recursing: serde_json's own drop recurses once per
/// level, and a value a handler built may be deep enough to overflow the stack.
fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Utc::now();
        let huge = std::time::Duration::from_secs(u64::MAX);
        assert_eq!(after(now, huge).format("%Y").to_string(), "9999");
        assert_eq!(before(now, huge), DateTime::UNIX_EPOCH);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(after(now, hour) - now, TimeDelta::hours(1));
        assert_eq!(now - before(now, hour), TimeDelta::hours(1));
    }

    #[test]
    fn a_result_too_deep_to_read_back_is_replaced_by_a_note() {
        let mut v = serde_json::json!(1);
        for _ in 0..5000 {
            v = Value::Array(vec![v]);
        }
        json(&mut v);
        assert!(
            v["not_stored"]
                .as_str()
                .unwrap()
                .contains("deeper than 100")
        );
        let mut ok = serde_json::json!([[[["fine"]]]]);
        json(&mut ok);
        assert_eq!(ok, serde_json::json!([[[["fine"]]]]));
    }

    #[test]
    fn a_nul_becomes_a_visible_escape() {
        assert_eq!(text("a\0b"), "a\\u0000b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn json_strings_and_keys_lose_their_nul_characters() {
        let mut v = serde_json::json!({"a\u{0}": ["x\u{0}", {"k": "\u{0}"}], "n": 1});
        json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a\\u0000": ["x\\u0000", {"k": "\\u0000"}], "n": 1})
        );
    }
}
