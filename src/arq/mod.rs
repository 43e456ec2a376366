//! arq wire compatibility: the daemon serves the jobs arq's Python client
//! enqueues (`await pool.enqueue_job('name', …)`), so producers move to
//! jobrunner by a config change (`[arq] queues = ["arq:queue"]`).
//!
//! - `config`: the `[arq]` section (claimed through `config::Section`).
//! - `wire`: arq's job body and result record, and how a call maps to a job.
//! - `pickle`: the safe, restricted pickle codec for arq's default serializer.
//! - `bridge`: the loop that takes due jobs into jobrunner, writes arq's
//!   `in_progress` and result keys from the ledger, and turns aborts into
//!   cancellations.
//!
//! It goes through `broker` (the arq keys, `broker/arq.rs`) and `ledger` (the
//! rows), never to Redis or SQL itself, and never runs or imports code from a
//! job body. arq's keys carry no hash tag: arq queues need a standalone Redis or
//! a single-slot setup, and a cluster config is refused.

mod bridge;
mod config;
pub mod pickle;
pub mod wire;

use uuid::Uuid;

pub use bridge::Bridge;
pub use config::{ArqConfig, ArqFunction};

/// What can go wrong in a bridge round; each names the arq queue or job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("arq queue {queue}: Redis")]
    Redis {
        queue: String,
        #[source]
        source: crate::broker::Error,
    },
    #[error("arq queue {queue}: the ledger")]
    Ledger {
        queue: String,
        #[source]
        source: crate::ledger::Error,
    },
    #[error("cancelling aborted arq job {id}")]
    Cancel {
        id: Uuid,
        #[source]
        source: crate::control::Error,
    },
}

impl Error {
    fn redis(queue: &str, source: crate::broker::Error) -> Error {
        Error::Redis {
            queue: queue.to_owned(),
            source,
        }
    }
}

/// The config section this module claims, for `Config::load`.
pub fn sections() -> Vec<crate::config::Claim> {
    vec![crate::config::Claim::of::<ArqConfig>()]
}

/// Refuses an `[arq]` section the rest of the config cannot serve (a cluster,
/// queue names under jobrunner's own prefix); every problem, on one line each.
pub fn check(config: &crate::config::Config) -> Result<(), String> {
    let problems = config.section::<ArqConfig>().check_with(&config.redis);
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems
        .into_iter()
        .map(|(key, reason)| format!("{}: {key}: {reason}", config.origin))
        .collect::<Vec<_>>()
        .join("\n"))
}
