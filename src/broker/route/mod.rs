//! Where a command goes. On one server (or the primary Sentinel names) every
//! command shares fred's pool. On a Redis Cluster the broker keeps one pool per
//! master, each connected to that master alone, and sends a command to the
//! master serving its key's slot; a queue's keys share one slot through their
//! `{q}` hash tag, so a queue talks to one master.
//!
//! Why not fred's clustered client: fred 10.1 drives each client from one
//! routing task. When one master stops answering, that task resyncs the
//! cluster and reconnects to every master, and every command of the client
//! (of every pooled client, soon) waits until the master answers again or its
//! replica is promoted. With a pool per master, a master that does not answer
//! holds up only the commands for its own slots; once its connections are
//! found dead (the unresponsive check, one command timeout) they fail at once
//! with [`Error::NodeDown`](super::Error::NodeDown) instead of waiting.
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of every master that answers
//! (the first reply wins), or of the URL's seed nodes when none does. It is
//! read again every [`REFRESH`], so a failover or a resharding is followed
//! within about a second; meanwhile a `MOVED` reply is a transient error that
//! the caller's backoff retries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::clients::{Client, Pool, WithOptions};
use fred::interfaces::ClientLike;
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Key, Value};

use super::{Error, Result};

/// How often a cluster's slot map is read again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How often a script waiting on a cluster master checks that the master's
/// connections are still up.
const WATCH: Duration = Duration::from_millis(100);

/// The number of slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// A slot no master serves.
const NO_MASTER: u16 = u16::MAX;

/// How the broker reaches Redis. Cheap to clone.
#[derive(Clone)]
pub(super) enum Route {
    /// One server, or the primary Sentinel names: fred's pool.
    Single(Pool),
    /// A Redis Cluster: a pool per master.
    Cluster(Arc<Shards>),
}

mod shards;

pub(super) use shards::Shards;

/// A client and the options its commands carry: on a cluster they fail fast
/// (`Options::fail_fast`), so a command is never held in a client that is
/// reconnecting to a master that went away (fred would keep it, and the
/// caller would wait, until the command timeout).
pub(super) type Target = WithOptions<Client>;

impl Route {
    /// A client for a command on `key`.
    pub(super) fn client(&self, key: &[u8]) -> Result<Target> {
        match self {
            Route::Single(pool) => Ok(pool.next().with_options(&Options::default())),
            Route::Cluster(shards) => {
                let (_, pool) = shards.master(fred::util::redis_keyslot(key))?;
                Ok(pool.next().with_options(&fail_fast()))
            }
        }
    }

    /// Runs `script` (by its SHA1, loading it on `NOSCRIPT`) where its first
    /// key lives, or anywhere for a script with no key.
    ///
    /// fred's call is boxed: its future is about 7 KB, and every future that
    /// may reach a script call (a job's task, which may heartbeat, settle or
    /// release) would otherwise carry those 7 KB inline. A job's task was 9.4 KB
    /// instead of 2.3 KB, and tokio copies a task's future on spawn and on
    /// completion. Script calls are per batch, so the box is cheap; the copies
    /// were per job.
    pub(super) async fn eval(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> Result<Value> {
        let shards = match self {
            Route::Single(pool) => {
                // fred's own path: the same calls as before there was a cluster.
                return Ok(Box::pin(script.evalsha_with_reload(pool.next(), keys, args)).await?);
            }
            Route::Cluster(shards) => shards,
        };
        let (server, pool) = match keys.first() {
            Some(key) => shards.master(fred::util::redis_keyslot(key.as_bytes()))?,
            None => shards.any()?,
        };
        let target = pool.next().with_options(&fail_fast());
        // fred 10.1's `LuaInterface` is not implemented for `WithOptions`: send
        // EVALSHA as a custom command, which carries the options.
        let mut argv: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(Value::from(script.sha1().clone()));
        argv.push(Value::from(keys.len() as i64));
        argv.extend(keys.into_iter().map(|k| Value::Bytes(k.into_bytes())));
        argv.extend(args);
        let evalsha = || CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false);
        let mut call = Box::pin(async {
            match target.custom::<Value, Value>(evalsha(), argv.clone()).await {
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    script.load(&target).await?;
                    target.custom(evalsha(), argv).await
                }
                reply => reply,
            }
        });
        // A command handed to a client just before its connection broke waits
        // in fred's queue while the client reconnects (until the command
        // timeout, or for good while the master is gone): stop waiting as soon
        // as the master's connections are seen down.
        loop {
            tokio::select! {
                reply = &mut call => return Ok(reply?),
                () = tokio::time::sleep(WATCH) => {
                    if !is_up(&pool) {
                        return Err(Error::NodeDown { node: server.to_string() });
                    }
                }
            }
        }
    }

    /// Every master's pool (the one pool of a single server).
    pub(super) fn pools(&self) -> Vec<Pool> {
        match self {
            Route::Single(pool) => vec![pool.clone()],
            Route::Cluster(shards) => shards
                .current()
                .masters
                .iter()
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }

    pub(super) fn is_clustered(&self) -> bool {
        matches!(self, Route::Cluster(_))
    }

    /// Closes every connection (and, on a cluster, ends the slot map's refresh).
    pub(super) async fn quit(&self) {
        if let Route::Cluster(shards) = self {
            shards.closed.store(true, Ordering::Relaxed);
        }
        for pool in self.pools() {
            let _ = pool.quit().await;
        }
    }
}

fn fail_fast() -> Options {
    Options {
        fail_fast: true,
        ..Options::default()
    }
}

/// Whether every connection of a master's pool is up. They all reach the same
/// server, so one that is reconnecting means the server does not answer (or
/// did not a moment ago): its commands fail at once instead of waiting.
fn is_up(pool: &Pool) -> bool {
    pool.clients().iter().all(|c| c.is_connected())
}
