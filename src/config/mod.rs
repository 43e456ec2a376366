//! Configuration: built-in defaults, then a TOML file, then environment overrides.
//!
//! This module owns parsing and validation only. It never opens a connection; the
//! other modules receive the validated sections they need. A typo or a bad value is
//! an [`Error`] naming the file, the key and the reason, so start-up stops before
//! anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod cron;
mod flow;
mod kinds;
mod observe;
mod redaction;
mod retention;
mod runtime;
mod schedule;
mod secret;
mod sections;
mod services;
mod tls;
mod topology;
mod validate;

pub use cron::{CatchUp, CronConfig};
pub use flow::{OnTimeout, RateLimit};
pub use kinds::{BackoffConfig, CommandKindConfig, HandlerName, HttpKindConfig, KindConfig};
pub use observe::{AdminConfig, EventsConfig};
pub use redaction::{JsonPointer, KindRedaction, RedactionConfig};
pub use retention::RetentionConfig;
pub use runtime::{LogConfig, LogFormat, QueueConfig, RuntimeConfig};
pub use schedule::{Schedule, ScheduleError};
pub use secret::{Secret, SecretUrl, redact_url, with_secrets_exposed};
pub use sections::{Claim, Section};
pub use services::{CREDENTIALS_DIRECTORY, CredentialError, DatabaseConfig, RedisConfig};
pub use tls::{PgTls, RedisTls, RootCert, SslMode, redis_url_uses_tls};
pub use topology::{RedisTopology, TopologyKind};
use validate::NAME_RULE;
pub use validate::valid_name;

/// Where the daemon looks for its file when `--config` is not given, in order.
pub const SEARCH_PATH: [&str; 2] = ["config/jobrunner.toml", "/etc/jobrunner/jobrunner.toml"];

/// The queue a kind uses when neither the producer nor the config names one.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {origin}: key `{key}`: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
    /// Several bad keys, each with its reason, one per line.
    #[error("config {origin}: {} bad keys:{}", .keys.len(), bad_keys(.keys))]
    InvalidKeys {
        origin: String,
        keys: Vec<(String, String)>,
    },
}

fn bad_keys(keys: &[(String, String)]) -> String {
    keys.iter()
        .map(|(key, reason)| format!("\n  key `{key}`: {reason}"))
        .collect()
}

impl Error {
    /// Every problem a check found, as one error: none is `Ok`, one is
    /// [`Error::Invalid`], more are [`Error::InvalidKeys`].
    fn check(origin: &str, mut problems: Vec<(String, String)>) -> Result {
        let origin = origin.to_owned();
        match problems.len() {
            0 => Ok(()),
            1 => {
                let (key, reason) = problems.remove(0);
                Err(Error::Invalid {
                    origin,
                    key,
                    reason,
                })
            }
            _ => Err(Error::InvalidKeys {
                origin,
                keys: problems,
            }),
        }
    }
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// The whole effective configuration of one daemon or CLI invocation.
///
/// Not `deny_unknown_fields`: unknown top-level tables land in `sections`, and
/// [`Config::from_toml_with`] refuses every one that no layer claimed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    /// Per-queue settings; a queue that is not listed here is not served.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-kind settings; a kind that is not listed uses [`KindConfig::default`].
    pub kinds: BTreeMap<String, KindConfig>,
    /// Cron schedules (`[cron.NAME]`); every daemon runs them, each fire time once.
    pub cron: BTreeMap<String, CronConfig>,
    /// How long final jobs are kept before the daemon deletes them.
    pub retention: RetentionConfig,
    /// The admin HTTP listener (health, metrics, job lookups, live events).
    pub admin: AdminConfig,
    /// Where job status changes are published.
    pub events: EventsConfig,
    /// Payload and result fields shown as `"[redacted]"` outside the ledger.
    pub redaction: RedactionConfig,
    /// The top-level tables that layers above the core claimed (see
    /// [`Section`]), by name, in their normalised form (defaults filled in).
    /// Read one with [`Config::section`].
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
    /// Where this configuration came from, for error messages. Not a key.
    #[serde(skip)]
    pub origin: String,
}

impl Default for Config {
    fn default() -> Self {
        let mut queues = BTreeMap::new();
        queues.insert(DEFAULT_QUEUE.to_owned(), QueueConfig::default());
        Config {
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            queues,
            kinds: BTreeMap::new(),
            cron: BTreeMap::new(),
            retention: RetentionConfig::default(),
            admin: AdminConfig::default(),
            events: EventsConfig::default(),
            redaction: RedactionConfig::default(),
            sections: BTreeMap::new(),
            origin: "built-in defaults".to_owned(),
        }
    }
}

impl Config {
    /// Loads the file named by `explicit`, else the first of [`SEARCH_PATH`] that
    /// exists, else the defaults; then applies environment overrides and validates.
    /// The file may hold the top-level tables that `claims` name.
    pub fn load(explicit: Option<&Path>, claims: &[Claim]) -> Result<Config> {
        let found = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => SEARCH_PATH.iter().map(PathBuf::from).find(|p| p.is_file()),
        };
        let mut config = match found {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_toml_with(&text, &path.display().to_string(), claims)?
            }
            None => {
                let mut config = Config::default();
                config.claim(claims)?;
                config
            }
        };
        config.apply_env(|name| std::env::var(name).ok());
        config.validate()?;
        config.check_environment(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Parses TOML text of the core's sections alone; `origin` names it in
    /// errors. Does not validate.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        Config::from_toml_with(text, origin, &[])
    }

    /// Parses TOML text that may also hold the top-level tables `claims` name;
    /// each is read and checked by its layer's type. Does not validate the rest.
    pub fn from_toml_with(text: &str, origin: &str, claims: &[Claim]) -> Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().trim_end_matches('.').to_owned(),
        })?;
        config.origin = origin.to_owned();
        config.claim(claims)?;
        Ok(config)
    }

    /// Refuses every extra top-level table that no claim names, then reads each
    /// claimed one through its type (an absent one gets its defaults).
    fn claim(&mut self, claims: &[Claim]) -> Result {
        if let Some(unknown) = self
            .sections
            .keys()
            .find(|name| !claims.iter().any(|c| c.name() == name.as_str()))
        {
            return Err(Error::Parse {
                path: self.origin.clone(),
                message: format!("unknown top-level key `{unknown}`"),
            });
        }
        for claim in claims {
            let value = self
                .sections
                .remove(claim.name())
                .unwrap_or_else(|| serde_json::json!({}));
            let normalised = claim
                .normalize(value)
                .map_err(|(key, reason)| Error::Invalid {
                    origin: self.origin.clone(),
                    key: if key.is_empty() {
                        claim.name().to_owned()
                    } else {
                        format!("{}.{key}", claim.name())
                    },
                    reason,
                })?;
            self.sections.insert(claim.name().to_owned(), normalised);
        }
        Ok(())
    }

    /// A layer's section: the claimed table as its type reads it, or its
    /// defaults when the config holds none (a config built in code).
    pub fn section<S: Section>(&self) -> S {
        self.sections
            .get(S::NAME)
            // The stored value was written by `S` itself when it was claimed or
            // set, so reading it back cannot fail; the defaults are the fallback
            // for a value a caller put in `sections` by hand.
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_default()
    }

    /// Replaces a layer's section (tests and the demo adjust settings in code).
    pub fn set_section<S: Section>(&mut self, section: &S) {
        if let Ok(value) = sections::to_value(section) {
            self.sections.insert(S::NAME.to_owned(), value);
        }
    }

    /// `JOBRUNNER_DATABASE_URL` / `JOBRUNNER_REDIS_URL` win, then `DATABASE_URL` /
    /// `REDIS_URL`; `JOBRUNNER_DATABASE_PASSWORD_FILE` and
    /// `JOBRUNNER_REDIS_PASSWORD_FILE` set the password files. A password file
    /// given as a bare name is a systemd credential, found in
    /// `$CREDENTIALS_DIRECTORY`. The lookup is a parameter so tests need not
    /// touch the process env.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let pick = |a: &str, b: &str| var(a).or_else(|| var(b)).filter(|v| !v.is_empty());
        if let Some(url) = pick("JOBRUNNER_DATABASE_URL", "DATABASE_URL") {
            self.database.url = url.into();
        }
        if let Some(url) = pick("JOBRUNNER_REDIS_URL", "REDIS_URL") {
            self.redis.url = url.into();
        }
        let file = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(path) = file("JOBRUNNER_DATABASE_PASSWORD_FILE") {
            self.database.password_file = Some(path);
        }
        if let Some(path) = file("JOBRUNNER_REDIS_PASSWORD_FILE") {
            self.redis.password_file = Some(path);
        }
        let credentials = var(CREDENTIALS_DIRECTORY).filter(|v| !v.is_empty());
        for path in [
            &mut self.database.password_file,
            &mut self.redis.password_file,
        ] {
            services::resolve_credential(path, credentials.as_deref());
        }
    }

    /// The settings for `kind`, falling back to the defaults for unlisted kinds.
    pub fn kind(&self, kind: &str) -> KindConfig {
        self.kinds.get(kind).cloned().unwrap_or_default()
    }

    /// The effective configuration as TOML, with every secret hidden (as any
    /// serialisation of a [`Secret`] or [`SecretUrl`] outside
    /// [`with_secrets_exposed`] shows it).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }

    /// The effective configuration as one JSON document, secrets hidden as in
    /// [`Config::to_toml`].
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = Config::from_toml("", "empty.toml").unwrap();
        config.validate().unwrap();
        assert_eq!(config.runtime.lease, Duration::from_secs(30));
        assert!(config.queues.contains_key("default"));
    }

    #[test]
    fn an_unknown_key_names_the_file_and_the_key() {
        let err = Config::from_toml("[runtime]\nleas = \"10s\"\n", "my.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("my.toml"), "{text}");
        assert!(text.contains("leas"), "{text}");
    }

    #[test]
    fn a_bad_duration_says_what_was_expected() {
        let err = Config::from_toml("[runtime]\nlease = \"soon\"\n", "my.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("lease") && text.contains("soon"), "{text}");
    }

    #[test]
    fn a_zero_concurrency_is_rejected_with_its_key() {
        let config = Config::from_toml("[queues.mail]\nconcurrency = 0\n", "q.toml").unwrap();
        let text = config.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            "config q.toml: key `queues.mail.concurrency`: must be at least 1"
        );
    }

    #[test]
    fn env_overrides_prefer_the_jobrunner_names() {
        let mut config = Config::default();
        config.apply_env(|name| match name {
            "JOBRUNNER_DATABASE_URL" => Some("postgres://a/b".into()),
            "DATABASE_URL" => Some("postgres://ignored/x".into()),
            "REDIS_URL" => Some("redis://r:1/0".into()),
            _ => None,
        });
        assert_eq!(config.database.url.expose(), "postgres://a/b");
        assert_eq!(config.redis.url.expose(), "redis://r:1/0");
    }

    #[test]
    fn secrets_appear_neither_in_debug_output_nor_in_the_printed_config() {
        let text = "[database]\nurl = \"postgres://app:db-pass-1@db:5432/jobs\"\n\
            [redis]\nurl = \"rediss://worker:redis-pass-2@cache:6380/0\"\n\
            [kinds.m]\nhandler = \"http\"\n[kinds.m.http]\nurl = \"https://h/x\"\n\
            [kinds.m.http.headers]\nAuthorization = \"Bearer header-token-3\"\n\
            [kinds.c]\nhandler = \"command\"\n[kinds.c.command]\nprogram = \"/bin/true\"\n\
            [kinds.c.command.env]\nAPI_TOKEN = \"env-token-4\"\n";
        let config = Config::from_toml(text, "s.toml").unwrap();
        config.validate().unwrap();
        let secrets = ["db-pass-1", "redis-pass-2", "header-token-3", "env-token-4"];
        for (how, shown) in [
            ("Debug", format!("{config:?}")),
            ("pretty Debug", format!("{config:#?}")),
            ("jobrunner config", config.to_toml()),
            ("JSON", serde_json::to_string(&config).unwrap()),
        ] {
            for secret in secrets {
                assert!(!shown.contains(secret), "{how} shows {secret}: {shown}");
            }
            assert!(
                shown.contains("postgres://app:***@db:5432/jobs"),
                "{how} keeps the URL's other parts: {shown}"
            );
        }
        assert_eq!(
            config.database.url.expose(),
            "postgres://app:db-pass-1@db:5432/jobs"
        );
        let http = config.kind("m").http.unwrap();
        assert_eq!(
            http.headers["Authorization"].expose(),
            "Bearer header-token-3"
        );
        let whole = with_secrets_exposed(|| toml::to_string(&config).unwrap());
        let again = Config::from_toml(&whole, "again").unwrap();
        assert_eq!(again.redis.url, config.redis.url);
        assert_eq!(again.kind("c").command, config.kind("c").command);
    }

    #[test]
    fn a_password_file_by_bare_name_is_a_systemd_credential() {
        let mut config = Config::from_toml(
            "[database]\npassword_file = \"db-password\"\n[redis]\npassword_file = \"/etc/jobrunner/redis-password\"\n",
            "c.toml",
        )
        .unwrap();
        config.database.url = "postgres://app@db/jobs".into();
        let unresolved = config.validate().unwrap_err().to_string();
        assert!(
            unresolved.contains("key `database.password_file`")
                && unresolved.contains("$CREDENTIALS_DIRECTORY"),
            "{unresolved}"
        );
        config.apply_env(|name| {
            (name == "CREDENTIALS_DIRECTORY").then(|| "/run/credentials/jobrunner.service".into())
        });
        assert_eq!(
            config.database.password_file.as_deref(),
            Some(Path::new("/run/credentials/jobrunner.service/db-password"))
        );
        assert_eq!(
            config.redis.password_file.as_deref(),
            Some(Path::new("/etc/jobrunner/redis-password")),
            "an absolute path stays as it is"
        );
        config.validate().unwrap();
        config.apply_env(|name| {
            (name == "JOBRUNNER_REDIS_PASSWORD_FILE").then(|| "/elsewhere/pw".into())
        });
        assert_eq!(
            config.redis.password_file.as_deref(),
            Some(Path::new("/elsewhere/pw"))
        );
    }

    #[test]
    fn a_password_given_twice_or_tls_settings_on_a_plain_url_are_refused() {
        for (text, key) in [
            (
                "[database]\nurl = \"postgres://a:pw@db/x\"\npassword_file = \"/pw\"\n",
                "database.password_file",
            ),
            (
                "[redis]\nurl = \"rediss://:pw@cache\"\npassword = \"again\"\n",
                "redis.password",
            ),
            (
                "[redis]\npassword = \"a\"\npassword_file = \"/pw\"\n",
                "redis.password_file",
            ),
            (
                "[redis]\nurl = \"rediss://worker@cache\"\nusername = \"other\"\n",
                "redis.username",
            ),
            (
                "[redis]\nurl = \"redis://cache:6379\"\n[redis.tls]\nca_file = \"/ca.pem\"\n",
                "redis.tls",
            ),
            (
                "[redis]\nurl = \"rediss://cache\"\n[redis.tls]\ncert_file = \"/c.pem\"\n",
                "redis.tls.key_file",
            ),
        ] {
            let err = invalid(text);
            assert!(err.contains(&format!("key `{key}`")), "{text}: {err}");
        }
        let plain = invalid(
            "[redis]\nurl = \"redis://cache:6379\"\n[redis.tls]\nverify_server_name = false\n",
        );
        assert!(plain.contains("use rediss://"), "{plain}");
    }

    #[test]
    fn a_bad_pgsslmode_or_a_missing_certificate_stops_start_up() {
        let config = Config::from_toml(
            "[database]\nurl = \"postgres://app@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n",
            "c.toml",
        )
        .unwrap();
        config.validate().unwrap();
        let err = config.check_environment(|_| None).unwrap_err().to_string();
        assert!(
            err.contains("key `database.url`")
                && err.contains("sslrootcert `/nonexistent/ca.pem` cannot be read"),
            "{err}"
        );
        let config = Config::from_toml("", "c.toml").unwrap();
        let err = config
            .check_environment(|name| (name == "PGSSLMODE").then(|| "verify".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("$PGSSLMODE: `verify` is not an sslmode"),
            "{err}"
        );
    }

    #[test]
    fn a_duration_key_accepts_the_same_forms_and_names_a_bad_one() {
        let config = Config::from_toml(
            "[runtime]\nlease = \"1m 30s\"\npoll_interval = \"250ms\"\ndrain_timeout = \"2h\"\n",
            "d.toml",
        )
        .unwrap();
        assert_eq!(config.runtime.lease, Duration::from_secs(90));
        assert_eq!(config.runtime.poll_interval, Duration::from_millis(250));
        assert_eq!(config.runtime.drain_timeout, Duration::from_secs(7200));
        assert!(
            config.to_toml().contains("lease = \"1m 30s\""),
            "{}",
            config.to_toml()
        );
        for bad in ["lease = \"soon\"", "lease = \"30\"", "lease = 30"] {
            let err = Config::from_toml(&format!("[runtime]\n{bad}\n"), "d.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("d.toml") && err.contains("lease") && err.contains("duration"),
                "{bad}: {err}"
            );
        }
    }

    fn invalid(text: &str) -> String {
        let config = Config::from_toml(text, "k.toml").unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn an_http_kind_with_a_bad_url_names_the_key() {
        let text =
            invalid("[kinds.mailer]\nhandler = \"http\"\n[kinds.mailer.http]\nurl = \"ftp://x\"\n");
        assert_eq!(
            text,
            "config k.toml: key `kinds.mailer.http.url`: must be http:// or https://"
        );
    }

    #[test]
    fn a_handler_without_its_table_is_an_error() {
        let text = invalid("[kinds.mailer]\nhandler = \"http\"\n");
        assert!(text.contains("key `kinds.mailer.http`"), "{text}");
        let text = invalid("[kinds.backup]\nhandler = \"command\"\n");
        assert!(text.contains("key `kinds.backup.command`"), "{text}");
        let text = invalid("[kinds.backup.command]\nprogram = \"/bin/true\"\n");
        assert!(
            text.contains("needs handler = \"command\""),
            "a table without a handler is a mistake, not a no-op: {text}"
        );
    }

    #[test]
    fn an_unknown_handler_name_is_a_parse_error() {
        let err = Config::from_toml("[kinds.x]\nhandler = \"ftp\"\n", "k.toml").unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }

    #[test]
    fn a_dead_exit_code_of_zero_is_rejected() {
        let text = invalid(
            "[kinds.b]\nhandler = \"command\"\n[kinds.b.command]\nprogram = \"x\"\ndead_exit_codes = [0]\n",
        );
        assert!(text.contains("kinds.b.command.dead_exit_codes"), "{text}");
    }

    #[test]
    fn a_missing_hmac_variable_is_an_error_naming_it() {
        let config = Config::from_toml(
            "[kinds.m]\nhandler = \"http\"\n[kinds.m.http]\nurl = \"https://h/x\"\nhmac_secret_env = \"HOOK_KEY\"\n",
            "k.toml",
        )
        .unwrap();
        config.validate().unwrap();
        let text = config.check_environment(|_| None).unwrap_err().to_string();
        assert_eq!(
            text,
            "config k.toml: key `kinds.m.http.hmac_secret_env`: the environment variable `HOOK_KEY` is not set or is empty"
        );
        config
            .check_environment(|name| (name == "HOOK_KEY").then(|| "k".to_owned()))
            .unwrap();
    }

    #[test]
    fn generic_kinds_survive_a_round_trip_through_toml() {
        let text = "[kinds.m]\nhandler = \"http\"\n[kinds.m.http]\nurl = \"https://h/x\"\n[kinds.m.http.headers]\nAuthorization = \"Bearer t\"\n\n[kinds.c]\nhandler = \"command\"\n[kinds.c.command]\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"cat\"]\n";
        let config = Config::from_toml(text, "k.toml").unwrap();
        config.validate().unwrap();
        let whole = with_secrets_exposed(|| toml::to_string(&config).unwrap());
        let again = Config::from_toml(&whole, "again").unwrap();
        assert_eq!(again.kind("m").http, config.kind("m").http);
        assert_eq!(again.kind("c").command, config.kind("c").command);
        assert_eq!(again.kind("c").handler, Some(HandlerName::Command));
    }

    /// A section a layer above the core might claim.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, default)]
    struct Shop {
        items: u32,
        #[serde(with = "humantime_serde")]
        restock: Duration,
    }

    impl Section for Shop {
        const NAME: &'static str = "shop";
        fn validate(&self) -> std::result::Result<(), (String, String)> {
            if self.items > 10 {
                return Err(("items".into(), "must be at most 10".into()));
            }
            Ok(())
        }
    }

    #[test]
    fn a_top_level_table_no_layer_claims_is_refused() {
        let err = Config::from_toml("[shop]\nitems = 1\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml") && err.contains("unknown top-level key `shop`"),
            "{err}"
        );
    }

    #[test]
    fn a_claimed_section_is_read_checked_and_printed_by_its_own_type() {
        let claims = [Claim::of::<Shop>()];
        let config =
            Config::from_toml_with("[shop]\nitems = 3\nrestock = \"5m\"\n", "c.toml", &claims)
                .unwrap();
        let shop: Shop = config.section();
        assert_eq!((shop.items, shop.restock), (3, Duration::from_secs(300)));
        assert!(config.to_toml().contains("[shop]"), "{}", config.to_toml());

        let typo = Config::from_toml_with("[shop]\nitemz = 3\n", "c.toml", &claims)
            .unwrap_err()
            .to_string();
        assert!(typo.contains("c.toml") && typo.contains("itemz"), "{typo}");
        let invalid = Config::from_toml_with("[shop]\nitems = 11\n", "c.toml", &claims)
            .unwrap_err()
            .to_string();
        assert!(invalid.contains("key `shop.items`"), "{invalid}");

        // Absent from the file: the section's defaults, printed too.
        let absent = Config::from_toml_with("", "c.toml", &claims).unwrap();
        assert_eq!(absent.section::<Shop>(), Shop::default());
        assert!(absent.to_toml().contains("[shop]"));
    }

    #[test]
    fn kinds_fall_back_to_defaults() {
        let config = Config::from_toml(
            "[kinds.mail]\nqueue = \"mail\"\nmax_attempts = 3\n",
            "k.toml",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.kind("mail").max_attempts, 3);
        assert_eq!(config.kind("other").queue, "default");
    }
}
