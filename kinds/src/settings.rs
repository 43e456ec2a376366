//! Settings of the built-in kinds that need more than `[kinds.NAME]`:
//! `[content_generation]` and `[data_extraction]`. They are sections the kinds
//! claim (`config::Section`); the core config does not name them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use jobrunner::config::{Claim, Section};

/// The `content-generation` kind: which generator drafts posts, and how to reach an
/// OpenAI-compatible endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentGenerationConfig {
    /// The generator for campaigns whose `generator` column says `default`.
    pub generator: ContentGenerator,
    /// Base URL of an OpenAI-compatible API; `/chat/completions` is appended.
    pub openai_base_url: String,
    pub openai_model: String,
    /// Name of the environment variable holding the API key. The key itself never
    /// sits in the file, and it is read when a job needs it (see the kind's doc).
    pub openai_api_key_env: String,
    /// One draft request fails (retryably) after this long.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most draft requests of one campaign in flight at once, so a big campaign does
    /// not burst the endpoint's rate limit.
    pub max_concurrent_drafts: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContentGenerator {
    /// Offline and deterministic.
    Template,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
}

/// The `data-extraction` kind fetches URLs that users supplied, so its limits and
/// its SSRF allow-list live here where ops can see them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataExtractionConfig {
    /// Host names or IP addresses a source may reach even though they resolve to a
    /// loopback, private, link-local or other non-public address. Empty by default:
    /// user-supplied URLs must not reach the daemon's own network.
    pub allow_hosts: Vec<String>,
    /// A page body is cut off after this many bytes and the rest is never read.
    pub max_body_bytes: u64,
    /// One HTTP request (connect, headers and body) fails after this long.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Redirects followed per source; each hop is checked like the source itself.
    pub max_redirects: usize,
    /// Requests to one host in flight at once, across all running jobs.
    pub per_host_concurrency: usize,
}

impl Default for ContentGenerationConfig {
    fn default() -> Self {
        ContentGenerationConfig {
            generator: ContentGenerator::Template,
            openai_base_url: "https://api.openai.com/v1".to_owned(),
            openai_model: "gpt-4o-mini".to_owned(),
            openai_api_key_env: "OPENAI_API_KEY".to_owned(),
            request_timeout: Duration::from_secs(60),
            max_concurrent_drafts: 4,
        }
    }
}

impl Default for DataExtractionConfig {
    fn default() -> Self {
        DataExtractionConfig {
            allow_hosts: Vec::new(),
            max_body_bytes: 2 * 1024 * 1024,
            fetch_timeout: Duration::from_secs(20),
            max_redirects: 5,
            per_host_concurrency: 2,
        }
    }
}

/// The sections the built-in kinds claim in the config file.
pub fn sections() -> Vec<Claim> {
    vec![
        Claim::of::<ContentGenerationConfig>(),
        Claim::of::<DataExtractionConfig>(),
    ]
}

impl Section for ContentGenerationConfig {
    const NAME: &'static str = "content_generation";

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if !self.openai_base_url.starts_with("http://")
            && !self.openai_base_url.starts_with("https://")
        {
            return bad("openai_base_url", "must start with http:// or https://");
        }
        if self.openai_model.is_empty() {
            return bad("openai_model", "must not be empty");
        }
        if self.openai_api_key_env.is_empty()
            || !self
                .openai_api_key_env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "openai_api_key_env",
                "must be an environment variable name (letters, digits and '_')",
            );
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout", "must be above zero");
        }
        if !(1..=64).contains(&self.max_concurrent_drafts) {
            return bad("max_concurrent_drafts", "must be from 1 to 64");
        }
        Ok(())
    }
}

impl Section for DataExtractionConfig {
    const NAME: &'static str = "data_extraction";

    /// Checks the section; an error is the key (within the section) and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
        for host in &self.allow_hosts {
            let plain = host.trim_start_matches('[').trim_end_matches(']');
            let is_ip = plain.parse::<std::net::IpAddr>().is_ok();
            let is_name = !plain.is_empty()
                && plain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !is_ip && !is_name {
                return bad(
                    "allow_hosts",
                    format!("`{host}` is not a host name or IP address (no scheme, port or path)"),
                );
            }
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_body_bytes) {
            return bad("max_body_bytes", "must be from 1024 to 268435456".into());
        }
        if self.fetch_timeout.is_zero() {
            return bad("fetch_timeout", "must be above zero".into());
        }
        if self.max_redirects > 20 {
            return bad("max_redirects", "must be at most 20".into());
        }
        if !(1..=64).contains(&self.per_host_concurrency) {
            return bad("per_host_concurrency", "must be from 1 to 64".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobrunner::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_with(text, "c.toml", &sections()).map_err(|e| e.to_string())
    }

    #[test]
    fn an_unknown_content_generator_is_rejected_with_its_file() {
        let err = parse("[content_generation]\ngenerator = \"gpt\"\n").unwrap_err();
        assert!(err.contains("c.toml") && err.contains("gpt"), "{err}");
    }

    #[test]
    fn a_content_api_key_env_must_be_a_variable_name() {
        let err =
            parse("[content_generation]\nopenai_api_key_env = \"sk-123 oops\"\n").unwrap_err();
        assert!(
            err.contains("content_generation.openai_api_key_env"),
            "{err}"
        );
    }

    #[test]
    fn a_data_extraction_allow_list_entry_with_a_scheme_names_the_key() {
        let err = parse("[data_extraction]\nallow_hosts = [\"http://intranet\"]\n").unwrap_err();
        assert!(
            err.contains("key `data_extraction.allow_hosts`") && err.contains("http://intranet"),
            "{err}"
        );
        let ok = parse(
            "[data_extraction]\nallow_hosts = [\"127.0.0.1\", \"[::1]\", \"intranet.local\"]\nfetch_timeout = \"5s\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        let extraction: DataExtractionConfig = ok.section();
        assert_eq!(extraction.fetch_timeout, Duration::from_secs(5));
        assert_eq!(extraction.allow_hosts.len(), 3);
    }
}
