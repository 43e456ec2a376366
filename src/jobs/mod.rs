//! Job kinds: the [`Handler`] trait, the [`Registry`] that maps a kind to its
//! handler, and the kinds built into the core (one file each): the diagnostic
//! ones (`noop`, `sleep`, `fail`) and the generic `http` and `command` handlers.
//!
//! Kinds with their own code and tables come from crates above the core (the
//! binary's business kinds are one such crate): they add handlers with
//! [`Registry::register`] and the migrations of their tables with
//! [`Registry::add_migrations`], and the core never names them.
//!
//! **Invariant:** handlers never touch Redis or the `jobrunner.jobs` table; they get
//! their input in a [`JobContext`] and say how the attempt ended with a
//! [`JobResult`]. The runtime turns that into leases and status.
//! Checked by `tests/integration/invariants.rs::only_broker_names_the_redis_client`
//! and `::only_ledger_runs_sql_on_the_ledger_tables`.

mod command;
mod diagnostic;
mod http;
pub mod payload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::migrate::Migration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;

/// Everything a handler may know about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    pub payload: Value,
    /// Fires when the attempt should stop early: shutdown past the drain deadline,
    /// or the job was cancelled (`jobrunner cancel`) while it ran. A handler with
    /// long loops or waits should select on it and return promptly; whatever it
    /// returns then is not recorded (a cancelled job ends `cancelled`, a drained one
    /// is handed back). A handler still running 5s after a cancellation is dropped.
    pub cancel: CancellationToken,
    /// The daemon's shared Postgres pool, for kinds that write their own tables.
    pub db: sqlx::PgPool,
    /// Where [`JobContext::progress`] reports go; [`Progress::default`] drops them.
    pub progress: Progress,
}

/// The sink for an attempt's progress reports: the runtime hands them to the
/// status writer without waiting. Cloning shares the sink.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ReportFn>>);

/// Takes a percentage and an optional note.
type ReportFn = dyn Fn(u8, Option<String>) + Send + Sync;

impl Progress {
    pub fn new(report: impl Fn(u8, Option<String>) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(report)))
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress"
        } else {
            "Progress(off)"
        })
    }
}

impl JobContext {
    /// Reports how far the attempt has got: `percent` (capped at 100) and a short
    /// note (empty for none). It returns at once and never fails: the report is
    /// written to the job's row (`progress`, `progress_message`) and sent as a
    /// `progress` event shortly after, or dropped when the status writer is
    /// behind, since the next report supersedes it. Reports of an attempt that
    /// lost its lease, or arrive after the job ended, are ignored.
    pub fn progress(&self, percent: u8, message: impl Into<String>) {
        if let Some(report) = &self.progress.0 {
            let message = message.into();
            report(percent.min(100), (!message.is_empty()).then_some(message));
        }
    }
}

/// How an attempt failed, and so what happens next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (after backoff, or after `retry_after` when the
    /// upstream said how long to wait).
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad payload, unknown kind, rejected input): the job ends
    /// `dead` now.
    #[error("{message}")]
    Permanent { message: String },
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> JobError {
        JobError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError::Permanent {
            message: message.into(),
        }
    }

    /// Decodes a payload into `T`, turning a mismatch into a permanent error that
    /// says what was wrong.
    pub fn parse_payload<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, JobError> {
        serde_json::from_value(payload.clone())
            .map_err(|e| JobError::permanent(format!("bad payload: {e}")))
    }
}

pub type JobResult = Result<Value, JobError>;

/// A kind of job. Implementations must be idempotent: an attempt may run again
/// after a crash (at-least-once).
pub trait Handler: Send + Sync + 'static {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, JobResult>;
}

/// Any `Fn(JobContext) -> impl Future<Output = JobResult>` is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = JobResult> + Send + 'static,
{
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, JobResult> {
        Box::pin(self(ctx))
    }
}

/// Kind name → handler, and the migrations of the kinds' own tables. Built once
/// at start-up and shared read-only.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    /// Migrations that kinds above the core brought for their tables; the
    /// daemon refuses to start until they are applied (see [`Registry::add_migrations`]).
    migrations: Vec<Migration>,
}

impl Registry {
    /// The kinds of the core alone: the diagnostic kinds and the kinds an admin
    /// configured with a generic handler.
    pub fn builtin(config: &Config) -> Registry {
        Registry::builtin_with(config, |_| {})
    }

    /// The core's kinds plus those `layer` adds (a crate of kinds above the
    /// core). Kinds read their own settings from `config`. Kinds an admin
    /// configured with a generic handler are added last, so they replace a
    /// kind of the same name.
    pub fn builtin_with(config: &Config, layer: impl FnOnce(&mut Registry)) -> Registry {
        // reqwest is built without a bundled TLS provider (that keeps aws-lc's long C
        // build out); every kind's client uses ring, installed once for the process.
        // An error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut registry = Registry::default();
        diagnostic::register(&mut registry);
        layer(&mut registry);
        // Configured kinds come last: a kind an admin configured with a generic
        // handler replaces a built-in of the same name.
        for (name, kind) in &config.kinds {
            match kind.handler {
                Some(crate::config::HandlerName::Http) => http::register(&mut registry, name, kind),
                Some(crate::config::HandlerName::Command) => {
                    command::register(&mut registry, name, kind)
                }
                None => {}
            }
        }
        registry
    }

    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// Adds migrations that create a kind's own tables. The ledger applies them
    /// in one sequence with its own, ordered by version (`jobrunner migrate`,
    /// [`crate::ledger::Ledger::migrate`]), so their versions must not collide
    /// with the ledger's or another crate's.
    pub fn add_migrations(&mut self, migrations: impl IntoIterator<Item = Migration>) -> &mut Self {
        self.migrations.extend(migrations);
        self
    }

    /// The migrations kinds added with [`Registry::add_migrations`].
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
