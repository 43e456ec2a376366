//! jobrunner: a background job-runner daemon.
//!
//! Producers enqueue through SQL (`jobrunner.enqueue`, inside their own
//! transaction) or straight into Redis; the daemon leases jobs from Redis, runs them
//! on async handlers and writes every status change back to the Postgres ledger.
//!
//! Layout, one concept per module:
//! - [`config`]: file and environment layering, validation.
//! - [`ledger`]: Postgres: migrations, SQL enqueue, outbox, status writer, queries.
//! - [`broker`]: Redis: the pool and the Lua scripts for dispatch and leases.
//! - [`runtime`]: the daemon's loops, workers and shutdown.
//! - [`control`]: cancel and retry one job, over the ledger and Redis.
//! - [`scheduler`]: cron schedules that fire once across all daemons.
//! - [`jobs`]: the `Handler` trait, the registry and the built-in kinds.
//! - [`http`]: the HTTP listener (`[admin]` in the config): health, readiness, metrics, job lookups, SSE events.
//! - [`metrics`]: the process's counters and histograms, rendered by `http`.
//! - [`pgtext`]: outside text made safe for Postgres (U+0000, invalid UTF-8).
//! - [`redact`]: personal data in payloads and results shown as `[redacted]` outside the ledger.
//! - [`cli`]: the command-line interface over the modules above.
//! - [`arq`]: arq wire compatibility (the jobs arq's Python client enqueues) and its pickle codec.
//! - [`batch`]: failure isolation for batched writes (split a failed batch to find the poison).
//! - [`tls`]: what a refused TLS handshake means, for the errors of `ledger` and `broker`.
//!
//! The demo and the benchmark (`jobrunner demo`, `jobrunner bench`) are not part
//! of the library: they are modules of the binary, added to the command line
//! through [`cli::Layer`].
//!
//! See docs/ARCHITECTURE.md for the data flow and the invariants.

pub mod arq;
pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod http;
pub mod jobs;
pub mod ledger;
pub mod metrics;
pub mod pgtext;
pub mod redact;
pub mod runtime;
pub mod scheduler;
pub mod telemetry;
pub mod tls;

/// An error and all its sources on one line, `outer: inner: root`, for logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
