//! Small pieces of HTML the pages share: escaping, times, status badges, forms
//! that post an action, and the throughput sparkline (inline SVG, so it shows
//! without script).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::ledger::Status;

/// Text made safe for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
pub fn url_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `3s`, `4m`, `2h`, `5d`: how long ago or how long.
pub fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A time as a `<time>` element: the age for reading, the exact UTC time on hover
/// and for machines.
pub fn time(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let exact = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let secs = now.signed_duration_since(at).num_seconds();
    let text = if secs >= 0 {
        format!("{} ago", age(secs))
    } else {
        format!("in {}", age(-secs))
    };
    format!(r#"<time datetime="{exact}" title="{exact}">{text}</time>"#)
}

/// A status as a badge; the word is always shown, colour only adds to it.
pub fn badge(status: Status) -> String {
    format!(
        r#"<span class="badge s-{s}" data-status="{s}">{s}</span>"#,
        s = status.as_str()
    )
}

/// A one-button form that posts an action. `confirm` asks first (in script; the
/// server asks again for bulk actions without it).
pub fn action_button(
    action: &str,
    label: &str,
    csrf: Option<&str>,
    extra: &[(&str, &str)],
    confirm: Option<&str>,
    class: &str,
) -> String {
    let mut out = format!(
        r#"<form method="post" action="{}" class="inline""#,
        esc(action)
    );
    if let Some(question) = confirm {
        let _ = write!(out, r#" data-confirm="{}""#, esc(question));
    }
    out.push('>');
    if let Some(token) = csrf {
        let _ = write!(
            out,
            r#"<input type="hidden" name="csrf" value="{}">"#,
            esc(token)
        );
    }
    for (name, value) in extra {
        let _ = write!(
            out,
            r#"<input type="hidden" name="{}" value="{}">"#,
            esc(name),
            esc(value)
        );
    }
    let _ = write!(
        out,
        r#"<button type="submit" class="{}">{}</button></form>"#,
        esc(class),
        esc(label)
    );
    out
}

/// Bars of per-minute counts, oldest first, as an inline SVG with a text
/// alternative.
pub fn sparkline(counts: &[(i64, i64)], label: &str) -> String {
    let max = counts
        .iter()
        .map(|(ok, dead)| ok + dead)
        .max()
        .unwrap_or(0)
        .max(1);
    let total_ok: i64 = counts.iter().map(|c| c.0).sum();
    let total_dead: i64 = counts.iter().map(|c| c.1).sum();
    let (w, h, bar) = (counts.len() as i64 * 6, 24_i64, 5_i64);
    let mut out = format!(
        r#"<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{}: {total_ok} succeeded, {total_dead} dead over {} minutes">"#,
        esc(label),
        counts.len()
    );
    for (i, (ok, dead)) in counts.iter().enumerate() {
        let x = i as i64 * 6;
        let ok_h = ok * h / max;
        let dead_h = dead * h / max;
        if ok_h > 0 {
            let _ = write!(
                out,
                r#"<rect class="ok" x="{x}" y="{}" width="{bar}" height="{ok_h}"/>"#,
                h - ok_h
            );
        }
        if dead_h > 0 {
            let _ = write!(
                out,
                r#"<rect class="dead" x="{x}" y="{}" width="{bar}" height="{dead_h}"/>"#,
                h - ok_h - dead_h
            );
        }
    }
    out.push_str("</svg>");
    let _ = write!(
        out,
        r#" <span class="spark-total">{total_ok}<span class="sr"> succeeded</span>{}</span>"#,
        if total_dead > 0 {
            format!(
                r#" / <span class="dead-text">{total_dead}<span class="sr"> dead</span></span>"#
            )
        } else {
            String::new()
        }
    );
    out
}

/// Pretty JSON in a `<pre>`.
pub fn json_block(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    format!(r#"<pre class="json">{}</pre>"#, esc(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_sparkline_says_its_totals_in_words() {
        let svg = sparkline(&[(1, 0), (3, 1), (0, 0)], "mail");
        assert!(
            svg.contains(r#"aria-label="mail: 4 succeeded, 1 dead over 3 minutes""#),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
