//! Generators: what turns one planned post into a title, a body and hashtags.
//!
//! [`Template`] is offline and deterministic; [`OpenAi`] asks an OpenAI-compatible
//! chat-completions endpoint. Generators never touch the database and never decide
//! when a post goes out; they only draft, and say with a [`JobError`] whether a
//! failure is worth another attempt.

use std::future::Future;
use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ContentGenerationConfig;
use jobrunner::config::Secret;
use jobrunner::jobs::JobError;

/// Everything a generator may know about the post it drafts.
#[derive(Debug, Clone)]
pub struct DraftRequest {
    pub topic: String,
    pub brand: Option<String>,
    pub channel: String,
    /// Wall-clock time in the campaign's zone.
    pub local: NaiveDateTime,
    pub timezone: String,
    /// 0 for the channel's first post of the month.
    pub sequence: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Draft {
    pub title: String,
    pub body: String,
    pub hashtags: Vec<String>,
}

/// Drafts one post.
pub trait Generator: Send + Sync {
    fn draft(&self, request: &DraftRequest)
    -> impl Future<Output = Result<Draft, JobError>> + Send;
}

/// Offline drafts from a handful of rotating templates. The same request always
/// gives the same draft, so the demo runs anywhere and a re-run changes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Template;

/// A chat-completions endpoint. Holds the kind's one HTTP client; the API key is
/// read per job by [`OpenAi::drafter`].
#[derive(Debug)]
pub struct OpenAi {
    /// Built once per kind instance and shared by every draft (it pools
    /// connections). An `Err` keeps the reason the client could not be built, so
    /// openai campaigns fail with it while template campaigns still run.
    client: Result<reqwest::Client, String>,
    url: String,
    model: String,
    api_key_env: String,
}

/// An [`OpenAi`] with the API key read for one job.
pub struct OpenAiDrafter<'a> {
    openai: &'a OpenAi,
    client: &'a reqwest::Client,
    api_key: Secret,
}

impl Generator for Template {
    async fn draft(&self, request: &DraftRequest) -> Result<Draft, JobError> {
        Ok(template_draft(request))
    }
}

impl OpenAi {
    pub fn new(config: &ContentGenerationConfig) -> OpenAi {
        // reqwest is built without a bundled crypto provider (see Cargo.toml); an
        // `Err` here means one is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("jobrunner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "cannot build the HTTP client: {}",
                    jobrunner::error_chain(&e)
                )
            });
        OpenAi {
            client,
            url: format!(
                "{}/chat/completions",
                config.openai_base_url.trim_end_matches('/')
            ),
            model: config.openai_model.clone(),
            api_key_env: config.openai_api_key_env.clone(),
        }
    }

    /// Reads the API key from the environment now. A missing key is permanent: no
    /// retry will set the variable, and the campaign should say what is missing.
    pub fn drafter(&self) -> Result<OpenAiDrafter<'_>, JobError> {
        let client = self.client.as_ref().map_err(JobError::permanent)?;
        let api_key = std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(Secret::from)
            .ok_or_else(|| {
                JobError::permanent(format!(
                    "the openai generator needs an API key in the environment variable {} (content_generation.openai_api_key_env), and it is not set",
                    self.api_key_env
                ))
            })?;
        Ok(OpenAiDrafter {
            openai: self,
            client,
            api_key,
        })
    }
}

impl Generator for OpenAiDrafter<'_> {
    async fn draft(&self, request: &DraftRequest) -> Result<Draft, JobError> {
        let url = &self.openai.url;
        let response = self
            .client
            .post(url)
            .bearer_auth(self.api_key.expose())
            .json(&chat_request(&self.openai.model, request))
            .send()
            .await
            .map_err(|e| {
                JobError::retryable(format!(
                    "openai request to {url} failed: {}",
                    jobrunner::error_chain(&e)
                ))
            })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.map_err(|e| {
            JobError::retryable(format!(
                "openai reply from {url} broke off: {}",
                jobrunner::error_chain(&e)
            ))
        })?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(JobError::Retryable {
                message: format!("openai returned {status}: {}", excerpt(&text)),
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(JobError::permanent(format!(
                "openai returned {status}: {}",
                excerpt(&text)
            )));
        }
        parse_reply(&text)
    }
}

/// The chat-completions body: a system prompt fixing the reply's shape and a user
/// message with the post's facts.
fn chat_request(model: &str, request: &DraftRequest) -> Value {
    let brand = request.brand.as_deref().unwrap_or("(no brand)");
    json!({
        "model": model,
        "messages": [
            {
                "role": "system",
                "content": "You write social media posts for a marketing team. Reply with only a JSON object {\"title\": string, \"body\": string, \"hashtags\": [string]} and no other text. Fit the body to the channel's usual length and tone."
            },
            {
                "role": "user",
                "content": format!(
                    "Channel: {}\nTopic: {}\nBrand: {}\nGoes out: {} ({})\nPost number {} of the month on this channel.",
                    request.channel,
                    request.topic,
                    brand,
                    request.local.format("%A %-d %B %Y, %H:%M"),
                    request.timezone,
                    request.sequence + 1,
                ),
            }
        ],
    })
}

/// Reads `choices[0].message.content` and the JSON object inside it. Models
/// sometimes wrap it in a Markdown fence or say something around it, so a bad
/// reply is retryable: the next attempt may well be fine.
pub fn parse_reply(text: &str) -> Result<Draft, JobError> {
    let reply: Value = serde_json::from_str(text).map_err(|e| {
        JobError::retryable(format!("openai reply is not JSON ({e}): {}", excerpt(text)))
    })?;
    let content = reply
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            JobError::retryable(format!(
                "openai reply has no choices[0].message.content: {}",
                excerpt(text)
            ))
        })?;
    let draft: Draft = serde_json::from_str(strip_fence(content)).map_err(|e| {
        JobError::retryable(format!(
            "openai content is not a JSON object with title, body and hashtags ({e}): {}",
            excerpt(content)
        ))
    })?;
    if draft.title.trim().is_empty() || draft.body.trim().is_empty() {
        return Err(JobError::retryable(format!(
            "openai content has an empty title or body: {}",
            excerpt(content)
        )));
    }
    Ok(Draft {
        title: draft.title.trim().to_owned(),
        body: draft.body.trim().to_owned(),
        hashtags: draft
            .hashtags
            .iter()
            .filter_map(|tag| normalise_tag(tag))
            .collect(),
    })
}

/// The text between a ```` ``` ```` (or ```` ```json ````) fence, else the text.
fn strip_fence(content: &str) -> &str {
    let trimmed = content.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    // Drop the info string ("json") up to the end of the fence line.
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

/// `Retry-After` in seconds. The HTTP-date form is ignored (the kind's backoff
/// applies), as chat endpoints send seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The first 300 characters of an upstream text, on one line, for error messages.
fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None if flat.is_empty() => "(empty body)".to_owned(),
        None => flat,
    }
}

fn normalise_tag(tag: &str) -> Option<String> {
    let word: String = tag
        .trim()
        .trim_start_matches('#')
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then(|| format!("#{word}"))
}

/// Title, body and the hashtag the template contributes. `{topic}`, `{brand}` and
/// `{day}` are filled in.
const TEMPLATES: [(&str, &str, &str); 4] = [
    (
        "{Topic}: where to start",
        "New to {topic}? {Brand} shares the one first step worth taking this {day}.",
        "Tips",
    ),
    (
        "Three myths about {topic}",
        "We hear them every week. {Brand} sorts fact from fiction about {topic}.",
        "MythBusting",
    ),
    (
        "Behind the scenes: {topic} at {brand}",
        "How the {brand} team really works on {topic}, and what we learned doing it.",
        "BehindTheScenes",
    ),
    (
        "Your {topic} question of the week",
        "Ask {brand} anything about {topic} this {day}; we answer the best questions next week.",
        "AskUs",
    ),
];

fn template_draft(request: &DraftRequest) -> Draft {
    // Rotate by the post's number so a channel's posts cycle through the templates;
    // offset by a stable hash of the channel so channels differ on the same day.
    let index = (request.sequence + fnv1a(&request.channel) as usize) % TEMPLATES.len();
    let (title, body, tag) = TEMPLATES[index];
    let brand = request.brand.as_deref().filter(|b| !b.trim().is_empty());
    let brand_name = brand.unwrap_or("our team").trim();
    let topic = request.topic.trim();
    let day = request.local.format("%A").to_string();
    let fill = |text: &str| {
        text.replace("{Topic}", &capitalise(topic))
            .replace("{topic}", topic)
            .replace("{Brand}", &capitalise(brand_name))
            .replace("{brand}", brand_name)
            .replace("{day}", &day)
    };
    let call = match request.channel.to_ascii_lowercase().as_str() {
        "linkedin" => " What has worked for your team? Tell us in the comments.",
        "instagram" => " Save this post for later.",
        "facebook" => " Share it with someone who needs it.",
        _ => "",
    };
    let mut hashtags: Vec<String> = [Some(topic), brand, Some(tag)]
        .into_iter()
        .flatten()
        .filter_map(|words| normalise_tag(&camel(words)))
        .collect();
    hashtags.dedup();
    Draft {
        title: fill(title),
        body: format!("{}{call}", fill(body)),
        hashtags,
    }
}

/// "remote work" → "RemoteWork".
fn camel(words: &str) -> String {
    words
        .split(|c: char| !c.is_alphanumeric())
        .map(capitalise)
        .collect()
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// FNV-1a: a hash that is the same on every build and platform, unlike std's.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn request(channel: &str, sequence: usize) -> DraftRequest {
        DraftRequest {
            topic: "remote work".into(),
            brand: Some("Acme".into()),
            channel: channel.into(),
            local: NaiveDate::from_ymd_opt(2026, 11, 3)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
            timezone: "Europe/Berlin".into(),
            sequence,
        }
    }

    #[tokio::test]
    async fn the_template_gives_the_same_draft_for_the_same_request() {
        let a = Template.draft(&request("linkedin", 2)).await.unwrap();
        let b = Template.draft(&request("linkedin", 2)).await.unwrap();
        assert_eq!(a, b);
        assert!(a.hashtags.contains(&"#RemoteWork".to_owned()), "{a:?}");
        assert!(a.hashtags.contains(&"#Acme".to_owned()), "{a:?}");
    }

    #[test]
    fn consecutive_template_posts_of_a_channel_rotate_through_the_templates() {
        let titles: Vec<String> = (0..4)
            .map(|n| template_draft(&request("x", n)).title)
            .collect();
        let mut unique = titles.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{titles:?}");
    }

    #[test]
    fn a_fenced_reply_is_read_as_json() {
        let content =
            "```json\n{\"title\": \"T\", \"body\": \"B\", \"hashtags\": [\"a\", \"#b c\"]}\n```";
        let reply = json!({"choices": [{"message": {"content": content}}]}).to_string();
        let draft = parse_reply(&reply).unwrap();
        assert_eq!(draft.title, "T");
        assert_eq!(draft.hashtags, ["#a", "#bc"]);
    }

    #[test]
    fn prose_instead_of_json_is_a_retryable_error_that_quotes_it() {
        let reply = json!({"choices": [{"message": {"content": "Sure! Here is a post"}}]});
        let err = parse_reply(&reply.to_string()).unwrap_err();
        assert!(matches!(err, JobError::Retryable { .. }), "{err:?}");
        assert!(err.to_string().contains("Sure! Here is a post"), "{err}");
    }

    #[test]
    fn a_reply_without_choices_says_what_is_missing() {
        let err = parse_reply("{\"error\": null}").unwrap_err();
        assert!(
            err.to_string().contains("choices[0].message.content"),
            "{err}"
        );
    }

    #[test]
    fn a_long_body_is_cut_in_error_messages() {
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), 301);
        assert_eq!(excerpt("  "), "(empty body)");
    }
}
