//! Turning one HTML page into records: links and headings that match the topic,
//! the page's e-mail addresses and phone numbers, and JSON-LD organisations.
//!
//! Everything here is pure and synchronous: it is CPU work on a string, run by the
//! caller inside `spawn_blocking`. It never does I/O and never follows a URL.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;
use scraper::{ElementRef, Html, Selector};
use serde_json::Value;
use url::Url;

/// One thing found on a page. `url` is its identity within a query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub url: String,
    pub title: Option<String>,
    pub snippet: Option<String>,
    /// Lower-case, sorted, without duplicates.
    pub emails: Vec<String>,
    /// Normalised (`+` and digits for international numbers), sorted, no duplicates.
    pub phones: Vec<String>,
}

/// The search topic as the words a text must contain.
#[derive(Debug, Clone)]
pub struct Topic {
    words: Vec<String>,
}

/// Longest title or snippet kept, in characters.
const MAX_TEXT: usize = 300;

impl Topic {
    /// None when the topic has no words at all.
    pub fn new(text: &str) -> Option<Topic> {
        let mut words: Vec<String> = words(text).collect();
        words.sort();
        words.dedup();
        (!words.is_empty()).then_some(Topic { words })
    }

    /// True when every word of the topic appears in `text` as a whole word,
    /// ignoring case. Whole words, so "art" does not match "party".
    pub fn matches(&self, text: &str) -> bool {
        let found: BTreeSet<String> = words(text).collect();
        self.words.iter().all(|w| found.contains(w))
    }
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Extracts the records of one page. `page` is the URL the page was read from
/// (after redirects); relative links are resolved against it.
pub fn extract(html: &str, page: &Url, topic: &Topic) -> Vec<Record> {
    let doc = Html::parse_document(html);
    let mut page_url = page.clone();
    page_url.set_fragment(None);
    let mut records = Vec::new();

    let page_title = doc
        .select(&SELECTORS.title)
        .next()
        .map(|t| clean(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    let description = doc
        .select(&SELECTORS.description)
        .next()
        .and_then(|m| m.value().attr("content"))
        .map(clean)
        .filter(|d| !d.is_empty());

    let mut emails = BTreeSet::new();
    let mut phones = BTreeSet::new();
    for a in doc.select(&SELECTORS.link) {
        let Some(href) = a.value().attr("href").map(str::trim) else {
            continue;
        };
        if let Some(rest) = strip_prefix_ignore_case(href, "mailto:") {
            emails.extend(mailto_addresses(rest));
            continue;
        }
        if let Some(rest) = strip_prefix_ignore_case(href, "tel:") {
            phones.extend(normalise_phone(
                &rest.replace("%20", " ").replace("%2B", "+"),
            ));
            continue;
        }
        let Some(mut target) = page.join(href).ok().filter(is_http) else {
            continue;
        };
        target.set_fragment(None);
        let mut text = clean(&a.text().collect::<String>());
        if text.is_empty() {
            text = a.value().attr("title").map(clean).unwrap_or_default();
        }
        if !topic.matches(&text) {
            continue;
        }
        let snippet = a
            .parent()
            .and_then(ElementRef::wrap)
            .map(|p| clean(&p.text().collect::<String>()))
            .filter(|s| !s.is_empty() && *s != text);
        records.push(Record {
            url: target.into(),
            title: Some(text),
            snippet,
            ..Record::default()
        });
    }

    for h in doc.select(&SELECTORS.heading) {
        let text = clean(&h.text().collect::<String>());
        if text.is_empty() || !topic.matches(&text) {
            continue;
        }
        // A heading has no URL of its own: its id is its anchor, and without one a
        // text fragment (`#:~:text=`) still points a browser at it.
        let mut url = page_url.clone();
        match h.value().id() {
            Some(id) => url.set_fragment(Some(id)),
            None => url.set_fragment(Some(&format!(":~:text={}", encode_fragment(&text)))),
        }
        let snippet = h
            .next_siblings()
            .find_map(ElementRef::wrap)
            .map(|next| clean(&next.text().collect::<String>()))
            .filter(|s| !s.is_empty());
        records.push(Record {
            url: url.into(),
            title: Some(text),
            snippet,
            ..Record::default()
        });
    }

    let body_text: String = doc
        .select(&SELECTORS.body)
        .next()
        .map(|b| b.text().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    emails.extend(text_emails(&body_text));
    phones.extend(text_phones(&body_text));

    for script in doc.select(&SELECTORS.json_ld) {
        let text: String = script.text().collect();
        // A broken JSON-LD block is common on real sites; it only loses that block.
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let mut found = Vec::new();
            organisations(&value, &mut found);
            for (i, org) in found.into_iter().enumerate() {
                records.push(org_record(org, page, &page_url, i));
            }
        }
    }

    let title_matches = page_title.as_deref().is_some_and(|t| topic.matches(t));
    if title_matches || !emails.is_empty() || !phones.is_empty() {
        records.push(Record {
            url: page_url.to_string(),
            title: page_title,
            snippet: description,
            emails: emails.into_iter().collect(),
            phones: phones.into_iter().collect(),
        });
    }
    merge(records)
}

/// Folds records with the same URL into one (first title and snippet win, contacts
/// are united), keeping first-seen order. One upsert statement may not touch a row
/// twice, so this runs before every write.
pub fn merge(records: impl IntoIterator<Item = Record>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for record in records {
        match index.get(&record.url) {
            Some(&i) => {
                let kept = &mut out[i];
                if kept.title.is_none() {
                    kept.title = record.title;
                }
                if kept.snippet.is_none() {
                    kept.snippet = record.snippet;
                }
                kept.emails = union(&kept.emails, record.emails);
                kept.phones = union(&kept.phones, record.phones);
            }
            None => {
                index.insert(record.url.clone(), out.len());
                out.push(record);
            }
        }
    }
    out
}

fn union(a: &[String], b: Vec<String>) -> Vec<String> {
    let set: BTreeSet<String> = a.iter().cloned().chain(b).collect();
    set.into_iter().collect()
}

/// Normalises a phone number: `+` then digits for an international number (a
/// leading `00` becomes `+`, a `(0)` trunk prefix is dropped), digits only for a
/// national one. None unless it has 7 to 15 digits (the E.164 maximum).
pub fn normalise_phone(raw: &str) -> Option<String> {
    let raw = raw.trim().replace("(0)", "");
    let international = raw.starts_with('+') || raw.starts_with("00");
    let mut digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    if !raw.starts_with('+') && raw.starts_with("00") {
        digits.drain(..2);
    }
    if !(7..=15).contains(&digits.len()) {
        return None;
    }
    Some(if international {
        format!("+{digits}")
    } else {
        digits
    })
}

struct Selectors {
    title: Selector,
    description: Selector,
    link: Selector,
    heading: Selector,
    body: Selector,
    json_ld: Selector,
}

// The selectors and patterns are literals; the unit tests below parse every one,
// so the `expect`s cannot fire in a build whose tests passed.
static SELECTORS: LazyLock<Selectors> = LazyLock::new(|| {
    let parse = |s: &str| Selector::parse(s).expect("selector literal is valid");
    Selectors {
        title: parse("head > title, title"),
        description: parse(r#"meta[name="description"]"#),
        link: parse("a[href]"),
        heading: parse("h1, h2, h3"),
        body: parse("body"),
        json_ld: parse(r#"script[type="application/ld+json"]"#),
    }
});

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b")
        .expect("e-mail pattern is valid")
});

/// International numbers only (`+` or `00` first): national formats are too
/// ambiguous with dates, prices and order numbers in free text. `tel:` links catch
/// the rest.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^\w+])((?:\+|00)[1-9][0-9 ().\-/]{5,24}[0-9])")
        .expect("phone pattern is valid")
});

/// Address-like strings that are really asset names (`logo@2x.png`).
const NOT_EMAIL_SUFFIXES: [&str; 6] = [".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"];

fn text_emails(text: &str) -> impl Iterator<Item = String> + '_ {
    EMAIL
        .find_iter(text)
        .map(|m| m.as_str().to_ascii_lowercase())
        .filter(|e| !NOT_EMAIL_SUFFIXES.iter().any(|s| e.ends_with(s)))
}

fn text_phones(text: &str) -> impl Iterator<Item = String> + '_ {
    PHONE
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .filter_map(|m| normalise_phone(m.as_str()))
}

fn mailto_addresses(rest: &str) -> Vec<String> {
    let addresses = rest.split('?').next().unwrap_or_default();
    addresses
        .split(',')
        .map(|a| a.trim().replace("%40", "@").to_ascii_lowercase())
        .filter(|a| EMAIL.find(a).is_some_and(|m| m.len() == a.len()))
        .collect()
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

/// Collapses runs of whitespace and cuts the text to [`MAX_TEXT`] characters.
fn clean(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

fn encode_fragment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The fields of an Organization or LocalBusiness entry we keep.
#[derive(Debug, Default)]
struct Org {
    name: Option<String>,
    url: Option<String>,
    email: Option<String>,
    telephone: Option<String>,
    description: Option<String>,
}

const ORG_TYPES: [&str; 2] = ["Organization", "LocalBusiness"];

/// Collects organisations from a JSON-LD value: a single entry, an array of
/// entries, or a `@graph` of them (nesting is bounded by serde_json's own limit).
fn organisations(value: &Value, out: &mut Vec<Org>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| organisations(v, out)),
        Value::Object(map) => {
            if let Some(graph) = map.get("@graph") {
                organisations(graph, out);
            }
            let is_org = match map.get("@type") {
                Some(Value::String(t)) => ORG_TYPES.contains(&t.as_str()),
                Some(Value::Array(ts)) => ts
                    .iter()
                    .any(|t| t.as_str().is_some_and(|t| ORG_TYPES.contains(&t))),
                _ => false,
            };
            if is_org {
                let text = |key: &str| {
                    map.get(key)
                        .and_then(Value::as_str)
                        .map(clean)
                        .filter(|s| !s.is_empty())
                };
                out.push(Org {
                    name: text("name"),
                    url: text("url"),
                    email: text("email"),
                    telephone: text("telephone"),
                    description: text("description"),
                });
            }
        }
        _ => {}
    }
}

fn org_record(org: Org, page: &Url, page_url: &Url, index: usize) -> Record {
    let url = org
        .url
        .as_deref()
        .and_then(|u| page.join(u).ok())
        .filter(is_http)
        .map(String::from)
        .unwrap_or_else(|| {
            // No URL of its own: name it after the page and its place there.
            let mut u = page_url.clone();
            u.set_fragment(Some(&format!("organization-{index}")));
            u.into()
        });
    let emails = org
        .email
        .as_deref()
        .map(|e| mailto_addresses(strip_prefix_ignore_case(e, "mailto:").unwrap_or(e)))
        .unwrap_or_default();
    Record {
        url,
        title: org.name,
        snippet: org.description,
        emails,
        phones: org
            .telephone
            .as_deref()
            .and_then(normalise_phone)
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Url {
        Url::parse("https://example.org/dir/page.html").unwrap()
    }

    fn topic(t: &str) -> Topic {
        Topic::new(t).unwrap()
    }

    fn find<'a>(records: &'a [Record], url: &str) -> &'a Record {
        records
            .iter()
            .find(|r| r.url == url)
            .unwrap_or_else(|| panic!("no record {url} in {records:#?}"))
    }

    #[test]
    fn every_selector_and_pattern_compiles() {
        LazyLock::force(&SELECTORS);
        LazyLock::force(&EMAIL);
        LazyLock::force(&PHONE);
    }

    #[test]
    fn a_topic_matches_whole_words_in_any_case_and_needs_all_of_them() {
        let t = topic("Solar Panels");
        assert!(t.matches("Cheap solar-panels in Berlin"));
        assert!(t.matches("PANELS, SOLAR"));
        assert!(!t.matches("solar energy"));
        assert!(!t.matches("solarpanels"));
        assert!(Topic::new("  ,; ").is_none());
    }

    #[test]
    fn matching_links_are_absolutised_and_others_are_skipped() {
        let html = r#"<html><body>
            <p>See <a href="../installers.html#top">Solar panel installers</a> near you.</p>
            <a href="/about">About us</a>
            <a href="javascript:void(0)">Solar panel tricks</a>
            <a href="ftp://files.example.org/x">Solar panel files</a>
        </body></html>"#;
        let records = extract(html, &page(), &topic("solar panel"));
        assert_eq!(records.len(), 1, "{records:#?}");
        let r = find(&records, "https://example.org/installers.html");
        assert_eq!(r.title.as_deref(), Some("Solar panel installers"));
        assert_eq!(
            r.snippet.as_deref(),
            Some("See Solar panel installers near you.")
        );
    }

    #[test]
    fn matching_headings_point_at_their_anchor_or_their_text() {
        let html = r#"<body>
            <h1 id="intro">Solar panels explained</h1><p>All about them.</p>
            <h2>Solar panels &amp; roofs</h2>
            <h3>Wind turbines</h3>
            <h4>Solar panels, too deep to count</h4>
        </body>"#;
        let records = extract(html, &page(), &topic("solar panels"));
        let urls: Vec<&str> = records.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://example.org/dir/page.html#intro",
                "https://example.org/dir/page.html#:~:text=Solar%20panels%20%26%20roofs",
            ]
        );
        assert_eq!(records[0].snippet.as_deref(), Some("All about them."));
    }

    #[test]
    fn emails_from_mailto_links_and_text_land_on_the_page_record() {
        let html = r#"<html><head><title>Contact</title>
            <meta name="description" content="How to reach us"></head><body>
            <a href="MAILTO:Sales@Example.org?subject=Hi">write</a>
            <p>Or info@example.org. Logo: logo@2x.png</p>
            <p>Call +49 (0)30 1234-5678 or 0044 20 7946 0958; order 2024-01-15.</p>
            <a href="tel:+1-202-555-0142">call</a>
        </body></html>"#;
        let records = extract(html, &page(), &topic("nothing here"));
        let r = find(&records, "https://example.org/dir/page.html");
        assert_eq!(r.title.as_deref(), Some("Contact"));
        assert_eq!(r.snippet.as_deref(), Some("How to reach us"));
        assert_eq!(r.emails, ["info@example.org", "sales@example.org"]);
        assert_eq!(r.phones, ["+12025550142", "+442079460958", "+493012345678"]);
    }

    #[test]
    fn phone_numbers_are_normalised_to_plus_and_digits() {
        assert_eq!(
            normalise_phone("+49 (0)30 1234-5678").as_deref(),
            Some("+493012345678")
        );
        assert_eq!(
            normalise_phone("0033 1 23 45 67 89").as_deref(),
            Some("+33123456789")
        );
        assert_eq!(
            normalise_phone("(030) 123 4567").as_deref(),
            Some("0301234567")
        );
        assert_eq!(normalise_phone("+1 23"), None);
        assert_eq!(normalise_phone("+1234567890123456"), None);
    }

    #[test]
    fn json_ld_organisations_are_found_inside_a_graph_and_arrays() {
        let html = r#"<head>
            <script type="application/ld+json">
            {"@context": "https://schema.org", "@graph": [
              {"@type": "WebSite", "name": "Ignored"},
              {"@type": ["LocalBusiness", "Store"], "name": "Sunny Roofs",
               "url": "/sunny", "email": "mailto:hello@sunny.example", "telephone": "+49 30 5555 1234"}
            ]}
            </script>
            <script type="application/ld+json">[{"@type": "Organization", "name": "No Url Co"}]</script>
            <script type="application/ld+json">{ not json</script>
        </head><body></body>"#;
        let records = extract(html, &page(), &topic("zzz"));
        let sunny = find(&records, "https://example.org/sunny");
        assert_eq!(sunny.title.as_deref(), Some("Sunny Roofs"));
        assert_eq!(sunny.emails, ["hello@sunny.example"]);
        assert_eq!(sunny.phones, ["+493055551234"]);
        let plain = find(&records, "https://example.org/dir/page.html#organization-0");
        assert_eq!(plain.title.as_deref(), Some("No Url Co"));
    }

    #[test]
    fn records_with_the_same_url_are_merged_into_one() {
        let merged = merge([
            Record {
                url: "u".into(),
                title: Some("first".into()),
                emails: vec!["b@x.org".into()],
                ..Record::default()
            },
            Record {
                url: "u".into(),
                title: Some("second".into()),
                snippet: Some("s".into()),
                emails: vec!["a@x.org".into(), "b@x.org".into()],
                ..Record::default()
            },
        ]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].title.as_deref(), Some("first"));
        assert_eq!(merged[0].snippet.as_deref(), Some("s"));
        assert_eq!(merged[0].emails, ["a@x.org", "b@x.org"]);
    }

    #[test]
    fn a_page_that_neither_matches_nor_has_contacts_gives_nothing() {
        let html = "<html><head><title>Weather</title></head><body><p>Rain.</p></body></html>";
        assert!(extract(html, &page(), &topic("solar")).is_empty());
    }
}
