//! Reading a job's payload text as JSON, with an error a person can act on.
//!
//! serde_json refuses JSON nested deeper than its recursion limit (it guards the
//! stack); its message, "recursion limit exceeded", reads like a bug. The daemon
//! and the CLI share [`decode`] so a too-deep payload is refused with the limit
//! stated, at the CLI's door and in the job's `last_error` alike.

use serde_json::Value;

/// The deepest nesting of arrays and objects serde_json reads (its default
/// recursion limit of 128 counts the outermost value too). A unit test below
/// pins this to serde_json's behaviour.
pub const MAX_DEPTH: usize = 127;

/// The deepest nesting the doors accept: the CLI (through [`accept`]), SQL
/// `jobrunner.check_job` and the Redis ENQUEUE script all refuse more. It sits
/// below [`MAX_DEPTH`] so what a door took can always be read back.
pub const ACCEPT_DEPTH: usize = 100;

/// [`decode`] for a payload entering through the CLI: also refuses nesting deeper
/// than [`ACCEPT_DEPTH`], as SQL enqueue and the Redis script do.
pub fn accept(text: &str) -> Result<Value, String> {
    match depth(text) {
        d if d > ACCEPT_DEPTH => Err(format!(
            "payload nests {d} levels deep; jobrunner accepts at most {ACCEPT_DEPTH} levels of arrays and objects"
        )),
        _ => decode(text),
    }
}

/// Parses payload text; the error says what was wrong, naming the limit when the
/// payload nests too deeply.
pub fn decode(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| match depth(text) {
        d if d > MAX_DEPTH => format!(
            "payload nests {d} levels deep; jobrunner reads at most {MAX_DEPTH} levels of arrays and objects"
        ),
        _ => format!("payload is not valid JSON: {e}"),
    })
}

/// The deepest nesting of `[` and `{` outside strings. A cheap scan that needs no
/// valid JSON, so it works where the parser gave up.
pub fn depth(text: &str) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                now += 1;
                max = max.max(now);
            }
            b']' | b'}' => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn the_cli_door_accepts_what_sql_and_redis_accept_and_no_deeper() {
        assert!(accept(&nested(ACCEPT_DEPTH)).is_ok());
        assert_eq!(
            accept(&nested(ACCEPT_DEPTH + 1)).unwrap_err(),
            "payload nests 101 levels deep; jobrunner accepts at most 100 levels of arrays and objects"
        );
    }

    #[test]
    fn the_limit_is_exactly_what_serde_json_reads() {
        assert!(decode(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn a_too_deep_payload_is_refused_with_the_limit_stated() {
        let error = decode(&nested(10_000)).unwrap_err();
        assert_eq!(
            error,
            "payload nests 10000 levels deep; jobrunner reads at most 127 levels of arrays and objects"
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(depth(r#"{"a": "[[[[\"{{{{", "b": [1, {"c": 2}]}"#), 3);
        assert_eq!(depth("42"), 0);
    }

    #[test]
    fn other_bad_json_keeps_the_parser_s_message() {
        let error = decode("{oops").unwrap_err();
        assert!(error.starts_with("payload is not valid JSON: "), "{error}");
    }
}
