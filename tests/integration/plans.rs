//! The statements the daemon runs once per batch keep their plans on a lived-in
//! ledger: mostly finished rows, a backlog, and statistics from `ANALYZE`. Plans
//! that walk every queued row, scan the table or re-read the batch for each row
//! made a job's cost grow with the ledger and the backlog.

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::spawn_app;

/// Every node of a plan, depth first, with the relationship to its parent.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for child in children {
            out.extend(nodes(child));
        }
    }
    out
}

fn field<'a>(node: &'a Value, name: &str) -> &'a str {
    node.get(name).and_then(Value::as_str).unwrap_or("")
}

/// What is wrong with a plan, if anything: a scan of `jobs` that is not a
/// primary-key lookup, or a nested loop whose inner side is re-read per row
/// instead of looked up by index.
fn faults(plan: &Value) -> Vec<String> {
    let mut faults = Vec::new();
    for node in nodes(plan) {
        let kind = field(node, "Node Type");
        let index = field(node, "Index Name");
        if field(node, "Relation Name") == "jobs" {
            match kind {
                "Index Scan" | "Index Only Scan" if index == "jobs_pkey" => {}
                // Its Bitmap Index Scan children are checked below.
                "Bitmap Heap Scan" => {}
                "ModifyTable" => {}
                _ => faults.push(format!("{kind} on jobs ({index})")),
            }
        }
        if kind == "Bitmap Index Scan" && !index.ends_with("_pkey") {
            faults.push(format!("bitmap scan of {index}"));
        }
        if kind == "Nested Loop" {
            let inner = node["Plans"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| field(c, "Parent Relationship") == "Inner");
            if let Some(inner) = inner {
                let lookup = matches!(field(inner, "Node Type"), "Index Scan" | "Index Only Scan");
                if !lookup {
                    faults.push(format!(
                        "nested loop re-reading a {} for every row",
                        field(inner, "Node Type")
                    ));
                }
            }
        }
    }
    faults
}

#[tokio::test]
async fn batch_statements_stay_on_primary_key_lookups_on_a_lived_in_ledger() {
    let app = spawn_app().await;
    let pool = app.ledger.pool();
    // A long-lived ledger: 100,000 finished jobs that ANALYZE has seen (as
    // autovacuum would), then a backlog of 5,000 arrives in the outbox before the
    // statistics catch up.
    sqlx::query(
        "INSERT INTO jobrunner.jobs (queue, kind, status, attempts, started_at, finished_at)
         SELECT 'default', 'noop', 'succeeded', 1, now(), now() FROM generate_series(1, 100000)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("VACUUM (ANALYZE) jobrunner.jobs")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobrunner.jobs (queue, kind, payload)
         SELECT 'default', 'noop', jsonb_build_object('i', g) FROM generate_series(1, 5000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobrunner.outbox SELECT id FROM jobrunner.jobs WHERE status = 'queued'",
    )
    .execute(pool)
    .await
    .unwrap();
    let batch: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobrunner.jobs WHERE status = 'queued' ORDER BY id LIMIT 1000",
    )
    .fetch_all(pool)
    .await
    .unwrap();

    let plans = app.ledger.hot_plans(&batch).await.unwrap();
    let names: Vec<&str> = plans.iter().map(|p| p.statement).collect();
    assert_eq!(
        names,
        ["dispatch", "status", "late_errors", "progress", "admission"]
    );
    for p in &plans {
        let faults = faults(&p.plan);
        assert!(
            faults.is_empty(),
            "the {} statement's plan {faults:?}:\n{:#}",
            p.statement,
            p.plan
        );
        let lookups = nodes(&p.plan)
            .iter()
            .filter(|n| field(n, "Index Name") == "jobs_pkey")
            .count();
        assert!(
            lookups > 0,
            "the {} statement does not read jobs by primary key:\n{:#}",
            p.statement,
            p.plan
        );
    }
}

/// Sequential scans of `jobs` Postgres has counted so far, with the statistics
/// of `writer_pool`'s one backend flushed first.
async fn seq_scans(app: &crate::helpers::TestApp, writer_pool: &sqlx::PgPool) -> i64 {
    // A backend reports its counters when idle, at most once a second; this makes
    // the writer's backend report them as soon as this statement ends.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(writer_pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sqlx::query_scalar(
        "SELECT seq_scan FROM pg_stat_user_tables
         WHERE schemaname = 'jobrunner' AND relname = 'jobs'",
    )
    .fetch_one(app.ledger.pool())
    .await
    .unwrap()
}

/// A connection keeps one generic plan for a statement it has run five times,
/// made when the plan cache was last invalidated. Made while `jobs` held a few
/// hundred rows (after a `TRUNCATE`, on a fresh install), the status `UPDATE`'s
/// generic plan scans the table, and nothing replaced it as the table grew
/// until the next `ANALYZE`: the writes of a drain after a `TRUNCATE` cost three
/// to four times as much. The writer plans every batch for its own ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_stay_on_primary_key_lookups_after_the_table_grows_from_small() {
    use jobrunner::ledger::{Ledger, Status, StatusWriter};
    let app = spawn_app().await; // no daemon: the writer is driven by hand
    let pool = app.ledger.pool();
    // One connection, so every batch runs on the backend whose plans are watched.
    let writer_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let (writers, handle) = StatusWriter::new(Ledger::from_pool(writer_pool.clone()), 5000, 1);
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(w.run(stop.clone())))
        .collect();
    let running = |id, token| crate::helpers::status_update(id, token, Status::Running, 1);
    // Writes one `running` per id with `token` and waits until all are written.
    // The wait reads on another connection with sequential scans off, so it
    // never scans `jobs` itself, however the planner sees the table: every scan
    // counted below is the writer's.
    let round = |ids: Vec<Uuid>, token: i64| {
        let handle = handle.clone();
        async move {
            let n = ids.len() as i64;
            for &id in &ids {
                handle.send(running(id, token)).await;
            }
            for _ in 0..500 {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let done: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobrunner.jobs WHERE id = ANY($1) AND lease_token = $2",
                )
                .persistent(false)
                .bind(&ids)
                .bind(token)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                if done == n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the writer did not write round {token}");
        }
    };

    // Batches of the size a drain writes, enough of them for the plan cache to
    // settle on a generic plan if it is allowed one.
    // A `TRUNCATE` rebuilds the table's seven indexes, and Postgres counts each
    // build as a sequential scan of `jobs`. Its backend reports them when it
    // next goes idle a second after its last report: that can be in the middle
    // of the measured round, so it is made to report them at once.
    let small = |n: i32| async move {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("TRUNCATE jobrunner.outbox, jobrunner.outbox_held, jobrunner.jobs, jobrunner.external_ids")
            .execute(&mut *conn)
            .await
            .unwrap();
        let ids = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO jobrunner.jobs (queue, kind)
             SELECT 'default', 'noop' FROM generate_series(1, $1) RETURNING id",
        )
        .bind(n)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut *conn)
            .await
            .unwrap();
        ids
    };
    let first = small(300).await;
    for token in 1..=6 {
        round(first.clone(), token).await;
    }
    // A TRUNCATE (as the bench makes between runs) drops the cached plans; the
    // next batch meets a table of a few hundred rows and no statistics.
    let second = small(300).await;
    round(second, 7).await;

    // The ledger grows; a batch that is a small share of it must read its rows
    // by primary key. (A batch of a thousand may fairly be planned as a scan of
    // thirty thousand rows: that cost is bounded per job. The kept generic plan
    // scanned the whole table for every batch, however small.)
    let grown: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobrunner.jobs (queue, kind)
         SELECT 'default', 'noop' FROM generate_series(1, 30000) RETURNING id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let before = seq_scans(&app, &writer_pool).await;
    round(grown[..50].to_vec(), 8).await;
    let after = seq_scans(&app, &writer_pool).await;
    assert_eq!(
        after - before,
        0,
        "a status batch scanned the whole jobs table after it grew"
    );
    drop(handle);
    for t in tasks {
        t.await.unwrap();
    }
}
