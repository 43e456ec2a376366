//! Least privilege in Postgres: the roles the migrations create, used through
//! real LOGIN roles made in the test cluster, as docs/OPERATIONS.md "Security"
//! tells admins to.

use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use crate::harness::{self, Postgres};
use crate::helpers::spawn_app;
use jobrunner::ledger::{Ledger, Status};

/// `CREATE ROLE <unique> LOGIN IN ROLE <group>` in the cluster of `admin_url`;
/// returns the new role's name.
async fn login_role(admin_url: &str, group: Option<&str>) -> String {
    let name = harness::unique_name("role");
    let mut conn = PgConnection::connect(admin_url)
        .await
        .expect("connect as admin");
    let sql = match group {
        Some(group) => format!("CREATE ROLE {name} LOGIN IN ROLE {group}"),
        None => format!("CREATE ROLE {name} LOGIN"),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("create the login role");
    conn.close().await.ok();
    name
}

/// The same database URL, as another user.
fn as_user(url: &str, user: &str) -> String {
    url.replacen("postgres@", &format!("{user}@"), 1)
}

/// The SQLSTATE of a failed statement: `42501` is insufficient_privilege.
async fn refused(conn: &mut PgConnection, sql: &'static str) -> String {
    match sqlx::query(sql).execute(&mut *conn).await {
        Ok(done) => panic!("`{sql}` was allowed ({} rows)", done.rows_affected()),
        Err(sqlx::Error::Database(e)) => e.code().unwrap_or_default().into_owned(),
        Err(e) => panic!("`{sql}`: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_role_enqueues_and_reads_status_but_never_touches_the_tables() {
    let app = spawn_app().await;
    let url = app.config.database.url.expose().to_owned();
    let producer = login_role(&url, Some("jobrunner_producer")).await;
    let mut conn = PgConnection::connect(&as_user(&url, &producer))
        .await
        .expect("connect as the producer");

    let id: Uuid = sqlx::query_scalar(
        "SELECT jobrunner.enqueue(kind => 'noop', payload => '{\"owner\": \"alice\"}')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("enqueue as the producer");
    // The unique-key path reads jobrunner.jobs inside the function.
    let first: Uuid = sqlx::query_scalar(
        "SELECT jobrunner.enqueue(kind => 'noop', payload => '{}', unique_key => 'k1')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("enqueue with a unique key");
    let again: Uuid = sqlx::query_scalar(
        "SELECT jobrunner.enqueue(kind => 'noop', payload => '{}', unique_key => 'k1')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("enqueue with the same unique key");
    assert_eq!(first, again, "the key's holder is returned");
    let many: Vec<Uuid> = sqlx::query_scalar(
        "SELECT jobrunner.enqueue_many('noop', ARRAY['{\"n\": 1}'::jsonb, '{\"n\": 2}'::jsonb])",
    )
    .fetch_one(&mut conn)
    .await
    .expect("enqueue_many as the producer");
    assert_eq!(many.len(), 2);

    // Status of a job whose id it holds, without the payload.
    let row = sqlx::query("SELECT * FROM jobrunner.job_status($1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .expect("read the job's status");
    assert_eq!(row.get::<String, _>("status"), "queued");
    assert!(
        row.try_get::<serde_json::Value, _>("payload").is_err(),
        "no payload column"
    );
    let statuses: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.job_statuses($1)")
        .bind(&many)
        .fetch_one(&mut conn)
        .await
        .expect("read many statuses");
    assert_eq!(statuses, 2);

    for sql in [
        "SELECT * FROM jobrunner.jobs",
        "SELECT payload FROM jobrunner.jobs LIMIT 1",
        "INSERT INTO jobrunner.jobs (queue, kind, status, result) \
         VALUES ('default', 'noop', 'succeeded', '{\"fake\": true}')",
        "INSERT INTO jobrunner.jobs (queue, kind, lease_token) \
         VALUES ('default', 'noop', 9223372036854775807)",
        "UPDATE jobrunner.jobs SET status = 'succeeded'",
        "DELETE FROM jobrunner.jobs",
        "INSERT INTO jobrunner.outbox (id) VALUES (gen_random_uuid())",
        "SELECT * FROM jobrunner.statuses",
        "SELECT jobrunner.grant_roles()",
    ] {
        assert_eq!(refused(&mut conn, sql).await, "42501", "{sql}");
    }

    // The job it enqueued runs, and its status says so.
    let daemon = app.start_daemon().await;
    assert_eq!(app.wait_final(id, 10).await.status, Status::Succeeded);
    let row = sqlx::query("SELECT status, result FROM jobrunner.job_status($1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("status"), "succeeded");
    assert_eq!(
        row.get::<serde_json::Value, _>("result"),
        json!({"owner": "alice"})
    );
    daemon.stop().await;
    conn.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_role_lists_statuses_without_payloads_and_cannot_enqueue() {
    let app = spawn_app().await;
    let url = app.config.database.url.expose().to_owned();
    let id = app.enqueue("noop", json!({"phone": "+15551234567"})).await;
    let reader = login_role(&url, Some("jobrunner_reader")).await;
    let mut conn = PgConnection::connect(&as_user(&url, &reader))
        .await
        .expect("connect as the reader");
    let row = sqlx::query("SELECT * FROM jobrunner.statuses WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .expect("read the statuses view");
    assert_eq!(row.get::<String, _>("kind"), "noop");
    assert!(row.try_get::<serde_json::Value, _>("payload").is_err());
    let one: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.job_status($1)")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    for sql in [
        "SELECT payload FROM jobrunner.jobs",
        "SELECT jobrunner.enqueue(kind => 'noop', payload => '{}')",
        "UPDATE jobrunner.jobs SET status = 'dead'",
    ] {
        assert_eq!(refused(&mut conn, sql).await, "42501", "{sql}");
    }
    conn.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_running_as_a_member_of_jobrunner_daemon_runs_jobs_of_both_ways_in() {
    let app = spawn_app().await;
    let url = app.config.database.url.expose().to_owned();
    let role = login_role(&url, Some("jobrunner_daemon")).await;
    let mut config = app.config.clone();
    config.database.url = as_user(&url, &role).into();
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner::jobs::Registry::builtin(&config))
        .await;
    let sql = app.enqueue("noop", json!({"way": "sql"})).await;
    let redis = app
        .broker
        .enqueue(&jobrunner::broker::RedisEnqueue {
            queue: "default".into(),
            kind: "noop".into(),
            payload: json!({"way": "redis"}).to_string(),
            priority: 0,
            max_attempts: 0,
            delay_ms: 0,
        })
        .await
        .expect("redis enqueue");
    for id in [sql, redis] {
        let job = app.wait_final(id, 10).await;
        assert_eq!(job.status, Status::Succeeded, "{id}: {job:?}");
    }
    daemon.stop().await;
}

/// A managed Postgres may give the migrating user no CREATEROLE: migrations
/// still apply, and the documented recipe (an admin creates the roles, the
/// owner runs `jobrunner.grant_roles()`) opens the functions afterwards. Its own
/// cluster, because the roles are cluster-wide and the shared one has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_without_createrole_and_the_manual_recipe_grants_the_roles() {
    let pg = Postgres::start();
    let admin = pg.url("postgres");
    let owner = login_role(&admin, None).await;
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE app OWNER {owner}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let app_url = as_user(&pg.url("app"), &owner);
    let ledger = Ledger::from_pool(sqlx::PgPool::connect(&app_url).await.unwrap());
    ledger
        .migrate(&jobrunner_kinds::migrations())
        .await
        .expect("migrates without CREATEROLE");
    let roles: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'jobrunner\\_%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(roles, 0, "the migration could not create them");

    sqlx::raw_sql(
        "CREATE ROLE jobrunner_producer NOLOGIN; CREATE ROLE jobrunner_reader NOLOGIN; \
         CREATE ROLE jobrunner_daemon NOLOGIN",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let granted: Vec<String> = sqlx::query_scalar("SELECT jobrunner.grant_roles()")
        .fetch_one(ledger.pool())
        .await
        .expect("the owner runs grant_roles");
    assert_eq!(
        granted,
        ["jobrunner_producer", "jobrunner_reader", "jobrunner_daemon"]
    );
    let producer = login_role(&admin, Some("jobrunner_producer")).await;
    let mut as_producer = PgConnection::connect(&as_user(&pg.url("app"), &producer))
        .await
        .unwrap();
    let id: Uuid = sqlx::query_scalar("SELECT jobrunner.enqueue('noop', '{}')")
        .fetch_one(&mut as_producer)
        .await
        .expect("the producer enqueues");
    assert_eq!(
        refused(&mut as_producer, "SELECT * FROM jobrunner.jobs").await,
        "42501"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM jobrunner.job_status($1)")
        .bind(id)
        .fetch_one(&mut as_producer)
        .await
        .unwrap();
    assert_eq!(status, "queued");
    as_producer.close().await.ok();
    ledger.pool().close().await;
    conn.close().await.ok();
}
