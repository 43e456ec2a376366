//! `Config::validate` (a pure function of the file: every key in range, names
//! plain, the kinds' tables whole) and `Config::check_environment` (what the
//! file expects of this machine: variables set, programs and directories present).

use std::path::Path;
use std::time::Duration;

use super::{Config, Error, Result, cron, flow, kinds};

impl Config {
    /// Checks every key and reports every bad one at once, not only the first.
    pub fn validate(&self) -> Result {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut bad = |key: &str, reason: &str| problems.push((key.to_owned(), reason.to_owned()));
        for check in [self.database.validate(), self.redis.validate()] {
            if let Err((key, reason)) = check {
                bad(&key, &reason);
            }
        }
        if self.database.max_connections < 2 {
            bad(
                "database.max_connections",
                "must be at least 2 (one is held by the outbox listener)",
            );
        }
        if self.database.min_connections > self.database.max_connections {
            bad(
                "database.min_connections",
                "must not exceed database.max_connections",
            );
        }
        if self.redis.pool_size == 0 {
            bad("redis.pool_size", "must be at least 1");
        }
        if self.redis.command_timeout.is_zero() {
            bad(
                "redis.command_timeout",
                "must be above zero, or a half-dead socket hangs the daemon",
            );
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            bad(
                "redis.key_prefix",
                "must be non-empty and contain no braces",
            );
        }
        if self.runtime.lease < Duration::from_millis(300) {
            bad("runtime.lease", "must be at least 300ms");
        }
        if self.runtime.fetch_batch == 0 {
            bad("runtime.fetch_batch", "must be at least 1");
        }
        if self.runtime.status_batch_max == 0 {
            bad("runtime.status_batch_max", "must be at least 1");
        }
        if !(1..=16).contains(&self.runtime.status_writers) {
            bad("runtime.status_writers", "must be from 1 to 16");
        }
        if self.runtime.status_writers + 2 > self.database.max_connections as usize {
            bad(
                "runtime.status_writers",
                "needs database.max_connections of at least status_writers + 2",
            );
        }
        for (key, value) in [
            ("runtime.reap_interval", self.runtime.reap_interval),
            ("runtime.sweep_interval", self.runtime.sweep_interval),
            (
                "runtime.orphan_sweep_interval",
                self.runtime.orphan_sweep_interval,
            ),
            ("runtime.poll_interval", self.runtime.poll_interval),
        ] {
            if value.is_zero() {
                bad(key, "must be above zero");
            }
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            bad("log.level", &format!("not a log filter: {e}"));
        }
        for (name, queue) in &self.queues {
            if !valid_name(name) {
                bad(&format!("queues.{name}"), NAME_RULE);
            }
            if queue.concurrency == 0 {
                bad(&format!("queues.{name}.concurrency"), "must be at least 1");
            }
            if let Some(limit) = &queue.rate_limit
                && let Err((key, reason)) =
                    flow::validate_rate_limit(&format!("queues.{name}.rate_limit"), limit, false)
            {
                bad(&key, &reason);
            }
        }
        for (name, kind) in &self.kinds {
            if !valid_name(name) {
                bad(&format!("kinds.{name}"), NAME_RULE);
            }
            if !valid_name(&kind.queue) {
                bad(&format!("kinds.{name}.queue"), NAME_RULE);
            }
            if kind.max_attempts < 1 {
                bad(&format!("kinds.{name}.max_attempts"), "must be at least 1");
            }
            if kind.timeout.is_zero() {
                bad(&format!("kinds.{name}.timeout"), "must be above zero");
            }
            if kind.backoff.max < kind.backoff.base {
                bad(
                    &format!("kinds.{name}.backoff.max"),
                    "must not be below backoff.base",
                );
            }
            if kind.concurrency == Some(0) {
                bad(&format!("kinds.{name}.concurrency"), "must be at least 1");
            }
            if let Some(limit) = &kind.rate_limit
                && let Err((key, reason)) =
                    flow::validate_rate_limit(&format!("kinds.{name}.rate_limit"), limit, true)
            {
                bad(&key, &reason);
            }
            if let Some(template) = &kind.unique_key
                && let Err(reason) = flow::validate_unique_key(template)
            {
                bad(&format!("kinds.{name}.unique_key"), &reason);
            }
            if let Err((key, reason)) = kinds::validate_handler(name, kind) {
                bad(&key, &reason);
            }
        }
        for (name, cron) in &self.cron {
            if let Err((key, reason)) = cron::validate(name, cron) {
                bad(&key, &reason);
            }
        }
        if let Err((key, reason)) = self.retention.validate() {
            bad(&format!("retention.{key}"), &reason);
        }
        if let Err((key, reason)) = self.admin.validate() {
            bad(&key, &reason);
        }
        Error::check(&self.origin, problems)
    }

    /// Checks what the configuration expects of this machine: every
    /// `hmac_secret_env` variable is set, every absolute `program` and every
    /// `working_dir` exists, the Postgres TLS settings (URL and `PGSSL*`) make
    /// sense, and every certificate, key and password file can be read.
    /// Separate from [`Config::validate`] so that stays a pure function of the
    /// file; `var` looks a variable up, so tests need not touch the process
    /// environment.
    pub fn check_environment(&self, var: impl Fn(&str) -> Option<String>) -> Result {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut bad = |key: String, reason: String| problems.push((key, reason));
        let is_set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
        let pg_tls = self.database.tls(&var);
        if let Err(reason) = &pg_tls {
            bad("database.url".into(), reason.clone());
        }
        let files = pg_tls
            .iter()
            .flat_map(|tls| tls.files())
            .map(|(name, path)| ("database.url", name, path))
            .chain(
                self.redis
                    .tls
                    .files()
                    .into_iter()
                    .map(|(key, path)| (key, "file", path)),
            );
        for (key, what, path) in files {
            if let Err(e) = std::fs::File::open(path) {
                bad(
                    key.into(),
                    format!("{what} `{}` cannot be read: {e}", path.display()),
                );
            }
        }
        for read in [self.database.password(), self.redis.password()] {
            if let Err(e) = read {
                bad(e.key.into(), format!("{}: {}", e.path.display(), e.source));
            }
        }
        for (name, kind) in &self.kinds {
            if let Some(var) = kind.http.as_ref().and_then(|h| h.hmac_secret_env.as_ref())
                && !is_set(var)
            {
                bad(
                    format!("kinds.{name}.http.hmac_secret_env"),
                    format!("the environment variable `{var}` is not set or is empty"),
                );
            }
            if let Some(command) = &kind.command {
                let program = Path::new(&command.program);
                if program.is_absolute() && !program.is_file() {
                    bad(
                        format!("kinds.{name}.command.program"),
                        format!("`{}` does not exist or is not a file", command.program),
                    );
                }
                if let Some(dir) = &command.working_dir
                    && !dir.is_dir()
                {
                    bad(
                        format!("kinds.{name}.command.working_dir"),
                        format!("`{}` is not a directory", dir.display()),
                    );
                }
            }
        }
        Error::check(&self.origin, problems)
    }
}

pub(super) const NAME_RULE: &str =
    "names may hold only letters, digits, '-', '_' and '.' (1 to 64 of them)";

/// Queue and kind names end up in Redis keys and SQL; keep them plain.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn every_bad_key_is_reported_at_once_and_one_alone_as_before() {
        let text = "[redis]\npool_size = 0\n\n[runtime]\nlease = \"10ms\"\n\n\
                    [queues.\"no spaces\"]\nconcurrency = 1\n";
        let config = Config::from_toml(text, "c.toml").unwrap();
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.starts_with("config c.toml: 3 bad keys:"),
            "{message}"
        );
        for line in [
            "\n  key `redis.pool_size`: must be at least 1",
            "\n  key `runtime.lease`: must be at least 300ms",
            "\n  key `queues.no spaces`: names may hold only",
        ] {
            assert!(message.contains(line), "{line:?} missing from {message}");
        }

        let config = Config::from_toml("[redis]\npool_size = 0\n", "c.toml").unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "config c.toml: key `redis.pool_size`: must be at least 1"
        );
    }
}
