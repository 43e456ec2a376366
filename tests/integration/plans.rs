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
