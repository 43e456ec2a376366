//! A cluster's slot map and its pool per master: read from `CLUSTER SLOTS`,
//! kept current by a refresh task, and asked which master serves a slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::ClientLike;
use fred::prelude::Builder;
use fred::types::config::{Config, Server, ServerConfig};
use fred::types::{ClusterHash, CustomCommand, Value};
use futures::FutureExt;

use super::{NO_MASTER, REFRESH, SLOTS, is_up};
use crate::broker::{Error, Result};

/// A cluster's masters and which slots each serves.
pub(in crate::broker) struct Shards {
    /// The pool settings (reconnect policy, timeouts), with the server to be
    /// set per master.
    pub(in crate::broker) builder: Builder,
    /// The URL's config: credentials, TLS, seed nodes.
    pub(in crate::broker) base: Config,
    pub(in crate::broker) pool_size: usize,
    pub(in crate::broker) timeout: Duration,
    pub(in crate::broker) table: RwLock<Arc<Table>>,
    pub(in crate::broker) closed: AtomicBool,
}

/// One reading of the slot map, with a connected pool per master.
pub(in crate::broker) struct Table {
    /// Each slot's master, an index into `masters`, or [`NO_MASTER`].
    pub(in crate::broker) owner: Vec<u16>,
    pub(in crate::broker) masters: Vec<(Server, Pool)>,
    /// The slot ranges as read, to tell whether a new reading differs.
    pub(in crate::broker) ranges: Vec<(u16, u16, Server)>,
}

impl Shards {
    /// Reads the slot map from the seed nodes of `base`, connects a pool to
    /// each master and starts the refresh task. Waits up to the connect timeout
    /// for the masters' connections: a master that is down at start is
    /// connected to in the background and its slots fail fast meanwhile.
    pub(in crate::broker) async fn connect(
        builder: Builder,
        base: Config,
        pool_size: usize,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> std::result::Result<Arc<Shards>, FredError> {
        let shards = Shards {
            builder,
            base,
            pool_size,
            timeout,
            table: RwLock::new(Arc::new(Table {
                owner: vec![NO_MASTER; SLOTS],
                masters: Vec::new(),
                ranges: Vec::new(),
            })),
            closed: AtomicBool::new(false),
        };
        let reply = shards.ask_seeds().await?;
        let ranges = parse_slots(reply)?;
        let table = shards.table_for(ranges)?;
        let waits = table.masters.iter().map(|(server, pool)| async move {
            match tokio::time::timeout(connect_timeout, pool.wait_for_connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(node = %server, %error,
                    "Cannot connect to a cluster master yet; its queues wait"),
                Err(_) => tracing::warn!(node = %server,
                    "A cluster master did not answer in time; its queues wait"),
            }
        });
        futures::future::join_all(waits).await;
        *shards.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        let shards = Arc::new(shards);
        tokio::spawn(refresh_loop(Arc::downgrade(&shards)));
        Ok(shards)
    }

    pub(in crate::broker) fn current(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The master serving `slot`, if its connections are up.
    pub(in crate::broker) fn master(&self, slot: u16) -> Result<(Server, Pool)> {
        let table = self.current();
        let Some((server, pool)) = table
            .masters
            .get(usize::from(table.owner[usize::from(slot)]))
        else {
            return Err(Error::NodeDown {
                node: format!("for slot {slot} (none serves it)"),
            });
        };
        if !is_up(pool) {
            return Err(Error::NodeDown {
                node: format!("{server} serving slot {slot}"),
            });
        }
        Ok((server.clone(), pool.clone()))
    }

    /// The first master whose connections are up.
    pub(in crate::broker) fn any(&self) -> Result<(Server, Pool)> {
        let table = self.current();
        table
            .masters
            .iter()
            .find(|(_, pool)| is_up(pool))
            .cloned()
            .ok_or_else(|| Error::NodeDown {
                node: "(any of them)".into(),
            })
    }

    /// Reads the slot map again and, if it changed, connects to new masters
    /// and lets go of the ones that serve no slot any more.
    pub(in crate::broker) async fn refresh(&self) -> std::result::Result<(), FredError> {
        let table = self.current();
        let asks = table
            .masters
            .iter()
            .filter(|(_, pool)| is_up(pool))
            .map(|(_, pool)| {
                let client = pool.next().clone();
                let timeout = self.timeout;
                async move { ask(&client, timeout).await }.boxed()
            })
            .collect::<Vec<_>>();
        let reply = match futures::future::select_ok(asks).await {
            Ok((reply, _)) => reply,
            // None answered, or none is up: the seed nodes may know more.
            Err(_) => self.ask_seeds().await?,
        };
        let ranges = parse_slots(reply)?;
        if ranges == table.ranges {
            return Ok(());
        }
        tracing::info!(masters = ?masters_of(&ranges), "The cluster's slot map changed");
        let next = self.table_for_reusing(ranges, &table)?;
        let dropped: Vec<Pool> = table
            .masters
            .iter()
            .filter(|(s, _)| !next.masters.iter().any(|(n, _)| n == s))
            .map(|(_, p)| p.clone())
            .collect();
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        for pool in dropped {
            tokio::spawn(async move {
                let _ = pool.quit().await;
            });
        }
        Ok(())
    }

    /// `CLUSTER SLOTS` from the first seed node that answers, each asked
    /// through a client of its own that is closed afterwards.
    pub(in crate::broker) async fn ask_seeds(&self) -> std::result::Result<Value, FredError> {
        // Side by side, so a seed that does not answer costs no more than the
        // slowest answer; each client is closed by its own task, answered or not.
        let seeds = self.base.server.hosts();
        let (tx, mut rx) = tokio::sync::mpsc::channel(seeds.len().max(1));
        for seed in seeds {
            let mut builder = self.builder.clone();
            builder.set_config(Config {
                server: ServerConfig::Centralized { server: seed },
                fail_fast: true,
                ..self.base.clone()
            });
            let client = builder.build()?;
            let (tx, timeout) = (tx.clone(), self.timeout);
            tokio::spawn(async move {
                let reply = match client.init().await {
                    Ok(_) => ask(&client, timeout).await,
                    Err(error) => Err(error),
                };
                let _ = client.quit().await;
                let _ = tx.send(reply).await;
            });
        }
        drop(tx);
        let mut last = FredError::new(ErrorKind::Config, "no seed node in the URL");
        while let Some(reply) = rx.recv().await {
            match reply {
                Ok(reply) => return Ok(reply),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    pub(in crate::broker) fn table_for(
        &self,
        ranges: Vec<(u16, u16, Server)>,
    ) -> std::result::Result<Table, FredError> {
        let empty = Table {
            owner: Vec::new(),
            masters: Vec::new(),
            ranges: Vec::new(),
        };
        self.table_for_reusing(ranges, &empty)
    }

    /// The table for `ranges`, keeping the pools `old` has for the same
    /// masters and connecting new ones (in the background).
    pub(in crate::broker) fn table_for_reusing(
        &self,
        ranges: Vec<(u16, u16, Server)>,
        old: &Table,
    ) -> std::result::Result<Table, FredError> {
        let mut owner = vec![NO_MASTER; SLOTS];
        let mut masters: Vec<(Server, Pool)> = Vec::new();
        let mut index: HashMap<Server, u16> = HashMap::new();
        for (start, end, server) in &ranges {
            let i = match index.get(server) {
                Some(i) => *i,
                None => {
                    let pool = match old.masters.iter().find(|(s, _)| s == server) {
                        Some((_, pool)) => pool.clone(),
                        None => self.pool_for(server.clone())?,
                    };
                    masters.push((server.clone(), pool));
                    // At most one master per slot: far below u16::MAX.
                    let i = (masters.len() - 1) as u16;
                    index.insert(server.clone(), i);
                    i
                }
            };
            for slot in *start..=*end {
                if let Some(o) = owner.get_mut(usize::from(slot)) {
                    *o = i;
                }
            }
        }
        Ok(Table {
            owner,
            masters,
            ranges,
        })
    }

    /// A pool connected to `server` alone, reconnecting for as long as it is
    /// kept (`fail_fast = false`: a master down at start is waited for).
    pub(in crate::broker) fn pool_for(
        &self,
        server: Server,
    ) -> std::result::Result<Pool, FredError> {
        let mut builder = self.builder.clone();
        builder.set_config(Config {
            server: ServerConfig::Centralized { server },
            fail_fast: false,
            ..self.base.clone()
        });
        let pool = builder.build_pool(self.pool_size)?;
        let _ = pool.connect_pool();
        Ok(pool)
    }
}

async fn ask(client: &Client, timeout: Duration) -> std::result::Result<Value, FredError> {
    let command = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
    let slots = client.custom::<Value, Value>(command, vec!["SLOTS".into()]);
    match tokio::time::timeout(timeout, slots).await {
        Ok(reply) => reply,
        Err(_) => Err(FredError::new(
            ErrorKind::Timeout,
            "CLUSTER SLOTS did not answer in time",
        )),
    }
}

async fn refresh_loop(shards: std::sync::Weak<Shards>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(shards) = shards.upgrade() else {
            return;
        };
        if shards.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = shards.refresh().await {
            tracing::debug!(%error, "Reading the cluster's slot map failed");
        }
    }
}

/// The distinct masters of `ranges`, for the log.
fn masters_of(ranges: &[(u16, u16, Server)]) -> Vec<String> {
    let mut masters: Vec<String> = ranges.iter().map(|(_, _, s)| s.to_string()).collect();
    masters.sort();
    masters.dedup();
    masters
}

/// The slot ranges and their masters from a `CLUSTER SLOTS` reply, sorted.
fn parse_slots(reply: Value) -> std::result::Result<Vec<(u16, u16, Server)>, FredError> {
    let bad = |what: &str| FredError::new(ErrorKind::Protocol, format!("CLUSTER SLOTS: {what}"));
    let Value::Array(entries) = reply else {
        return Err(bad("not an array"));
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(bad("an entry that is not an array"));
        };
        let slot = |v: Option<&Value>| {
            v.and_then(Value::as_i64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| usize::from(*n) < SLOTS)
        };
        let (Some(start), Some(end)) = (slot(fields.first()), slot(fields.get(1))) else {
            return Err(bad("a slot range that is not two slots"));
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err(bad("a range without a master"));
        };
        let host = master.first().and_then(Value::as_string);
        let port = master
            .get(1)
            .and_then(Value::as_i64)
            .and_then(|p| u16::try_from(p).ok());
        let (Some(host), Some(port)) = (host, port) else {
            return Err(bad("a master without host and port"));
        };
        ranges.push((start, end, Server::new(host, port)));
    }
    ranges.sort_by_key(|a| (a.0, a.1));
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, port: i64) -> Value {
        Value::Array(vec![
            Value::Integer(start),
            Value::Integer(end),
            Value::Array(vec![
                Value::String("127.0.0.1".into()),
                Value::Integer(port),
                Value::String("id".into()),
            ]),
        ])
    }

    #[test]
    fn a_slot_map_is_read_sorted_by_slot() {
        let reply = Value::Array(vec![range(5461, 10922, 7001), range(0, 5460, 7000)]);
        let ranges = parse_slots(reply).unwrap();
        assert_eq!(
            ranges,
            vec![
                (0, 5460, Server::new("127.0.0.1", 7000)),
                (5461, 10922, Server::new("127.0.0.1", 7001)),
            ]
        );
    }

    #[test]
    fn a_slot_beyond_the_last_is_an_error() {
        let reply = Value::Array(vec![range(0, 16384, 7000)]);
        assert!(parse_slots(reply).is_err());
    }
}
