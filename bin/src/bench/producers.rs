//! The producers that enqueue a run's jobs: `--producers` tasks through one way
//! in, SQL (`jobrunner.enqueue` in batches, as a web app's bulk import) or Redis
//! (the ENQUEUE script, with requests in flight, as a web server's handlers).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;

use jobrunner::broker::{Broker, RedisEnqueue};

use super::{Bench, Path};

impl Bench {
    /// Enqueues `n` no-ops through one way in, from `--producers` tasks.
    pub(super) async fn enqueue(&self, path: Path, n: usize) -> anyhow::Result<()> {
        let producers = self.args.producers;
        let per = n / producers;
        let mut tasks = JoinSet::new();
        for i in 0..producers {
            let k = if i == 0 { per + n % producers } else { per };
            let (pool, broker) = (self.pool.clone(), self.broker.clone());
            let queues = self.args.queues.clone();
            tasks.spawn(async move {
                match path {
                    Path::Sql => enqueue_sql(&pool, &queues, k).await,
                    Path::Redis => enqueue_redis(&broker, &queues, k).await,
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }
}

/// SQL producers batch like a web app's bulk import: 500 `enqueue` calls a
/// transaction, round robin over `queues`.
async fn enqueue_sql(pool: &PgPool, queues: &[String], n: usize) -> anyhow::Result<()> {
    let mut left = n as i64;
    while left > 0 {
        let k = left.min(500);
        sqlx::query(
            "SELECT jobrunner.enqueue('noop', jsonb_build_object('i', g),
                 queue => ($2::text[])[1 + g % cardinality($2::text[])])
             FROM generate_series(1, $1) g",
        )
        .bind(k)
        .bind(queues)
        .execute(pool)
        .await?;
        left -= k;
    }
    Ok(())
}

/// Redis producers keep 32 enqueues in flight each, as concurrent requests would.
async fn enqueue_redis(broker: &Arc<Broker>, queues: &[String], n: usize) -> anyhow::Result<()> {
    let mut inflight = JoinSet::new();
    for j in 0..n {
        if inflight.len() >= 32
            && let Some(r) = inflight.join_next().await
        {
            r??;
        }
        let b = broker.clone();
        let queue = queues[j % queues.len()].clone();
        inflight.spawn(async move {
            b.enqueue(&RedisEnqueue {
                queue,
                kind: "noop".into(),
                payload: format!("{{\"i\":{j}}}"),
                ..Default::default()
            })
            .await
            .map(|_| ())
        });
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    Ok(())
}
