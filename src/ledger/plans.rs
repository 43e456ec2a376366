//! The plans Postgres picks for the statements the daemon runs once per batch.
//!
//! A statement that names its jobs by id must stay on primary-key lookups
//! whatever `ANALYZE` has seen; a plan that walks every queued row, scans the
//! table or re-reads the batch for every row makes a job's cost grow with the
//! backlog or the ledger. [`Ledger::hot_plans`] lets the tests (and anyone
//! looking at a slow installation) see the plans on a real database.

use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::outbox::DISPATCH;
use super::writer::{self, ADMISSION, LATE_ERRORS, PROGRESS_UPDATE, STATUS_UPDATE};
use super::{Ledger, Result, Status};

/// One statement's plan, as `EXPLAIN (FORMAT JSON)` gives it.
#[derive(Debug, Clone, Serialize)]
pub struct HotPlan {
    /// `dispatch`, `status`, `late_errors`, `progress` or `admission`.
    pub statement: &'static str,
    /// The top node (`Plan`) of the statement's plan.
    pub plan: Value,
}

fn explain(sql: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}"))
}

/// The `Plan` object of `EXPLAIN (FORMAT JSON)`'s one-element array.
fn top(v: Value) -> Value {
    v.get(0).and_then(|p| p.get("Plan")).cloned().unwrap_or(v)
}

impl Ledger {
    /// The plans of the hot statements with `ids` as the batch, each in a
    /// transaction opened as the daemon opens it. Only `EXPLAIN`: nothing runs,
    /// nothing changes.
    pub async fn hot_plans(&self, ids: &[Uuid]) -> Result<Vec<HotPlan>> {
        let mut plans = Vec::new();
        let mut conn = self.acquire().await?;
        {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let plan: Value = sqlx::query_scalar(explain(DISPATCH))
                .bind(ids.len().max(1) as i64)
                .bind(&Status::OPEN[..])
                .fetch_one(&mut *tx)
                .await?;
            plans.push(HotPlan {
                statement: "dispatch",
                plan: top(plan),
            });
            tx.rollback().await?;
        }
        let mut tx = sqlx::Connection::begin_with(&mut *conn, writer::PLAN_GUARD).await?;
        let batch = writer::sample_batch(ids);
        let plan: Value = writer::bind_status_batch(sqlx::query(explain(STATUS_UPDATE)), &batch)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        plans.push(HotPlan {
            statement: "status",
            plan: top(plan),
        });
        let tokens = vec![1i64; ids.len()];
        let texts = vec![Some("lease expired".to_owned()); ids.len()];
        let plan: Value = sqlx::query_scalar(explain(LATE_ERRORS))
            .bind(ids)
            .bind(&tokens)
            .bind(&texts)
            .bind(vec!["[]".to_owned(); ids.len()])
            .fetch_one(&mut *tx)
            .await?;
        plans.push(HotPlan {
            statement: "late_errors",
            plan: top(plan),
        });
        let plan: Value = sqlx::query_scalar(explain(PROGRESS_UPDATE))
            .bind(ids)
            .bind(&tokens)
            .bind(vec![50i16; ids.len()])
            .bind(&texts)
            .bind(&Status::FINAL[..])
            .fetch_one(&mut *tx)
            .await?;
        plans.push(HotPlan {
            statement: "progress",
            plan: top(plan),
        });
        let plan: Value = sqlx::query_scalar(explain(ADMISSION))
            .bind(ids)
            .bind(&Status::FINAL[..])
            .fetch_one(&mut *tx)
            .await?;
        plans.push(HotPlan {
            statement: "admission",
            plan: top(plan),
        });
        tx.rollback().await?;
        Ok(plans)
    }
}
