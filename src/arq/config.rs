//! `[arq]`: which arq queues the daemon serves and how arq calls become jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{RedisConfig, Section};

/// The `[arq]` section. Without it (or with no `queues`) the bridge is off and
/// nothing changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArqConfig {
    /// The arq queue zsets to take jobs from (`arq:queue` is arq's default).
    pub queues: Vec<String>,
    /// The jobrunner queue arq jobs run in, unless a function names its own.
    pub queue: String,
    /// How long a result record is kept (arq's `keep_result`); `0s` keeps none.
    #[serde(with = "humantime_serde")]
    pub keep_result: Duration,
    /// How often the arq queues are read for due jobs, ended jobs and aborts.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The most jobs taken from one arq queue per read.
    pub batch: usize,
    /// Per arq function name: the kind it runs as and how its arguments are named.
    pub functions: BTreeMap<String, ArqFunction>,
}

/// `[arq.functions.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArqFunction {
    /// The kind the function runs as (default: the function's own name).
    pub kind: Option<String>,
    /// Names for positional arguments, in order: `args = ["campaign_id"]` turns
    /// `enqueue_job('f', 42)` into the payload `{"campaign_id": 42}`.
    pub args: Vec<String>,
    /// The jobrunner queue (default: `[arq] queue`).
    pub queue: Option<String>,
}

impl Default for ArqConfig {
    fn default() -> Self {
        ArqConfig {
            queues: Vec::new(),
            queue: crate::config::DEFAULT_QUEUE.to_owned(),
            keep_result: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(200),
            batch: 100,
            functions: BTreeMap::new(),
        }
    }
}

impl Section for ArqConfig {
    const NAME: &'static str = "arq";

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        for q in &self.queues {
            if q.is_empty() || q.contains(['{', '}']) {
                return bad(
                    "queues",
                    &format!(
                        "{q:?} is no arq queue: names are non-empty and have no braces (keys with a {{tag}} are jobrunner's own)"
                    ),
                );
            }
        }
        if self.poll_interval < Duration::from_millis(10) {
            return bad("poll_interval", "must be at least 10ms");
        }
        if self.batch == 0 || self.batch > 10_000 {
            return bad("batch", "must be from 1 to 10000");
        }
        for (name, f) in &self.functions {
            if let Some(kind) = &f.kind
                && !super::wire::is_kind_name(kind)
            {
                return bad(
                    &format!("functions.{name}.kind"),
                    "must be 1-64 letters, digits, dots, dashes or underscores",
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = f.args.iter().find(|a| !seen.insert(*a)) {
                return bad(
                    &format!("functions.{name}.args"),
                    &format!("names {dup:?} twice"),
                );
            }
        }
        Ok(())
    }
}

impl ArqConfig {
    /// Whether the bridge runs.
    pub fn enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    /// What the section asks of the rest of the config: a Redis where arq's
    /// untagged keys can live beside each other (not a cluster), and arq queue
    /// names that are not jobrunner's own keys. Every problem, as (key, reason).
    pub fn check_with(&self, redis: &RedisConfig) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.enabled() {
            return problems;
        }
        // A cluster is named by its URL (`redis-cluster://`, `?cluster=…`).
        let url = redis.url.expose();
        if url.contains("cluster") {
            problems.push((
                "arq.queues".to_owned(),
                "arq's keys (arq:queue, arq:job:<id>, …) carry no hash tag, so arq queues need a standalone Redis (or Sentinel), not Redis Cluster".to_owned(),
            ));
        }
        let own = format!("{}:", redis.key_prefix);
        for q in &self.queues {
            if q.starts_with(&own) || q == &redis.key_prefix {
                problems.push((
                    "arq.queues".to_owned(),
                    format!("{q:?} is under jobrunner's own key prefix {:?}; jobrunner's keys are never read as arq queues", redis.key_prefix),
                ));
            }
        }
        problems
    }
}
