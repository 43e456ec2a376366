//! Demo inputs for the built-in kinds, and summaries of what they produced, for
//! `jobrunner demo`: a content campaign, an extraction query against a fixture page
//! served on loopback, and a messaging webhook.
//!
//! It writes only the kinds' own tables, never `jobrunner.jobs`, and its fixture
//! site listens on 127.0.0.1 only, for as long as the demo runs.

use std::net::SocketAddr;

use chrono::{Datelike, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The tenant every demo row belongs to.
pub const TENANT: &str = "demo";

/// The page the data-extraction demo reads.
const FIXTURE_PAGE: &str = r#"<!doctype html>
<html><head><title>Coffee roasters in Lisbon</title>
<script type="application/ld+json">
{"@context": "https://schema.org", "@graph": [{"@type": "LocalBusiness",
 "name": "Bean There Coffee Roasters", "url": "https://beanthere.example/",
 "email": "hello@beanthere.example", "telephone": "+351 21 000 0000"}]}
</script></head>
<body>
<h1>Coffee roasters worth a visit</h1>
<p><a href="/roasters/bean-there">Bean There coffee roasters</a> roast in small batches.</p>
<p><a href="/about">About this guide</a></p>
<p>Wholesale: write to orders@beanthere.example or call +351 21 000 0001.</p>
</body></html>
"#;

/// A one-page HTTP site on 127.0.0.1, stopped when dropped.
pub struct FixtureSite {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureSite {
    pub async fn start() -> std::io::Result<FixtureSite> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // The request itself does not matter: every path gets the page.
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{FIXTURE_PAGE}",
                        FIXTURE_PAGE.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(FixtureSite { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/guide", self.addr)
    }
}

impl Drop for FixtureSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A campaign for next month, drafted by the offline template generator, about
/// that month's season.
pub async fn create_campaign(pool: &PgPool) -> sqlx::Result<Uuid> {
    let next = Utc::now().date_naive() + chrono::Months::new(1);
    let month = format!("{}-{:02}", next.year(), next.month());
    sqlx::query_scalar(
        "INSERT INTO content_campaigns (tenant, month, topic, brand, channels, posts_per_week, timezone)
         VALUES ($1, $2, $3, 'Bean There', ARRAY['instagram', 'linkedin'], 3, 'Europe/Lisbon')
         RETURNING id",
    )
    .bind(TENANT)
    .bind(month)
    .bind(seasonal_topic(next.month()))
    .fetch_one(pool)
    .await
}

/// The campaign's topic for a month (1–12) in Lisbon, where the demo's café is:
/// the season the posts will go out in.
pub fn seasonal_topic(month: u32) -> &'static str {
    match month {
        3..=5 => "Spring coffee specials",
        6..=8 => "Summer iced coffee specials",
        9..=11 => "Autumn coffee specials",
        _ => "Winter hot drink specials",
    }
}

pub async fn create_extraction_query(pool: &PgPool, source: &str) -> sqlx::Result<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO extraction_queries (tenant, search_topic, sources)
         VALUES ($1, 'coffee roasters', $2) RETURNING id",
    )
    .bind(TENANT)
    .bind(json!([source]))
    .fetch_one(pool)
    .await
}

/// A provider webhook in the WhatsApp Cloud API shape: two messages from one
/// contact. The ids are fixed, so a second demo run shows them as duplicates.
pub fn webhook_payload() -> Value {
    let now = Utc::now().timestamp();
    json!({
        "tenant": TENANT,
        "webhook": {
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "demo-account",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "351210000000", "phone_number_id": "demo"},
                        "contacts": [{"profile": {"name": "Ada"}, "wa_id": "351910000000"}],
                        "messages": [
                            {"from": "351910000000", "id": "wamid.demo-1", "timestamp": (now - 60).to_string(),
                             "type": "text", "text": {"body": "Hi! Do you ship beans to Porto?"}},
                            {"from": "351910000000", "id": "wamid.demo-2", "timestamp": now.to_string(),
                             "type": "text", "text": {"body": "Two bags of the house blend, please."}}
                        ]
                    }
                }]
            }]
        }
    })
}

/// Human lines describing what the three jobs left in their tables.
pub async fn summary(pool: &PgPool, campaign: Uuid, query: Uuid) -> sqlx::Result<Vec<String>> {
    let mut lines = Vec::new();

    let row = sqlx::query(
        "SELECT c.status, c.month, count(p.id) AS posts
         FROM content_campaigns c LEFT JOIN content_posts p ON p.campaign_id = c.id
         WHERE c.id = $1 GROUP BY c.id",
    )
    .bind(campaign)
    .fetch_one(pool)
    .await?;
    lines.push(format!(
        "content-generation: campaign {} is {} with {} posts planned for {}",
        campaign,
        row.get::<String, _>("status"),
        row.get::<i64, _>("posts"),
        row.get::<String, _>("month"),
    ));
    for post in sqlx::query(
        "SELECT channel, scheduled_for, title FROM content_posts
         WHERE campaign_id = $1 ORDER BY scheduled_for, channel LIMIT 2",
    )
    .bind(campaign)
    .fetch_all(pool)
    .await?
    {
        lines.push(format!(
            "    {} {:<9} {}",
            post.get::<chrono::DateTime<Utc>, _>("scheduled_for")
                .format("%Y-%m-%d %H:%MZ"),
            post.get::<String, _>("channel"),
            post.get::<String, _>("title"),
        ));
    }

    let row = sqlx::query("SELECT status, result_count FROM extraction_queries WHERE id = $1")
        .bind(query)
        .fetch_one(pool)
        .await?;
    lines.push(format!(
        "data-extraction: query {} is {} with {} results",
        query,
        row.get::<String, _>("status"),
        row.get::<i32, _>("result_count"),
    ));
    for result in sqlx::query(
        "SELECT url, coalesce(title, '') AS title, emails, phones FROM extraction_results
         WHERE query_id = $1 ORDER BY url LIMIT 4",
    )
    .bind(query)
    .fetch_all(pool)
    .await?
    {
        let mut contacts = result.get::<Vec<String>, _>("emails");
        contacts.extend(result.get::<Vec<String>, _>("phones"));
        lines.push(format!(
            "    {}  {}  {}",
            result.get::<String, _>("url"),
            result.get::<String, _>("title"),
            contacts.join(", ")
        ));
    }

    for row in sqlx::query(
        "SELECT c.contact_name, c.contact_number, c.unread_count, m.body
         FROM conversations c
         LEFT JOIN LATERAL (SELECT body FROM messages WHERE conversation_id = c.id
                            ORDER BY sent_at DESC LIMIT 1) m ON true
         WHERE c.tenant = $1 ORDER BY c.last_message_at DESC NULLS LAST LIMIT 3",
    )
    .bind(TENANT)
    .fetch_all(pool)
    .await?
    {
        lines.push(format!(
            "message-processing: conversation with {} ({}): {} unread, last: {:?}",
            row.get::<Option<String>, _>("contact_name")
                .unwrap_or_default(),
            row.get::<String, _>("contact_number"),
            row.get::<i32, _>("unread_count"),
            row.get::<Option<String>, _>("body").unwrap_or_default(),
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campaign_topic_fits_the_season_of_its_month() {
        assert_eq!(seasonal_topic(12), "Winter hot drink specials");
        assert_eq!(seasonal_topic(1), "Winter hot drink specials");
        assert_eq!(seasonal_topic(4), "Spring coffee specials");
        assert_eq!(seasonal_topic(7), "Summer iced coffee specials");
        assert_eq!(seasonal_topic(10), "Autumn coffee specials");
        for month in 1..=12 {
            let topic = seasonal_topic(month);
            assert!(
                !topic.starts_with("Spring") || (3..=5).contains(&month),
                "{month}: {topic}"
            );
        }
    }
}
