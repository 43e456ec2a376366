//! `[database]` and `[redis]`: where the two services are, how the pools reach
//! them and the credentials they show.
//!
//! A password lives in the URL, in `redis.password`, or in a `password_file`:
//! an absolute path, or the name of a systemd credential (`LoadCredential=`),
//! which `Config::apply_env` finds in `$CREDENTIALS_DIRECTORY`. The file is read
//! when the pool connects, so a rotated password takes effect at the next start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tls::{PgTls, RedisTls, redis_url_uses_tls};
use super::{Secret, SecretUrl, secret};

/// The variable systemd sets to the directory holding a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A password file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the password file {} (`{key}`)", path.display())]
pub struct CredentialError {
    pub key: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Printed with its password hidden (see [`SecretUrl`]).
    pub url: SecretUrl,
    /// A file holding the password, for a URL that carries none (see the
    /// module's note on credentials).
    pub password_file: Option<PathBuf>,
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Ping a pooled connection before handing it out, so a restarted Postgres costs
    /// one failed ping rather than one failed job.
    pub test_before_acquire: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Printed with its password hidden (see [`SecretUrl`]).
    pub url: SecretUrl,
    /// The ACL user (Redis 6 and later), for a URL that names none.
    pub username: Option<String>,
    /// The password, for a URL that carries none; printed as `***`.
    pub password: Option<Secret>,
    /// A file holding the password, instead of `password`.
    pub password_file: Option<PathBuf>,
    /// How a `rediss://` connection checks the server (`[redis.tls]`).
    pub tls: RedisTls,
    /// Connections in the shared pool (blocking-free commands only).
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Every command fails after this long instead of hanging on a half-dead socket.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Reconnect backoff starts here and doubles up to `reconnect_max_delay`, forever.
    #[serde(with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Every key starts with this; tests give each daemon its own prefix.
    pub key_prefix: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            // The role and database scripts/demo.sh creates; production sets the
            // URL in the environment (JOBRUNNER_DATABASE_URL).
            url: "postgres://jobrunner:jobrunner@127.0.0.1:5432/jobrunner".into(),
            password_file: None,
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            test_before_acquire: true,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            username: None,
            password: None,
            password_file: None,
            tls: RedisTls::default(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            key_prefix: "jobrunner".to_owned(),
        }
    }
}

impl DatabaseConfig {
    /// The password from `password_file`, if one is named.
    pub fn password(&self) -> Result<Option<Secret>, CredentialError> {
        read_password("database.password_file", self.password_file.as_deref())
    }

    /// The TLS settings, from the URL and then the `PGSSL*` variables `var`
    /// looks up (see [`PgTls::resolve`]).
    pub fn tls(&self, var: impl Fn(&str) -> Option<String>) -> Result<PgTls, String> {
        PgTls::resolve(self.url.expose(), var)
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let url = self.url.expose();
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return invalid(
                "database.url",
                "must start with postgres:// or postgresql://",
            );
        }
        if self.password_file.is_some() && url_password(url).is_some() {
            return invalid(
                "database.password_file",
                "the URL holds a password already: give it in one place",
            );
        }
        check_password_path("database.password_file", self.password_file.as_deref())
    }
}

impl RedisConfig {
    /// Whether the URL asks for TLS (`rediss://` and its cluster and sentinel forms).
    pub fn uses_tls(&self) -> bool {
        redis_url_uses_tls(self.url.expose())
    }

    /// The password from `password` or `password_file`, if either is set.
    pub fn password(&self) -> Result<Option<Secret>, CredentialError> {
        match &self.password {
            Some(password) => Ok(Some(password.clone())),
            None => read_password("redis.password_file", self.password_file.as_deref()),
        }
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let url = self.url.expose();
        // One server, a Cluster or Sentinel, each with its TLS form.
        if let Err(reason) = super::RedisTopology::of_url(url) {
            return invalid("redis.url", &reason);
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid(
                "redis.password_file",
                "redis.password is set too: give the password in one place",
            );
        }
        if (self.password.is_some() || self.password_file.is_some()) && url_password(url).is_some()
        {
            return invalid(
                "redis.password",
                "the URL holds a password already: give it in one place",
            );
        }
        if let Some(user) = &self.username
            && url_user(url).is_some_and(|u| u != *user)
        {
            return invalid(
                "redis.username",
                "the URL names another user: give the user in one place",
            );
        }
        if self.tls.is_set() && !self.uses_tls() {
            return invalid(
                "redis.tls",
                "TLS settings given but redis.url is plain text: use rediss:// to connect with TLS",
            );
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid(
                "redis.tls.key_file",
                "cert_file and key_file go together: give both or neither",
            );
        }
        check_password_path("redis.password_file", self.password_file.as_deref())
    }
}

fn invalid(key: &str, reason: &str) -> Result<(), (String, String)> {
    Err((key.to_owned(), reason.to_owned()))
}

/// A bare name (no `/`) is a systemd credential: the file of that name in
/// `$CREDENTIALS_DIRECTORY` (`credentials_dir`), when systemd set it.
pub(super) fn resolve_credential(path: &mut Option<PathBuf>, credentials_dir: Option<&str>) {
    if let (Some(name), Some(dir)) = (path.as_ref(), credentials_dir)
        && !name.as_os_str().is_empty()
        && name.components().count() == 1
        && name.is_relative()
    {
        *path = Some(Path::new(dir).join(name));
    }
}

fn check_password_path(key: &str, path: Option<&Path>) -> Result<(), (String, String)> {
    match path {
        Some(path) if !path.is_absolute() => invalid(
            key,
            &format!(
                "`{}` is neither an absolute path nor a credential in ${CREDENTIALS_DIRECTORY} \
                 (systemd's LoadCredential= sets it; it is not set here)",
                path.display()
            ),
        ),
        _ => Ok(()),
    }
}

fn read_password(
    key: &'static str,
    path: Option<&Path>,
) -> Result<Option<Secret>, CredentialError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let error = |source| CredentialError {
        key,
        path: path.to_owned(),
        source,
    };
    let password = secret::read_secret_file(path).map_err(error)?;
    if password.expose().is_empty() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        )));
    }
    Ok(Some(password))
}

/// The password in a URL's user part, if any.
fn url_password(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed.password().map(str::to_owned).or_else(|| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == "password")
            .map(|(_, v)| v.into_owned())
    })
}

/// The user named in a URL's user part, if any.
fn url_user(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(parsed.username().to_owned()).filter(|u| !u.is_empty())
}
