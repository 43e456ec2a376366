//! The admin commands as an operator uses them: `queues`, `jobs`, `inspect`,
//! `retry`, `purge`, `workers`, each checked as a table and as JSON against a state
//! the test built; and the daemon's retention loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jobrunner::broker::WorkerEntry;
use jobrunner::config::{CommandKindConfig, HandlerName, KindConfig};
use jobrunner::ledger::NewJob;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

/// The table line whose first cell is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

async fn enqueue_in(app: &TestApp, kind: &str, payload: Value, queue: &str) -> Uuid {
    app.ledger
        .enqueue(&NewJob {
            kind: kind.into(),
            payload,
            queue: Some(queue.into()),
            ..NewJob::default()
        })
        .await
        .expect("enqueue")
}

async fn set_paused(app: &TestApp, queue: &str) {
    use fred::prelude::*;
    let config = fred::types::config::Config::from_url(app.config.redis.url.expose()).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    let key = format!("{}:{{{queue}}}:paused", app.config.redis.key_prefix);
    let _: () = client.set(key, "1", None, None, false).await.unwrap();
    let _ = client.quit().await;
}

/// A known mix: 2 succeeded and 1 dead on `default`, 1 scheduled there, and 1
/// queued on `reports`, which no daemon serves.
struct Mix {
    succeeded: [Uuid; 2],
    dead: Uuid,
    scheduled: Uuid,
    waiting: Uuid,
}

async fn known_mix(app: &TestApp) -> Mix {
    let daemon = app.start_daemon().await;
    let succeeded = [
        app.enqueue("noop", json!({"n": 1})).await,
        app.enqueue("noop", json!({"n": 2})).await,
    ];
    let dead = app.enqueue("fail", json!({"times": 99})).await;
    let scheduled = app
        .ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({}),
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let waiting = enqueue_in(app, "noop", json!({}), "reports").await;
    for id in succeeded {
        assert_eq!(app.wait_final(id, 10).await.status, Status::Succeeded);
    }
    assert_eq!(app.wait_final(dead, 10).await.status, Status::Dead);
    daemon.stop().await;
    Mix {
        succeeded,
        dead,
        scheduled,
        waiting,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_counts_each_status_per_queue_as_a_table_and_as_json() {
    let app = spawn_app().await;
    known_mix(&app).await;
    set_paused(&app, "reports").await;

    let (code, out, err) = app.cli(&["queues", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = json_of(&out);
    let queues = doc["queues"].as_array().unwrap();
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "reports"],
        "configured queues and queues with unfinished jobs"
    );
    let default = &queues[0];
    for (field, value) in [
        ("ready", 0),
        ("scheduled", 1),
        ("running", 0),
        ("retrying", 0),
        ("dead", 1),
        ("succeeded_last_minute", 2),
        ("dead_last_minute", 1),
        ("redis_ready", 0),
    ] {
        assert_eq!(default[field], value, "default.{field} in {default}");
    }
    assert_eq!(default["paused"], false);
    assert_eq!(default["oldest_waiting_secs"], Value::Null);
    let reports = &queues[1];
    assert_eq!(reports["ready"], 1, "{reports}");
    assert_eq!(reports["dead"], 0);
    assert_eq!(reports["paused"], true);
    assert!(reports["oldest_waiting_secs"].as_i64().unwrap() >= 0);
    assert!(reports["oldest_waiting_since"].is_string());

    let (code, out, err) = app.cli(&["queues"]);
    assert_eq!(code, 0, "{err}");
    let header = row(&out, "QUEUE");
    assert_eq!(
        header,
        [
            "QUEUE",
            "READY",
            "SCHEDULED",
            "RUNNING",
            "RETRYING",
            "DEAD",
            "PAUSED",
            "OLDEST WAIT",
            "OK LAST MIN",
            "DEAD LAST MIN",
            "IN REDIS",
            "REDIS"
        ]
        .join(" ")
        .split(' ')
        .collect::<Vec<_>>()
    );
    assert_eq!(
        row(&out, "default"),
        [
            "default", "0", "1", "0", "0", "1", "no", "-", "2", "1", "0", "ok"
        ]
    );
    let reports = row(&out, "reports");
    assert_eq!(reports[..7], ["reports", "1", "0", "0", "0", "0", "yes"]);
    assert!(reports[7].ends_with('s'), "an age like 0s: {reports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lists_newest_first_and_filters_by_queue_status_kind_and_time() {
    let app = spawn_app().await;
    let mix = known_mix(&app).await;
    // Newest first: the order they were enqueued, reversed.
    let all = [
        mix.waiting,
        mix.scheduled,
        mix.dead,
        mix.succeeded[1],
        mix.succeeded[0],
    ];

    let ids = |args: &[&str]| -> Vec<Uuid> {
        let (code, out, err) = app.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        json_of(&out)["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(ids(&["jobs", "--json"]), all);
    assert_eq!(ids(&["jobs", "--json", "--limit", "2"]), all[..2]);
    assert_eq!(ids(&["jobs", "--json", "--status", "dead"]), [mix.dead]);
    assert_eq!(
        ids(&["jobs", "--json", "--queue", "reports"]),
        [mix.waiting]
    );
    assert_eq!(ids(&["jobs", "--json", "--kind", "fail"]), [mix.dead]);
    assert_eq!(
        ids(&["jobs", "--json", "--kind", "noop", "--status", "succeeded"]),
        [mix.succeeded[1], mix.succeeded[0]]
    );
    assert_eq!(ids(&["jobs", "--json", "--since", "1h"]), all);
    assert!(ids(&["jobs", "--json", "--since", "2999-01-01T00:00:00Z"]).is_empty());

    let (code, out, _) = app.cli(&["jobs", "--json", "--status", "dead"]);
    assert_eq!(code, 0);
    let dead = &json_of(&out)["jobs"][0];
    assert_eq!(dead["queue"], "default");
    assert_eq!(dead["kind"], "fail");
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["max_attempts"], 3);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts")
    );

    let (code, out, err) = app.cli(&["jobs"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "a header and five jobs:\n{out}");
    assert_eq!(
        row(&out, "ID"),
        ["ID", "QUEUE", "KIND", "STATUS", "ATTEMPTS", "AGE", "ERROR"]
    );
    assert_eq!(
        row(&out, &mix.waiting.to_string())[1..5],
        ["reports", "noop", "queued", "0/25"]
    );
    let dead = row(&out, &mix.dead.to_string());
    assert_eq!(dead[1..5], ["default", "fail", "dead", "3/3"]);
    assert!(
        dead.join(" ")
            .contains("failed attempt 3 of the 99 asked for"),
        "{dead:?}"
    );

    let (code, out, err) = app.cli(&["jobs", "--status", "finished"]);
    assert_eq!(code, 2, "a bad status is a usage error: {out}");
    assert!(
        err.contains("scheduled, queued, running, retrying, succeeded, dead, cancelled"),
        "the valid statuses are listed: {err}"
    );
    let (code, _, err) = app.cli(&["jobs", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_every_attempts_error_and_where_the_job_is_in_redis() {
    let app = spawn_app().await;
    let mix = known_mix(&app).await;

    let (code, out, err) = app.cli(&["inspect", &mix.dead.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let job = json_of(&out);
    assert_eq!(job["id"], mix.dead.to_string());
    assert_eq!(job["status"], "dead");
    assert_eq!(job["payload"], json!({"times": 99}));
    for column in [
        "queue",
        "kind",
        "priority",
        "attempts",
        "max_attempts",
        "run_at",
        "unique_key",
        "result",
        "last_error",
        "lease_token",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
    ] {
        assert!(job.get(column).is_some(), "{column} in {job}");
    }
    let errors = job["errors"].as_array().unwrap();
    let attempts: Vec<i64> = errors
        .iter()
        .map(|e| e["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3], "one error per attempt: {errors:?}");
    assert_eq!(errors[0]["error"], "failed attempt 1 of the 99 asked for");
    assert_eq!(
        errors[2]["error"],
        "failed attempt 3 of the 99 asked for (gave up after 3 attempts)"
    );
    assert!(errors.iter().all(|e| e["at"].is_string()));
    assert_eq!(job["redis"]["present"], false, "a dead job leaves Redis");
    assert_eq!(job["redis"]["place"], Value::Null);

    let (code, out, err) = app.cli(&["inspect", &mix.dead.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(row(&out, "status"), ["status", "dead"]);
    assert_eq!(row(&out, "attempts"), ["attempts", "3", "of", "3"]);
    assert_eq!(row(&out, "ATTEMPT")[..3], ["ATTEMPT", "AT", "ERROR"]);
    for attempt in ["1", "2", "3"] {
        let line = row(&out, attempt);
        assert!(
            line.join(" ")
                .contains(&format!("failed attempt {attempt} of the 99")),
            "{line:?}"
        );
    }

    // The scheduled job waits in Redis's delayed set until its run time.
    let (code, out, err) = app.cli(&["inspect", &mix.scheduled.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let job = json_of(&out);
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["errors"], json!([]));
    assert_eq!(job["redis"]["present"], true);
    assert_eq!(job["redis"]["place"], "delayed");
    assert!(job["redis"]["due_at"].is_string());
    let (_, out, _) = app.cli(&["inspect", &mix.scheduled.to_string()]);
    assert!(
        row(&out, "redis")
            .join(" ")
            .starts_with("redis delayed, due at"),
        "{out}"
    );

    let (code, out, err) = app.cli(&["inspect", "01a2032f-77c1-7992-99ca-a1aa94ed1ed1"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = app.cli(&["inspect", "nope"]);
    assert_eq!(code, 2, "a bad id is a usage error");
    assert!(err.contains("`nope` is not a job id"), "{err}");
}

/// A command kind that logs every run's job id and fails for good until `DIR/open`
/// exists.
fn gate_kind(dir: &std::path::Path) -> KindConfig {
    let script = format!(
        "echo \"$JOBRUNNER_JOB_ID\" >> {dir}/runs.log; test -e {dir}/open || {{ echo closed >&2; exit 3; }}",
        dir = dir.display()
    );
    KindConfig {
        max_attempts: 3,
        handler: Some(HandlerName::Command),
        command: Some(CommandKindConfig {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            dead_exit_codes: vec![3],
            env: BTreeMap::new(),
            working_dir: None,
        }),
        ..KindConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_dead_jobs_run_once_each_across_two_daemon_processes() {
    let mut app = spawn_app().await;
    let dir = app.dir.path().to_owned();
    app.config.kinds.insert("gate".into(), gate_kind(&dir));
    app.ledger.sync_kinds(&app.config).await.unwrap();
    let first = app.spawn_daemon(&app.config);
    let second = app.spawn_daemon(&app.config);

    let mut gated = Vec::new();
    for n in 0..8 {
        gated.push(app.enqueue("gate", json!({ "n": n })).await);
    }
    let done = app.enqueue("noop", json!({})).await;
    for id in &gated {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Dead);
    }
    app.wait_final(done, 10).await;

    // A job that is not dead or cancelled cannot be retried.
    let (code, out, err) = app.cli(&["retry", &done.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!(
            "job {done} is succeeded: only a dead or cancelled job can be retried"
        )),
        "{err}"
    );
    let (code, _, err) = app.cli(&["retry"]);
    assert_eq!(code, 2, "an id or --dead is required: {err}");

    std::fs::write(dir.join("open"), "").unwrap();
    let (code, out, err) = app.cli(&["retry", &gated[0].to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("Job {} is queued again on `default`\n", gated[0])
    );
    let (code, out, err) = app.cli(&["retry", "--dead", "--kind", "gate", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_of(&out),
        json!({"retried": 7}),
        "the job retried on its own is no longer dead"
    );

    for id in &gated {
        let job = app.wait_final(*id, 20).await;
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
        assert_eq!(job.attempts, 1, "attempts start again from zero: {job:?}");
        assert!(job.finished_at.is_some());
        let detail = app.ledger.job_detail(*id).await.unwrap();
        assert_eq!(
            detail.errors.as_array().map(Vec::len),
            Some(1),
            "the first run's error is kept: {detail:?}"
        );
    }
    // Each job ran once before the retry and once after: never twice at once,
    // although two daemons serve the queue.
    let runs = std::fs::read_to_string(dir.join("runs.log")).unwrap();
    let mut per_job: HashMap<&str, usize> = HashMap::new();
    for line in runs.lines() {
        *per_job.entry(line).or_default() += 1;
    }
    for id in &gated {
        assert_eq!(per_job.get(id.to_string().as_str()), Some(&2), "{runs}");
    }
    let (code, out, _) = app.cli(&["retry", "--dead"]);
    assert_eq!(code, 0);
    assert_eq!(out, "Retried 0 dead jobs\n");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_only_old_jobs_of_the_named_final_status() {
    let app = spawn_app().await;
    let mix = known_mix(&app).await;
    let permanent = app.enqueue("fail", json!({"permanent": true})).await;
    let daemon = app.start_daemon().await;
    app.wait_final(permanent, 10).await;
    daemon.stop().await;
    // Age one succeeded job, the dead one and the scheduled one by ten days.
    sqlx::query(
        "UPDATE jobrunner.jobs
         SET created_at = created_at - interval '10 days',
             finished_at = finished_at - interval '10 days'
         WHERE id = ANY($1)",
    )
    .bind(vec![mix.succeeded[0], mix.dead, mix.scheduled])
    .execute(app.ledger.pool())
    .await
    .unwrap();
    assert_eq!(app.count_jobs().await, 6);

    let (code, out, err) = app.cli(&[
        "purge",
        "--status",
        "succeeded",
        "--older-than",
        "7d",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Would delete 1 succeeded job that ended before"),
        "{out}"
    );
    assert_eq!(app.count_jobs().await, 6, "a dry run deletes nothing");

    let (code, out, err) = app.cli(&["purge", "--status", "succeeded", "--older-than", "7d"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Deleted 1 succeeded job that ended before"),
        "{out}"
    );
    let (code, out, err) = app.cli(&["purge", "--status", "dead", "--older-than", "7d", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_of(&out),
        json!({"status": "dead", "older_than": "7days", "dry_run": false, "purged": 1})
    );

    let (code, _, err) = app.cli(&["purge", "--status", "scheduled", "--older-than", "1s"]);
    assert_eq!(code, 2, "an unfinished status cannot be purged: {err}");
    assert!(
        err.contains("possible values: succeeded, dead, cancelled"),
        "{err}"
    );

    let left: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM jobrunner.jobs")
        .fetch_all(app.ledger.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: HashSet<Uuid> = [mix.succeeded[1], mix.scheduled, mix.waiting, permanent]
        .into_iter()
        .collect();
    assert_eq!(
        left, expected,
        "only the old succeeded and the old dead job are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_final_jobs_past_their_ttl_and_keeps_the_rest() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.retention.succeeded = Some(Duration::from_millis(300));
    config.retention.interval = Duration::from_millis(100);
    config.retention.batch = 2;
    let daemon = app
        .start_daemon_with(config.clone(), jobrunner_kinds::registry(&config))
        .await;
    let mut succeeded = Vec::new();
    for n in 0..5 {
        succeeded.push(app.enqueue("noop", json!({ "n": n })).await);
    }
    let dead = app.enqueue("fail", json!({"permanent": true})).await;
    let waiting = enqueue_in(&app, "noop", json!({}), "reports").await;
    app.wait_final(dead, 10).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM jobrunner.jobs")
            .fetch_all(app.ledger.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
        // A set: two ids made in the same millisecond need not sort as made.
        if left == HashSet::from([dead, waiting]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "succeeded jobs were not pruned (dead and unfinished ones stay): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_shows_each_running_daemon_and_drops_one_that_stopped() {
    let app = spawn_app().await;
    let mut first = app.spawn_daemon(&app.config);
    let second = app.spawn_daemon(&app.config);
    let pids = |out: &str| -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = json_of(out)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["pid"].as_u64().unwrap(),
                    w["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut both = vec![
        (first.pid() as u64, "live".to_owned()),
        (second.pid() as u64, "live".to_owned()),
    ];
    both.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (code, out, err) = app.cli(&["workers", "--json"]);
        assert_eq!(code, 0, "{err}");
        if pids(&out) == both {
            break out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both daemons never registered: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let entry = &json_of(&out)["workers"][0];
    assert_eq!(entry["queues"], json!(["default"]));
    assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(entry["running"], 0);
    for field in ["id", "host", "started_at", "heartbeat_at"] {
        assert!(entry[field].is_string(), "{field} in {entry}");
    }

    let (code, out, err) = app.cli(&["workers"]);
    assert_eq!(code, 0, "{err}");
    for daemon in [&first, &second] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(&daemon.pid().to_string()))
            .unwrap_or_else(|| panic!("pid {} in:\n{out}", daemon.pid()));
        assert!(line.ends_with("live"), "{line}");
    }

    first.signal("TERM");
    assert!(first.wait_exit(10).is_some(), "the first daemon stops");
    let (_, out, _) = app.cli(&["workers", "--json"]);
    assert_eq!(pids(&out), [(second.pid() as u64, "live".to_owned())]);

    // A daemon killed without a clean stop leaves an entry that ages out.
    let now = chrono::Utc::now();
    app.broker
        .put_worker(&WorkerEntry {
            id: Uuid::now_v7(),
            host: "old-host".into(),
            pid: 4242,
            version: "0.0.1".into(),
            queues: vec!["default".into()],
            running: 3,
            started_at: now - chrono::Duration::hours(2),
            heartbeat_at: now - chrono::Duration::minutes(1),
            draining: false,
        })
        .await
        .unwrap();
    let (_, out, _) = app.cli(&["workers"]);
    assert!(
        row(&out, "ID").len() == 9
            && out
                .lines()
                .any(|l| l.contains("old-host") && l.ends_with("gone")),
        "{out}"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_cancelled_job_clears_the_copy_it_left_in_redis() {
    use fred::prelude::*;
    let app = spawn_app().await;
    let daemon = app.start_daemon().await;
    let id = app
        .ledger
        .enqueue(&NewJob {
            kind: "noop".into(),
            payload: json!({"again": true}),
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..NewJob::default()
        })
        .await
        .unwrap();
    let redis_place = |out: &str| json_of(out)["redis"]["place"].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis_place(&app.cli(&["inspect", &id.to_string(), "--json"]).1) != "delayed" {
        assert!(tokio::time::Instant::now() < deadline, "never dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cancelled in the ledger while its copy still waits in Redis's delayed set.
    sqlx::query(
        "UPDATE jobrunner.jobs SET status = 'cancelled', finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(app.ledger.pool())
    .await
    .unwrap();
    let (code, out, err) = app.cli(&["retry", &id.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("Redis still holds it"), "{err}");
    assert_eq!(app.ledger.job(id).await.unwrap().status, Status::Cancelled);

    // Out of every queue structure, but its hash left behind: retry clears it, so
    // the dispatch is not skipped and the job runs.
    let config = fred::types::config::Config::from_url(app.config.redis.url.expose()).unwrap();
    let client = Builder::from_config(config).build().unwrap();
    client.init().await.unwrap();
    let delayed = format!("{}:{{default}}:delayed", app.config.redis.key_prefix);
    let removed: i64 = client.zrem(delayed, id.to_string()).await.unwrap();
    assert_eq!(removed, 1);
    let _ = client.quit().await;
    let (code, out, err) = app.cli(&["retry", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("Job {id} is queued again on `default`\n"));
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded, "{job:?}");
    assert_eq!(job.result, Some(json!({"again": true})));
    daemon.stop().await;
}
