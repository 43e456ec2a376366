//! Text from outside made safe for Postgres: `text` and `jsonb` refuse U+0000 and
//! invalid UTF-8, and one such value in a batch statement fails the whole batch.
//!
//! Everything here is pure. Callers use it on any text they did not produce
//! themselves (Redis fields, webhook fields, fetched pages, program output) before
//! it reaches a statement.

use std::borrow::Cow;

use serde_json::Value;

/// The text with every U+0000 replaced by U+FFFD, the replacement character.
pub fn safe(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Rewrites `s` in place when it holds U+0000 (see [`safe`]).
pub fn fix(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

/// Bytes as text Postgres stores: invalid UTF-8 sequences and U+0000 become U+FFFD.
pub fn from_bytes(bytes: &[u8]) -> String {
    safe(&String::from_utf8_lossy(bytes)).into_owned()
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A readable, escaped rendering of bytes of unknown content for logs, errors and
/// the quarantine: printable ASCII as is, everything else as Rust escapes (`\0`,
/// `\u{..}`, `\xNN` for bytes that are not UTF-8), cut to about `max` bytes with
/// "…" appended when cut.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() >= max {
                out.push('…');
                return out;
            }
            out.extend(c.escape_debug());
        }
        for b in chunk.invalid() {
            if out.len() >= max {
                out.push('…');
                return out;
            }
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The deepest nesting a stored value may have: readers (serde_json, as in
/// `jobrunner status` and `/jobs/{id}`) refuse more than 128 levels.
pub const MAX_DEPTH: usize = 100;

/// Makes `value` storable in `jsonb` and readable again, in place: every string
/// and key loses its U+0000 (see [`safe`]), and a value nested deeper than
/// [`MAX_DEPTH`] is replaced by a note saying so.
pub fn safe_json(value: &mut Value) {
    if deeper_than(value, MAX_DEPTH) {
        let old = std::mem::replace(
            value,
            serde_json::json!({
                "not_stored": format!("the value was nested deeper than {MAX_DEPTH} levels")
            }),
        );
        drop_deep(old);
        return;
    }
    // An explicit stack: a value nested ten thousand deep must not overflow ours.
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => *s = safe(s).into_owned(),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(safe(&k).into_owned(), v);
                    }
                }
                stack.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

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
    use serde_json::json;

    #[test]
    fn nul_and_invalid_utf8_become_replacement_characters() {
        assert_eq!(safe("a\0b"), "a\u{FFFD}b");
        assert!(matches!(safe("plain"), Cow::Borrowed(_)));
        assert_eq!(from_bytes(b"a\xffb\0"), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("ok", 10), "ok");
    }

    #[test]
    fn escaping_shows_control_bytes_and_non_utf8_and_stops_at_the_cap() {
        assert_eq!(escape(b"a\0\n\xfe", 100), "a\\0\\n\\xfe");
        assert_eq!(escape("é".as_bytes(), 100), "é");
        let long = escape(&[b'x'; 50], 10);
        assert_eq!(long, format!("{}…", "x".repeat(10)));
    }

    #[test]
    fn a_value_too_deep_to_read_back_is_replaced_by_a_note() {
        let mut v = json!(1);
        for _ in 0..5000 {
            v = Value::Array(vec![v]);
        }
        safe_json(&mut v);
        assert!(
            v["not_stored"]
                .as_str()
                .unwrap()
                .contains("deeper than 100")
        );
        let mut ok = json!([[[["fine"]]]]);
        safe_json(&mut ok);
        assert_eq!(ok, json!([[[["fine"]]]]));
    }

    #[test]
    fn json_strings_and_keys_lose_their_nul_characters() {
        let mut v = json!({"a\u{0}": ["x\u{0}y", 1, {"k": "\u{0}"}]});
        safe_json(&mut v);
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, {"k": "\u{FFFD}"}]})
        );
    }
}
