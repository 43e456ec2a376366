//! The text the commands print for people: aligned tables, key/value tables, a
//! job's rows, and the small formatters they share (ages, times, clipping).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::ledger::{Job, Status};

/// One job as a two-column table for people.
pub fn job_table(job: &Job) -> String {
    key_value_table(&job_rows(job))
}

/// The rows `status` and `inspect` show for a job, in order.
pub fn job_rows(job: &Job) -> Vec<(&'static str, String)> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
        })
    };
    vec![
        ("id", job.id.to_string()),
        ("kind", job.kind.clone()),
        ("queue", job.queue.clone()),
        ("status", job.status.to_string()),
        (
            "attempts",
            format!("{} of {}", job.attempts, job.max_attempts),
        ),
        ("priority", job.priority.to_string()),
        ("payload", job.payload.to_string()),
        (
            "result",
            job.result.as_ref().map_or("-".into(), Value::to_string),
        ),
        // A job that succeeded after failing keeps its last failure in the
        // ledger; shown as `last_error` it would read as the job's outcome.
        match (job.status, &job.last_error) {
            (Status::Succeeded, Some(e)) => ("earlier_error", e.clone()),
            (_, e) => ("last_error", e.clone().unwrap_or("-".into())),
        },
        ("unique_key", job.unique_key.clone().unwrap_or("-".into())),
        (
            "progress",
            match (job.progress, &job.progress_message) {
                (Some(p), Some(m)) => format!("{p}% {m}"),
                (Some(p), None) => format!("{p}%"),
                _ => "-".into(),
            },
        ),
        ("run_at", time(Some(job.run_at))),
        ("created_at", time(Some(job.created_at))),
        ("started_at", time(job.started_at)),
        ("finished_at", time(job.finished_at)),
        ("updated_at", time(Some(job.updated_at))),
    ]
}

/// Rows of `key value`, the keys padded to one column (at least 12 wide, so the
/// usual keys line up the same in `status` and `inspect`).
pub fn key_value_table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(12);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$} {v}\n"))
        .collect()
}

/// Aligned columns, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&headers).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration in seconds for people, two units at most: `42s`, `3m12s`, `5h07m`, `2d3h`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(42), "42s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(5 * 3600 + 7 * 60 + 9), "5h07m");
        assert_eq!(age(2 * 86_400 + 3 * 3600), "2d3h");
    }

    #[test]
    fn a_table_aligns_every_column_to_its_widest_cell() {
        let text = table(
            &["A", "LONG HEADER", "C"],
            vec![
                vec!["wide cell".into(), "1".into(), "x".into()],
                vec!["b".into(), "22".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "A          LONG HEADER  C\nwide cell  1            x\nb          22\n"
        );
    }
}
