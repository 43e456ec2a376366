//! The Redis dispatch layer: the process's fred pool (a pool per master on a
//! Redis Cluster, see `route`) and every script that moves jobs between ready,
//! delayed, leased and ingest structures.
//!
//! One file per concept: `keys` names every key and channel (see [`QueueKeys`]
//! for a queue's layout), `dispatch` brings jobs in (producer enqueue, ingest
//! claims, outbox dispatch), `lease` runs a job's lease (fetch, complete, retry,
//! release, heartbeat, reap), `control` pauses, resumes, cancels and carries the
//! flow limits, `arq` reads and ends the jobs arq's client writes, `registry` lists live daemons, `pubsub` publishes events and
//! subscribes, `stats` reads sizes back, `route` picks the pool a command
//! goes to, and `scripts` holds the Lua text.
//!
//! **Invariant:** only `broker` talks to Redis, and it never touches Postgres. No
//! command here blocks on the server, so every call may share the pool. Checked
//! by `tests/integration/invariants.rs::only_broker_names_the_redis_client`,
//! `::in_the_core_only_ledger_runs_sql` and `::no_redis_command_blocks_on_the_server`.

mod arq;
mod connect;
mod control;
mod dispatch;
mod keys;
mod lease;
mod pubsub;
mod registry;
mod route;
mod scripts;
mod stats;

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, ServerConfig, UnresponsiveConfig};
use fred::types::scripts::Script;
use futures::FutureExt;
use uuid::Uuid;

use crate::config::RedisConfig;

pub use arq::ArqDue;
pub use control::{CancelOutcome, KindLimits, Limits, Window};
pub use dispatch::{Claimed, Dispatch, INGEST_FIELDS, Ingest, Leftover, RedisEnqueue};
pub use keys::{Keys, QueueChannel, QueueKeys};
pub use lease::{Fetched, Heartbeat, Leased, Reaped};
pub use pubsub::{Received, Subscription};
pub use registry::{WORKER_HEARTBEAT, WORKER_STALE_AFTER, WorkerEntry};
pub use scripts::ENQUEUE as ENQUEUE_SCRIPT_BODY;
pub use stats::{PoolStats, QueueStats, RedisJobState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Redis at {url}{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    Connect {
        url: String,
        /// What failed, in the operator's terms, when a TLS handshake shows it
        /// (a certificate from an unknown CA, for another name).
        hint: Option<String>,
        #[source]
        source: fred::error::Error,
    },
    #[error("cannot connect to Redis at {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("Redis command failed")]
    Redis(#[from] fred::error::Error),
    /// On a cluster: the master serving the slot has no working connection
    /// (it stopped answering, or is being connected to); the command was not
    /// sent.
    #[error("the Redis Cluster master {node} does not answer")]
    NodeDown { node: String },
    #[error("unexpected reply from Redis script {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the failure may pass by itself: the connection, a timeout, the
    /// client's back-pressure, a cluster or sentinel change, or a server state
    /// (LOADING, BUSY, TRYAGAIN, MASTERDOWN, READONLY, CLUSTERDOWN, OOM). Told
    /// by fred's error kind and, for error replies, by the server's error code
    /// (the reply's first word, the Redis protocol's error class).
    pub fn is_transient(&self) -> bool {
        use fred::error::ErrorKind as K;
        let e = match self {
            Error::Connect { .. } | Error::NodeDown { .. } => return true,
            Error::Reply { .. } | Error::Config { .. } => return false,
            Error::Redis(e) => e,
        };
        match e.kind() {
            K::IO | K::Timeout | K::Canceled | K::Backpressure | K::Cluster | K::Routing => true,
            K::Sentinel | K::Protocol => true,
            K::Unknown => matches!(
                e.details().split_whitespace().next(),
                Some(
                    "LOADING"
                        | "BUSY"
                        | "TRYAGAIN"
                        | "MASTERDOWN"
                        | "READONLY"
                        | "CLUSTERDOWN"
                        | "OOM"
                        | "NOREPLICAS"
                        | "MISCONF"
                )
            ),
            _ => false,
        }
    }
}

struct Scripts {
    enqueue: Script,
    claim_ingest: Script,
    promote_ingested: Script,
    dispatch: Script,
    fetch: Script,
    complete: Script,
    retry: Script,
    release: Script,
    heartbeat: Script,
    reap: Script,
    missing: Script,
    cancel: Script,
    publish_many: Script,
}

/// The shared Redis pool (a pool per master on a cluster) plus the loaded
/// scripts. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    route: route::Route,
    /// Kept to build the subscriber with the same settings.
    builder: std::sync::Arc<Builder>,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    /// The arq bridge's scripts (`arq.rs`), apart from jobrunner's own.
    arq: std::sync::Arc<arq::ArqScripts>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

fn script(body: &str) -> Script {
    Script::from_lua(scripts::source(body))
}

/// The full text of the producer enqueue script, byte for byte as documented in
/// PROTOCOL.md and shipped in the Python client (clients/python), so a
/// producer's copy has the SHA1 of the daemon's (tests keep the three equal).
pub fn enqueue_script_source() -> String {
    scripts::source(scripts::ENQUEUE)
        .trim_start_matches('\n')
        .to_owned()
}

impl Broker {
    /// Builds the process's one pool, with a reconnect policy that never gives up
    /// and a command timeout, and waits for the first connection.
    pub async fn connect(config: &RedisConfig) -> Result<Broker> {
        let url = config.url.to_string();
        let connect_err = |source| Error::Connect {
            url: url.clone(),
            hint: None,
            source,
        };
        let mut builder = Builder::from_config(connect::client_config(config)?);
        let (min, max) = (
            config.reconnect_min_delay.as_millis().min(u32::MAX as u128) as u32,
            config.reconnect_max_delay.as_millis().min(u32::MAX as u128) as u32,
        );
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                min.max(1),
                max.max(1),
                2,
            ))
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(config.command_timeout),
                    interval: Duration::from_millis(500),
                };
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
            });
        let fred_config = builder.get_config().cloned();
        let route = match fred_config {
            Some(base) if matches!(base.server, ServerConfig::Clustered { .. }) => {
                let shards = route::Shards::connect(
                    builder.clone(),
                    base,
                    config.pool_size,
                    config.command_timeout,
                    config.connect_timeout,
                )
                .await;
                match shards {
                    Ok(shards) => route::Route::Cluster(shards),
                    Err(source) => {
                        return Err(Error::Connect {
                            url,
                            hint: connect::diagnose(config).await,
                            source,
                        });
                    }
                }
            }
            _ => {
                let pool = builder.build_pool(config.pool_size).map_err(connect_err)?;
                if let Err(source) = pool.init().await {
                    return Err(Error::Connect {
                        url,
                        hint: connect::diagnose(config).await,
                        source,
                    });
                }
                route::Route::Single(pool)
            }
        };
        Ok(Broker {
            route,
            builder: std::sync::Arc::new(builder),
            keys: Keys::new(&config.key_prefix),
            scripts: std::sync::Arc::new(Scripts {
                enqueue: Script::from_lua(enqueue_script_source()),
                claim_ingest: script(scripts::CLAIM_INGEST),
                promote_ingested: script(scripts::PROMOTE_INGESTED),
                dispatch: script(scripts::DISPATCH),
                fetch: script(scripts::FETCH),
                complete: script(scripts::COMPLETE),
                retry: script(scripts::RETRY),
                release: script(scripts::RELEASE),
                heartbeat: script(scripts::HEARTBEAT),
                reap: script(scripts::REAP),
                missing: script(scripts::MISSING),
                cancel: script(scripts::CANCEL),
                publish_many: script(scripts::PUBLISH_MANY),
            }),
            arq: std::sync::Arc::new(arq::ArqScripts::new()),
        })
    }

    pub async fn quit(&self) {
        self.route.quit().await;
    }

    /// Whether Redis answers. On a cluster, whether some master answers: a
    /// master that is down holds up its own queues (`jobrunner_queue_redis_up`
    /// shows which) while the daemon goes on with the others, so it is no
    /// reason to call the daemon unhealthy.
    pub async fn ping(&self) -> Result {
        let pings = self.route.pools().into_iter().map(|pool| {
            async move {
                let _: String = pool.ping(None).await?;
                Ok::<(), Error>(())
            }
            .boxed()
        });
        futures::future::select_ok(pings).await?;
        Ok(())
    }

    /// A client for a command on `key`: on a cluster, one connected to the
    /// master serving its slot (every key of a queue has the same).
    fn at(&self, key: &str) -> Result<route::Target> {
        self.route.client(key.as_bytes())
    }

    /// The prefix-wide keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every key of `queue`.
    pub fn queue_keys(&self, queue: &str) -> QueueKeys {
        self.keys.queue(queue)
    }

    /// Runs `script` where its first key lives (anywhere for one with none).
    async fn eval(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<Value> {
        let keys = keys.into_iter().map(Key::from).collect();
        let args = args.into_iter().map(Value::from).collect();
        self.route.eval(script, keys, args).await
    }

    /// The queue's epoch marker tells a seeded Redis (or cluster master) from one
    /// that restarted empty. Returns the current epoch, creating one (and
    /// reporting `true`) when none was there.
    pub async fn epoch(&self, queue: &str) -> Result<(String, bool)> {
        let key = self.queue_keys(queue).epoch();
        let fresh = Uuid::now_v7().to_string();
        let client = self.at(&key)?;
        let set: Option<String> = client
            .set(&key, fresh.as_str(), None, Some(SetOptions::NX), false)
            .await?;
        if set.is_some() {
            return Ok((fresh, true));
        }
        let current: Option<String> = client.get(&key).await?;
        Ok((current.unwrap_or(fresh), false))
    }

    /// Deletes every key under this broker's prefix (the benchmark's clean-up).
    /// Uses SCAN, so it never blocks the server; on a cluster it scans every
    /// primary and deletes key by key (one DEL may not span slots).
    pub async fn delete_prefix(&self) -> Result<u64> {
        use fred::types::scan::Scanner;
        use futures::TryStreamExt;
        let pattern = self.keys.everything();
        let mut deleted = 0;
        // On a cluster, each master's pool scans that master alone.
        let clustered = self.is_clustered();
        for pool in self.route.pools() {
            let client = pool.next();
            let mut pages = client.scan(pattern.clone(), Some(1000), None);
            while let Some(mut page) = pages.try_next().await? {
                let keys = page.take_results().unwrap_or_default();
                if keys.is_empty() {
                    continue;
                }
                if clustered {
                    // One DEL may not span slots.
                    let dels = keys.into_iter().map(|k| client.del::<u64, _>(k));
                    for n in futures::future::try_join_all(dels).await? {
                        deleted += n;
                    }
                } else {
                    deleted += client.del::<u64, _>(keys).await?;
                }
            }
        }
        Ok(deleted)
    }

    /// How the broker reaches Redis: one server, a cluster or Sentinel.
    pub fn is_clustered(&self) -> bool {
        self.route.is_clustered()
    }
}

/// One item of a script's reply as bytes: `None` for nil (a missing field).
fn value_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Bytes(b) => Some(b.to_vec()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        other => Some(format!("{other:?}").into_bytes()),
    }
}

/// Reads a script's flat array reply as strings (numbers included).
fn strings(reply: Value, script: &'static str) -> Result<Vec<String>> {
    match reply {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Integer(i) => Ok(i.to_string()),
                Value::Double(d) => Ok(d.to_string()),
                other => other.into_string().ok_or_else(|| Error::Reply {
                    script,
                    detail: "a non-string item".into(),
                }),
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(Error::Reply {
            script,
            detail: format!("expected an array, got {other:?}"),
        }),
    }
}
