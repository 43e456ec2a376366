//! What the daemon accepts from the Redis path: every claimed ingest entry is
//! checked here ([`check`], pure) before it reaches a statement. An entry the
//! daemon cannot carry becomes a `dead` row with the reasons (when it can be tied
//! to a job id) or a quarantine entry ([`raw_text`] renders it for the table).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::broker::{INGEST_FIELDS, Ingest};
use crate::config::Config;
use crate::ledger::IngestedJob;
use crate::pgtext;

/// The latest time a job may carry: 9999-12-31T23:59:59.999Z, in Unix ms. Later
/// (or before 1970) is refused: Postgres and chrono disagree on the far ends.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The kind recorded for a dead job whose kind was missing or not a valid name.
const UNKNOWN_KIND: &str = "-";
/// How much of a bad value an error message quotes.
const QUOTE_MAX: usize = 120;

/// What one claimed entry becomes.
#[derive(Debug)]
pub enum Verdict {
    /// A ledger row: runnable, or `dead` when `refused` is set.
    Job(IngestedJob),
    /// Not recordable as a job: quarantined with this error.
    Quarantine { job_id: Option<Uuid>, error: String },
}

/// Checks one claimed entry. Pure: every rule about what the daemon accepts from
/// the Redis path lives here (the ENQUEUE script applies the same ones at the door).
pub fn check(entry: &Ingest, queue: &str, config: &Config, now: DateTime<Utc>) -> Verdict {
    let quoted = pgtext::escape(&entry.entry, QUOTE_MAX);
    let parsed = std::str::from_utf8(&entry.entry)
        .ok()
        .and_then(|t| Uuid::try_parse(t).ok().map(|u| (t, u)));
    let Some((text, id)) = parsed else {
        return Verdict::Quarantine {
            job_id: None,
            error: format!(
                "ingest entry \"{quoted}\" is not a job id (a UUID in its 36-character lowercase form)"
            ),
        };
    };
    if entry.key_type == "none" {
        // Claimed only when a key exists, so this is an unclaimed non-canonical id.
        return Verdict::Quarantine {
            job_id: Some(id),
            error: format!(
                "ingest entry \"{quoted}\" is not a UUID in its 36-character lowercase form, and no job hash has that name"
            ),
        };
    }
    let mut problems: Vec<String> = Vec::new();
    if id.hyphenated().to_string() != text {
        problems.push(format!(
            "job id \"{quoted}\" is not a UUID in its 36-character lowercase form"
        ));
    }
    if entry.key_type != "hash" {
        problems.push(format!(
            "the job key holds a Redis {}, not a hash",
            pgtext::escape(entry.key_type.as_bytes(), QUOTE_MAX)
        ));
    }
    let field = |i: usize| entry.fields[i].as_deref();
    let kind = match field(0) {
        None if entry.key_type == "hash" => {
            problems.push("field kind is missing".into());
            None
        }
        None => None,
        Some(k) => match std::str::from_utf8(k) {
            Ok(k) if valid_name(k) => Some(k.to_owned()),
            _ => {
                problems.push(format!(
                    "kind \"{}\" is not 1-64 letters, digits, dots, dashes or underscores",
                    pgtext::escape(k, QUOTE_MAX)
                ));
                None
            }
        },
    };
    let payload = match field(1) {
        None => {
            if entry.key_type == "hash" {
                problems.push("field payload is missing".into());
            }
            String::new()
        }
        Some(p) => match std::str::from_utf8(p) {
            Err(_) => {
                problems.push("payload is not valid UTF-8".into());
                pgtext::from_bytes(p)
            }
            Ok(p) => {
                match crate::jobs::payload::decode(p) {
                    Err(message) => problems.push(message),
                    Ok(v) if has_nul(&v) => problems.push(
                        "payload contains the character U+0000, which Postgres cannot store".into(),
                    ),
                    Ok(_) => {}
                }
                p.to_owned()
            }
        },
    };
    let mut number = |i: usize, default: i64, min: i64, max: i64, rule: &str| -> i64 {
        let Some(raw) = field(i) else { return default };
        match whole(raw) {
            Some(n) if (min..=max).contains(&n) => n,
            _ => {
                problems.push(format!(
                    "field {} \"{}\" is not {rule}",
                    INGEST_FIELDS[i],
                    pgtext::escape(raw, QUOTE_MAX)
                ));
                default
            }
        }
    };
    let priority = number(2, 0, -1000, 1000, "a whole number from -1000 to 1000");
    let max_attempts = number(3, 0, 0, i32::MAX as i64, "a whole number, 0 or more");
    let now_ms = now.timestamp_millis();
    let time_rule = "a whole number of Unix milliseconds in the years 1970-9999";
    let created_ms = number(4, now_ms, 0, MAX_TIME_MS, time_rule);
    let run_ms = number(5, now_ms, 0, MAX_TIME_MS, time_rule);
    let refused = (!problems.is_empty()).then(|| problems.join("; "));
    let time = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or(now);
    let kind_name = kind.unwrap_or_else(|| UNKNOWN_KIND.to_owned());
    let resolved_attempts = if max_attempts > 0 {
        max_attempts as i32
    } else {
        config.kind(&kind_name).max_attempts.max(1)
    };
    Verdict::Job(IngestedJob {
        id,
        queue: queue.to_owned(),
        kind: kind_name,
        payload,
        priority: priority as i32,
        max_attempts: resolved_attempts,
        // A refused job's row says when it was refused, not a time it may not carry.
        run_at: if refused.is_some() { now } else { time(run_ms) },
        created_at: time(created_ms),
        refused,
    })
}

/// A decimal whole number: digits with an optional leading `-`, nothing else.
fn whole(raw: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(raw).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// 1-64 of `A-Z a-z 0-9 . _ -`, the rule for kind and queue names.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether any string or key in the value holds U+0000 (valid JSON, but not
/// storable in a Postgres `jsonb`).
fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// A readable rendering of a claimed entry for the quarantine table.
pub(super) fn raw_text(entry: &Ingest) -> String {
    let mut text = format!(
        "entry=\"{}\" type={}",
        pgtext::escape(&entry.entry, 200),
        pgtext::escape(entry.key_type.as_bytes(), 40)
    );
    for (name, value) in INGEST_FIELDS.iter().zip(&entry.fields) {
        if let Some(v) = value {
            text.push_str(&format!(" {name}=\"{}\"", pgtext::escape(v, 1000)));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: [Option<&str>; 6]) -> Ingest {
        Ingest {
            entry: id.as_bytes().to_vec(),
            key_type: "hash".into(),
            fields: fields.map(|f| f.map(|v| v.as_bytes().to_vec())),
        }
    }

    fn good(id: &str) -> [Option<&str>; 6] {
        let _ = id;
        [
            Some("noop"),
            Some("{}"),
            Some("0"),
            Some("0"),
            Some("1790000000000"),
            Some("1790000000000"),
        ]
    }

    fn refused(v: Verdict) -> Option<String> {
        match v {
            Verdict::Job(j) => j.refused,
            Verdict::Quarantine { error, .. } => panic!("quarantined: {error}"),
        }
    }

    const ID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn a_well_formed_entry_becomes_a_runnable_job() {
        let v = check(
            &entry(ID, good(ID)),
            "default",
            &Config::default(),
            Utc::now(),
        );
        let Verdict::Job(job) = v else {
            panic!("quarantined")
        };
        assert_eq!(job.refused, None);
        assert_eq!(
            job.max_attempts,
            Config::default().kind("noop").max_attempts
        );
        assert_eq!(job.run_at.timestamp_millis(), 1_790_000_000_000);
    }

    #[test]
    fn an_uppercase_id_is_tied_to_its_job_and_refused() {
        let upper = ID.to_uppercase();
        let v = check(
            &entry(&upper, good(ID)),
            "q",
            &Config::default(),
            Utc::now(),
        );
        let Verdict::Job(job) = v else {
            panic!("quarantined")
        };
        assert_eq!(job.id.to_string(), ID);
        assert!(job.refused.unwrap().contains("lowercase form"));
    }

    #[test]
    fn an_entry_that_is_no_uuid_is_quarantined_without_a_job() {
        let v = check(
            &entry("not\0an id", good(ID)),
            "q",
            &Config::default(),
            Utc::now(),
        );
        let Verdict::Quarantine { job_id, error } = v else {
            panic!("a job")
        };
        assert_eq!(job_id, None);
        assert!(error.contains("not\\0an id"), "{error}");
    }

    #[test]
    fn times_outside_the_years_1970_to_9999_are_refused() {
        for bad in [
            "1e18",
            "-1",
            "253402300800000",
            "99999999999999999999",
            "12.5",
            "+5",
            "",
        ] {
            let mut f = good(ID);
            f[5] = Some(bad);
            let error = refused(check(&entry(ID, f), "q", &Config::default(), Utc::now()));
            assert!(error.unwrap().contains("field run_ms"), "{bad}");
        }
        let mut f = good(ID);
        f[5] = Some("253402300799999");
        assert_eq!(
            refused(check(&entry(ID, f), "q", &Config::default(), Utc::now())),
            None
        );
    }

    #[test]
    fn a_wrong_type_key_or_missing_fields_end_the_job_dead_with_reasons() {
        let mut e = entry(ID, [None; 6]);
        e.key_type = "string".into();
        let Verdict::Job(job) = check(&e, "q", &Config::default(), Utc::now()) else {
            panic!("quarantined")
        };
        assert_eq!(job.kind, UNKNOWN_KIND);
        assert!(job.refused.unwrap().contains("a Redis string, not a hash"));
        let error = refused(check(
            &entry(ID, [None; 6]),
            "q",
            &Config::default(),
            Utc::now(),
        ));
        let error = error.unwrap();
        assert!(
            error.contains("field kind is missing") && error.contains("field payload is missing")
        );
    }

    #[test]
    fn bad_bytes_in_fields_are_reported_escaped() {
        let mut e = entry(ID, good(ID));
        e.fields[0] = Some(b"no\xffpe".to_vec());
        e.fields[1] = Some(b"{\"a\":\"\xfe\"}".to_vec());
        e.fields[2] = Some(b"5000".to_vec());
        let error = refused(check(&e, "q", &Config::default(), Utc::now())).unwrap();
        assert!(error.contains("no\\xffpe"), "{error}");
        assert!(error.contains("payload is not valid UTF-8"), "{error}");
        assert!(error.contains("field priority \"5000\""), "{error}");
    }
}
