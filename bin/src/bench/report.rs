//! The figures: table rows for people, a JSON document for scripts, and the
//! percentile summary of a set of latencies.

use serde_json::{Value, json};

/// The figures: table rows for people, a JSON document for scripts.
#[derive(Default)]
pub(super) struct Report {
    pub(super) rows: Vec<(String, String)>,
    pub(super) json: serde_json::Map<String, Value>,
}

impl Report {
    pub(super) fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.rows.push((what.into(), value.into()));
    }

    /// Sets `json[section][key] = value`.
    pub(super) fn set(&mut self, section: &str, key: &str, value: Value) {
        let entry = self
            .json
            .entry(section.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(map) = entry {
            map.insert(key.to_owned(), value);
        }
    }
}

/// (p50, p99, max) in milliseconds.
pub(super) type Spread = (f64, f64, f64);

pub(super) fn spread_json(s: Spread) -> Value {
    json!({"p50": s.0, "p99": s.1, "max": s.2})
}

/// p50, p99 and max of some milliseconds.
pub(super) fn summarize(mut values: Vec<f64>) -> Spread {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}
