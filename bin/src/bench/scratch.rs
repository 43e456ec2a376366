//! Where a benchmark runs: a scratch database on the configured Postgres server
//! and a scratch key prefix on the configured Redis, dropped at the end, and the
//! `--ledger-rows` filler that makes its ledger look lived-in.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use jobrunner::broker::Broker;
use jobrunner::config::{Config, QueueConfig};

/// The scratch database, key prefix and config the bench daemon runs with.
pub(super) struct Scratch {
    /// The base config's connection (its URL, password file and TLS), for the
    /// scratch database's CREATE and DROP.
    pub(super) admin: jobrunner::ledger::PgConnectOptions,
    pub(super) db_name: String,
    pub(super) config: Config,
    pub(super) dir: std::path::PathBuf,
}

impl Scratch {
    pub(super) async fn create(base: &Config, queues: &[String]) -> anyhow::Result<Scratch> {
        let db_name = format!("jobrunner_bench_{}", std::process::id());
        let admin_url = base.database.url.expose().to_owned();
        let (admin_options, _) = jobrunner::ledger::connect_options(&base.database)?;
        let mut admin = PgConnection::connect_with(&admin_options)
            .await
            .with_context(|| format!("connecting to {}", base.database.url))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .context("creating the scratch database (the role needs CREATEDB)")?;
        let _ = admin.close().await;

        let mut config = base.clone();
        config.database.url = replace_db(&admin_url, &db_name).into();
        config.database.max_connections = 16;
        config.redis.key_prefix = format!("jobrunner-bench-{}", std::process::id());
        config.redis.pool_size = 4;
        config.runtime.fetch_batch = 256;
        config.runtime.status_batch_max = 1000;
        config.runtime.status_writers = 3;
        config.queues.clear();
        for queue in queues.iter().map(String::as_str).chain(["default"]) {
            config.queues.insert(
                queue.into(),
                QueueConfig {
                    concurrency: 512,
                    ..QueueConfig::default()
                },
            );
        }
        config.log.level = "warn".into();
        // Measured with the admin listener on, as deployed, on a port of its own.
        config.admin.listen = "127.0.0.1:0".into();
        let dir = std::env::temp_dir().join(format!("jobrunner-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch {
            admin: admin_options,
            db_name,
            config,
            dir,
        })
    }

    pub(super) async fn drop_all(&self, keep: bool) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(broker) = Broker::connect(&self.config.redis).await {
            let _ = broker.delete_prefix().await;
            broker.quit().await;
        }
        if keep {
            eprintln!("Kept database {}", self.db_name);
            return;
        }
        if let Ok(mut admin) = PgConnection::connect_with(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
            {
                eprintln!("Could not drop {}: {error}", self.db_name);
            }
        }
    }
}

/// The same server URL with another database name.
pub(super) fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Fills the ledger with `rows` succeeded no-op jobs created over the last hours,
/// as a long-running ledger is, then `VACUUM ANALYZE`s it. Returns the moment
/// after which rows belong to the runs.
pub(super) async fn build_ledger(pool: &PgPool, rows: u64) -> anyhow::Result<DateTime<Utc>> {
    const CHUNK: u64 = 250_000;
    let mut done = 0u64;
    while done < rows {
        let k = CHUNK.min(rows - done);
        eprintln!("Filling the ledger: {done} of {rows} rows...");
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        // Oldest first, one millisecond apart, ending a minute ago.
        sqlx::query(
            "INSERT INTO jobrunner.jobs
               (queue, kind, payload, status, attempts, max_attempts, run_at, created_at,
                updated_at, started_at, finished_at, lease_token)
             SELECT 'default', 'noop', jsonb_build_object('i', g), 'succeeded', 1, 25, t, t,
                    t + interval '5 ms', t + interval '1 ms', t + interval '2 ms', g
             FROM generate_series($1::bigint, $2::bigint) g,
                  LATERAL (SELECT now() - interval '1 minute' - ($3 - g) * interval '1 ms' AS t) x",
        )
        .bind(done as i64 + 1)
        .bind((done + k) as i64)
        .bind(rows as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += k;
    }
    eprintln!("VACUUM ANALYZE of {rows} rows...");
    sqlx::query("VACUUM (ANALYZE) jobrunner.jobs")
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar("SELECT now() - interval '1 second'")
        .fetch_one(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::replace_db;

    #[test]
    fn replace_db_swaps_only_the_database_name() {
        assert_eq!(
            replace_db("postgres://u:p@h:5432/app?sslmode=disable", "b"),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(replace_db("postgres://h", "b"), "postgres://h/b");
    }
}
