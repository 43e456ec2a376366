//! Text from the outside world, made storable before it reaches Postgres.
//!
//! Handler results, error messages and progress messages come from programs,
//! servers and webhooks. Postgres refuses U+0000 in `text` (`invalid byte sequence
//! for encoding "UTF8": 0x00`) and the escape `\u0000` in `jsonb` (`unsupported
//! Unicode escape sequence`); bytes that are not UTF-8 cannot be a Rust `String`
//! at all. These helpers write both out as visible escapes, so the text reads the
//! same and one job's output can never fail a status batch.

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

/// Bytes as text: valid UTF-8 is kept, every other byte is written as `\xNN`,
/// and U+0000 as `\u0000`.
pub fn bytes(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        out.push_str(&text(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Makes every string and key in `value` storable in `jsonb`, in place.
pub fn json(value: &mut Value) {
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
    fn a_nul_becomes_a_visible_escape() {
        assert_eq!(text("a\0b"), "a\\u0000b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_and_the_rest_kept() {
        assert_eq!(bytes(b"ok \xff\xfe \0 \xc3\xa9"), "ok \\xff\\xfe \\u0000 é");
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
